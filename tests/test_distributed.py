"""Distributed training on Ray (``mara train --collectors N``): collectors on a local cluster, the tiny LLM.

One local Ray cluster serves the module (2 CPUs, as this machine has). One distributed run with two
collectors, during which one collector is killed and restarted and the other killed for good, is
shared by the tests that read it: it learns, loses nothing it had received, and saves a model that loads.
"""

from __future__ import annotations

import copy
import csv
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_files
from stable_baselines3.common.callbacks import BaseCallback
from test_cli_train import _start, _wait_for_checkpoint, one_line_error

import agents.distributed.learner as learner_module
from agents import DiscreteSAC
from agents.cli import main
from agents.distributed import DistributedLearner, plan_collectors
from agents.distributed.cluster import check_distributed, require_ray
from agents.loading import load_algorithm
from agents.training.checkpoints import read_checkpoint_state, recover_checkpoint
from agents.training.run_config import RunConfig
from agents.training.runner import train_run

ray = pytest.importorskip("ray")

TOTAL = 1200
KILL_RESTARTED_AT = 4  # batches received when collector 0 is killed (Ray restarts it)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module; the learner joins it (and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_files(tmp_path_factory.mktemp("tiny"))


def env_settings(tiny_files: tuple[Path, Path]) -> dict:
    """A toy task the tiny model learns in about a thousand decisions: VADER sentiment of the answer
    (its vocabulary has good, happy, kind ... and bad, sad, harm ...), with a small KL coefficient."""
    llm, prompts = tiny_files
    return dict(
        llm=str(llm),
        prompts=str(prompts),
        prompt_split="all",
        reward_model="sentiment",
        cost_model=None,
        max_new_tokens=12,
        top_k=8,
        devices=["cpu"],
        kl_coef=0.02,
    )


# 0.5 gradient steps of 64 per decision, as single-process training with these settings
AGENT = dict(learning_starts=256, batch_size=64, buffer_size=10_000, gradient_steps=4, train_freq=1)


