"""Messages that point the right way: each case the issue-21 probes found misleading, and the environment after
``close()`` or after an error inside ``step``."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_files
from test_hostile_files import FIXTURE, _Touch, _zip_with_attribute

from agents.cli import main


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1, lines
    return lines[0]


def test_devices_do_not_eat_the_prompt(capsys):
    assert main(["generate", "--devices", "cuda:7", "hi"]) == 2
    line = error_line(capsys)
    assert "'hi' is not a device" in line and "put prompts before --devices" in line


def _run_folder(path: Path, with_model: bool) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("env:\n  top_k: 8\n")
    if with_model:
        shutil.copy(FIXTURE, path / "model.zip")
    return path


@pytest.mark.parametrize("new_run_started", [True, False])
def test_a_killed_overwrite_is_named_with_the_way_back(tmp_path, capsys, new_run_started):
    run = tmp_path / "run"
    aside = _run_folder(tmp_path / "run.overwritten", with_model=True)
    if new_run_started:
        _run_folder(run, with_model=False)  # the new run was killed before its first checkpoint
    for command in (["generate", "--run", str(run), "hi"], ["evaluate", "--run", str(run)]):
        assert main(command) == 2
        line = error_line(capsys)
        assert f"interrupted `mara train --overwrite` left the run it was replacing in {aside}" in line
        assert f"mara train --out {run} --resume" in line


def test_run_and_agent_paths_get_their_own_messages(tmp_path, capsys):
    _run_folder(tmp_path / "trained", with_model=True)
    cases = [
        (["--run", str(FIXTURE)], "is a file, not a training run folder; to use it as the agent, pass --agent"),
        (["--run", str(tmp_path / "missing")], "does not exist. Pass the folder `mara train --out` wrote"),
        (["--agent", str(tmp_path / "trained")], "is a training run folder, not an agent file: pass it with --run"),
        (["--agent", str(tmp_path)], "is a folder holding no agent"),
        (["--agent", str(tmp_path / "nope.zip")], "does not exist"),
    ]
    for flags, says in cases:
        assert main(["generate", *flags, "hi"]) == 2
        assert says in error_line(capsys), flags


def test_a_folder_given_to_file_is_not_read_as_a_dataset_id(tmp_path, capsys):
    assert main(["generate", "--file", str(tmp_path), "--raw"]) == 2
    assert f"--file {tmp_path} is a folder; give a prompts file" in error_line(capsys)


def test_a_garbage_config_on_resume_names_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00\x81garbage")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    line = error_line(capsys)
    assert f"{run / 'config.yaml'} is not a text file" in line
    (run / "config.yaml").write_text("just a string")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "holds sections (env, agent, train); this one holds a str" in error_line(capsys)


def test_a_hostile_agent_is_refused_by_the_command_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _zip_with_attribute(tmp_path / "evil.zip", pickle.dumps(_Touch(marker)))
    llm, _ = save_tiny_files(tmp_path)
    capsys.readouterr()
    assert main(["generate", "hi", "--agent", str(evil), "--llm", str(llm), "--devices", "cpu"]) == 2
    assert "refusing to load" in error_line(capsys) and not marker.exists()


# ------------------------------------------------------------------------------------------------ the environment


@pytest.fixture
def env(tiny_kwargs):
    import gymnasium as gym

    import mara_env  # noqa: F401

    made = gym.make("MARA-v0", **tiny_kwargs).unwrapped
    yield made
    made.close()


def first_layer(model):
    """The LLM's first decoder layer: every forward goes through it."""
    return next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))


def test_step_and_reset_after_close_raise(env, tiny_kwargs):
    import gymnasium as gym

    env.reset(seed=0)
    env.close()
    for call in (lambda: env.step(1), lambda: env.reset(seed=0)):
        with pytest.raises(RuntimeError, match=r"called after close\(\).*Create a new one"):
            call()
    envs = gym.make_vec("MARA-v0", num_envs=2, **tiny_kwargs)
    envs.reset(seed=0)
    envs.close()
    with pytest.raises(RuntimeError, match=r"step\(\) called after close\(\)"):
        envs.step(np.ones(2, dtype=np.int64))


def test_after_an_error_inside_step_the_next_call_says_reset_and_reset_works(env, monkeypatch):
    env.reset(seed=0)
    # a wrong action is refused before anything changes: the episode goes on
    with pytest.raises(ValueError, match="must be 0"):
        env.step(7)
    env.step(0)
    layer = first_layer(env.core.replicas[0].model)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(layer, "forward", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        env.step(1)  # an accepted token needs the LLM's next forward
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match=r"after an error inside an earlier step \(RuntimeError: CUDA error.*reset"):
        env.step(1)
    env.reset(seed=3)  # a new episode starts cleanly and runs to its end
    terminated, steps = False, 0
    while not terminated:
        _, _, terminated, _, info = env.step(1)
        steps += 1
    assert info["finish_reason"] in ("eos", "length") and steps >= 1


def test_the_vector_env_after_an_error_inside_step(tiny_kwargs, monkeypatch):
    import gymnasium as gym

    envs = gym.make_vec("MARA-v0", num_envs=2, **tiny_kwargs)
    envs.reset(seed=0)
    layer = first_layer(envs.unwrapped.core.replicas[0].model)
    monkeypatch.setattr(layer, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        envs.step(np.ones(2, dtype=np.int64))
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match=r"envs\.reset\(\)"):
        envs.step(np.ones(2, dtype=np.int64))
    # a partial reset cannot mend the other rows' episodes: it is refused, naming the full reset
    with pytest.raises(RuntimeError, match=r"partial reset .* after an error .*without 'reset_mask'"):
        envs.reset(options={"reset_mask": np.array([True, False])})
    envs.reset(seed=1)
    for _ in range(5):
        envs.step(np.ones(2, dtype=np.int64))
    envs.close()
