"""Answers and what they cost: :class:`Generation` (one answer and how it was decoded) and
:class:`GenerationStats` (the totals of one call), the one result type of aligned, plain and
reward-guided decoding, and the prompt check every generator applies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.accepted_positions import ACCEPT_POSITION_BINS, accept_position_counts

__all__ = ["Generation", "GenerationStats", "check_prompts"]


@dataclass
class Generation:
    """One answer and how it was decoded.

    :param prompt: the user prompt.
    :param text: the answer (special tokens removed).
    :param token_ids: the answer's token ids (an ending EOS included).
    :param finish_reason: ``"eos"`` or ``"length"``.
    :param num_decisions: the agent's decisions (0 for raw decoding).
    :param accepted_ranks: 0-based rank in its candidate set of every answer token.
    :param set_sizes: candidate-set size at every answer position.
    :param ref_logprob: ``log q(y | x)``, the answer's log-probability under the reference's
        candidate-set distribution (the env's ``info["ref_logprob"]``).
    :param kl: single-sample estimate of ``KL(pi || q)`` for this answer, in nats (0 for raw decoding,
        which samples ``q`` itself).
    :param prompt_truncated: whether the prompt was cut to fit the context.
    """

    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str
    num_decisions: int
    accepted_ranks: list[int]
    set_sizes: list[int]
    ref_logprob: float
    kl: float
    prompt_truncated: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def accept_position_counts(self, max_rank: int = ACCEPT_POSITION_BINS) -> np.ndarray:
        """How many answer tokens were the 1st, 2nd, ... candidate:
        :func:`agents.accepted_positions.accept_position_counts` of this answer, the definition of every report.

        Every answer token counts, a token forced from a single-candidate set too (as rank 0: it was the
        first candidate); the last bin pools ranks ``>= max_rank - 1``.
        """
        return accept_position_counts([self.accepted_ranks], max_rank=max_rank)


@dataclass
class GenerationStats:
    """Totals of one generation call.

    :param llm_tokens: tokens run through the LLM (prompts, candidates, forced tokens; padding too for
        plain decoding), the compute cost.
    :param llm_forwards: batched LLM forwards.
    :param answer_tokens: answer tokens produced.
    :param wall_seconds: wall-clock time of the call.
    """

    llm_tokens: int = 0
    llm_forwards: int = 0
    answer_tokens: int = 0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.answer_tokens / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a list, or an error naming the first one that is not a non-empty string."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings; wrap a single prompt as [prompt] (or use stream()).")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompts[{i}] must be a non-empty string, got {p!r}.")
    return prompts
