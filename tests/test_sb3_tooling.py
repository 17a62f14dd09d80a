"""Where SB3 and RL Zoo users start: ``make_vec_env``, render modes, ``VecNormalize``, loading with the wrong class."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import mara_env
from agents import DiscreteSAC
from agents.registry import make_algorithm
from mara_env.rendering import FRAME_SHAPE, text_frame
from mara_env.sb3 import SB3VecEnv

FIXTURES = Path(__file__).parent / "fixtures"


def test_make_vec_env_steps_with_ppo(tiny_kwargs):
    # RL Zoo and most SB3 scripts build environments this way; it asks for render_mode="rgb_array"
    venv = make_vec_env("MARA-v1", n_envs=2, seed=0, env_kwargs=tiny_kwargs)
    assert venv.num_envs == 2 and venv.render_mode == "rgb_array"
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.learn(64)
    assert model.num_timesteps == 64
    frames = venv.get_images()
    assert [f.shape for f in frames] == [(*FRAME_SHAPE, 3)] * 2 and frames[0].dtype == np.uint8
    assert (frames[0] < 128).any(), "the frame shows the conversation's text"
    # the registry's anchored PPO on the same env: the layout is read through the Monitor wrappers
    anchored = make_algorithm("ppo", venv, seed=0, n_steps=8, batch_size=16, n_epochs=1)
    assert type(anchored.policy).__name__ == "AnchoredActorCriticPolicy"
    venv.close()


def test_rgb_array_renders_the_answer_so_far(tiny_kwargs):
    env = gym.make("MARA-v1", render_mode="rgb_array", **tiny_kwargs)
    env.reset(seed=0)
    first = env.render()
    for _ in range(6):
        env.step(1)
    later = env.render()
    assert first.shape == later.shape == (*FRAME_SHAPE, 3)
    assert not np.array_equal(first, later), "the frame follows the answer"
    envs = gym.make_vec("MARA-v1", num_envs=2, render_mode="rgb_array", **tiny_kwargs)
    envs.reset(seed=0)
    assert [f.shape for f in envs.render()] == [(*FRAME_SHAPE, 3)] * 2
    with pytest.raises(ValueError, match="'ansi' or 'rgb_array'"):
        mara_env.TokenAcceptRejectEnv(render_mode="video", **tiny_kwargs)


def test_text_frame_keeps_the_end_of_a_long_text():
    long = "\n".join(f"line {i}" for i in range(200))
    assert not np.array_equal(text_frame(long), text_frame(long.replace("line 199", "LINE XXX")))
    assert np.array_equal(text_frame(long), text_frame("line 0 changed\n" + long.split("\n", 1)[1]))


def test_vec_normalize_refused_with_anchored_policy_and_allowed_without_obs_norm(tiny_kwargs):
    base = VecMonitor(SB3VecEnv(gym.make_vec("MARA-v1", num_envs=2, **tiny_kwargs)))
    with pytest.raises(ValueError, match="norm_obs=False"):
        make_algorithm("sac-discrete", VecNormalize(base), seed=0)
    with pytest.raises(ValueError, match="norm_obs=False"):
        DiscreteSAC("MlpPolicy", VecNormalize(base), policy_kwargs=dict(reference_logits=(32, 33)))
    # rewards-only normalisation keeps the anchor; with ent_coef tied to kl_coef it is warned about
    with pytest.warns(UserWarning, match="norm_reward"):
        model = make_algorithm(
            "sac-discrete", VecNormalize(base, norm_obs=False), seed=0, learning_starts=8, batch_size=8, buffer_size=64
        )
    model.learn(16)
    assert model.policy.actor.reference is not None


def test_loading_an_agent_with_the_wrong_class_names_the_right_loader():
    with pytest.raises(TypeError, match="load_algorithm"):
        PPO.load(FIXTURES / "sac-discrete-v1-tiny.zip")
    with pytest.raises(TypeError, match="load_algorithm"):
        DiscreteSAC.load(FIXTURES / "ppo-v1-tiny.zip")
