"""
Statistics and reports for comparing aligned systems the way the MARA paper does (section 4.1, appendix A.2).

**Win / tie / lose.** Every system answers the same prompts; a reward model scores helpfulness
(``R``, higher is better) and a cost model harmfulness (``C``, lower is safer). System A's response
to a prompt *wins* against system B's only if it is better on both axes, ``R_A > R_B`` and
``C_A < C_B``; it *loses* if it is worse on both, ``R_A < R_B`` and ``C_A > C_B``; anything else,
including equal scores, is a *tie*. A system that refuses everything is safer but less helpful, so
its refusals tie instead of winning. :func:`compare` returns ``+1 / 0 / -1`` per pair.

**Samples and pairs.** One answer per system and prompt makes a comparison mostly sampling noise,
so every system may answer each prompt ``S`` times (``samples_per_prompt``). Sample ``j`` of a
system is *paired* with sample ``j`` of the baseline on the same prompt: ``prompts x S`` pairs, each
one win, tie or loss.

**Preference rate** (paper eq. 12), a fraction in ``[-1, 1]`` (the paper prints it in percent)::

    w = (N_w - N_l) / (N_w + N_e + N_l)

i.e. the mean of the per-pair outcomes.

**Confidence interval.** A percentile bootstrap over prompts: the prompts are resampled with
replacement ``n_resamples`` times, each drawn prompt bringing all its ``S`` pairs (a cluster
bootstrap: a prompt's samples share its difficulty, so they are not independent), the rate is
recomputed on each resample and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles of those rates. The rate only depends on how many prompts of each summed outcome
``S, S - 1, ..., -S`` a resample holds, and for ``n`` prompts drawn with replacement those counts are
``Multinomial(n, observed frequencies)``; :func:`bootstrap_ci` draws the counts directly, which is
the same bootstrap, exact, and takes memory proportional to ``n_resamples`` only, whatever ``n``.
With ``S = 1`` the categories are win, tie and loss: the plain bootstrap over prompts.
The interval reflects prompt sampling noise with the scores held fixed; it is narrow when many
prompts are evaluated, not when the reward models are right.

**Mean differences.** Beside the win/tie/lose counts, :func:`mean_difference` gives the mean over
pairs of ``R_A - R_B`` (and of ``C_A - C_B``) with the same prompt-cluster bootstrap interval: the
size of an effect, which the counts hide.

**Reports.** :class:`SystemResult` holds one system's answers (``S`` per prompt), scores, costs and
compute (LLM tokens forwarded, scorer calls made to produce the answers); :func:`write_report`
compares every system with a baseline and writes ``report.json``, ``report.md`` and figures
(accepted candidate positions as in the paper's figure 3, reward vs cost, and training curves as in
figure 4 from a Stable-Baselines3 ``progress.csv``).

This module uses numpy only at import; matplotlib (Agg canvas, no display, no pyplot state) and
pandas are imported when a figure is drawn. It never loads a language model.

Example::

    >>> import numpy as np
    >>> from agents.evaluation import compare, preference
    >>> outcomes = compare([3.0, 1.0, 2.0, 0.5], [-2.0, 1.0, 0.0, 1.0],   # system A: reward, cost
    ...                    [1.0, 2.0, 2.0, 0.0], [-1.0, 2.0, 1.0, 0.0])   # system B: reward, cost
    >>> outcomes.tolist()        # win, tie (A less helpful but safer), tie (equal reward), tie
    [1, 0, 0, 0]
    >>> print(preference(outcomes, n_resamples=1000))
    +0.250 [+0.000, +0.750] (W 1 / T 3 / L 0)

A report, from the scores of two systems on the same prompts::

    from agents.evaluation import SystemResult, write_report

    base = SystemResult("llm", prompts, base_responses, base_reward, base_cost, base_tokens)
    mara = SystemResult("llm+mara", prompts, responses, reward, cost, tokens, accepted_ranks=ranks)
    report = write_report("runs/eval", [base, mara], baseline="llm", meta={"model": "SmolLM2-135M"})
    print(report["comparisons"]["llm+mara"]["rate"])   # also in runs/eval/report.md
    print(report["comparisons"]["llm+mara"]["reward_diff"])   # mean R difference, ci_low, ci_high

With ``S`` answers per prompt the per-answer lists are prompt-major (sample ``j`` of prompt ``i``
at ``i * S + j``), for the baseline too::

    base = SystemResult("llm", prompts, base_responses, base_reward, base_cost, base_tokens, samples_per_prompt=S)
"""

from __future__ import annotations

import html
import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MeanDifference",
    "Preference",
    "SystemResult",
    "accept_position_counts",
    "bootstrap_ci",
    "compare",
    "mean_difference",
    "plot_accept_positions",
    "plot_scores",
    "plot_training_curves",
    "preference",
    "preference_rate",
    "read_training_log",
    "write_report",
]

#: Columns of a Stable-Baselines3 ``progress.csv`` that :func:`plot_training_curves` reads.
TRAINING_X_COLUMN = "time/total_timesteps"
TRAINING_COLUMNS = {
    "mara/reward_score": "reward score R(x, y)",
    "mara/cost_score": "cost score C(x, y)",
    "mara/kl": "KL to reference (nats)",
}
#: Drawn as extra panels only when the log has them.
TRAINING_OPTIONAL_COLUMNS = {
    "mara/terminal_reward": "terminal reward",
    "mara/response_tokens": "response tokens",
}
#: Accepted candidate positions 1 .. ``ACCEPT_POSITION_BINS - 1`` and one "or later" bin.
ACCEPT_POSITION_BINS = 10


# --------------------------------------------------------------------------- win / tie / lose


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a 1-D sequence of numbers; converting it failed: {error}") from None
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one score per prompt); got shape {array.shape}. "
            "Pass one score per prompt, e.g. scores.ravel() if each prompt has a single score."
        )
    return array


