"""The shared scorer (agents.distributed.scorer_service): one set of score models scoring for several collectors.

Run in this process here (the Ray path is in test_distributed.py): two environments, as two collectors would
build them, score through one :class:`ScorerService`, and their rewards equal those of an environment that
loads the same causal score model itself, shaping included (incremental scoring in the service).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import build_tokenizer
from test_prefix_scoring import classifier_folder

from agents.distributed.cluster import CollectorPlan, check_distributed, plan_scorer_gpus
from agents.distributed.scorer_service import RemoteScore, ScorerService, model_roles, shared_scorer_settings
from agents.training.run_config import RunConfig, TrainSettings
from mara_env.prefix_scoring import IncrementalScorer


def test_two_collectors_scoring_through_one_service_get_the_rewards_of_their_own_models(tiny_kwargs, tmp_path: Path):
    folder = classifier_folder(tmp_path / "reward", build_tokenizer(None), seed=5)
    settings = dict(tiny_kwargs, max_new_tokens=10, reward_model=str(folder), cost_model=None)
    settings |= dict(reward_shaping="potential", scorer_devices="cpu", scorer_dtype="float32")
    rows = 3
    service = ScorerService(settings, num_rows=2 * rows)
    assert model_roles(settings) == ["reward"], "a built-in or absent cost scorer stays in the collector"
    envs = {
        "own": gym.make_vec("MARA-v1", num_envs=rows, **settings),
        "shared 0": gym.make_vec("MARA-v1", num_envs=rows, **shared_scorer_settings(settings, service, 0)),
        "shared 1": gym.make_vec("MARA-v1", num_envs=rows, **shared_scorer_settings(settings, service, rows)),
    }
    assert isinstance(envs["shared 1"].unwrapped.config.reward_model, RemoteScore)
    assert envs["shared 0"].unwrapped.scorer_placement == {}, "no model of its own"
    results = {name: [] for name in envs}
    infos = {name: env.reset(seed=0)[1] for name, env in envs.items()}
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(40):
        actions = (rng.random(rows) < infos["own"]["ref_accept_prob"]).astype(np.int64)
        for name, env in envs.items():  # the same decisions, the two "collectors" taking turns at the service
            _, reward, terminated, _, infos[name] = env.step(actions)
            results[name].append((reward, infos[name]["shaping_reward"], infos[name]["potential"]))
        ended += int(terminated.sum())
    for env in envs.values():
        env.close()
    own = np.array(results["own"])
    for name in ("shared 0", "shared 1"):
        np.testing.assert_allclose(np.array(results[name]), own, rtol=1e-4, atol=1e-4, err_msg=name)
    assert ended > 0 and np.abs(own[:, 1]).max() > 1e-3, "episodes ended and shaping paid something"
    # the service scored prefixes incrementally, each collector's rows in their own slots
    prefix = service.prefix["reward"]
    assert isinstance(prefix, IncrementalScorer) and 0 < prefix.tokens_run < 0.5 * prefix.tokens_full
    assert service.describe()["scorers"]["reward"] == {"model": str(folder), "device": "cpu", "dtype": "float32"}


def test_shared_placement_settings_are_checked():
    with pytest.raises(ValueError, match=r"scorer_placement \(--scorer-placement\) must be one of collector, shared"):
        RunConfig.from_sections({"train": {"scorer_placement": "everywhere"}})
    with pytest.raises(ValueError, match=r"scorer_gpus \(--scorer-gpus\) must be >= 0 .* got -1"):
        RunConfig.from_sections({"train": {"scorer_gpus": -1}})
    env = {"reward_model": "sentiment", "cost_model": None}
    shared_builtin = RunConfig.from_sections({"env": env, "train": {"collectors": 2, "scorer_placement": "shared"}})
    with pytest.raises(ValueError, match=r"built-in scorers or none, which each collector runs itself"):
        check_distributed(shared_builtin)
    assert TrainSettings.__dataclass_fields__["scorer_placement"].default == "collector"
    with pytest.raises(ValueError, match="role must be one of reward, cost"):
        RemoteScore(None, "bonus")


def test_the_shared_scorer_is_fitted_beside_the_collectors():
    # 2 collectors of 1 GPU and 1 CPU each on 3 GPUs and 4 CPUs: one GPU is left for the scorer
    plan = CollectorPlan(collectors=2, gpus=1.0, cpus=1.0, cluster_gpus=3.0, cluster_cpus=4.0)
    assert plan_scorer_gpus(None, plan) == 1.0 and plan_scorer_gpus(0.5, plan) == 0.5
    no_gpu_left = CollectorPlan(collectors=2, gpus=1.0, cpus=1.0, cluster_gpus=2.0, cluster_cpus=4.0)
    assert plan_scorer_gpus(None, no_gpu_left) == 0.0, "none left: the scorer runs on a CPU"
    with pytest.raises(ValueError, match=r"--scorer-gpus 1 .* leave 0 after --collectors 2 .* --scorer-placement"):
        plan_scorer_gpus(1.0, no_gpu_left)
    all_cpus = CollectorPlan(collectors=2, gpus=0.0, cpus=1.0, cluster_gpus=0.0, cluster_cpus=2.0)
    with pytest.raises(ValueError, match=r"needs 1 CPU beside the 2 of --collectors 2, .* Use --collectors 1"):
        plan_scorer_gpus(None, all_cpus)


def test_a_service_scorer_is_named_in_errors(tiny_kwargs, tmp_path: Path):
    folder = classifier_folder(tmp_path / "reward", build_tokenizer(None), seed=1)
    service = ScorerService({"reward_model": str(folder), "cost_model": "length", "scorer_devices": "cpu"}, 2)
    assert list(service.scorers) == ["reward"]
    scores = RemoteScore(service, "reward")(["Hi", "Hi"], ["Hello there", "Bye"])
    assert scores.shape == (2,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert service.scorers["reward"].fn.dtype == torch.float32, "auto: float32 on a CPU"
