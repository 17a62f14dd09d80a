"""How many candidates' hidden states one forward computes for a row: fixed, or sized by where the
agent is expected to accept.

A row deciding on candidate ``i`` of its sorted set needs that candidate's hidden state; a chunk of
``c`` candidates ``i .. i+c-1`` computed in one forward means that rejections inside the chunk cost no
further forward. Too small a chunk costs extra forwards (each with its fixed cost); too large a chunk
costs tokens that are never looked at. :class:`AdaptiveChunks` picks ``c`` per row so that the chunk
covers the candidate the agent will take with probability ``coverage``.

Where does the agent take? Let ``Q_j = q_0 + ... + q_j`` be the reference's cumulative mass over the
sorted set. For the candidate ``k`` a row takes, record ``W = Q_{k-1}`` (the mass *before* it;
``Q_{-1} = 0``). Under the reference itself (top-k/top-p sampling), ``W`` is close to uniform on
``[0, 1)``; an agent that prefers the top candidates puts ``W`` near 0. With ``F`` the empirical
distribution of ``W`` over the last ``window`` taken candidates (all rows alike; until the agent has
taken many, mixed with ``prior`` pseudo-observations of the uniform distribution, the reference's
behaviour), a row that has
rejected candidates ``0 .. i-1`` (so ``W >= Q_{i-1}``) takes within ``i .. i+c-1`` with probability

    P(covered) = (F(Q_{i+c-1}) - F(Q_{i-1})) / (1 - F(Q_{i-1})),

and the chunk is the smallest ``c`` with ``P(covered) >= coverage``, at most ``max_size``.
"""

from __future__ import annotations

import numpy as np


class FixedChunks:
    """``size`` candidates per forward (fewer at the end of a set).

    >>> import numpy as np
    >>> FixedChunks(2).size(np.array([0.5, 0.3, 0.2]), 0), FixedChunks(2).size(np.array([0.5, 0.3, 0.2]), 2)
    (2, 1)
    """

    def __init__(self, size: int) -> None:
        self.max_size = int(size)

    def size(self, probs: np.ndarray, index: int) -> int:
        """Candidates to compute for a row at candidate ``index`` of a set with probabilities ``probs``."""
        return min(self.max_size, len(probs) - index)

    def record(self, probs: np.ndarray, taken: int) -> None:
        """Nothing to learn for a fixed size."""


class AdaptiveChunks:
    """Chunks sized to cover the candidate the agent takes with probability ``coverage`` (module docstring).

    :param coverage: target probability in (0, 1] that the chunk holds the candidate the agent takes.
    :param max_size: the largest chunk (>= 1).
    :param window: how many recent taken candidates define ``F``.
    :param prior: weight of the uniform distribution in ``F``, in taken candidates.

    >>> import numpy as np
    >>> probs = np.array([0.4, 0.3, 0.2, 0.1])
    >>> rule = AdaptiveChunks(coverage=0.65, max_size=8)
    >>> rule.size(probs, 0)  # uniform F: Q = 0.4, 0.7 -> the first two cover 0.7
    2
    >>> for _ in range(64):
    ...     rule.record(probs, 0)  # an agent that always takes the first candidate
    >>> rule.size(probs, 0)
    1
    """

    def __init__(self, coverage: float, max_size: int, window: int = 1024, prior: float = 16.0) -> None:
        if not (isinstance(coverage, (int, float)) and 0.0 < float(coverage) <= 1.0):
            raise ValueError(f"chunk coverage must be in (0, 1], got {coverage!r}.")
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
            raise ValueError(f"the largest chunk must be an integer >= 1, got {max_size!r}.")
        self.coverage = float(coverage)
        self.max_size = int(max_size)
        self.prior = float(prior)
        self._w = np.empty(window)
        self._count = 0  # taken candidates recorded so far (the buffer holds the last ``window``)
        self._sorted: np.ndarray | None = None

    def size(self, probs: np.ndarray, index: int) -> int:
        """Candidates to compute for a row at candidate ``index`` of a set with probabilities ``probs``."""
        n = len(probs)
        left = n - index
        if left <= 1:
            return left
        if self._sorted is None:
            self._sorted = np.sort(self._w[: min(self._count, len(self._w))])
        cum = np.cumsum(probs[index:])
        before = float(probs[:index].sum())
        # F at Q_{i-1} and at Q_{i+c-1} for c = 1 .. left; Q's end is exactly 1 (F = 1 there).
        x = np.concatenate(([before], before + cum[:-1]))
        n = len(self._sorted)
        f = (self.prior * x + np.searchsorted(self._sorted, x, side="left")) / (self.prior + n)
        f = np.append(f, 1.0)
        remaining = 1.0 - f[0]
        if remaining <= 0.0:
            c = 1
        else:
            covered = (f[1:] - f[0]) / remaining
            c = int(np.searchsorted(covered, self.coverage - 1e-12, side="left")) + 1
        return min(c, self.max_size, left)

    def record(self, probs: np.ndarray, taken: int) -> None:
        """Note that a row took candidate ``taken`` of a set with probabilities ``probs``."""
        self._w[self._count % len(self._w)] = float(probs[:taken].sum())
        self._count += 1
        self._sorted = None


def make_chunk_rule(size: int, coverage: float | None) -> FixedChunks | AdaptiveChunks:
    """The rule for a decoder: fixed ``size`` when ``coverage`` is ``None``, else adaptive up to ``size``."""
    return FixedChunks(size) if coverage is None else AdaptiveChunks(coverage, size)
