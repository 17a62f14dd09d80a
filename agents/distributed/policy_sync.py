"""The learner's policy as collectors receive it: one ``ray.put`` per sync, read by every collector.

A snapshot holds the policy's weights as NumPy arrays (which Ray stores once in its shared object
store and collectors on the same node read without copying) and the policy version. What changes
every batch without a gradient step (the decision count, DQN's exploration rate) travels by value
with each task instead: :func:`behaviour_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

__all__ = ["PolicySnapshot", "apply_behaviour_settings", "behaviour_settings", "load_snapshot", "take_snapshot"]


@dataclass(frozen=True)
class PolicySnapshot:
    """The weights of ``model.policy`` at one moment of training.

    :param version: the learner's gradient-step count (:attr:`DistributedLearner.gradient_steps
        <agents.distributed.learner.DistributedLearner.gradient_steps>`) when it was taken.
    :param weights: ``policy.state_dict()`` as CPU NumPy arrays.
    """

    version: int
    weights: dict[str, np.ndarray]


def take_snapshot(model: BaseAlgorithm, version: int) -> PolicySnapshot:
    """The policy's weights now, as a :class:`PolicySnapshot` of ``version`` (copied off the learner's device)."""
    weights = {name: tensor.detach().cpu().numpy().copy() for name, tensor in model.policy.state_dict().items()}
    return PolicySnapshot(version=int(version), weights=weights)


def load_snapshot(model: BaseAlgorithm, snapshot: PolicySnapshot) -> None:
    """Put ``snapshot``'s weights into ``model.policy`` (on the model's device)."""
    state = {name: th.as_tensor(np.array(value)) for name, value in snapshot.weights.items()}
    model.policy.load_state_dict(state)


def behaviour_settings(model: BaseAlgorithm) -> dict[str, Any]:
    """The learner's values that decide how a copy of its policy explores: the decision count (the
    warm-up before ``learning_starts``) and, for DQN / QR-DQN, the current epsilon."""
    settings: dict[str, Any] = {"num_timesteps": int(model.num_timesteps)}
    if hasattr(model, "exploration_rate"):
        settings["exploration_rate"] = float(model.exploration_rate)
    return settings


def apply_behaviour_settings(model: BaseAlgorithm, settings: dict[str, Any]) -> None:
    """Set :func:`behaviour_settings` on a collector's copy of the model."""
    model.num_timesteps = int(settings["num_timesteps"])
    if "exploration_rate" in settings:
        model.exploration_rate = float(settings["exploration_rate"])
