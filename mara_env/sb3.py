"""Present a Gymnasium ``VectorEnv`` (such as MARA-v0's) as a Stable-Baselines3 ``VecEnv``.

SB3 algorithms step a ``VecEnv``: actions in, ``(obs, rewards, dones, infos)`` out, with one info
dict per environment, ``info["terminal_observation"]`` holding the last observation of a finished
episode and ``info["TimeLimit.truncated"]`` marking truncations. Gymnasium's ``SAME_STEP``
autoreset carries the same facts as ``final_obs`` / ``final_info``, so the translation is exact.

Example::

    >>> import gymnasium as gym
    >>> from stable_baselines3.common.vec_env import VecMonitor
    >>> import mara_env
    >>> from mara_env.sb3 import SB3VecEnv
    >>> venv = VecMonitor(SB3VecEnv(gym.make_vec("MARA-v0", num_envs=8)))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn


def _unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's dict of arrays (with ``_key`` masks) -> one dict per environment."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        nested = _unbatch_infos(value, num_envs) if isinstance(value, dict) else None
        for i in np.flatnonzero(mask):
            if nested is not None:
                out[i][key] = nested[i]
            else:
                item = value[i]
                out[i][key] = item.item() if isinstance(item, np.generic) else item
    return out


class SB3VecEnv(VecEnv):
    """A Stable-Baselines3 ``VecEnv`` over a Gymnasium ``VectorEnv`` with ``SAME_STEP`` autoreset.

    Besides SB3's ``VecEnv`` interface it keeps two public attributes for callbacks, which see a step only
    after it (SB3 keeps the observations its actions were chosen on to itself): :attr:`observations`,
    what the latest ``reset`` or step returned (the next actions are taken on them), and :attr:`acted_on`,
    the observations the latest step's actions were taken on.

    :param venv: the vector environment, e.g. ``gym.make_vec("MARA-v0", num_envs=8)``.
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode not in (AutoresetMode.SAME_STEP, AutoresetMode.SAME_STEP.value):
            raise ValueError(
                f"SB3VecEnv needs a vector env with SAME_STEP autoreset (SB3's semantics); this one has {mode!r}. "
                "Create it with gym.make_vec(..., vector_kwargs={'autoreset_mode': AutoresetMode.SAME_STEP})."
            )
        self.venv = venv
        self.render_mode = getattr(venv, "render_mode", None)
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        #: The observations the latest ``reset`` or step returned (``None`` before the first reset).
        self.observations: np.ndarray | None = None
        #: The observations the latest step's actions were taken on (``None`` before the first step).
        self.acted_on: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, infos = self.venv.reset(seed=seeds, options=self._options[0] if self._options else None)
        self.reset_infos = _unbatch_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        self.observations = obs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.acted_on = self.observations

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = terminated | truncated
        out = _unbatch_infos(infos, self.num_envs)
        for i in np.flatnonzero(dones):
            final = out[i].pop("final_info", {})
            final_obs = out[i].pop("final_obs")
            # SB3 reads the finished episode's info; the next episode's first info is dropped here
            # as SB3 would (it is in reset_infos for the first episode only).
            out[i] = {
                **final,
                "terminal_observation": final_obs,
                "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
            }
        self.observations = obs
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _get_indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
