"""One warm-up rule and one KL bookkeeping for single-process training and the distributed collectors."""

from __future__ import annotations

import ast
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.accept import EpisodeKL, accept_probabilities, behaviour_accept_probabilities, uniform_warmup
from agents.sac_discrete import DiscreteSAC

ROOT = Path(__file__).resolve().parent.parent


def _venv() -> DummyVecEnv:
    return DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)


def test_uniform_warmup_is_sb3s_off_policy_warmup_only() -> None:
    venv = _venv()
    dqn = DQN("MlpPolicy", venv, learning_starts=100, seed=0)
    assert uniform_warmup(dqn, 99) and not uniform_warmup(dqn, 100)
    assert not uniform_warmup(PPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=0), 0)  # on-policy: never
    sac = DiscreteSAC("MlpPolicy", venv, learning_starts=100, buffer_size=200, seed=0)
    assert uniform_warmup(sac, 0)
    on_policy = DiscreteSAC("MlpPolicy", venv, learning_starts=100, buffer_size=200, warmup="policy", seed=0)
    assert not uniform_warmup(on_policy, 0)  # warms up on its own policy: the KL estimate must use that policy


def test_episode_kl_sums_the_behaviour_policys_terms_and_restarts_per_episode() -> None:
    venv = _venv()
    model = DQN("MlpPolicy", venv, learning_starts=4, seed=0)
    model.exploration_rate = 0.2  # what learn's schedule would set: every action has a probability > 0
    obs = venv.reset()
    kl = EpisodeKL(2)
    ref = [{"ref_logp": np.log(0.25)}, {"ref_logp": np.log(0.5)}]
    kl.step(model, obs, np.array([1, 0]), ref, timesteps=0)  # warm-up: p = 0.5 for either action
    np.testing.assert_allclose(kl.totals, [np.log(0.5) - np.log(0.25), 0.0])
    kl.step(model, obs, np.array([1, 1]), ref, timesteps=4)  # after it: epsilon-greedy
    p = accept_probabilities(model, obs, behaviour=True)
    np.testing.assert_allclose(behaviour_accept_probabilities(model, obs, 4), p)
    expected = np.array([np.log(0.5) - np.log(0.25), 0.0]) + np.log(p) - np.log([0.25, 0.5])
    np.testing.assert_allclose(kl.totals, expected)
    assert np.isclose(kl.finish(0), expected[0])
    assert kl.totals[0] == 0.0 and np.isclose(kl.totals[1], expected[1])


def test_training_and_collectors_share_the_bookkeeping() -> None:
    # neither keeps a warm-up rule or a KL sum of its own
    for path in ("agents/training/callbacks.py", "agents/distributed/collector.py"):
        source = (ROOT / path).read_text(encoding="utf-8")
        names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
        assert "EpisodeKL" in names and "kl_increment" not in names, path
        assert "learning_starts <" not in source and "< model.learning_starts" not in source, path
