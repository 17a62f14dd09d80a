"""A collector: one Ray actor with its own LLM replica(s), MARA vector env and copy of the policy.

The learner (:mod:`agents.distributed.learner`) creates collectors with
``ray.remote(Collector).options(num_cpus=..., num_gpus=..., max_restarts=...)``; the class itself
is plain Python and works without Ray too. Each :meth:`Collector.collect` call runs ``steps``
vector steps with the policy version it is given and returns a
:class:`~agents.distributed.batch.TransitionBatch`.

A collector that cannot build its environment (an LLM that fails to load, a scorer that is
missing) does not crash its actor: :meth:`Collector.describe` returns the error, so the learner
reports the collector's own message rather than Ray's traceback of a dead actor.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from agents.accept import EpisodeKL, behaviour_actions
from agents.distributed.batch import TransitionBatch
from agents.distributed.policy_sync import PolicySnapshot, apply_behaviour_settings, load_snapshot
from agents.distributed.ray_node import gpu_ids, node
from agents.distributed.scorer_service import shared_scorer_settings
from agents.errors import INPUT_ERRORS, describe
from agents.registry import make_algorithm
from agents.training.callbacks import EPISODE_METRICS
from agents.training.environment import make_env
from agents.training.run_config import RunConfig

__all__ = ["Collector", "CollectorError"]


class CollectorError(RuntimeError):
    """A collector could not build its environment; :meth:`Collector.collect` then raises this."""


class Collector:
    """Collect MARA transitions with a copy of the learner's policy.

    :param config: the run's settings; the collector builds ``config.env_id`` with ``config.env_kwargs``
        and ``config.train.num_envs`` sub-environments, and ``config.agent.algo`` for its policy.
    :param index: the collector's number (0 ... collectors - 1), reported with its batches.
    :param threads: torch threads of this process (the CPUs Ray gave the actor).
    :param scorer_service: with ``train.scorer_placement="shared"``, the run's
        :class:`~agents.distributed.scorer_service.ScorerService` actor, which scores for this collector in place
        of score models of its own.
    """

    def __init__(self, config: RunConfig, index: int, threads: int = 1, scorer_service: Any = None) -> None:
        self.index = int(index)
        self.scorer_service = scorer_service
        self._version = -1
        self._obs: np.ndarray | None = None
        self._episode_kl = EpisodeKL(0)
        self._error: BaseException | None = None
        self.venv: Any = None
        self.model: Any = None
        self.llm_devices: list[str] = []
        try:
            self._make(config, threads)
        except Exception as error:  # reported by describe(), the learner says it in one line
            self._error = error
            if self.venv is not None:
                self.venv.close()

    def _make(self, config: RunConfig, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        env_kwargs = dict(config.env_kwargs)
        gpus = gpu_ids()
        if gpus:
            # Ray made the actor's GPUs the only visible ones: cuda:0 ... are its own
            env_kwargs["devices"] = [f"cuda:{i}" for i in range(len(gpus))]
        self.llm_devices = [str(d) for d in (env_kwargs.get("devices") or ["default"])]
        if self.scorer_service is not None:  # train.scorer_placement "shared": the models are the service's
            env_kwargs = shared_scorer_settings(env_kwargs, self.scorer_service, self.index * config.train.num_envs)
        self.venv = make_env(config.env_id, config.train.num_envs, **env_kwargs)
        hyperparameters = dict(config.agent.hyperparameters)
        # The policy copy acts; it never trains: a replay buffer of one slot per env, not the learner's
        hyperparameters["buffer_size"] = config.train.num_envs
        self.model = make_algorithm(
            config.agent.algo,
            self.venv,
            seed=None if config.train.seed is None else config.train.seed + self.index,
            kl_coef=config.env["kl_coef"],
            device=config.train.device,
            **hyperparameters,
        )
        self.model.policy.set_training_mode(False)

    def describe(self) -> dict[str, Any]:
        """Where the collector runs and what its environment is, or ``{"error": ..., "input": ...}``.

        ``input`` is whether the error is of the kinds that mean a wrong setting (:data:`agents.errors.INPUT_ERRORS`).
        """
        where = {"index": self.index, "pid": os.getpid(), **node()}
        if self._error is not None:
            return {**where, "error": describe(self._error), "input": isinstance(self._error, INPUT_ERRORS)}
        return {
            **where,
            "gpu_ids": [str(i) for i in gpu_ids()],
            "llm_devices": self.llm_devices,
            "scorers": "shared" if self.scorer_service is not None else self.venv.get_attr("scorer_placement")[0],
            "policy_device": str(self.model.device),
            "num_envs": self.venv.num_envs,
            "observation_space": self.venv.observation_space,
            "action_space": self.venv.action_space,
            "config": self.venv.get_attr("config")[0],
            "agent_contract": self.venv.get_attr("agent_contract")[0],
        }

    def reset(self, seed: int | None) -> None:
        """Start new episodes in every sub-environment, seeded with ``seed`` (``seed + i`` for sub-env ``i``).

        The first reset loads what the environment loads lazily (prompts, the first LLM forwards), so the
        learner calls it before training starts, as SB3 resets its env before ``learn`` starts counting.
        """
        if self._error is not None:
            raise CollectorError(f"collector {self.index} has no environment: {describe(self._error)}")
        self.venv.seed(seed)
        self._obs = self.venv.reset()
        self._episode_kl = EpisodeKL(self.venv.num_envs)

    def ping(self) -> int:
        """The process id: answers once the actor is up (after a restart, once it is back)."""
        return os.getpid()

    def collect(
        self, steps: int, settings: dict[str, Any], version: int, snapshot: list[Any], seed: int | None
    ) -> TransitionBatch:
        """Run ``steps`` vector steps with policy ``version`` and return them.

        :param steps: vector steps (``steps * num_envs`` decisions).
        :param settings: :func:`~agents.distributed.policy_sync.behaviour_settings` of the learner.
        :param version: the version of ``snapshot``; its weights are fetched only when it differs
            from the version the collector holds.
        :param snapshot: ``[ref]``, a Ray object reference to a
            :class:`~agents.distributed.policy_sync.PolicySnapshot` (wrapped in a list so that Ray
            does not fetch it for every call), or ``[snapshot]`` itself.
        :param seed: seed of the episodes if the environment was not started yet (after a restart).
        """
        if self._error is not None:
            raise CollectorError(f"collector {self.index} has no environment: {describe(self._error)}")
        if version != self._version:
            value = snapshot[0]
            if not isinstance(value, PolicySnapshot):
                import ray

                value = ray.get(value)
            load_snapshot(self.model, value)
            self._version = version
        apply_behaviour_settings(self.model, settings)
        model, venv = self.model, self.venv
        n = venv.num_envs
        if self._obs is None:
            self.reset(seed)

        shape = (steps, n, *self._obs.shape[1:])
        observations = np.empty(shape, dtype=np.float16)
        next_observations = np.empty(shape, dtype=np.float16)
        actions = np.empty((steps, n, 1), dtype=np.int64)
        rewards = np.empty((steps, n), dtype=np.float32)
        dones = np.empty((steps, n), dtype=bool)
        timeouts = np.empty((steps, n), dtype=bool)
        episodes: list[tuple[dict[str, Any], float]] = []
        start = time.perf_counter()
        for t in range(steps):
            obs = self._obs
            # single-process training's warm-up and exploration (agents.accept), through SB3's public predict
            action = behaviour_actions(model, obs, model.num_timesteps)
            new_obs, reward, done, infos = venv.step(action)
            # the KL estimate of single-process training (MARALoggingCallback), behaviour policy and warm-up alike
            self._episode_kl.step(model, obs, action, infos, model.num_timesteps)

            next_obs = np.array(new_obs, copy=True)
            for i in np.flatnonzero(done):
                info = infos[i]
                if info.get("terminal_observation") is not None:
                    next_obs[i] = info["terminal_observation"]
                episodes.append((_episode_record(info), self._episode_kl.finish(i)))
            observations[t] = obs
            next_observations[t] = next_obs
            actions[t] = np.asarray(action).reshape(n, 1)  # Discrete(2): what SB3 stores as is
            rewards[t] = reward
            dones[t] = done
            timeouts[t] = [bool(info.get("TimeLimit.truncated", False)) for info in infos]
            model.num_timesteps += n  # the warm-up and exploration schedules read it
            self._obs = new_obs
        return TransitionBatch(
            collector=self.index,
            policy_version=self._version,
            observations=observations,
            next_observations=next_observations,
            actions=actions,
            rewards=rewards,
            dones=dones,
            timeouts=timeouts,
            episodes=episodes,
            seconds=time.perf_counter() - start,
        )

    def close(self) -> None:
        """Release the environment (its LLM replicas)."""
        if self.venv is not None:
            self.venv.close()


def _episode_record(info: dict[str, Any]) -> dict[str, Any]:
    """The part of an end-of-episode info the learner logs: the MARA results and VecMonitor's ``episode``."""
    record = {key: info[key] for key in EPISODE_METRICS if info.get(key) is not None}
    if "episode" in info:
        record["episode"] = dict(info["episode"])
    return record
