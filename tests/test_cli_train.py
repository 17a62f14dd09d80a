"""``mara train``: the run folder, config files and flags, refusing to clobber, kill and resume."""

from __future__ import annotations

import copy
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import save_tiny_files
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecMonitor

import agents.cli.train as train_cli
import agents.training.checkpoints as checkpoints
import agents.training.runner as runner
from agents import DiscreteSAC, NonFiniteLossError
from agents.cli import describe, main
from agents.loading import load_algorithm
from agents.registry import make_algorithm
from agents.training.callbacks import EPISODE_METRICS, KL_COLUMN, MARALoggingCallback
from agents.training.checkpoints import read_checkpoint_state, recover_checkpoint, verify_checkpoint
from agents.training.run_config import DEFAULT_RUN, RunConfig
from mara_env.sb3 import SB3VecEnv

REPO = Path(__file__).resolve().parents[1]
MARA_COLUMNS = [*EPISODE_METRICS.values(), KL_COLUMN, "mara/decisions_per_second"]
# Small replay settings so that a few hundred decisions include updates
SMALL_SAC = ["--learning-starts", "64", "--batch-size", "32", "--buffer-size", "4000"]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model saved as a local folder, and a prompt file."""
    return save_tiny_files(tmp_path_factory.mktemp("tiny"))


def env_flags(tiny_files: tuple[Path, Path]) -> list[str]:
    llm, prompts = tiny_files
    return [
        *("--llm", str(llm), "--prompts", str(prompts), "--prompt-split", "all"),
        *("--reward-model", "length", "--cost-model", "none", "--max-new-tokens", "12", "--top-k", "8"),
        *("--devices", "cpu", "--num-envs", "4", "--no-progress"),
    ]


def tensorboard_settings(folder: Path) -> tuple[dict[str, object], str]:
    """The HParams a run wrote to TensorBoard (as the HParams tab reads them) and its config.yaml text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    text = events.Tensors("config.yaml/text_summary")[0].tensor_proto.string_val[0].decode()
    return values, text


