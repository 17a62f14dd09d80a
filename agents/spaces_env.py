"""A ``VecEnv`` that describes environments stepped elsewhere: their spaces and settings, never stepped.

A Stable-Baselines3 algorithm is built on a ``VecEnv``. Two places build one without stepping it:

- distributed training (:mod:`agents.distributed`): the learner's process loads no LLM, so its algorithm
  is built on this description of the collectors' vector envs: the same observation and action spaces,
  number of sub-environments (so the replay buffer has the layout of single-process training, and
  checkpoints move between the two), and the environment's :class:`~mara_env.contract.AgentContract` that
  :func:`agents.registry.make_algorithm` reads (``kl_coef``, the shaping discount, the observation layout
  that anchors the policy to the reference);
- :func:`agents.agent_file.load_agent_file`, which builds a saved agent through the algorithm's public
  constructor on the spaces it was saved with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from mara_env.contract import AgentContract

__all__ = ["SpacesOnlyVecEnv"]


class SpacesOnlyVecEnv(VecEnv):
    """A ``VecEnv`` that describes environments stepped elsewhere.

    :param num_envs: sub-environments of each collector's vector env.
    :param observation_space: one sub-environment's observation space.
    :param action_space: one sub-environment's action space.
    :param agent_contract: what the collectors' environments publish for agents (``None``: not MARA's).
    """

    def __init__(
        self,
        num_envs: int,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        agent_contract: AgentContract | None = None,
    ) -> None:
        self.render_mode = None  # nothing to render here (SB3 warns when the attribute is missing)
        super().__init__(num_envs, observation_space, action_space)
        self.agent_contract = agent_contract

    def reset(self) -> VecEnvObs:
        # SB3's learn setup resets once; the observations that matter come from the collectors
        shape = (self.num_envs, *(self.observation_space.shape or ()))
        return np.zeros(shape, dtype=self.observation_space.dtype)

    def step_async(self, actions: np.ndarray) -> None:
        raise RuntimeError(
            "This environment only describes the collectors' environments (agents.distributed): it cannot be "
            "stepped. Give the model a real environment (model.set_env), or train with collectors through "
            "agents.distributed.DistributedLearner.learn."
        )

    def step_wait(self) -> VecEnvStepReturn:
        raise RuntimeError("SpacesOnlyVecEnv cannot be stepped (see step_async).")

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        raise RuntimeError(f"SpacesOnlyVecEnv has no environments to call {method_name}() on.")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)
