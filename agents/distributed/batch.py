"""What a collector sends the learner: a batch of transitions, tagged with the policy that collected it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TransitionBatch"]


@dataclass
class TransitionBatch:
    """``steps`` vector steps of one collector's ``num_envs`` sub-environments, ready for a replay buffer.

    Arrays are laid out ``(steps, num_envs, ...)``, as the replay buffer's ``add`` takes them one
    step at a time. Observations travel as float16 (half the bytes of float32; a MARA hidden state
    loses nothing a float16 LLM forward would keep): the learner's buffer stores them in its own dtype.

    :param collector: index of the collector that sent it.
    :param policy_version: the learner's gradient-step count when the weights it was collected with
        were published; the learner's count now minus this is the batch's *staleness*.
    :param observations: ``s_t``, float16.
    :param next_observations: ``s_{t+1}``, the episode's last observation where it ended (float16).
    :param actions: the buffer actions, ``(steps, num_envs, 1)`` for a ``Discrete`` space.
    :param rewards: float32.
    :param dones: episode ended (terminated or truncated).
    :param timeouts: ended by a time limit only (SB3's ``TimeLimit.truncated``).
    :param episodes: each finished episode as ``(info, kl)``: its end-of-episode info (with
        VecMonitor's ``"episode"`` record) and the single-sample KL estimate of the behaviour policy.
    :param seconds: wall seconds the collector spent on these steps (LLM, policy, env).
    """

    collector: int
    policy_version: int
    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    episodes: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        """Vector steps in the batch."""
        return int(self.rewards.shape[0])

    @property
    def num_envs(self) -> int:
        """Sub-environments of the collector."""
        return int(self.rewards.shape[1])

    @property
    def decisions(self) -> int:
        """Transitions in the batch (``steps * num_envs``)."""
        return self.steps * self.num_envs

    @property
    def decisions_per_second(self) -> float:
        """The collector's own speed on this batch."""
        return self.decisions / self.seconds if self.seconds > 0 else float("nan")
