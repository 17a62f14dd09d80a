"""A shared scorer: the run's reward and cost models in one Ray actor, scoring for every collector.

With ``train.scorer_placement = "collector"`` (the default) each collector loads its own score models
beside its LLM (``env.scorer_devices``; unset: the collector's own device, its GPU when Ray gave it one).
With ``"shared"`` the learner starts one :class:`ScorerService` actor (``train.scorer_gpus`` GPUs) that
loads them once, and each collector's environment scores through :class:`RemoteScore` callables in their
place: the terminal scores of finished answers, and under ``reward_shaping="potential"`` the prefixes of
growing answers, which the service scores incrementally (:class:`mara_env.prefix_scoring.IncrementalScorer`
over ``collectors x num_envs`` rows, collector ``i`` owning rows ``i * num_envs ...``), so shaping costs
the service about one token per grown row per step, as it would in the collector.

Only scorers that are models move; built-in scorers and callables are cheap and stay in the collectors.
The service also runs in this process (tests, one machine): :class:`RemoteScore` calls a plain
:class:`ScorerService` directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agents.distributed.ray_node import gpu_ids, node
from mara_env.prefix_scoring import PrefixScorer, incremental_scorer
from mara_env.score_models import split_scorer_devices
from mara_env.scoring import BUILTIN_SCORERS, Scorer, make_scorer

__all__ = ["ROLES", "RemoteScore", "ScorerService", "model_roles", "shared_scorer_settings"]

#: The env settings of the two scorers, by role.
ROLES = {"reward": "reward_model", "cost": "cost_model"}


def model_roles(env_kwargs: Mapping[str, Any]) -> list[str]:
    """The roles whose scorer is a model (a folder or a hub id), the ones a shared service would hold."""
    roles = []
    for role, key in ROLES.items():
        spec = env_kwargs.get(key)
        if isinstance(spec, str | os.PathLike) and os.fspath(spec).strip().lower() not in BUILTIN_SCORERS:
            roles.append(role)
    return roles


class ScorerService:
    """The reward and cost models of a run, loaded once, scoring for every collector's rows.

    :param env_kwargs: the run's environment settings (``reward_model``, ``cost_model``, ``scorer_devices``,
        ``scorer_dtype``); only the scorers :func:`model_roles` names are loaded.
    :param num_rows: the rows of all collectors (``collectors * num_envs``), each with its own cache.
    :param threads: torch threads of this process.
    """

    def __init__(self, env_kwargs: Mapping[str, Any], num_rows: int, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.num_rows = int(num_rows)
        self.scorers: dict[str, Scorer] = {}
        self.prefix: dict[str, PrefixScorer | None] = {}
        devices = dict(zip(ROLES, split_scorer_devices(_devices(env_kwargs.get("scorer_devices")))))
        for role in model_roles(env_kwargs):
            self.scorers[role] = make_scorer(
                env_kwargs[ROLES[role]], role=role, device=devices[role], dtype=env_kwargs.get("scorer_dtype", "auto")
            )
            self.prefix[role] = None  # made on first use: only shaped runs score prefixes

    def score(self, role: str, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The ``role`` scorer's checked scores of finished answers."""
        return self.scorers[role](list(prompts), list(responses))

    def prefix_scores(
        self, role: str, rows: Sequence[int], prompts: Sequence[str], responses: Sequence[str]
    ) -> np.ndarray:
        """The ``role`` scorer's checked scores of growing answers of ``rows`` (service-wide row numbers):
        incremental for a causal score model, in full otherwise."""
        if self.prefix[role] is None:
            self.prefix[role] = incremental_scorer(self.scorers[role], self.num_rows) or _FullPrefix(self.scorers[role])
        return self.prefix[role](list(rows), list(prompts), list(responses))

    def describe(self) -> dict[str, Any]:
        """Where the service runs and, by role, each model's device and dtype."""
        placed = {}
        for role, scorer in self.scorers.items():
            fn = scorer.fn
            placed[role] = {"model": scorer.name, "device": str(fn.device), "dtype": str(fn.dtype).split(".")[-1]}
        return {**node(), "pid": os.getpid(), "gpu_ids": [str(i) for i in gpu_ids()], "scorers": placed}

    def ping(self) -> int:
        return os.getpid()


class _FullPrefix:
    """Prefix scoring of a scorer that cannot keep caches: every prefix in full."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def __call__(self, rows: Sequence[int], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.scorer(prompts, responses)


class RemoteScore:
    """A score function that asks a :class:`ScorerService` (a Ray actor, or an object in this process).

    Given to a collector's environment as its ``reward_model`` or ``cost_model``: terminal scores come from
    :meth:`__call__`, and the environment's shaping potential takes :meth:`prefix_scorer`, so growing
    answers are scored incrementally by the service.

    :param service: the service (a Ray actor handle, or a :class:`ScorerService`).
    :param role: ``"reward"`` or ``"cost"``.
    :param row_offset: the service's row number of this collector's row 0 (``collector index * num_envs``).
    """

    def __init__(self, service: Any, role: str, row_offset: int = 0) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}.")
        self.service = service
        self.role = role
        self.row_offset = int(row_offset)
        self.__qualname__ = f"shared {role} model"  # the name Scorer shows in errors

    def _call(self, method: str, *args: Any) -> Any:
        target = getattr(self.service, method)
        if hasattr(target, "remote"):  # a Ray actor's method
            import ray

            return ray.get(target.remote(*args))
        return target(*args)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self._call("score", self.role, list(prompts), list(responses))

    def prefix_scorer(self, num_rows: int) -> PrefixScorer:
        """Prefix scoring of this collector's ``num_rows`` rows by the service (a :class:`PrefixScorer`)."""
        offset, call, role = self.row_offset, self._call, self.role

        def prefix_scores(rows: Sequence[int], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
            shifted = [offset + int(r) for r in rows]
            return call("prefix_scores", role, shifted, list(prompts), list(responses))

        return prefix_scores


def shared_scorer_settings(env_kwargs: Mapping[str, Any], service: Any, row_offset: int) -> dict[str, Any]:
    """``env_kwargs`` with each model scorer replaced by a :class:`RemoteScore` of ``service``."""
    settings = dict(env_kwargs)
    for role in model_roles(env_kwargs):
        settings[ROLES[role]] = RemoteScore(service, role, row_offset)
    return settings


def _devices(setting: Any) -> Any:
    """The service's ``scorer_devices``: its Ray GPUs (``cuda:0``, and ``cuda:1`` for the cost model when it has
    two), else the run's ``scorer_devices``, else the CPU."""
    gpus = gpu_ids()
    if gpus:
        return [f"cuda:{i}" for i in range(min(len(gpus), 2))]
    return "cpu" if setting is None else setting
