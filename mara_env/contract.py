"""What an agent may know about a MARA environment: a typed description the environment publishes.

Every MARA environment (``TokenAcceptRejectEnv``, the vector env, and both through
:class:`~mara_env.sb3.SB3VecEnv` and SB3's wrappers) has an ``agent_contract`` attribute holding an
:class:`AgentContract`. It is the one thing about the environment that agents read beyond the Gymnasium
spaces: :mod:`agents.registry` fixes ``ent_coef`` to :attr:`AgentContract.kl_coef`, ``gamma`` to
:attr:`AgentContract.shaping_discount`, and anchors policies at :attr:`AgentContract.observation_layout`.

This module (with :mod:`mara_env.observation`) loads none of the LLM machinery, so code that works on any
Gymnasium environment can import it without transformers (``tests/test_layering.py`` checks both).

Example::

    >>> contract = AgentContract(ObservationLayout("hidden+ref", 576), kl_coef=0.1, reward_shaping="potential",
    ...                          shaping_gamma=0.99)
    >>> contract.shaping_discount, contract.observation_layout.reference_logits
    (0.99, (578, 577))
    >>> find_agent_contract(object()) is None          # not a MARA environment
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mara_env.observation import ObservationLayout

__all__ = ["REWARD_SHAPINGS", "AgentContract", "find_agent_contract"]

#: Values of the ``reward_shaping`` setting.
REWARD_SHAPINGS = ("none", "potential")


@dataclass(frozen=True)
class AgentContract:
    """What an agent may know about a MARA environment.

    :param observation_layout: where each part of the observation lies (the reference's log-probabilities
        of reject and accept among them with ``observation="hidden+ref"``).
    :param kl_coef: the weight of the per-decision reward ``kl_coef * log p_ref(a | k)``; an entropy bonus
        of the same weight makes the objective ``E[R] - kl_coef * KL(pi || p_ref)``.
    :param reward_shaping: ``"none"`` or ``"potential"`` (``shaping_gamma * Phi(s') - Phi(s)`` per decision).
    :param shaping_gamma: the discount of the shaping term, in ``(0, 1]``.
    """

    observation_layout: ObservationLayout
    kl_coef: float
    reward_shaping: str
    shaping_gamma: float

    def __post_init__(self) -> None:
        if not isinstance(self.observation_layout, ObservationLayout):
            raise TypeError(
                f"observation_layout must be a mara_env.observation.ObservationLayout, got "
                f"{type(self.observation_layout).__name__}."
            )
        if not (isinstance(self.kl_coef, (int, float)) and math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {self.kl_coef!r}.")
        if self.reward_shaping not in REWARD_SHAPINGS:
            raise ValueError(
                f"reward_shaping must be {' or '.join(map(repr, REWARD_SHAPINGS))}, got {self.reward_shaping!r}."
            )
        if not (isinstance(self.shaping_gamma, (int, float)) and 0 < self.shaping_gamma <= 1):
            raise ValueError(f"shaping_gamma must be in (0, 1], got {self.shaping_gamma!r}.")

    @property
    def shaping_discount(self) -> float | None:
        """The discount under which the reward shaping keeps the optimal policy; ``None`` without shaping."""
        return float(self.shaping_gamma) if self.reward_shaping == "potential" else None


def find_agent_contract(env: Any) -> AgentContract | None:
    """The :class:`AgentContract` a MARA environment publishes, else ``None``.

    :param env: a Gymnasium env or vector env (wrapped or not), or an SB3 ``VecEnv`` (through wrappers such as
        ``VecMonitor``, whose sub-environments publish it).
    """
    candidates = [env, getattr(env, "unwrapped", None)]
    get_attr = getattr(env, "get_attr", None)
    if callable(get_attr):
        try:
            candidates += get_attr("agent_contract")
        except AttributeError:  # an SB3 VecEnv whose sub-environments are not MARA's
            pass
    for candidate in candidates:
        contract = candidate if isinstance(candidate, AgentContract) else getattr(candidate, "agent_contract", None)
        if isinstance(contract, AgentContract):
            return contract
    return None