def read_progress(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


class KillCollectors(BaseCallback):
    """Kill collector 0 (Ray restarts it) and, once it is back, collector 1 for good, so that collector 0
    collects the rest; note what the learner held when collector 0 died."""

    def __init__(self, learner: DistributedLearner, seen: dict) -> None:
        super().__init__()
        self.learner, self.seen = learner, seen

    def _on_step(self) -> bool:
        if self.n_calls == KILL_RESTARTED_AT:
            buffer = self.model.replay_buffer
            self.seen["kept"] = buffer.observations[: buffer.pos].copy()
            self.seen["rewards"] = buffer.rewards[: buffer.pos].copy()
            self.seen["delivered_before"] = list(self.learner.stats["collector_decisions"])
            ray.kill(self.learner.collectors[0], no_restart=False)
            deadline = time.monotonic() + 120
            while True:  # the learner waits here until collector 0 answers after its restart
                try:
                    ray.get(self.learner.collectors[0].ping.remote(), timeout=30)
                    break
                except ray.exceptions.RayActorError:
                    assert time.monotonic() < deadline, "collector 0 did not come back"
                    time.sleep(0.5)
            ray.kill(self.learner.collectors[1], no_restart=True)
            self.seen["killed_for_good"] = self.n_calls
        return True


@pytest.fixture(scope="module")
def distributed_run(cluster, tiny_files, tmp_path_factory):
    """Two collectors train the toy task for TOTAL decisions while they are killed."""
    out = tmp_path_factory.mktemp("distributed") / "run"
    config = RunConfig.from_sections(
        {
            "env": env_settings(tiny_files),
            "agent": AGENT,
            "train": dict(
                total_decisions=TOTAL,
                num_envs=8,
                checkpoint_every=800,
                log_every=400,
                progress_bar=False,
                collectors=2,
                collect_steps=4,
            ),
        }
    )
    seen: dict = {}
    real_learn = learner_module.DistributedLearner.learn

    def learn(self, model, decisions, logging_callback, callbacks=(), **kwargs):
        return real_learn(self, model, decisions, logging_callback, [*callbacks, KillCollectors(self, seen)], **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(learner_module.DistributedLearner, "learn", learn)
        assert train_run(config, out) == 0
    return out, seen


def test_two_collectors_learn_the_toy_task(distributed_run):
    out, _ = distributed_run
    rows = read_progress(out / "progress.csv")
    rewards = [float(row["mara/reward_score"]) for row in rows if row["mara/reward_score"]]
    # The reference's answers score about -0.1 (the warm-up); single-process training reaches ~0.6 by 1200 decisions
    assert rewards[0] < 0.2 and rewards[-1] > 0.35 and rewards[-1] > rewards[0] + 0.25, rewards
    for column in ("distributed/staleness_mean", "distributed/decisions_per_second", "distributed/replay_ratio"):
        assert rows[-1][column] and np.isfinite(float(rows[-1][column])), column
    for index in (0, 1):  # a row has a collector's speed when it delivered in that row's window
        speeds = [float(row[f"distributed/collector_{index}/decisions_per_second"] or "nan") for row in rows]
        assert any(np.isfinite(speeds)), index
    # gradient_steps 4 per vector step of 8 decisions, once past learning_starts
    assert float(rows[-1]["distributed/replay_ratio"]) == pytest.approx(0.5)
    assert float(rows[-1]["distributed/staleness_max"]) >= 0


def test_the_run_saves_a_model_that_loads_with_the_layout_recorded(distributed_run):
    out, _ = distributed_run
    model = load_algorithm(out / "model.zip")
    assert isinstance(model, DiscreteSAC) and model.num_timesteps == TOTAL
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == TOTAL and summary["episodes"] > 0
    state = read_checkpoint_state(out / "checkpoint")
    assert state["num_timesteps"] == state["replay_buffer_transitions"] == TOTAL, "every decision received is stored"
    buffer = np.load(out / "checkpoint" / "replay_buffer.npz")
    observations = buffer["array_observations"]
    actions, _ = model.predict(observations[:16, 0], deterministic=True)
    assert set(np.unique(actions)) <= {0, 1}

    config = RunConfig.from_file(out / "config.yaml")
    assert config.train.collectors == 2 and config.train.collector_gpus == 0.0, "the resolved layout"
    layout = json.loads((out / "cluster.json").read_text())
    assert [c["index"] for c in layout["collectors"]] == [0, 1]
    assert layout["cluster"]["nodes"] == 1 and layout["gpus_per_collector"] == 0.0
    assert all(c["llm_devices"] == ["cpu"] and c["node_ip"] for c in layout["collectors"])
    # each collector scores itself (train.scorer_placement "collector"): a built-in scorer, no model to place
    assert layout["scorer_placement"] == "collector" and all(c["scorers"] == {} for c in layout["collectors"])


def test_killed_collectors_lose_only_their_batches_in_flight(distributed_run):
    out, seen = distributed_run
    stats = json.loads((out / "cluster.json").read_text())["stats"]
    assert stats["lost_batches"] >= 2 and stats["retired"] == [1] and stats["restarts"][0] == 1, stats
    assert "killed_for_good" in seen
    assert sum(stats["collector_decisions"]) == stats["decisions"] == TOTAL
    # Collector 0 was restarted and delivered again; collector 1 stopped when it was killed for good
    assert stats["collector_decisions"][0] > seen["delivered_before"][0]
    # What the learner held when collector 0 died is still in the buffer, unchanged
    buffer = np.load(out / "checkpoint" / "replay_buffer.npz")
    kept = seen["kept"]
    assert len(kept) > 0
    np.testing.assert_array_equal(buffer["array_observations"][: len(kept)], kept)
    np.testing.assert_array_equal(buffer["array_rewards"][: len(kept)], seen["rewards"])
    rows = read_progress(out / "progress.csv")
    assert float(rows[-1]["distributed/collectors_alive"]) == 1


def test_a_shared_scorer_serves_the_collectors_and_is_recorded(cluster, tiny_files, tmp_path):
    from conftest import build_tokenizer
    from test_prefix_scoring import classifier_folder

    reward = classifier_folder(tmp_path / "reward", build_tokenizer(None), seed=3)  # a tiny causal score model
    env = env_settings(tiny_files) | dict(reward_model=str(reward), reward_shaping="potential")
    config = RunConfig.from_sections(
        {
            "env": env,
            "agent": dict(AGENT, learning_starts=32),
            "train": dict(
                total_decisions=96,
                num_envs=4,
                checkpoint_every=96,
                log_every=48,
                progress_bar=False,
                collectors=1,  # and the scorer: the module's cluster has 2 CPUs
                collect_steps=4,
                scorer_placement="shared",
            ),
        }
    )
    out = tmp_path / "run"
    assert train_run(config, out) == 0
    saved = RunConfig.from_file(out / "config.yaml")
    assert saved.train.scorer_placement == "shared" and saved.train.scorer_gpus == 0.0, "the resolved placement"
    layout = json.loads((out / "cluster.json").read_text())
    assert layout["scorer_placement"] == "shared" and layout["collectors"][0]["scorers"] == "shared"
    service = layout["scorer_service"]
    assert service["scorers"] == {"reward": {"model": str(reward), "device": "cpu", "dtype": "float32"}}
    assert service["pid"] != layout["collectors"][0]["pid"] and service["node_ip"]
    assert json.loads((out / "summary.json").read_text())["decisions"] == 96


def test_kill_and_resume_of_the_driver_continues_from_the_checkpoint(cluster, tiny_files, tmp_path, monkeypatch):
    out = tmp_path / "run"
    total = 192
    llm, prompts = tiny_files
    args = ["--out", str(out), "--collectors", "1", "--ray-address", cluster, "--collect-steps", "2"]
    args += ["--llm", str(llm), "--prompts", str(prompts), "--prompt-split", "all", "--reward-model", "length"]
    args += ["--cost-model", "none", "--max-new-tokens", "12", "--top-k", "8", "--devices", "cpu", "--num-envs", "4"]
    args += ["--total-decisions", str(total), "--checkpoint-every", "96", "--log-every", "64", "--no-progress"]
    args += ["--learning-starts", "64", "--batch-size", "32", "--buffer-size", "4000", "--ent-coef", "auto_0.1"]
    proc = _start(args, tmp_path / "train.log")
    _wait_for_checkpoint(proc, out, tmp_path / "train.log")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    checkpoint = recover_checkpoint(out)
    assert checkpoint is not None
    state = read_checkpoint_state(checkpoint)
    done = state["num_timesteps"]
    assert 0 < done < total, "killed mid-run"
    saved = load_algorithm(checkpoint / "model.zip")
    saved_buffer = {key: value.copy() for key, value in np.load(checkpoint / "replay_buffer.npz").items()}

    seen = {}
    real_learn = learner_module.DistributedLearner.learn

    def spying_learn(self, model, decisions, logging_callback, callbacks=(), **kwargs):
        buffer = model.replay_buffer
        seen.update(
            num_timesteps=model.num_timesteps,
            decisions=decisions,
            reset=kwargs["reset_num_timesteps"],
            episodes=logging_callback.episodes,
            observations=buffer.observations[: buffer.pos].copy(),
            log_ent_coef=model.log_ent_coef.detach().clone(),
            critic_optimizer=copy.deepcopy(model.critic.optimizer.state_dict()),
        )
        return real_learn(self, model, decisions, logging_callback, callbacks, **kwargs)

    monkeypatch.setattr(learner_module.DistributedLearner, "learn", spying_learn)
    assert main(["train", *args, "--resume", "--collectors", "2"]) == 0  # the cluster layout may change

    # Continued from the checkpoint: counters, replay buffer and optimisers as saved
    assert seen["num_timesteps"] == done and seen["reset"] is False and seen["decisions"] == total - done
    assert seen["episodes"] == state["episodes"]
    np.testing.assert_array_equal(seen["observations"], saved_buffer["array_observations"])
    assert torch.equal(seen["log_ent_coef"], saved.log_ent_coef.detach())
    expected = saved.critic.optimizer.state_dict()["state"]
    assert expected and seen["critic_optimizer"]["state"].keys() == expected.keys()
    for key, values in expected.items():
        for field, value in values.items():
            assert torch.equal(seen["critic_optimizer"]["state"][key][field], value), (key, field)

    final = load_algorithm(out / "model.zip")
    assert final.num_timesteps == total
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == total and summary["resumed"] is True and summary["episodes"] > state["episodes"]
    steps = [int(float(row["time/total_timesteps"])) for row in read_progress(out / "progress.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == total
    assert RunConfig.from_file(out / "config.yaml").train.collectors == 2


# ------------------------------------------------------------------------------------------ bad input


def test_collectors_zero_is_refused(capsys):
    assert main(["train", "--collectors", "0"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--collectors" in line and ">= 1" in line and "got 0" in line and "omit it" in line


def test_more_gpu_collectors_than_gpus_says_how_many_exist(cluster, tiny_files, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"needs 3 GPUs, but the Ray cluster has 2\. Use --collectors 2"):
        plan_collectors(3, None, {"GPU": 2.0, "CPU": 16.0})
    assert plan_collectors(4, 0.5, {"GPU": 2.0, "CPU": 16.0}).gpus == 0.5
    assert plan_collectors(2, None, {"CPU": 2.0}).gpus == 0.0, "no GPUs: CPU collectors"
    with pytest.raises(ValueError, match=r"needs 3 CPUs .* has 2"):
        plan_collectors(3, None, {"CPU": 2.0})
    # On the module's cluster (no GPUs), through the command line: nothing is started or written
    out = tmp_path / "run"
    llm, _ = tiny_files
    code = main(
        ["train", "--out", str(out), "--collectors", "2", "--collector-gpus", "1", "--llm", str(llm), "--no-progress"]
    )
    assert code == 2 and not out.exists()
    line = one_line_error(capsys.readouterr().err)
    assert "needs 2 GPUs, but the Ray cluster has 0" in line and "--collector-gpus 0" in line


def test_an_unreachable_ray_address_is_named(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--collectors", "2", "--ray-address", "127.0.0.1:1"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--ray-address 127.0.0.1:1" in line and "ray start --head" in line and not out.exists()


def test_ray_missing_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'mara-rl\[ray\]'"):
        require_ray()
    assert main(["train", "--out", str(tmp_path / "run"), "--collectors", "1"]) == 2
    assert "pip install 'mara-rl[ray]'" in one_line_error(capsys.readouterr().err)


def test_a_collector_whose_llm_fails_to_load_reports_its_own_error(cluster, tiny_files, tmp_path, capsys):
    broken = tmp_path / "broken-llm"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", ')  # cut short
    _, prompts = tiny_files
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--collectors", "1", "--llm", str(broken), "--prompts", str(prompts)]
    args += ["--prompt-split", "all", "--reward-model", "length", "--cost-model", "none", "--devices", "cpu"]
    assert main([*args, "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "collector 0" in line and "could not build its environment" in line and str(broken) in line, line
    assert "RayActorError" not in line and "ActorDiedError" not in line and not out.exists()


def test_settings_distributed_training_cannot_honour_are_refused():
    for sections, message in (
        ({"agent": {"algo": "ppo"}, "train": {"collectors": 2}}, r"ppo learns only from fresh rollouts"),
        ({"agent": {"n_steps": 3}, "train": {"collectors": 2}}, r"n_steps > 1"),
    ):
        with pytest.raises(ValueError, match=message):
            check_distributed(RunConfig.from_sections(sections))
