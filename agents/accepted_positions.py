"""Which candidate each answer token was: the accepted-position histogram of the paper's figure 3.

Shared by the generator (each :class:`~agents.generation.Generation`'s own counts) and the evaluation
(pooled over a system's answers), so that neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ACCEPT_POSITION_BINS", "accept_position_counts", "as_ranks"]

#: Accepted candidate positions 1 .. ``ACCEPT_POSITION_BINS - 1`` and one "or later" bin.
ACCEPT_POSITION_BINS = 10


def as_ranks(ranks: ArrayLike, where: str) -> np.ndarray:
    """``ranks`` as a flat ``int64`` array of 0-based candidate ranks; ``where`` names it in the error."""
    array = np.asarray(ranks)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{where} must be a flat sequence of accepted ranks; got shape {array.shape}.")
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and bool(np.all(np.isfinite(array))) and bool(np.all(array == np.round(array)))
    )
    if not integral:
        raise ValueError(f"{where} must hold integer candidate ranks (0 = most likely candidate); got {ranks!r}.")
    array = array.astype(np.int64)
    if np.any(array < 0):
        raise ValueError(f"{where} holds a negative rank ({array.min()}); ranks are 0-based candidate positions.")
    return array


def accept_position_counts(ranks: Iterable[Sequence[int]], max_rank: int | None = None) -> np.ndarray:
    """
    How often each candidate position was accepted, pooled over responses (the paper's figure 3).

    :param ranks: For each response, the 0-based rank of the accepted candidate at each response
        position (``0`` = the reference LLM's most likely token)
    :param max_rank: Length of the returned array; ranks ``>= max_rank - 1`` are counted in the last
        bin. ``None``: one bin per rank up to the largest seen
    :return: ``int64`` counts, entry ``i`` for rank ``i`` (position ``i + 1``)
    """
    if max_rank is not None and (
        not isinstance(max_rank, (int, np.integer)) or isinstance(max_rank, bool) or max_rank < 1
    ):
        raise ValueError(f"max_rank must be a positive integer (the number of bins) or None; got {max_rank!r}.")
    parts = [as_ranks(r, f"ranks[{i}]") for i, r in enumerate(ranks)]
    pooled = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if max_rank is not None:
        pooled = np.minimum(pooled, max_rank - 1)
        return np.bincount(pooled, minlength=max_rank).astype(np.int64)
    return np.bincount(pooled).astype(np.int64)