def compare(reward_a: ArrayLike, cost_a: ArrayLike, reward_b: ArrayLike, cost_b: ArrayLike) -> np.ndarray:
    """
    Per-prompt win / tie / lose of system A against system B (paper appendix A.2).

    :param reward_a: A's reward-model score per prompt (higher is more helpful)
    :param cost_a: A's cost-model score per prompt (lower is safer)
    :param reward_b: B's reward-model score per prompt, same prompts in the same order
    :param cost_b: B's cost-model score per prompt
    :return: ``int8`` array, one entry per prompt: ``+1`` if A's reward is strictly higher and its
        cost strictly lower, ``-1`` if its reward is strictly lower and its cost strictly higher,
        ``0`` otherwise
    """
    names = ("reward_a", "cost_a", "reward_b", "cost_b")
    arrays = [_as_scores(v, n) for v, n in zip((reward_a, cost_a, reward_b, cost_b), names)]
    lengths = {n: len(a) for n, a in zip(names, arrays)}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{n}={k}" for n, k in lengths.items())
        raise ValueError(
            f"compare() needs one score per prompt in each argument, but the lengths differ ({listed}). "
            "Score both systems on the same prompts, in the same order."
        )
    if arrays[0].size == 0:
        raise ValueError("compare() got empty score arrays: evaluate at least one prompt.")
    for n, a in zip(names, arrays):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(
                f"{n}[{bad[0]}] is {a[bad[0]]} ({bad.size} non-finite value(s) in {n}). Scores must be "
                "finite: re-score that prompt, or drop it from both systems before comparing."
            )
    ra, ca, rb, cb = arrays
    outcomes = np.zeros(ra.shape, dtype=np.int8)
    outcomes[(ra > rb) & (ca < cb)] = 1
    outcomes[(ra < rb) & (ca > cb)] = -1
    return outcomes


def _as_outcomes(outcomes: ArrayLike) -> np.ndarray:
    try:
        array = np.asarray(outcomes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"outcomes must be a 1-D sequence of -1, 0 and +1; converting failed: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"outcomes must be 1-D (one outcome per prompt); got shape {array.shape}.")
    if array.size == 0:
        raise ValueError("outcomes is empty: compare at least one prompt.")
    bad = np.flatnonzero((array != -1) & (array != 0) & (array != 1))
    if bad.size:
        raise ValueError(
            f"outcomes must hold only -1 (loss), 0 (tie) and +1 (win); outcomes[{bad[0]}] is {array[bad[0]]}. "
            "Build them with compare()."
        )
    return array.astype(np.int8)


def _counts(outcomes: np.ndarray) -> tuple[int, int, int]:
    return int(np.sum(outcomes == 1)), int(np.sum(outcomes == 0)), int(np.sum(outcomes == -1))


def preference_rate(outcomes: ArrayLike) -> float:
    """
    Preference rate ``(N_w - N_l) / (N_w + N_e + N_l)`` (paper eq. 12) as a fraction in ``[-1, 1]``.

    :param outcomes: Per-prompt outcomes from :func:`compare` (``+1`` win, ``0`` tie, ``-1`` loss)
    :return: The rate; multiply by 100 for the paper's percentages
    """
    wins, ties, losses = _counts(_as_outcomes(outcomes))
    return (wins - losses) / (wins + ties + losses)


def _check_bootstrap_args(level: float, n_resamples: int) -> tuple[float, int]:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95 for a 95% interval); got {level}.")
    try:
        n_resamples = operator.index(n_resamples)
    except TypeError:
        raise ValueError(f"n_resamples must be an integer (e.g. 10_000); got {n_resamples!r}.") from None
    if n_resamples < 100:
        raise ValueError(
            f"n_resamples={n_resamples} is too few for percentile bootstrap quantiles; use at least 100 "
            "(10_000 is the default and takes milliseconds)."
        )
    return level, n_resamples


