"""The vector environment every MARA training steps, built in one place.

Both the single-process runner (:mod:`agents.training.runner`) and the Ray collectors
(:mod:`agents.distributed.collector`) build their environment here, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecMonitor

import mara_env  # noqa: F401  (registers the ids)
from mara_env.sb3 import SB3VecEnv

__all__ = ["make_env"]


def make_env(env_id: str, num_envs: int, **env_kwargs: Any) -> VecMonitor:
    """``VecMonitor(SB3VecEnv(gym.make_vec(env_id, num_envs, **env_kwargs)))``: what every MARA training steps.

    :param env_id: ``"MARA-v1"`` or ``"MARA-v0"``.
    :param num_envs: sub-environments batched through the LLM.
    :param env_kwargs: :class:`mara_env.MARAConfig` settings (``llm`` may be loaded replicas).
    """
    return VecMonitor(SB3VecEnv(gym.make_vec(env_id, num_envs=num_envs, **env_kwargs)))
