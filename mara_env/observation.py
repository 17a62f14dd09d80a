"""What the agent observes: the candidate's hidden state, and optionally the reference's view of it.

Two observation forms (the ``observation`` setting):

``"hidden"`` (``MARA-v0``, the paper's)
    the LLM's last-layer hidden state (after the final norm) at the candidate's position, for
    prompt + response so far + candidate: ``Box((hidden,))``.
``"hidden+ref"`` (``MARA-v1``)
    the same hidden state followed by a tail of :data:`REFERENCE_FEATURES`, the reference LLM's own
    view of the decision: ``Box((hidden + 8,))``.

Why the tail matters: the per-decision reward is ``kl_coef * log p_ref(a | k)``, and the hidden
state does not carry ``p_ref(accept | k) = q_k / sum_{j >= k} q_j`` (the candidate's probability
comes from the *previous* position's logits). Without the tail no agent can even represent the
reference policy (KL 0); with it, ``logits = [log p_ref(reject|k), log p_ref(accept|k)] + f(s)``
with ``f = 0`` *is* the reference (see :mod:`agents.reference_anchor`).

The tail, in order (``q``: the reference distribution renormalised over the set, ``k``: 0-based rank)::

    log_q           log q_k                                       (<= 0)
    log_accept      log p_ref(accept | k) = log q_k - log T_k     (<= 0)
    log_reject      log p_ref(reject | k) = log T_{k+1} - log T_k (< 0; finite at every decision)
    rank            k                                             (0 .. set_size - 2 at a decision)
    set_size        n, candidates in the set                      (>= 2 at a decision)
    remaining_mass  T_k = sum_{j >= k} q_j                        (in (0, 1])
    set_entropy     H(q) = -sum_j q_j log q_j, in nats            (in [0, log n])
    position        response tokens committed so far              (0 .. max_new_tokens - 1)

Log-probabilities are floored at :data:`LOG_FLOOR` so every entry is finite (also in float16);
the floor only touches probabilities below ``e^-50``. Find a feature by name, never by a magic
number: ``env.observation_layout.index("log_accept")``.

Example::

    >>> layout = ObservationLayout("hidden+ref", hidden_size=576)
    >>> layout.size, layout.index("log_accept"), layout.reference_logits
    (584, 577, (578, 577))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mara_env.hints import did_you_mean

if TYPE_CHECKING:
    from mara_env.decoder import AcceptRejectDecoder

#: The observation forms, by ``observation`` setting.
OBSERVATIONS = ("hidden", "hidden+ref")

#: The reference features of ``observation="hidden+ref"``, in their order in the tail, with their meaning.
REFERENCE_FEATURES: dict[str, str] = {
    "log_q": "log q_k, the candidate's probability renormalised over the set",
    "log_accept": "log p_ref(accept | k) = log q_k - log sum_{j>=k} q_j",
    "log_reject": "log p_ref(reject | k) = log(1 - p_ref(accept | k))",
    "rank": "k, the candidate's 0-based rank in the set",
    "set_size": "n, the number of candidates in the set",
    "remaining_mass": "T_k = sum_{j>=k} q_j, the set's mass from this candidate on",
    "set_entropy": "H(q) in nats, the entropy of the set's distribution",
    "position": "response tokens committed so far",
}

#: Lowest value of a log-probability feature (keeps every entry finite, also in float16).
LOG_FLOOR = -50.0


@dataclass(frozen=True)
class ObservationLayout:
    """Where each part of an observation vector lies.

    :param mode: ``"hidden"`` or ``"hidden+ref"`` (see the module docstring).
    :param hidden_size: the LLM's hidden size; the hidden state is ``obs[:hidden_size]``.
    """

    mode: str
    hidden_size: int

    def __post_init__(self) -> None:
        if self.mode not in OBSERVATIONS:
            hint = did_you_mean(self.mode, OBSERVATIONS)
            raise ValueError(
                f"observation must be 'hidden' (the paper's, MARA-v0) or 'hidden+ref' (hidden state plus the "
                f"reference's features, MARA-v1), got {self.mode!r}.{hint}"
            )

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the tail features (empty for ``"hidden"``)."""
        return tuple(REFERENCE_FEATURES) if self.mode == "hidden+ref" else ()

    @property
    def size(self) -> int:
        """Length of the observation vector."""
        return self.hidden_size + len(self.features)

    @property
    def hidden(self) -> slice:
        """The hidden state's slice of the vector."""
        return slice(0, self.hidden_size)

    @property
    def has_reference(self) -> bool:
        return bool(self.features)

    def index(self, name: str) -> int:
        """Position of the tail feature ``name`` in the observation vector.

        :raises KeyError: an unknown name, or a layout without reference features; the message says what to do.
        """
        if not self.has_reference:
            raise KeyError(
                f"observation={self.mode!r} has no reference features (no {name!r}); create the environment with "
                "observation='hidden+ref' (the default of MARA-v1)."
            )
        if name not in REFERENCE_FEATURES:
            hint = did_you_mean(name, REFERENCE_FEATURES)
            raise KeyError(f"no reference feature {name!r}.{hint} Features: {', '.join(REFERENCE_FEATURES)}.")
        return self.hidden_size + self.features.index(name)

    @property
    def reference_logits(self) -> tuple[int, int]:
        """Indices of ``log p_ref(reject | k)`` and ``log p_ref(accept | k)``, in action order (0 reject, 1 accept).

        The ``reference_logits`` argument of anchored policies (:mod:`agents.reference_anchor`).
        """
        return self.index("log_reject"), self.index("log_accept")

    def to_dict(self) -> dict[str, object]:
        """Names and indices, for logs and saved configs."""
        return {"mode": self.mode, "hidden": [0, self.hidden_size], **{n: self.index(n) for n in self.features}}

    @classmethod
    def for_size(cls, size: int, hidden_size: int) -> ObservationLayout:
        """The layout whose vectors have ``size`` entries for an LLM of ``hidden_size``.

        :raises ValueError: no layout has that size.
        """
        for mode in OBSERVATIONS:
            layout = cls(mode, hidden_size)
            if layout.size == size:
                return layout
        sizes = ", ".join(f"{cls(m, hidden_size).size} ({m!r})" for m in OBSERVATIONS)
        raise ValueError(
            f"an observation of size {size} fits no MARA observation for an LLM of hidden size {hidden_size} "
            f"(sizes: {sizes}). The agent was trained on another LLM or another observation."
        )