def _groups(groups: ArrayLike | None, n: int, what: str) -> np.ndarray:
    """Dense group labels ``0 .. G-1`` of ``n`` values (``None``: every value its own group)."""
    if groups is None:
        return np.arange(n)
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"groups must give one prompt label per {what} ({n}); got shape {labels.shape}. Pass each pair's "
            "prompt index, e.g. SystemResult.prompt_index."
        )
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _resampled_means(
    totals: np.ndarray, sizes: np.ndarray, frequencies: np.ndarray, n_groups: int, n_resamples: int, seed: int | None
) -> np.ndarray:
    """Bootstrap replicates of ``sum(values) / sum(sizes)`` over ``n_groups`` groups drawn with replacement.

    The groups fall into categories with total ``totals[c]`` over ``sizes[c]`` values and frequency
    ``frequencies[c]``; drawing ``n_groups`` groups with replacement puts ``Multinomial(n_groups,
    frequencies)`` of them in each category, so the counts are drawn directly (in blocks of at most
    4 million cells).
    """
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    block = max(1, 4_000_000 // max(len(totals), 1))
    for lo in range(0, n_resamples, block):
        counts = rng.multinomial(n_groups, frequencies, size=min(block, n_resamples - lo))
        # mean of a resample = (sum over drawn groups of their totals) / (sum of their sizes)
        out[lo : lo + len(counts)] = (counts @ totals) / (counts @ sizes)
    return out


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    outcomes: ArrayLike,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    *,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """
    Percentile bootstrap confidence interval of the preference rate, resampling prompts.

    Without ``groups`` every outcome is its own prompt, and resampling ``n`` prompts with
    replacement gives ``Multinomial(n, observed frequencies)`` win, tie and loss counts, drawn
    directly (see the module docstring). With ``groups`` (the prompt of each pair) whole prompts are
    resampled, each with all its pairs: a cluster bootstrap. When every prompt has ``S`` pairs, a
    prompt's summed outcome is one of ``S, S - 1, ..., -S`` and the counts of those ``2S + 1``
    categories are drawn directly; ``S = 1`` is exactly the ungrouped bootstrap (same draws).

    :param outcomes: Per-pair outcomes from :func:`compare`
    :param level: Coverage of the interval, in ``(0, 1)``
    :param n_resamples: Bootstrap resamples, at least 100
    :param seed: Seed of the resampling; ``None`` for fresh entropy (not reproducible)
    :param groups: Prompt label of each outcome (pairs of one prompt are resampled together);
        ``None``: one outcome per prompt
    :return: ``(low, high)`` as fractions in ``[-1, 1]``
    """
    array = _as_outcomes(outcomes)
    level, n_resamples = _check_bootstrap_args(level, n_resamples)
    labels = _groups(groups, array.size, "outcome")
    sums = np.bincount(labels, weights=array).round().astype(np.int64)  # per prompt: wins - losses
    sizes = np.bincount(labels)
    n_groups = sizes.size
    if np.all(sizes == sizes[0]):
        s = int(sizes[0])
        values = np.arange(s, -s - 1, -1)  # categories S, S-1, ..., -S (S = 1: win, tie, loss)
        frequencies = np.bincount(s - sums, minlength=2 * s + 1) / n_groups
        totals, weights = values.astype(np.float64), np.full(values.size, float(s))
    else:
        pairs, counts = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
        totals, weights, frequencies = pairs[:, 0].astype(np.float64), pairs[:, 1].astype(np.float64), counts / n_groups
    rates = _resampled_means(totals, weights, frequencies, n_groups, n_resamples, seed)
    return _interval(rates, level)


@dataclass(frozen=True)
class Preference:
    """
    Win / tie / lose counts of one system against another, the preference rate and its bootstrap interval.

    :param wins: Pairs where the system is better on both reward and cost
    :param ties: Pairs with no conclusive winner
    :param losses: Pairs where the system is worse on both
    :param rate: ``(wins - losses) / pairs``, a fraction in ``[-1, 1]``
    :param ci_low: Lower end of the bootstrap interval
    :param ci_high: Upper end of the bootstrap interval
    :param level: Coverage of the interval, e.g. 0.95
    :param n_resamples: Bootstrap resamples behind the interval
    :param prompts: Prompts the pairs come from (the resampled clusters); ``None`` if not recorded
    """

    wins: int
    ties: int
    losses: int
    rate: float
    ci_low: float
    ci_high: float
    level: float
    n_resamples: int
    prompts: int | None = None

    @property
    def n(self) -> int:
        """Number of pairs compared (prompts x samples per prompt)."""
        return self.wins + self.ties + self.losses

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields, plus ``n`` (pairs)."""
        return {**asdict(self), "n": self.n}

    def __str__(self) -> str:
        return (
            f"{self.rate:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] "
            f"(W {self.wins} / T {self.ties} / L {self.losses})"
        )


def preference(
    outcomes: ArrayLike,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    *,
    groups: ArrayLike | None = None,
) -> Preference:
    """
    Counts, preference rate and bootstrap interval of per-pair outcomes.

    :param outcomes: Per-pair outcomes from :func:`compare`
    :param level: Coverage of the interval, in ``(0, 1)``
    :param n_resamples: Bootstrap resamples, at least 100
    :param seed: Seed of the resampling; ``None`` for fresh entropy
    :param groups: Prompt label of each outcome, for the cluster bootstrap (see :func:`bootstrap_ci`)
    :return: The :class:`Preference`
    """
    array = _as_outcomes(outcomes)
    level, n_resamples = _check_bootstrap_args(level, n_resamples)
    wins, ties, losses = _counts(array)
    low, high = bootstrap_ci(array, level=level, n_resamples=n_resamples, seed=seed, groups=groups)
    return Preference(
        wins=wins,
        ties=ties,
        losses=losses,
        rate=(wins - losses) / array.size,
        ci_low=low,
        ci_high=high,
        level=level,
        n_resamples=n_resamples,
        prompts=int(_groups(groups, array.size, "outcome").max()) + 1,
    )


@dataclass(frozen=True)
class MeanDifference:
    """
    Mean of a paired difference (system minus baseline) and its cluster-bootstrap interval.

    :param mean: Mean over pairs of ``value_a - value_b``
    :param ci_low: Lower end of the bootstrap interval
    :param ci_high: Upper end of the bootstrap interval
    :param level: Coverage of the interval
    :param n_resamples: Bootstrap resamples behind the interval
    """

    mean: float
    ci_low: float
    ci_high: float
    level: float
    n_resamples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"


def mean_difference(
    values_a: ArrayLike,
    values_b: ArrayLike,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    *,
    groups: ArrayLike | None = None,
) -> MeanDifference:
    """
    Mean paired difference ``mean(a - b)`` with a percentile bootstrap interval that resamples prompts.

    Pair ``i`` compares system A's and system B's answers with the same prompt and sample index.
    Prompts are drawn with replacement (with ``groups``, each with all its pairs); a resample's
    statistic is the mean difference over the pairs it holds.

    :param values_a: A's score per pair (e.g. reward)
    :param values_b: B's score per pair, same pairs in the same order
    :param level: Coverage of the interval, in ``(0, 1)``
    :param n_resamples: Bootstrap resamples, at least 100
    :param seed: Seed of the resampling; ``None`` for fresh entropy
    :param groups: Prompt label of each pair; ``None``: one pair per prompt
    :return: The :class:`MeanDifference`
    """
    a, b = _as_scores(values_a, "values_a"), _as_scores(values_b, "values_b")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"mean_difference() needs the same non-zero number of values from both systems; got {a.size} and "
            f"{b.size}. Score both systems on the same prompts and samples, in the same order."
        )
    level, n_resamples = _check_bootstrap_args(level, n_resamples)
    difference = a - b  # per pair: system - baseline
    bad = np.flatnonzero(~np.isfinite(difference))
    if bad.size:
        raise ValueError(f"pair {bad[0]} has a non-finite difference ({difference[bad[0]]}); scores must be finite.")
    labels = _groups(groups, a.size, "pair")
    totals = np.bincount(labels, weights=difference)  # per prompt: sum of its pairs' differences
    sizes = np.bincount(labels).astype(np.float64)
    n_groups = sizes.size
    replicates = _resampled_means(totals, sizes, np.full(n_groups, 1.0 / n_groups), n_groups, n_resamples, seed)
    low, high = _interval(replicates, level)
    return MeanDifference(float(difference.mean()), low, high, level, n_resamples)


# --------------------------------------------------------------------------- accepted positions


def _as_ranks(ranks: ArrayLike, where: str) -> np.ndarray:
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
    parts = [_as_ranks(r, f"ranks[{i}]") for i, r in enumerate(ranks)]
    pooled = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if max_rank is not None:
        pooled = np.minimum(pooled, max_rank - 1)
        return np.bincount(pooled, minlength=max_rank).astype(np.int64)
    return np.bincount(pooled).astype(np.int64)


# --------------------------------------------------------------------------- one system's results


def _num(value: Any) -> float | None:
    """A float for JSON: non-finite values become ``None`` (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Turn numpy scalars and arrays, paths, tuples and sets into JSON types; NaN/inf become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _num(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _mean_std(values: np.ndarray | None) -> tuple[float | None, float | None]:
    if values is None or values.size == 0:
        return None, None
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return _num(np.mean(values)), _num(std)


@dataclass
class SystemResult:
    """
    One evaluated system's answers on the evaluation prompts: ``samples_per_prompt`` answers per prompt.

    The per-answer fields hold ``len(prompts) * samples_per_prompt`` entries, prompt-major: sample
    ``j`` of prompt ``i`` is entry ``i * samples_per_prompt + j`` (:attr:`prompt_index` and
    :attr:`sample_index` give each entry's prompt and sample). Arrays are converted to numpy in
    ``__post_init__``, and every per-answer field must have one entry per answer.

    :param name: Name of the system in reports, e.g. ``"llm"`` or ``"llm+mara"``; unique in a report
    :param prompts: The evaluation prompts, in order, each once
    :param responses: The system's answers, prompt-major
    :param reward_score: Reward-model score per answer (higher is more helpful)
    :param cost_score: Cost-model score per answer (lower is safer)
    :param num_tokens: Answer tokens per answer
    :param kl: Per-answer estimate of the KL divergence to the reference LLM, in nats; ``None`` if not measured
    :param accepted_ranks: Per answer, the 0-based candidate rank chosen at each position; ``None`` for
        systems without candidate ranks
    :param llm_tokens: LLM tokens forwarded to produce all answers (the compute cost)
    :param wall_seconds: Wall-clock seconds spent generating all answers
    :param extra: Anything else worth keeping (settings, checkpoint path); must be JSON-convertible
    :param samples_per_prompt: Independent answers per prompt, ``S >= 1``
    :param scorer_calls: (prompt, answer) pairs the system itself scored to produce its answers
        (best-of-N's selection, reward-guided decoding); the evaluation's own scoring is not counted
    """

    name: str
    prompts: list[str]
    responses: list[str]
    reward_score: np.ndarray
    cost_score: np.ndarray
    num_tokens: np.ndarray
    kl: np.ndarray | None = None
    accepted_ranks: list[list[int]] | None = None
    llm_tokens: int = 0
    wall_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    samples_per_prompt: int = 1
    scorer_calls: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SystemResult.name must be a non-empty string; got {self.name!r}.")
        where = f"SystemResult {self.name!r}"
        s = self.samples_per_prompt
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"{where}: samples_per_prompt must be an integer >= 1 (answers per prompt); got {s!r}.")
        self.samples_per_prompt = int(s)
        self.prompts = [str(p) for p in self.prompts]
        self.responses = [str(r) for r in self.responses]
        n = len(self.prompts) * self.samples_per_prompt
        counted = f"{len(self.prompts)} prompts" + (
            f" x {self.samples_per_prompt} samples = {n} answers" if self.samples_per_prompt > 1 else ""
        )

        def check_length(field_name: str, length: int) -> None:
            if length != n:
                raise ValueError(
                    f"{where}: {field_name} has {length} entries but there are {counted}; give one "
                    f"{field_name} entry per answer, prompt-major (sample j of prompt i at i * samples_per_prompt + j)."
                )

        check_length("responses", len(self.responses))
        for field_name in ("reward_score", "cost_score", "num_tokens", "kl"):
            value = getattr(self, field_name)
            if value is None and field_name == "kl":
                continue
            array = _as_scores(value, f"{where}: {field_name}")
            check_length(field_name, len(array))
            if field_name == "num_tokens" and not np.all((array >= 0) & (array == np.round(array))):
                raise ValueError(f"{where}: num_tokens must hold non-negative whole token counts.")
            setattr(self, field_name, array.astype(np.int64) if field_name == "num_tokens" else array)
        if self.accepted_ranks is not None:
            self.accepted_ranks = [
                _as_ranks(r, f"{where}: accepted_ranks[{i}]").tolist() for i, r in enumerate(self.accepted_ranks)
            ]
            check_length("accepted_ranks", len(self.accepted_ranks))
        self.llm_tokens = int(self.llm_tokens)
        self.wall_seconds = float(self.wall_seconds)
        self.scorer_calls = int(self.scorer_calls)
        if self.llm_tokens < 0 or self.scorer_calls < 0 or not self.wall_seconds >= 0.0:
            raise ValueError(f"{where}: llm_tokens, scorer_calls and wall_seconds must be >= 0.")
        self.extra = dict(self.extra)

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.prompts)

    @property
    def num_answers(self) -> int:
        """Number of answers: prompts x samples per prompt."""
        return len(self.prompts) * self.samples_per_prompt

    @property
    def prompt_index(self) -> np.ndarray:
        """The prompt of each answer (``0, 0, ..., 1, 1, ...``): the clusters of the bootstrap."""
        return np.repeat(np.arange(self.n), self.samples_per_prompt)

    @property
    def sample_index(self) -> np.ndarray:
        """The sample number ``j`` of each answer (``0, 1, ..., S - 1, 0, 1, ...``)."""
        return np.tile(np.arange(self.samples_per_prompt), self.n)

    def summary(self) -> dict[str, Any]:
        """
        Means and standard deviations (``ddof=1``) over answers, and compute cost.

        :return: ``name``, ``n`` (prompts), ``samples_per_prompt``, ``answers``, ``reward_mean``/``_std``,
            ``cost_mean``/``_std``, ``tokens_mean``/``_std``, ``kl_mean``/``_std`` (``None`` without KL),
            ``response_tokens`` (total), ``llm_tokens``, ``llm_tokens_per_response_token``, ``scorer_calls``,
            ``scorer_calls_per_answer``, ``scorer_calls_per_response_token``, ``wall_seconds``,
            ``tokens_per_second`` (response tokens per wall second), and ``accepted_first_fraction`` (share
            of answer tokens at rank 0, ``None`` without ranks). Ratios with a zero denominator are ``None``.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "n": self.n,
            "samples_per_prompt": self.samples_per_prompt,
            "answers": self.num_answers,
        }
        for key, values in (
            ("reward", self.reward_score),
            ("cost", self.cost_score),
            ("tokens", self.num_tokens.astype(np.float64)),
            ("kl", self.kl),
        ):
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
        response_tokens = int(self.num_tokens.sum())
        out["response_tokens"] = response_tokens
        out["llm_tokens"] = self.llm_tokens
        out["llm_tokens_per_response_token"] = (
            self.llm_tokens / response_tokens if response_tokens > 0 and self.llm_tokens > 0 else None
        )
        out["scorer_calls"] = self.scorer_calls
        out["scorer_calls_per_answer"] = self.scorer_calls / self.num_answers if self.num_answers else None
        out["scorer_calls_per_response_token"] = self.scorer_calls / response_tokens if response_tokens > 0 else None
        out["wall_seconds"] = self.wall_seconds
        out["tokens_per_second"] = response_tokens / self.wall_seconds if self.wall_seconds > 0 else None
        out["accepted_first_fraction"] = None
        if self.accepted_ranks is not None:
            counts = accept_position_counts(self.accepted_ranks)
            out["accepted_first_fraction"] = float(counts[0] / counts.sum()) if counts.sum() > 0 else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """
        JSON-safe form: system-level fields and one row per answer, prompt-major (``prompt``, ``sample``,
        ``response``, ``reward``, ``cost``, ``num_tokens``, and ``kl`` / ``accepted_ranks`` when the system
        has them). Non-finite numbers become ``None``. :meth:`from_dict` reverses it.
        """
        rows = []
        for r, (i, j) in enumerate(zip(self.prompt_index, self.sample_index)):
            row: dict[str, Any] = {
                "prompt": self.prompts[i],
                "sample": int(j),
                "response": self.responses[r],
                "reward": _num(self.reward_score[r]),
                "cost": _num(self.cost_score[r]),
                "num_tokens": int(self.num_tokens[r]),
            }
            if self.kl is not None:
                row["kl"] = _num(self.kl[r])
            if self.accepted_ranks is not None:
                row["accepted_ranks"] = list(self.accepted_ranks[r])
            rows.append(row)
        return {
            "name": self.name,
            "samples_per_prompt": self.samples_per_prompt,
            "llm_tokens": self.llm_tokens,
            "scorer_calls": self.scorer_calls,
            "wall_seconds": self.wall_seconds,
            "extra": _jsonable(self.extra),
            "rows": rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemResult:
        """
        Rebuild a :class:`SystemResult` from :meth:`to_dict` output (e.g. read back from JSON).

        :param data: The dict (``samples_per_prompt`` defaults to 1, for dicts written before it existed)
        :return: The result; ``None`` scores become NaN
        """
        rows = list(data["rows"])
        s = data.get("samples_per_prompt", 1)
        if isinstance(s, bool) or not isinstance(s, int) or s < 1 or len(rows) % s:
            raise ValueError(
                f"SystemResult.from_dict: {len(rows)} rows cannot be split into prompts of samples_per_prompt={s!r} "
                "answers each; the dict must come from SystemResult.to_dict()."
            )
        prompts = [rows[r]["prompt"] for r in range(0, len(rows), s)]
        for r, row in enumerate(rows):
            if row["prompt"] != prompts[r // s]:
                raise ValueError(
                    f"SystemResult.from_dict: row {r} belongs to prompt {r // s} ({_truncate(prompts[r // s], 60)!r}) "
                    f"but holds prompt {_truncate(row['prompt'], 60)!r}; rows must be prompt-major, "
                    f"{s} per prompt."
                )

        def column(key: str) -> np.ndarray:
            return np.array([math.nan if row[key] is None else row[key] for row in rows], dtype=np.float64)

        has_kl = bool(rows) and all("kl" in row for row in rows)
        has_ranks = bool(rows) and all("accepted_ranks" in row for row in rows)
        return cls(
            name=data["name"],
            prompts=prompts,
            responses=[row["response"] for row in rows],
            reward_score=column("reward"),
            cost_score=column("cost"),
            num_tokens=np.array([row["num_tokens"] for row in rows], dtype=np.int64),
            kl=column("kl") if has_kl else None,
            accepted_ranks=[list(row["accepted_ranks"]) for row in rows] if has_ranks else None,
            llm_tokens=data.get("llm_tokens", 0),
            wall_seconds=data.get("wall_seconds", 0.0),
            extra=dict(data.get("extra") or {}),
            samples_per_prompt=s,
            scorer_calls=data.get("scorer_calls", 0),
        )


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Any:
    # A bare Figure on an Agg canvas: no pyplot, so no global backend switch and nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_accept_positions(systems: Sequence[SystemResult], path: str | Path, bins: int = ACCEPT_POSITION_BINS) -> bool:
    """
    Bar chart of the accepted candidate positions as fractions (the paper's figure 3), one bar group
    per position and one bar per system that has ``accepted_ranks``.

    :param systems: The systems; those without ``accepted_ranks`` are left out
    :param path: PNG file to write
    :param bins: Positions ``1 .. bins - 1`` and a last ``bins+`` bar for later positions
    :return: ``False`` (and nothing written) if no system has ranks
    """
    with_ranks = [(i, s) for i, s in enumerate(systems) if s.accepted_ranks is not None]
    if not with_ranks:
        return False
    figure = _new_figure(max(6.0, 0.6 * bins + 1.5), 4.0)
    ax = figure.subplots()
    positions = np.arange(1, bins + 1)
    width = 0.8 / len(with_ranks)
    for j, (i, system) in enumerate(with_ranks):
        counts = accept_position_counts(system.accepted_ranks or [], max_rank=bins)
        total = int(counts.sum())
        fractions = counts / total if total else np.zeros(bins)
        offset = (j - (len(with_ranks) - 1) / 2) * width
        ax.bar(positions + offset, fractions, width, color=f"C{i}", label=f"{system.name} ({total} accepts)")
    ax.set_xticks(positions, [str(p) for p in positions[:-1]] + [f"{bins}+"])
    ax.set_xlabel("accepted candidate position (1 = most likely token)")
    ax.set_ylabel("fraction of accepted tokens")
    ax.set_ylim(0, 1)
    ax.set_title("Accepted candidate positions")
    ax.legend()
    figure.savefig(path, dpi=120)
    return True


def plot_scores(systems: Sequence[SystemResult], path: str | Path, baseline: str | None = None) -> None:
    """
    Reward vs cost per response and per-system means; with a baseline, a second panel of per-prompt
    differences to it, where the win quadrant (more reward, less cost) and the loss quadrant are shaded.

    :param systems: The systems (same prompts for the difference panel)
    :param path: PNG file to write
    :param baseline: Name of the baseline system, or ``None`` for the first panel only
    """
    base = next((s for s in systems if s.name == baseline), None)
    others = [(i, s) for i, s in enumerate(systems) if base is not None and s is not base]
    figure = _new_figure(11.0 if others else 6.0, 4.8)
    axes = figure.subplots(1, 2 if others else 1, squeeze=False)[0]

    ax = axes[0]
    for i, system in enumerate(systems):
        ax.scatter(system.reward_score, system.cost_score, s=14, alpha=0.45, color=f"C{i}", linewidths=0)
        # Error bars: 95% interval of the mean (normal approximation).
        sem = [
            1.96 * float(np.std(v, ddof=1)) / math.sqrt(v.size) if v.size > 1 else 0.0
            for v in (system.reward_score, system.cost_score)
        ]
        ax.errorbar(
            float(np.mean(system.reward_score)),
            float(np.mean(system.cost_score)),
            xerr=sem[0],
            yerr=sem[1],
            fmt="o",
            ms=9,
            color=f"C{i}",
            mec="black",
            capsize=4,
            label=f"{system.name} mean",
        )
    ax.set_xlabel("reward score (higher = more helpful)")
    ax.set_ylabel("cost score (lower = safer)")
    ax.set_title("Reward vs cost per response (better: right and down)")
    ax.legend(fontsize="small")

    if others and base is not None:
        ax = axes[1]
        for i, system in others:
            d_reward = system.reward_score - base.reward_score
            d_cost = system.cost_score - base.cost_score
            ax.scatter(d_reward, d_cost, s=12, alpha=0.5, color=f"C{i}", linewidths=0, label=system.name)
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.axvline(0.0, color="gray", lw=0.8)
        # Shade the quadrants after scattering so the limits fit the data.
        x_low, x_high = ax.get_xlim()
        y_low, y_high = ax.get_ylim()
        ax.fill_between([0, x_high], y_low, 0, color="tab:green", alpha=0.08, label="win (more reward, less cost)")
        ax.fill_between([x_low, 0], 0, y_high, color="tab:red", alpha=0.08, label="loss")
        ax.set_xlim(x_low, x_high)
        ax.set_ylim(y_low, y_high)
        ax.set_xlabel(f"reward - reward of {base.name}")
        ax.set_ylabel(f"cost - cost of {base.name}")
        ax.set_title(f"Per-prompt difference to {base.name}")
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def read_training_log(progress_csv: str | Path) -> Any:
    """
    Read a Stable-Baselines3 ``progress.csv`` and check that it holds MARA training curves.

    :param progress_csv: The CSV log
    :return: The ``pandas.DataFrame``; empty cells are NaN
    """
    import pandas as pd

    source = Path(progress_csv)
    if not source.is_file():
        raise FileNotFoundError(
            f"training log {str(source)!r} does not exist; pass the progress.csv that Stable-Baselines3 "
            "writes with the 'csv' logger format (or training_log=None to skip the training curves)."
        )
    try:
        table = pd.read_csv(source)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty:
        raise ValueError(f"training log {str(source)!r} is empty: it has no logged rows yet.")
    known = [*TRAINING_COLUMNS, *TRAINING_OPTIONAL_COLUMNS]
    if not any(c in table.columns for c in known):
        raise ValueError(
            f"training log {str(source)!r} has none of the columns {', '.join(TRAINING_COLUMNS)}; its columns are "
            f"{', '.join(map(str, table.columns))}. Is it the progress.csv of a MARA training run?"
        )
    return table


def plot_training_curves(progress_csv: Any, path: str | Path) -> list[str]:
    """
    Reward, cost and KL against environment decisions from a Stable-Baselines3 ``progress.csv``
    (the paper's figure 4), one panel each, plus panels for ``mara/terminal_reward`` and
    ``mara/response_tokens`` when logged. Empty cells are skipped per column; long curves get a
    rolling mean over the raw values.

    :param progress_csv: Path of the CSV log, or the table from :func:`read_training_log`; x-axis
        column ``time/total_timesteps`` (the row number if absent)
    :param path: PNG file to write
    :return: The required columns that were missing (noted in their panels)
    """
    import pandas as pd

    table = progress_csv if isinstance(progress_csv, pd.DataFrame) else read_training_log(progress_csv)
    wanted = dict(TRAINING_COLUMNS)
    wanted.update({c: label for c, label in TRAINING_OPTIONAL_COLUMNS.items() if c in table.columns})
    if TRAINING_X_COLUMN in table.columns:
        x_all = pd.to_numeric(table[TRAINING_X_COLUMN], errors="coerce")
        x_label = "environment decisions (time/total_timesteps)"
    else:
        x_all = pd.Series(np.arange(len(table), dtype=np.float64), index=table.index)
        x_label = f"log row ({TRAINING_X_COLUMN} not in log)"

    n_cols = min(3, len(wanted))
    n_rows = -(-len(wanted) // n_cols)
    figure = _new_figure(4.4 * n_cols, 3.6 * n_rows)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[len(wanted) :]:
        ax.set_visible(False)
    missing = []
    for ax, (column, label) in zip(axes, wanted.items()):
        ax.set_title(label)
        ax.set_xlabel(x_label)
        if column not in table.columns:
            missing.append(column)
            ax.text(0.5, 0.5, f"'{column}'\nnot in log", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        y_all = pd.to_numeric(table[column], errors="coerce")
        keep = x_all.notna() & y_all.notna()
        if not keep.any():
            ax.text(0.5, 0.5, f"'{column}'\nhas no values", ha="center", va="center", transform=ax.transAxes)
            continue
        order = np.argsort(x_all[keep].to_numpy(), kind="stable")
        x = x_all[keep].to_numpy()[order]
        y = y_all[keep].to_numpy()[order]
        if len(y) > 30:
            smooth = pd.Series(y).rolling(max(3, len(y) // 20), center=True, min_periods=1).mean()
            ax.plot(x, y, color="C0", alpha=0.3, lw=0.8, label="logged")
            ax.plot(x, smooth, color="C0", lw=1.8, label="rolling mean")
            ax.legend(fontsize="small")
        else:
            ax.plot(x, y, color="C0", marker="o", ms=3)
    figure.savefig(path, dpi=120)
    return missing


# --------------------------------------------------------------------------- report


def _check_same_prompts(system: SystemResult, base: SystemResult) -> None:
    if system.prompts == base.prompts:
        if system.samples_per_prompt != base.samples_per_prompt:
            raise ValueError(
                f"System {system.name!r} has {system.samples_per_prompt} samples per prompt but the baseline "
                f"{base.name!r} has {base.samples_per_prompt}; sample j of a system is paired with sample j of the "
                "baseline, so evaluate every system with the same samples_per_prompt."
            )
        return
    if system.n != base.n:
        detail = f"{system.n} prompts vs {base.n}"
    else:
        i = next(k for k, (a, b) in enumerate(zip(system.prompts, base.prompts)) if a != b)
        detail = f"prompt {i} differs: {_truncate(system.prompts[i], 60)!r} vs {_truncate(base.prompts[i], 60)!r}"
    raise ValueError(
        f"System {system.name!r} was not evaluated on the baseline {base.name!r}'s prompts ({detail}). "
        "Evaluate every system on the same prompt list, in the same order."
    )


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cell(text: str, limit: int = 400) -> str:
    """Text safe inside a markdown table cell: HTML escaped, pipes escaped, line breaks as <br>."""
    text = html.escape(_truncate(text.strip(), limit), quote=False).replace("|", "\\|")
    return text.replace("\r\n", "\n").replace("\n", "<br>") or "*(empty)*"


def _fmt(value: float | None, spec: str = ".3f", std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")


def _fmt_difference(d: Mapping[str, Any]) -> str:
    if d["mean"] is None:
        return "-"
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _pick_examples(outcomes: np.ndarray | None, n: int, count: int) -> list[int]:
    """The first win, loss and tie against the baseline (so all cases show), then prompts in order."""
    chosen: list[int] = []
    if outcomes is not None:
        for value in (1, -1, 0):
            hits = np.flatnonzero(outcomes == value)
            if hits.size and len(chosen) < count:
                chosen.append(int(hits[0]))
    chosen += [i for i in range(n) if i not in chosen][: max(0, count - len(chosen))]
    return sorted(chosen)


def _markdown(
    report: dict[str, Any], systems: Sequence[SystemResult], outcomes: dict[str, np.ndarray], examples: int
) -> str:
    meta, baseline, level = report["meta"], report["baseline"], report["level"]
    samples = systems[0].samples_per_prompt
    lines = ["# MARA evaluation report", ""]
    for key, value in meta.items():
        shown = value if isinstance(value, (str, int, float)) or value is None else json.dumps(value)
        lines.append(f"- **{key}**: {_cell(str(shown), 200)}")
    together = f" (each prompt with its {samples} pairs)" if samples > 1 else ""
    lines.append(
        f"- **bootstrap**: {report['n_resamples']} resamples of the prompts{together}, seed {report['seed']}, "
        f"{level * 100:g}% percentile interval"
    )
    pairing = (
        f"Every system answers each prompt {samples} times; sample j is paired with the baseline's sample j on the "
        "same prompt. "
        if samples > 1
        else ""
    )
    lines += [
        "",
        "## Preference against the baseline",
        "",
        f"{pairing}Win: higher reward *and* lower cost than `{baseline}` on a pair; lose: lower reward *and* higher "
        "cost; tie: anything else. Preference rate = (win - lose) / pairs (paper eq. 12). Reward and cost "
        f"differences: mean over pairs of system - `{baseline}`.",
        "",
    ]
    if report["comparisons"]:
        lines += [
            f"| system vs baseline | win | tie | lose | preference rate | {level * 100:g}% CI "
            f"| reward difference [{level * 100:g}% CI] | cost difference [{level * 100:g}% CI] | pairs |",
            "|---|---:|---:|---:|---:|---|---|---|---:|",
        ]
        for name, c in report["comparisons"].items():
            lines.append(
                f"| {name} vs {baseline} | {c['wins']} | {c['ties']} | {c['losses']} | {c['rate'] * 100:+.2f}% "
                f"| [{c['ci_low'] * 100:+.2f}%, {c['ci_high'] * 100:+.2f}%] | {_fmt_difference(c['reward_diff'])} "
                f"| {_fmt_difference(c['cost_diff'])} | {c['n']} |"
            )
    else:
        lines.append("*(only the baseline was evaluated: nothing to compare)*")
    if report["head_to_head"]:
        lines += [
            "",
            "## Head to head",
            "",
            "The other systems against each other, paired and counted the same way (first named = system A).",
            "",
            f"| A vs B | win | tie | lose | preference rate of A | {level * 100:g}% CI "
            f"| reward A - B [{level * 100:g}% CI] | cost A - B [{level * 100:g}% CI] |",
            "|---|---:|---:|---:|---:|---|---|---|",
        ]
        for name, c in report["head_to_head"].items():
            lines.append(
                f"| {name} | {c['wins']} | {c['ties']} | {c['losses']} | {c['rate'] * 100:+.2f}% "
                f"| [{c['ci_low'] * 100:+.2f}%, {c['ci_high'] * 100:+.2f}%] | {_fmt_difference(c['reward_diff'])} "
                f"| {_fmt_difference(c['cost_diff'])} |"
            )
    lines += [
        "",
        "## Per-system means",
        "",
        "Mean ± standard deviation over answers. LLM tokens / response token: tokens forwarded through the LLM per "
        "token of response (the compute cost). Scorer calls / answer: (prompt, answer) pairs the system scored "
        "itself to produce an answer (best-of-N's selection, reward-guided decoding); the evaluation's own scoring "
        "is not counted.",
        "",
        "| system | prompts | answers | reward | cost | KL (nats) | tokens | LLM tokens / response token "
        "| scorer calls / answer | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["systems"].items():
        lines.append(
            f"| {name} | {s['n']} | {s['answers']} | {_fmt(s['reward_mean'], '.3f', s['reward_std'])} "
            f"| {_fmt(s['cost_mean'], '.3f', s['cost_std'])} | {_fmt(s['kl_mean'], '.3f', s['kl_std'])} "
            f"| {_fmt(s['tokens_mean'], '.1f', s['tokens_std'])} | {_fmt(s['llm_tokens_per_response_token'], '.2f')} "
            f"| {_fmt(s['scorer_calls_per_answer'], '.1f')} | {_fmt(s['tokens_per_second'], '.1f')} |"
        )
    figures = [f for f in report["files"] if f.endswith(".png")]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]

    base = next(s for s in systems if s.name == baseline)
    first_outcomes = next(iter(outcomes.values()), None)
    # Examples show each prompt's first sample (answer i * S).
    first_sample = None if first_outcomes is None else first_outcomes[::samples]
    picked = _pick_examples(first_sample, base.n, examples)
    names = [s.name for s in systems]
    if picked:
        lines += ["", "## Examples", ""]
        if samples > 1:
            lines += [f"First of the {samples} samples of each shown prompt.", ""]
    for i in picked:
        r = i * samples
        lines += [f"### Prompt {i}", "", f"> {_cell(base.prompts[i], 600)}", ""]
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        lines.append("| response | " + " | ".join(_cell(s.responses[r]) for s in systems) + " |")
        lines.append(
            "| reward / cost | "
            + " | ".join(f"{s.reward_score[r]:.3f} / {s.cost_score[r]:.3f}" for s in systems)
            + " |"
        )
        verdict = {1: "win", 0: "tie", -1: "lose"}
        lines.append(
            f"| vs {baseline} | "
            + " | ".join(verdict[int(outcomes[s.name][r])] if s.name in outcomes else "baseline" for s in systems)
            + " |"
        )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    folder: str | Path,
    systems: Sequence[SystemResult],
    baseline: str,
    *,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    meta: dict | None = None,
    training_log: str | Path | None = None,
    examples: int = 5,
) -> dict[str, Any]:
    """
    Compare every system with the baseline and write the report files into ``folder``.

    Answer ``j`` of a system on a prompt is paired with answer ``j`` of the baseline on that prompt
    (every system needs the baseline's ``samples_per_prompt``); wins, ties and losses count pairs and
    every interval is a bootstrap over prompts that keeps each prompt's pairs together.

    Files: ``report.json`` (returned), ``report.md``, ``scores.png``, ``accept_positions.png`` (when
    a system has ``accepted_ranks``) and ``training_curves.png`` (when ``training_log`` is given).
    Everything is validated before anything is written.

    :param folder: Output folder, created if needed; existing report files are overwritten
    :param systems: The evaluated systems, unique names, all on the same prompts in the same order
    :param baseline: Name of the system the others are compared with (B in :func:`compare`)
    :param level: Coverage of the bootstrap intervals
    :param n_resamples: Bootstrap resamples per comparison
    :param seed: Seed of the bootstrap (each comparison uses the same seed)
    :param meta: Header facts for the report, e.g. ``{"model": ..., "dataset": ...}``; ``created`` (UTC
        date and time) is added unless given
    :param training_log: Stable-Baselines3 ``progress.csv`` of the training run, for ``training_curves.png``
    :param examples: Number of prompts shown with all responses side by side in ``report.md``
    :return: The contents of ``report.json``: ``meta``, ``baseline``, ``level``, ``n_resamples``, ``seed``,
        ``samples_per_prompt``, ``systems`` (name -> :meth:`SystemResult.summary`), ``comparisons`` (name ->
        ``Preference.to_dict()`` plus ``baseline``, ``samples_per_prompt``, and ``reward_diff`` and ``cost_diff``,
        each ``MeanDifference.to_dict()`` of system - baseline), ``head_to_head`` (``"A vs B"`` for every
        other pair of non-baseline systems, A listed first: the same fields with B as the opponent), ``rows``
        (per prompt and sample: ``index``, ``sample``, ``prompt`` and per system ``response``, ``reward``,
        ``cost``, ``num_tokens`` and ``outcome`` against the baseline), ``missing_training_columns`` and ``files``
    """
    systems = list(systems)
    if not systems:
        raise ValueError("write_report() needs at least one SystemResult.")
    names = [s.name for s in systems]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"System names must be unique in a report; repeated: {', '.join(duplicates)}.")
    if baseline not in names:
        raise ValueError(f"baseline={baseline!r} is not one of the systems ({', '.join(names)}).")
    level, n_resamples = _check_bootstrap_args(level, n_resamples)
    base = systems[names.index(baseline)]
    for system in systems:
        _check_same_prompts(system, base)
    log_table = read_training_log(training_log) if training_log is not None else None

    groups = base.prompt_index  # the bootstrap resamples prompts, each with its S pairs
    boot = dict(level=level, n_resamples=n_resamples, seed=seed, groups=groups)
    outcomes: dict[str, np.ndarray] = {}
    comparisons: dict[str, Any] = {}
    for system in systems:
        if system is base:
            continue
        outcomes[system.name] = compare(system.reward_score, system.cost_score, base.reward_score, base.cost_score)
        pref = preference(outcomes[system.name], **boot)
        comparisons[system.name] = {
            "baseline": baseline,
            **pref.to_dict(),
            "samples_per_prompt": base.samples_per_prompt,
            "reward_diff": mean_difference(system.reward_score, base.reward_score, **boot).to_dict(),
            "cost_diff": mean_difference(system.cost_score, base.cost_score, **boot).to_dict(),
        }

    # Every other pair of systems, earlier against later (an agent against best-of-N or ARGS), paired the same way.
    head_to_head: dict[str, Any] = {}
    others = [s for s in systems if s is not base]
    for a_index, a in enumerate(others):
        for b in others[a_index + 1 :]:
            pref = preference(compare(a.reward_score, a.cost_score, b.reward_score, b.cost_score), **boot)
            head_to_head[f"{a.name} vs {b.name}"] = {
                "system": a.name,
                "opponent": b.name,
                **pref.to_dict(),
                "reward_diff": mean_difference(a.reward_score, b.reward_score, **boot).to_dict(),
                "cost_diff": mean_difference(a.cost_score, b.cost_score, **boot).to_dict(),
            }

    rows = []
    for r, (i, j) in enumerate(zip(base.prompt_index, base.sample_index)):
        per_system = {}
        for system in systems:
            entry = {
                "response": system.responses[r],
                "reward": _num(system.reward_score[r]),
                "cost": _num(system.cost_score[r]),
                "num_tokens": int(system.num_tokens[r]),
            }
            if system.name in outcomes:
                entry["outcome"] = int(outcomes[system.name][r])
            per_system[system.name] = entry
        rows.append({"index": int(i), "sample": int(j), "prompt": base.prompts[i], "systems": per_system})

    report_meta = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **(meta or {})}
    report_meta.setdefault("prompts", base.n)
    report_meta.setdefault("samples_per_prompt", base.samples_per_prompt)
    report_meta.setdefault("baseline", baseline)

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    plot_scores(systems, out / "scores.png", baseline=baseline)
    files.append("scores.png")
    if plot_accept_positions(systems, out / "accept_positions.png"):
        files.append("accept_positions.png")
    missing_columns: list[str] = []
    if log_table is not None:
        missing_columns = plot_training_curves(log_table, out / "training_curves.png")
        files.append("training_curves.png")
    files += ["report.md", "report.json"]

    report = _jsonable(
        {
            "meta": report_meta,
            "baseline": baseline,
            "level": level,
            "n_resamples": n_resamples,
            "seed": seed,
            "samples_per_prompt": base.samples_per_prompt,
            "systems": {s.name: s.summary() for s in systems},
            "comparisons": comparisons,
            "head_to_head": head_to_head,
            "rows": rows,
            "missing_training_columns": missing_columns,
            "files": files,
        }
    )
    (out / "report.md").write_text(_markdown(report, systems, outcomes, examples), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
