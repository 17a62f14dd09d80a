"""The statistics of one aligned answer under one name each, wherever they are shown.

``mara generate --json`` prints them per answer and ``mara serve`` returns them in every choice's
``mara`` extension field; the evaluation report's per-answer rows use the same names for what they
share (``num_tokens``), and its system summaries are means of these (``kl_mean``, ``tokens_mean``).

=========================  ======================================================================
``num_tokens``             answer tokens (an ending EOS included)
``num_decisions``          accept/reject decisions the agent took (0 for the base LLM)
``finish_reason``          ``"eos"`` (the model ended the answer) or ``"length"`` (the limit)
``kl_estimate``            ``log pi(y|x) - log q(y|x)`` of this answer, in nats: a *single-sample*
                           estimate of ``KL(pi || q)``. One answer's value can be negative; the
                           mean over many answers is the KL estimate (the report's ``kl_mean``).
                           0 for the base LLM, which samples ``q``
``ref_logprob``            ``log q(y|x)``: the answer's log-probability under the reference's
                           candidate-set distribution
``accept_position_counts`` answer tokens that were the 1st, 2nd, ... candidate (the last bin pools
                           the rest: :meth:`agents.generation.Generation.accept_position_counts`)
``mean_set_size``          mean candidate-set size over the answer's positions
``prompt_truncated``       whether the prompt was cut to fit the context
=========================  ======================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.generation import Generation

__all__ = ["ANSWER_STATISTICS", "answer_statistics"]

#: The names, in the order they are shown.
ANSWER_STATISTICS: tuple[str, ...] = (
    "num_tokens",
    "num_decisions",
    "finish_reason",
    "kl_estimate",
    "ref_logprob",
    "accept_position_counts",
    "mean_set_size",
    "prompt_truncated",
)


def answer_statistics(generation: Generation) -> dict[str, Any]:
    """The statistics of one answer (see the module's table), JSON-ready, in :data:`ANSWER_STATISTICS` order."""
    return {
        "num_tokens": generation.num_tokens,
        "num_decisions": generation.num_decisions,
        "finish_reason": generation.finish_reason,
        "kl_estimate": generation.kl,
        "ref_logprob": generation.ref_logprob,
        "accept_position_counts": generation.accept_position_counts().tolist(),
        "mean_set_size": sum(generation.set_sizes) / max(len(generation.set_sizes), 1),
        "prompt_truncated": generation.prompt_truncated,
    }