def read_progress(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_train_end_to_end_writes_the_run_folder(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    # Precedence: defaults < config file < flags
    config_file = tmp_path / "run.toml"
    config_file.write_text("[env]\ntop_k = 5\nkl_coef = 0.2\n\n[train]\ntotal_decisions = 320\nlog_every = 80\n")
    flags = [*env_flags(tiny_files), "--config", str(config_file), "--checkpoint-every", "160", *SMALL_SAC]
    assert main(["train", "--out", str(out), *flags]) == 0  # --top-k 8 among the flags beats the file's 5

    config = RunConfig.from_file(out / "config.yaml")
    assert config.env["top_k"] == 8 and config.env["kl_coef"] == 0.2  # flag over file; file over default
    assert config.train.total_decisions == 320 and config.train.log_every == 80
    assert config.train.num_envs == 4 and config.train.seed == DEFAULT_RUN["train"]["seed"]
    assert config.agent.algo == "sac-discrete" and config.agent.resolved()["learning_starts"] == 64

    rows = read_progress(out / "progress.csv")
    assert set(MARA_COLUMNS) <= set(rows[0]), "the evaluation report reads these columns"
    steps = [int(float(row["time/total_timesteps"])) for row in rows]
    assert steps == sorted(steps) and steps[0] == 80 and steps[-1] >= 320 and len(steps) >= 4
    kls = [float(row[KL_COLUMN]) for row in rows if row[KL_COLUMN]]
    assert kls and all(np.isfinite(kls))
    assert float(rows[-1]["mara/reward_score"]) > 0  # the length reward of a non-empty response
    assert any((out / "tb").iterdir()), "TensorBoard events"
    hparams, text = tensorboard_settings(out / "tb")
    assert hparams["env/top_k"] == 8 and hparams["env/kl_coef"] == pytest.approx(0.2)
    assert hparams["agent/algo"] == "sac-discrete" and hparams["train/total_decisions"] == 320
    assert "top_k: 8" in text, "the resolved config.yaml in the text tab"

    model = load_algorithm(out / "model.zip")
    assert isinstance(model, DiscreteSAC) and model.num_timesteps >= 320
    assert model.ent_coef == 0.2, "the entropy coefficient is the env's kl_coef"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == model.num_timesteps and summary["episodes"] > 0
    assert summary["final"]["mara/reward_score"] == pytest.approx(float(rows[-1]["mara/reward_score"]))
    assert read_checkpoint_state(out / "checkpoint")["num_timesteps"] == model.num_timesteps
    assert "Trained sac-discrete" in capsys.readouterr().out


def test_ppo_through_the_cli_and_overwrite(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("{}\n")  # a run folder from before
    (out / "stale.txt").write_text("old")
    flags = [*env_flags(tiny_files), "--algo", "ppo", "--n-steps", "16", "--batch-size", "32", "--n-epochs", "2"]
    assert main(["train", "--out", str(out), *flags, "--total-decisions", "128", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
    model = load_algorithm(out / "model.zip")
    assert type(model).__name__ == "PPO" and model.n_steps == 16 and model.num_timesteps >= 128
    assert set(MARA_COLUMNS) <= set(read_progress(out / "progress.csv")[0])
    assert not (out / "checkpoint" / "replay_buffer.npz").exists(), "on-policy: no replay buffer"

    # A flag of another algorithm is named as such
    assert main(["train", "--out", str(tmp_path / "x"), *flags, "--buffer-size", "10"]) == 2
    err = capsys.readouterr().err
    assert "mara train: error: command line: [agent] 'buffer_size' is not a hyperparameter of ppo (PPO)." in err
    assert "It is a hyperparameter of sac-discrete" in err and "Traceback" not in err


def test_a_run_records_where_its_score_models_ran(tiny_files, tmp_path):
    from conftest import build_tiny_llm
    from transformers import AutoModelForSequenceClassification

    # a tiny causal score model over the tiny LLM's tokenizer, as the cost model
    llm, tokenizer = build_tiny_llm()
    config = llm.config.__class__.from_dict(llm.config.to_dict() | {"num_labels": 1})
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "cost")
    tokenizer.save_pretrained(tmp_path / "cost")
    out = tmp_path / "run"
    flags = [*env_flags(tiny_files), "--cost-model", str(tmp_path / "cost"), "--algo", "ppo", "--n-steps", "16"]
    assert main(["train", "--out", str(out), *flags, "--batch-size", "32", "--total-decisions", "64"]) == 0
    env = RunConfig.from_file(out / "config.yaml").env
    # given as None and "auto": recorded as resolved, so the run says (and a resume keeps) where they ran
    assert env["scorer_devices"] == "cpu" and env["scorer_dtype"] == "float32"
    assert env["reward_shaping"] == "potential"


def test_existing_folder_is_refused(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(out), *env_flags(tiny_files)]) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err and "--overwrite" in err and "--resume" in err
    # --overwrite deletes only folders a run made
    assert main(["train", "--out", str(out), *env_flags(tiny_files), "--overwrite"]) == 2
    assert "only replaces run folders" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    # --resume without a run there
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.toml", "[env]\ntop_kk = 3\n", r"unknown key 'top_kk' in section \[env\]. Did you mean 'top_k'\?"),
        ("c.toml", '[env]\ntop_k = "many"\n', r"env.top_k must be an integer, got 'many'"),
        ("c.yaml", "train:\n  total_decisions: 1.5\n", r"train.total_decisions must be an integer, got 1.5"),
        ("c.yaml", "trian:\n  seed: 1\n", r"unknown section 'trian'. Did you mean 'train'\?"),
        ("c.yml", "agent:\n  algo: ppo\n  learning_rat: 1e-3\n", r"'learning_rat' is not a hyperparameter of ppo"),
        ("c.yaml", "agent:\n  algo: sac\n", r"agent.algo 'sac' is not a known algorithm. Did you mean 'sac-discrete'"),
        ("c.json", "{}", r"must end in .toml, .yaml or .yml"),
        ("c.toml", "[env\n", r"not valid TOML"),
        ("c.yaml", "agent:\n  batch_size: 0\n", r"'batch_size' of sac-discrete must be an integer >= 1"),
        ("c.yaml", "env:\n  devices: []\n", r"\[env\] devices must be None .* non-empty list"),
    ],
)
def test_config_file_errors(name, text, message, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        RunConfig.from_file(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mara train: error: ") and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is written before the settings are valid"


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[env]\ntop_kk = 3\n")
    assert main(["--debug", "train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "mara train: error: " in err


def test_yaml_reads_exponents_and_dump_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  algo: dqn\n  learning_rate: 1e-3\n  train_freq: [2, step]\nenv:\n  devices: [cpu]\n")
    config = RunConfig.from_file(path)
    assert config.agent.hyperparameters["learning_rate"] == 0.001
    assert config.agent.resolved()["train_freq"] == (2, "step")
    config.dump(tmp_path / "out.yaml")
    again = RunConfig.from_file(tmp_path / "out.yaml")
    assert again.changes_from(config) == [] and again.env["devices"] == ["cpu"]


class _Rows(KVWriter):
    """Keeps every dumped row in memory."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.rows.append({**key_values, "step": step})


def test_logging_callback_estimates_kl_from_the_behaviour_policy_and_reference(tiny_kwargs):
    venv = VecMonitor(SB3VecEnv(gym.make_vec("MARA-v0", num_envs=2, **tiny_kwargs)))
    model = make_algorithm("dqn", venv, seed=0, learning_starts=0, buffer_size=100)
    writer = _Rows()
    model.set_logger(Logger(None, [writer]))
    model.exploration_rate = 0.5  # behaviour: P(accept) = 0.25 + 0.5 * greedy
    callback = MARALoggingCallback(log_every=10**9)  # dumped by hand below
    callback.init_callback(model)
    obs = venv.reset()
    callback.on_training_start({}, {})
    rng = np.random.default_rng(0)
    running, kls, scores, lengths, steps = np.zeros(2), [], [], [], np.zeros(2, dtype=int)
    while len(kls) < 4:
        actions = rng.integers(0, 2, size=2)
        greedy = model.predict(obs, deterministic=True)[0]
        p_accept = 0.25 + 0.5 * greedy
        new_obs, _, dones, infos = venv.step(actions)
        running += np.log(np.where(actions == 1, p_accept, 1 - p_accept)) - [info["ref_logp"] for info in infos]
        steps += 1
        model.num_timesteps += 2
        callback.update_locals({"infos": infos, "dones": dones, "actions": actions})
        callback.on_step()  # reads the observations the actions were taken on from the env (SB3VecEnv.acted_on)
        obs = new_obs
        for i in np.flatnonzero(dones):
            kls.append(running[i])
            scores.append(infos[i]["reward_score"])
            lengths.append(steps[i])
            assert infos[i]["num_decisions"] == steps[i], "one decision per step of that env"
            running[i], steps[i] = 0.0, 0
    callback.dump()
    row = writer.rows[-1]
    assert row["mara/kl"] == pytest.approx(np.mean(kls))
    assert row["mara/reward_score"] == pytest.approx(np.mean(scores))
    assert row["mara/decisions_per_episode"] == pytest.approx(np.mean(lengths))
    assert row["time/total_timesteps"] == row["step"] == model.num_timesteps
    assert row["time/episodes"] == len(kls) == callback.episodes
    venv.close()


def test_switching_algorithm_drops_the_other_algorithms_hyperparameters(tmp_path):
    sac = RunConfig.from_sections({"agent": {"algo": "sac-discrete", "buffer_size": 500}})
    sac.dump(tmp_path / "sac.yaml")
    ppo = RunConfig.from_sections({"agent": {"algo": "ppo"}}, base=RunConfig.from_file(tmp_path / "sac.yaml"))
    assert ppo.agent.hyperparameters == {} and ppo.env == sac.env
    same = RunConfig.from_sections({"agent": {"gamma": 0.9}}, base=sac)
    assert same.agent.hyperparameters == {"buffer_size": 500, "gamma": 0.9}


def _fake_checkpoint(folder: Path, timesteps: int, complete: bool = True) -> None:
    folder.mkdir()
    (folder / "model.zip").write_bytes(b"zip")
    if complete:
        (folder / "state.json").write_text(json.dumps({"num_timesteps": timesteps}))


def test_recover_checkpoint_after_a_kill_at_each_point_of_the_swap(tmp_path):
    def state(run: Path) -> tuple[int | None, int | None]:
        found = recover_checkpoint(run)
        leftovers = sorted(p.name for p in run.iterdir() if p.name not in ("checkpoint", "checkpoint.prev"))
        assert leftovers == [], leftovers
        prev = run / "checkpoint.prev"
        return (
            None if found is None else read_checkpoint_state(found)["num_timesteps"],
            read_checkpoint_state(prev)["num_timesteps"] if prev.exists() else None,
        )

    # (folders left by the kill) -> (the checkpoint, the previous one kept as a fallback)
    final, tmp, old, prev = "checkpoint", "checkpoint.tmp", "checkpoint.old", "checkpoint.prev"
    cases = {
        "writing the first": ([(tmp, 1, False)], (None, None)),
        "writing a later one": ([(final, 1, True), (tmp, 2, False)], (1, None)),
        "between the renames": ([(old, 1, True), (tmp, 2, True)], (2, 1)),
        "before keeping the old": ([(final, 2, True), (old, 1, True)], (2, 1)),
        "old only, tmp unfinished": ([(old, 1, True), (tmp, 2, False)], (1, None)),
        "writing with a previous": ([(final, 2, True), (prev, 1, True), (tmp, 3, False)], (2, 1)),
        "old beside an older previous": ([(final, 3, True), (old, 2, True), (prev, 1, True)], (3, 2)),
    }
    for name, (folders, expected) in cases.items():
        run = tmp_path / name.replace(" ", "_").replace(",", "")
        run.mkdir()
        for folder, timesteps, complete in folders:
            _fake_checkpoint(run / folder, timesteps, complete)
        assert state(run) == expected, name


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as file:
        return subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "train", *args], cwd=REPO, env=env, stdout=file, stderr=file
        )


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, log: Path) -> None:
    deadline = time.monotonic() + 90
    while not (out / "checkpoint" / "state.json").exists():
        assert proc.poll() is None, f"mara train exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no checkpoint after 90 s:\n{log.read_text()}"
        time.sleep(0.05)


def test_kill_and_resume_continues_from_the_checkpoint(tiny_files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    total = 640
    # A learned entropy coefficient, so that its restoration is checked
    args = ["--out", str(out), *env_flags(tiny_files), "--total-decisions", str(total), "--checkpoint-every", "160"]
    args += [*SMALL_SAC, "--ent-coef", "auto_0.1", "--log-every", "80"]
    proc = _start(args, tmp_path / "train.log")
    _wait_for_checkpoint(proc, out, tmp_path / "train.log")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    checkpoint = recover_checkpoint(out)  # the kill may have come during a later checkpoint's write
    assert checkpoint is not None
    state = read_checkpoint_state(checkpoint)
    done = state["num_timesteps"]
    assert 0 < done < total, "killed mid-run"
    reference = tmp_path / "reference"
    shutil.copytree(checkpoint, reference)
    saved = load_algorithm(reference / "model.zip")  # the checkpoint loads on its own
    assert isinstance(saved, DiscreteSAC) and saved.num_timesteps == done
    saved_buffer = np.load(reference / "replay_buffer.npz")

    seen = {}
    real_load = runner.load_algorithm

    def spying_load(*a, **k):
        model = real_load(*a, **k)
        real_learn = model.learn

        def learn(total_timesteps, **kwargs):
            seen.update(
                num_timesteps=model.num_timesteps,
                total_timesteps=total_timesteps,
                reset=kwargs["reset_num_timesteps"],
                transitions=model.replay_buffer.size() * model.replay_buffer.n_envs,
                observations=model.replay_buffer.observations[: model.replay_buffer.pos].copy(),
                log_ent_coef=model.log_ent_coef.detach().clone(),
                optimizers={
                    name: copy.deepcopy(getattr(model, name.split(".")[0]).optimizer.state_dict())
                    if "." in name
                    else copy.deepcopy(model.ent_coef_optimizer.state_dict())
                    for name in ("actor.optimizer", "critic.optimizer", "ent_coef_optimizer")
                },
            )
            del model.learn  # the spy must not be saved with the model
            return real_learn(total_timesteps, **kwargs)

        model.learn = learn
        return model

    monkeypatch.setattr(runner, "load_algorithm", spying_load)
    assert main(["train", *args, "--resume"]) == 0

    # Continued from the checkpoint, not from 0, with everything SB3 does not rebuild restored
    assert seen["num_timesteps"] == done and seen["reset"] is False and seen["total_timesteps"] == total - done
    assert seen["transitions"] == state["replay_buffer_transitions"] == done
    np.testing.assert_array_equal(seen["observations"], saved_buffer["array_observations"])
    assert torch.equal(seen["log_ent_coef"], saved.log_ent_coef.detach())
    assert float(saved.log_ent_coef.detach().exp()) != pytest.approx(0.1), "the coefficient had moved from its start"
    for name, resumed in seen["optimizers"].items():
        owner = getattr(saved, name.split(".")[0]) if "." in name else None
        expected = owner.optimizer.state_dict() if owner is not None else saved.ent_coef_optimizer.state_dict()
        assert resumed["state"].keys() == expected["state"].keys() and resumed["state"], name
        for key, values in expected["state"].items():
            for field, value in values.items():
                assert torch.equal(resumed["state"][key][field], value), (name, key, field)

    final = load_algorithm(out / "model.zip")
    assert final.num_timesteps == total
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == total and summary["resumed"] is True
    assert summary["episodes"] > state["episodes"] > 0, "episode counter continued"
    steps = [int(float(row["time/total_timesteps"])) for row in read_progress(out / "progress.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == total, "rows after the checkpoint were redone once"

    # A finished run says so; killed after its last checkpoint, it gets its model and summary back
    (out / "model.zip").unlink()
    (out / "summary.json").unlink()
    assert main(["train", *args, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert load_algorithm(out / "model.zip").num_timesteps == total
    assert json.loads((out / "summary.json").read_text())["decisions"] == total


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tiny_files, tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), *env_flags(tiny_files), "--total-decisions", "20000", "--checkpoint-every", "96"]
    proc = _start([*args, *SMALL_SAC], tmp_path / "train.log")
    _wait_for_checkpoint(proc, out, tmp_path / "train.log")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    log = (tmp_path / "train.log").read_text()
    assert f"Continue with: mara train --out {out} --resume" in log and "Traceback" not in log
    assert recover_checkpoint(out) is not None
    assert isinstance(load_algorithm(out / "checkpoint" / "model.zip"), DiscreteSAC)


# ------------------------------------------------------------------------------------------ reliability


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path: two equal snapshots mean nothing was changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str) -> str:
    """The error line of ``err``, checking that it is the only line and carries no traceback."""
    # transformers draws a progress bar while it loads weights: not part of the error
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("mara train: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tiny_files, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished run of 192 decisions with checkpoints at 80, 160 and 192 (so checkpoint.prev/ is at 160)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = ["--out", str(out), *env_flags(tiny_files), *SMALL_SAC, "--total-decisions", "192"]
    assert main(["train", *args, "--checkpoint-every", "80", "--log-every", "64"]) == 0
    return out, args


@pytest.fixture
def run_copy(finished_run, tmp_path) -> tuple[Path, list[str]]:
    """A copy of :func:`finished_run` to damage, and the flags of ``mara train`` for it."""
    source, args = finished_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    return out, [str(out) if arg == str(source) else arg for arg in args]


def test_overwrite_that_cannot_start_leaves_the_run_intact(run_copy, tmp_path, capsys):
    out, args = run_copy
    before = snapshot(out)
    for bad in (["--prompts", str(tmp_path / "typo.txt")], ["--devices", "cuda:3"], ["--batch-size", "0"]):
        assert main(["train", *args, *bad, "--overwrite"]) == 2, bad
        one_line_error(capsys.readouterr().err)
        assert snapshot(out) == before, f"--overwrite {bad} changed the run"
    assert not (tmp_path / "run.overwritten").exists()


def test_overwrite_replaces_the_run_only_after_the_new_runs_first_checkpoint(run_copy, tmp_path, monkeypatch, capsys):
    out, args = run_copy
    before = snapshot(out)
    aside = tmp_path / "run.overwritten"

    def stop(exc: BaseException):
        def on_rollout_end(self):
            assert aside.is_dir() and not (out / "model.zip").exists(), "the old run waits aside, the new one runs"
            raise exc

        monkeypatch.setattr(runner.RunCheckpointCallback, "_on_rollout_end", on_rollout_end)

    stop(KeyboardInterrupt())
    assert main(["train", *args, "--overwrite", "--top-k", "6"]) == 130
    assert "the run that --overwrite replaced is back in" in capsys.readouterr().err
    assert snapshot(out) == before and not aside.exists()

    stop(RuntimeError("boom"))
    assert main(["train", *args, "--overwrite", "--top-k", "6"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "training stopped at" in line and "RuntimeError: boom" in line and "is back in" in line
    assert snapshot(out) == before and not aside.exists()
    monkeypatch.undo()

    # A SIGKILL before the first checkpoint leaves the old run aside: the next command puts it back
    os.replace(out, aside)
    out.mkdir()
    (out / "config.yaml").write_bytes(before["config.yaml"])
    assert main(["train", *args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "the run it replaced is back in" in captured.err and "already finished" in captured.out
    assert snapshot(out) == before and not aside.exists()

    assert main(["train", *args, "--overwrite", "--top-k", "6"]) == 0
    assert RunConfig.from_file(out / "config.yaml").env["top_k"] == 6 and not aside.exists()


def test_damaged_checkpoint_of_a_finished_run_is_named_and_nothing_is_lost(run_copy, capsys):
    out, args = run_copy
    model = (out / "model.zip").read_bytes()
    (out / "checkpoint" / "state.json").write_text("{garbage")
    # Finished: said so, whatever the checkpoints hold (the old advice was --overwrite, deleting the model)
    assert main(["train", *args, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out and (out / "model.zip").read_bytes() == model
    # Training further falls back to the checkpoint before the damaged one, and keeps the damaged copy
    assert main(["train", *args, "--resume", "--total-decisions", "256"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint/state.json is damaged" in err and "continuing from the checkpoint before it (160" in err
    assert (out / "checkpoint.damaged" / "state.json").read_text() == "{garbage"
    assert load_algorithm(out / "model.zip").num_timesteps == 256


def test_no_intact_checkpoint_is_refused_without_destructive_advice(run_copy, capsys):
    out, args = run_copy
    (out / "checkpoint" / "state.json").write_text("{garbage")
    prev_model = out / "checkpoint.prev" / "model.zip"
    prev_model.write_bytes(prev_model.read_bytes()[:1000])
    before = snapshot(out)
    assert main(["train", *args, "--resume", "--total-decisions", "256"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "checkpoint/state.json is damaged" in line and "checkpoint.prev/model.zip is damaged (1000 bytes" in line
    assert "--overwrite" not in line and "nothing was changed" in line and "model.zip is not affected" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("name", ["model.zip", "replay_buffer.npz"])
def test_a_checkpoint_file_changed_after_writing_is_caught_by_its_digest(run_copy, name, capsys):
    out, args = run_copy
    path = out / "checkpoint" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the SHA-256 tells
    path.write_bytes(bytes(data))
    assert verify_checkpoint(out / "checkpoint") == f"{path} is damaged (its contents changed after it was written: " \
        "the SHA-256 differs)"  # fmt: skip
    state = out / "checkpoint" / "state.json"
    edited = state.read_text().replace('"episodes": ', '"episodes": 1')  # valid JSON, wrong value
    (out / "edited").mkdir()
    shutil.copy(out / "checkpoint" / "model.zip", out / "edited")
    (out / "edited" / "state.json").write_text(edited)
    assert "state.json is damaged (its values changed after it was written" in verify_checkpoint(out / "edited")
    shutil.rmtree(out / "edited")
    assert main(["train", *args, "--resume", "--total-decisions", "256"]) == 0
    assert f"checkpoint/{name} is damaged" in capsys.readouterr().err
    assert load_algorithm(out / "model.zip").num_timesteps == 256


def test_damaged_files_of_a_checkpoint_without_digests_are_named(run_copy, capsys):
    """Checkpoints of earlier versions record no digests; a damaged buffer is still named, not a traceback."""
    out, args = run_copy
    for folder in ("checkpoint", "checkpoint.prev"):
        state = json.loads((out / folder / "state.json").read_text())
        del state["files"], state["state_sha256"]
        (out / folder / "state.json").write_text(json.dumps(state))
        (out / folder / "replay_buffer.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert main(["train", *args, "--resume", "--total-decisions", "256"]) == 2
    assert "checkpoint/replay_buffer.npz is damaged: it is not a readable .npz file" in one_line_error(
        capsys.readouterr().err
    )


def test_a_first_start_that_fails_leaves_nothing_behind(tiny_files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *env_flags(tiny_files), "--total-decisions", "64"]
    assert main([*args, "--devices", "cuda:3"]) == 2
    assert "'cuda:3' does not exist" in one_line_error(capsys.readouterr().err)
    assert not out.exists(), "the corrected command must not need --overwrite"
    assert main(args) == 0


def test_ctrl_c_before_the_first_checkpoint_then_resume_starts_over(tiny_files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), *env_flags(tiny_files), *SMALL_SAC, "--total-decisions", "128"]

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.RunCheckpointCallback, "_on_rollout_end", interrupt)
    assert main(["train", *args]) == 130
    assert f"No checkpoint was written yet (the first is due at 5000 decisions); start it again with: mara train " \
        f"--out {out} --resume" in capsys.readouterr().err  # fmt: skip
    monkeypatch.undo()
    assert main(["train", *args]) == 2
    assert "stopped before its first checkpoint" in one_line_error(capsys.readouterr().err)
    assert main(["train", *args, "--resume"]) == 0  # the advice works
    assert "starting it again from decision 0" in capsys.readouterr().err
    assert load_algorithm(out / "model.zip").num_timesteps == 128


def test_a_resume_that_fails_leaves_config_yaml_alone(run_copy, monkeypatch, capsys):
    out, args = run_copy
    config = (out / "config.yaml").read_bytes()

    def make_vec(*a, **k):
        raise ValueError("llm: the folder is gone")

    monkeypatch.setattr(gym, "make_vec", make_vec)
    assert main(["train", *args, "--resume", "--total-decisions", "256"]) == 2
    assert "llm: the folder is gone" in one_line_error(capsys.readouterr().err)
    assert (out / "config.yaml").read_bytes() == config, "--total-decisions is recorded only once the run resumes"


def test_a_failure_while_training_is_one_line_with_exit_status_1(tiny_files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *env_flags(tiny_files), *SMALL_SAC, "--total-decisions", "128"]

    def train(self, gradient_steps, batch_size=64):
        raise NonFiniteLossError("DiscreteSAC: non-finite value at gradient step 1: critic_loss=nan.\nCheck the data.")

    monkeypatch.setattr(DiscreteSAC, "train", train)
    assert main(args) == 1
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("mara train: error: training stopped at ") and "critic_loss=nan. Check the data" in line
    assert "No checkpoint was written yet" in line
    assert main(["--debug", *args, "--overwrite"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tiny_files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), *env_flags(tiny_files), *SMALL_SAC, "--total-decisions", "192"]
    real_save = checkpoints.save_replay_buffer
    calls = []

    def save(buffer, path):
        calls.append(path)
        if len(calls) > 1:  # the disk fills up after the first checkpoint
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(buffer, path)

    monkeypatch.setattr(checkpoints, "save_replay_buffer", save)
    assert main(["train", *args, "--checkpoint-every", "80"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and "Free disk space" in line
    assert "The last checkpoint (80 decisions) is in" in line
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"], "tmp removed"
    monkeypatch.undo()
    assert main(["train", *args, "--resume"]) == 0
    assert load_algorithm(out / "model.zip").num_timesteps == 192


def test_usage_and_unexpected_errors_are_one_line(monkeypatch, capsys):
    assert main(["train", "--top-k", "many"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "argument --top-k: --top-k expects int, got 'many' (see mara train --help)" in line and "usage:" not in line

    def broken(args):
        raise AttributeError("'NoneType' object has no attribute 'x'")

    monkeypatch.setattr(train_cli, "run", broken)
    assert main(["train"]) == 1
    assert one_line_error(capsys.readouterr().err).endswith(
        "AttributeError: 'NoneType' object has no attribute 'x' (rerun with --debug for the traceback)"
    )
    assert "Choose a folder that can be written" in describe(PermissionError(errno.EACCES, "Permission denied", "x"))


def test_a_progress_row_cut_short_by_a_kill_is_dropped_with_a_warning(run_copy, capsys):
    out, args = run_copy
    with open(out / "progress.csv", "a") as file:
        file.write("0.25,19")  # a kill in the middle of writing a row
    assert main(["train", *args, "--resume", "--total-decisions", "256"]) == 0
    assert "progress.csv: dropped 1 damaged row" in capsys.readouterr().err
    steps = [int(float(row["time/total_timesteps"])) for row in read_progress(out / "progress.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 256

    (out / "progress.csv").write_bytes(b"\x00\xff not csv")
    assert main(["train", *args, "--resume", "--total-decisions", "320"]) == 0
    assert "progress.csv cannot be read (" in capsys.readouterr().err
    assert (out / "progress.damaged.csv").read_bytes() == b"\x00\xff not csv"


@pytest.mark.parametrize("damage", ["flip", "delete", "summary"])
def test_a_damaged_published_model_is_restored_from_the_checkpoint(run_copy, damage, capsys):
    out, args = run_copy
    model = out / "model.zip"
    if damage == "flip":  # the zip still opens and its JSON still reads: only the digest tells
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "delete":
        model.unlink()
    else:
        (out / "summary.json").write_text("{")
    assert main(["train", *args, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert model.read_bytes() == (out / "checkpoint" / "model.zip").read_bytes()
    assert json.loads((out / "summary.json").read_text())["decisions"] == 192


def test_overwrite_that_cannot_move_the_old_run_aside_leaves_it_intact(run_copy, tmp_path, monkeypatch, capsys):
    """A read-only parent folder: the move fails, and the undo must not touch the old run (it once emptied it)."""
    out, args = run_copy
    before = snapshot(out)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".overwritten"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(runner.os, "replace", replace)
    assert main(["train", *args, "--overwrite", "--top-k", "6"]) == 2
    assert "Permission denied" in one_line_error(capsys.readouterr().err)
    assert snapshot(out) == before and not (tmp_path / "run.overwritten").exists()


def test_a_background_thread_that_fails_says_one_line(monkeypatch, capsys):
    import threading

    def fail() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "tb/events.out.tfevents")

    def run(args):
        thread = threading.Thread(target=fail, name="writer")
        thread.start()
        thread.join()
        return 0

    monkeypatch.setattr(train_cli, "run", run)
    hook = threading.excepthook
    assert main(["train"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "mara train: warning: a background thread failed: [Errno 13] Permission denied: 'tb/events.out.tfevents'. "
        "Choose a folder that can be written (e.g. another --out), or fix its permissions\n"
    )
    assert threading.excepthook is hook, "restored after the command"


def test_as_the_program_a_late_ctrl_c_cannot_change_the_exit_status(monkeypatch):
    """Run as ``mara`` (no argv), a Ctrl-C after the command ended is ignored; called from Python, nothing changes."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert main(["train", "--top-k", "many"]) == 2
        assert signal.getsignal(signal.SIGINT) is handler
        monkeypatch.setattr(sys, "argv", ["mara", "train", "--top-k", "many"])
        assert main() == 2
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)


def test_logs_that_cannot_be_closed_never_hide_the_error(tiny_files, tmp_path, monkeypatch, capsys):
    """TensorBoard re-raises its writer's error on close; that used to replace the training error (and its advice)."""

    def close(self):
        raise PermissionError(errno.EACCES, "Permission denied", "tb/events.out.tfevents")

    def train(self, gradient_steps, batch_size=64):
        raise NonFiniteLossError("DiscreteSAC: non-finite value at gradient step 1.")

    monkeypatch.setattr(Logger, "close", close)
    monkeypatch.setattr(DiscreteSAC, "train", train)
    args = ["train", "--out", str(tmp_path / "run"), *env_flags(tiny_files), *SMALL_SAC, "--total-decisions", "128"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "mara train: warning: the training logs in" in err and "could not be closed: [Errno 13]" in err
    assert err.rstrip().splitlines()[-1].startswith("mara train: error: training stopped at 80 decisions")