def reference_features(
    probs: np.ndarray, log_accept: np.ndarray, log_reject: np.ndarray, rank: int, position: int
) -> np.ndarray:
    """The :data:`REFERENCE_FEATURES` of candidate ``rank`` of one set, as float64.

    :param probs: ``q`` over the set (the :class:`~mara_env.candidates.CandidateSet`'s ``probs``).
    :param log_accept: ``log p_ref(accept | j)`` for every candidate ``j``.
    :param log_reject: ``log p_ref(reject | j)`` for every candidate ``j``.
    :param rank: the candidate under decision.
    :param position: response tokens committed so far.
    """
    q = probs[rank]
    log_q = np.log(q) if q > 0 else -np.inf
    positive = probs[probs > 0]
    entropy = float(-(positive * np.log(positive)).sum())
    # T_k = q_k / p_ref(accept | k), in log space
    remaining = float(np.exp(min(log_q - log_accept[rank], 0.0))) if np.isfinite(log_q) else float(probs[rank:].sum())
    return np.array(
        [
            max(log_q, LOG_FLOOR),
            max(float(log_accept[rank]), LOG_FLOOR),
            max(float(log_reject[rank]), LOG_FLOOR),
            float(rank),
            float(len(probs)),
            remaining,
            entropy,
            float(position),
        ]
    )


def observe(
    decoder: AcceptRejectDecoder, rows: Sequence[int], layout: ObservationLayout, dtype: np.dtype
) -> np.ndarray:
    """Observations of the READY ``rows`` of ``decoder`` in ``layout``, shape ``(len(rows), layout.size)``."""
    hidden = decoder.observations(rows, dtype)
    if not layout.has_reference:
        return hidden
    out = np.empty((len(rows), layout.size), dtype=dtype)
    out[:, layout.hidden] = hidden
    for i, row in enumerate(rows):
        st = decoder.rows[row]
        c = st.cands
        out[i, layout.hidden_size :] = reference_features(
            c.probs, c.log_accept, c.log_reject, st.index, len(st.response)
        )
    return out
