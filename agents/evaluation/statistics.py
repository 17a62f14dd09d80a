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

**Where the rest is.** This module is the statistics; :mod:`agents.evaluation.results` holds
one system's answers and scores, :mod:`agents.evaluation.figures` the figures,
:mod:`agents.evaluation.report` the report writer and :mod:`agents.evaluation.pipeline` the
evaluation that ``mara evaluate`` runs (generate, score, compare, report).

**Reports.** :class:`~agents.evaluation.results.SystemResult` holds one system's answers (``S`` per
prompt), scores, costs and compute (LLM tokens forwarded, scorer calls made to produce the answers);
:func:`~agents.evaluation.report.write_report` compares every system with a baseline and writes
``report.json``, ``report.md`` and figures
(accepted candidate positions as in the paper's figure 3, reward vs cost, and training curves as in
figure 4 from a Stable-Baselines3 ``progress.csv``).

This module uses numpy only at import; matplotlib (Agg canvas, no display, no pyplot state) and
pandas are imported when a figure is drawn. It never loads a language model.

Example::

    >>> import numpy as np
    >>> from agents.evaluation.statistics import compare, preference
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

import operator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MeanDifference",
    "Preference",
    "bootstrap_ci",
    "compare",
    "mean_difference",
    "preference",
    "preference_rate",
]

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
