"""
Head-to-head evaluation: the base LLM, MARA agents, ARGS and best-of-N answer the same held-out prompts.

:func:`run_comparison` generates every system's answers, scores them with the reward and cost models,
and writes the report of :func:`agents.evaluation.write_report` (win/tie/lose by the paper's rule,
preference rate and mean reward and cost differences with prompt-bootstrap intervals, compute,
figures). Systems:

- ``base``: the LLM alone, sampling with the same prompt format, temperature, top-k and top-p
  (:meth:`~agents.generation.MARAGenerator.generate_raw`); the baseline of every comparison;
- one system per agent (``{"mara": "runs/mara-default/model.zip", "ppo": ...}``), decoded by
  :meth:`~agents.generation.MARAGenerator.generate` with exactly the environment's rules;
- ``args-w<w>-k<k>``: reward-guided decoding (ARGS, :mod:`agents.reward_guided`) with the same reward
  and cost models, one system per setting in ``args``;
- ``best-of-N``: ``N`` fresh base answers per answer slot, keeping the one with the highest terminal
  reward ``alpha_r * R - alpha_c * g(C)`` under the same reward and cost models (``g``: the cost scale).
  Its ``N`` draws are independent of the base system's own sample (other seeds), so best-of-N can lose to the base as
  any system can. Each draw is an independent sample of the base distribution, so
  ``KL(best-of-N || base) <= log N - (N - 1) / N`` (Beirami et al., 2024) still holds.
  ``N="auto"`` matches the first agent's compute (without agents, the first ARGS setting's):
  ``N = round(LLM tokens of that system / LLM tokens of the base)``, at least 2.

**Samples per prompt.** Every system answers each prompt ``samples_per_prompt = S`` times, with
distinct, reproducible seeds per (prompt, sample): sample ``j`` of a system is decoded with
``seed_j = seed + j * SAMPLE_SEED_STRIDE`` (:func:`sample_seed`); the base LLM seeds torch with
``seed_j + batch index`` per batch, an agent draws prompt ``i``'s decisions from the stream
``(seed_j, i)``, and best-of-N's draw ``m`` of sample ``j`` uses stream ``S + j * N + m``, disjoint
from every system's own streams ``0 .. S - 1``. A system whose answers do not depend on the seed
(greedy ARGS, ``deterministic=True`` agents) is decoded once and its answers are repeated ``S``
times; its LLM tokens, scorer calls and wall time are then counted ``S`` times, so its per-answer
figures are those of one decode. Sample ``j`` of a system is compared with sample ``j`` of the base
on the same prompt (:func:`agents.evaluation.write_report`).

**Compute** per system, in the report: LLM tokens forwarded per answer token, and scorer calls per
answer: (prompt, answer) pairs the system scored itself to produce an answer (0 for the base and
MARA agents, ``N`` for best-of-N's selection, ``k`` per answer token for ARGS; the evaluation's own
scoring is not counted).

Evaluation prompts come from the held-out (``"test"``) part of the prompt set, the part that
``MARA-v0`` with ``prompt_split="train"`` never draws. Tune ARGS's ``w`` and ``k`` on the
``"train"`` part (``benchmarks/args_tuning.py``), never on these.

Example::

    >>> from agents.evaluation import run_comparison
    >>> report = run_comparison(  # doctest: +SKIP
    ...     {"mara": "runs/mara-default/model.zip"}, "runs/mara-default/eval", max_new_tokens=48,
    ...     samples_per_prompt=2, args={"weight": 5.0, "k": 10},
    ... )
    >>> report["comparisons"]["mara"]["rate"], report["comparisons"]["args-w5-k10"]["reward_diff"]  # doctest: +SKIP

(Not run by the test suite: it needs a trained agent and the embedded model's weights.)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.accepted_positions import ACCEPT_POSITION_BINS, accept_position_counts
from agents.evaluation.report import write_report
from agents.evaluation.results import SystemResult
from agents.generation import Generation, MARAGenerator
from agents.reward_guided import ARGSGenerator
from mara_env import TerminalReward, TerminalScores, held_out_prompts, load_replicas

__all__ = [
    "ARGS_DEFAULTS",
    "BASE",
    "SAMPLE_SEED_STRIDE",
    "args_settings",
    "check_samples_per_prompt",
    "held_out_prompts",
    "run_comparison",
    "sample_seed",
    "summarize_generations",
]

#: The baseline system's name.
BASE = "base"
#: Seed distance between sample streams (more than any run's number of batches).
SAMPLE_SEED_STRIDE = 1_000_003
#: Keys of one ARGS setting in ``run_comparison(args=...)`` and their defaults (ARGS paper: k = 10, w = 1).
ARGS_DEFAULTS: dict[str, Any] = {"weight": 1.0, "k": 10, "sample": False}


def sample_seed(seed: int, stream: int) -> int:
    """The seed of sample stream ``stream``: ``seed + stream * SAMPLE_SEED_STRIDE``."""
    return seed + stream * SAMPLE_SEED_STRIDE


def check_samples_per_prompt(value: Any, name: str = "samples_per_prompt") -> int:
    """``value`` as a number of samples per prompt, an integer >= 1; otherwise a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"{name} must be an integer >= 1 (independent answers per prompt and system; 1: one each), got {value!r}."
        )
    return int(value)


def args_settings(args: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """ARGS settings as a list of ``{"weight", "k", "sample"}`` dicts (missing keys: :data:`ARGS_DEFAULTS`)."""
    if args is None:
        return []
    items = [args] if isinstance(args, Mapping) else list(args)
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError(f"args must be a dict such as {{'weight': 5.0, 'k': 10}} or a list of them; got {item!r}.")
        unknown = sorted(set(item) - set(ARGS_DEFAULTS))
        if unknown:
            raise ValueError(f"args: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(ARGS_DEFAULTS)}.")
        out.append({**ARGS_DEFAULTS, **item})
    return out


@dataclass
class _Drawn:
    """One system's answers, prompt-major (``S`` per prompt), their scores and the compute behind them."""

    answers: list[Generation]
    reward_score: np.ndarray
    cost_score: np.ndarray
    llm_tokens: int
    wall_seconds: float
    scorer_calls: int

    def result(self, name: str, prompts: list[str], samples: int, **kw: Any) -> SystemResult:
        return SystemResult(
            name=name,
            prompts=list(prompts),
            responses=[g.text for g in self.answers],
            reward_score=self.reward_score,
            cost_score=self.cost_score,
            num_tokens=np.array([g.num_tokens for g in self.answers]),
            accepted_ranks=[g.accepted_ranks for g in self.answers],
            llm_tokens=self.llm_tokens,
            wall_seconds=self.wall_seconds,
            samples_per_prompt=samples,
            scorer_calls=self.scorer_calls,
            **kw,
        )


#: Sample ``j``'s answers (one per prompt), their scores, and LLM tokens, wall seconds and scorer calls spent.
DrawFn = Callable[[int], tuple[list[Generation], Any, int, float, int]]


def _samples(samples: int, draw: DrawFn, *, repeat: bool = False) -> _Drawn:
    """``samples`` draws per prompt, flattened prompt-major (sample ``j`` of prompt ``i`` at ``i * samples + j``).

    ``repeat``: the system ignores the seed, so sample 0 is drawn once and repeated, with its compute
    counted ``samples`` times.
    """
    drawn = [draw(j) for j in range(1 if repeat else samples)]
    if repeat:
        drawn = drawn * samples
    n = len(drawn[0][0])

    def flat(values: Callable[[Any], Sequence[Any]]) -> list[Any]:
        return [values(drawn[j])[i] for i in range(n) for j in range(samples)]

    return _Drawn(
        answers=flat(lambda d: d[0]),
        reward_score=np.array(flat(lambda d: d[1].reward_score), dtype=np.float64),
        cost_score=np.array(flat(lambda d: d[1].cost_score), dtype=np.float64),
        llm_tokens=sum(d[2] for d in drawn),
        wall_seconds=sum(d[3] for d in drawn),
        scorer_calls=sum(d[4] for d in drawn),
    )


def run_comparison(
    agents: Mapping[str, Any],
    out: str | Path,
    *,
    llm: Any = None,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 512,
    seed: int = 0,
    samples_per_prompt: int = 1,
    best_of: int | str = "auto",
    args: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    reward_model: Any = "sentiment",
    cost_model: Any = "toxicity",
    alpha_r: float = 1.0,
    alpha_c: float = 1.0,
    cost_scale: str = "linear",
    scorer_devices: Any = None,
    scorer_dtype: Any = "auto",
    deterministic: bool = False,
    training_log: str | Path | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    **generator_kwargs: Any,
) -> dict[str, Any]:
    """Generate, score and compare; write the report into ``out``; return the report's JSON dict.

    :param agents: system name -> agent (anything :class:`~agents.generation.MARAGenerator` accepts); may be
        empty when ``args`` is given.
    :param out: report folder (created; existing files are replaced).
    :param llm: the LLM, in any form ``MARA-v0`` accepts.
    :param prompts: evaluation prompts (default: :func:`held_out_prompts` of the default set).
    :param max_new_tokens: answer-length limit (use the training environment's).
    :param seed: seeds every system's sampling (see the module docstring for the streams).
    :param samples_per_prompt: ``S``, independent answers per prompt and system (>= 1); the report pairs
        sample ``j`` of each system with sample ``j`` of the base.
    :param best_of: ``N`` for the best-of-N system, ``"auto"`` (match the first agent's compute) or 0 (none).
    :param args: ARGS settings, ``{"weight": w, "k": k}`` (``"sample": True`` for stochastic ARGS) or a list of
        them; one system ``args-w<w>-k<k>`` each. ``None``: no ARGS.
    :param reward_model: R, as for ``MARA-v0``.
    :param cost_model: C, as for ``MARA-v0``; ``None``: no cost, so answers are compared on R alone.
    :param alpha_r: weight of R in the terminal reward that best-of-N selects by and ARGS is guided by.
    :param alpha_c: weight of C in that terminal reward.
    :param cost_scale: how C enters it (``"linear"`` or ``"logit"``, :func:`mara_env.scoring.scale_cost`); the
        report's cost scores stay C.
    :param scorer_devices: device of model-based scorers, or [reward device, cost device] (default: the LLM's).
    :param scorer_dtype: their dtype (``"auto"``: bfloat16 on CUDA, float32 elsewhere; ``None``: the checkpoint's).
    :param deterministic: agents accept when ``pi(accept | s) >= 0.5`` instead of sampling.
    :param training_log: a training run's ``progress.csv``, for the training-curve figure.
    :param meta: extra facts for the report header.
    :param progress: show progress bars.
    :param generator_kwargs: ``top_k``, ``top_p``, ``temperature``, ``system_prompt``, ``chunk_size``,
        ``batch_size``, ``devices``, ``dtype``, ... (see :class:`~agents.generation.MARAGenerator`);
        use the training environment's values.
    """
    settings = args_settings(args)
    if not agents and not settings:
        raise ValueError(
            "agents is empty and no args setting is given: give at least one agent (or ARGS setting) to compare "
            "with the base LLM."
        )
    if BASE in agents or any(name.startswith(("best-of-", "args-")) for name in agents):
        raise ValueError(f"agent names {BASE!r}, 'best-of-...' and 'args-...' are reserved for the built-in systems.")
    if not (best_of == "auto" or (isinstance(best_of, int) and not isinstance(best_of, bool) and best_of >= 0)):
        raise ValueError(f"best_of must be 'auto' or an integer >= 0 (0: no best-of-N system), got {best_of!r}.")
    samples = check_samples_per_prompt(samples_per_prompt)
    prompts = held_out_prompts() if prompts is None else list(prompts)
    device_kw = {k: generator_kwargs.pop(k) for k in ("devices", "dtype", "trust_remote_code") if k in generator_kwargs}
    replicas = load_replicas(llm, **device_kw)
    terminal = TerminalReward(
        reward_model,
        cost_model,
        alpha_r=alpha_r,
        alpha_c=alpha_c,
        cost_scale=cost_scale,
        device=scorer_devices if scorer_devices is not None else replicas[0].device,
        dtype=scorer_dtype,
    )

    def score(gens: Sequence[Generation]) -> Any:
        return terminal(prompts, [g.text for g in gens])

    # Every agent and ARGS setting is loaded and checked before any decoding, so a bad one fails at once.
    agent_gens = {
        name: MARAGenerator(replicas, agent, deterministic=deterministic, **generator_kwargs)
        for name, agent in agents.items()
    }
    base_gen = MARAGenerator(replicas, None, **generator_kwargs)
    args_gens = [ARGSGenerator(base_gen, terminal, **s) for s in settings]
    names = [a.name for a in args_gens]
    if len(set(names)) < len(names):
        raise ValueError(f"args holds the same setting twice ({', '.join(names)}); give each setting once.")

    def raw_draw(j: int) -> tuple[list[Generation], Any, int, float, int]:
        answers = base_gen.generate_raw(prompts, max_new_tokens, seed=sample_seed(seed, j), progress=progress)
        stats = base_gen.last_stats
        return answers, score(answers), stats.llm_tokens, stats.wall_seconds, 0

    systems: list[SystemResult] = []
    base = _samples(samples, raw_draw)
    systems.append(base.result(BASE, prompts, samples, kl=np.zeros(len(base.answers))))

    matched_tokens: int | None = None  # the LLM tokens best-of-N "auto" matches
    for name, gen in agent_gens.items():

        def agent_draw(j: int, gen: MARAGenerator = gen) -> tuple[list[Generation], Any, int, float, int]:
            answers = gen.generate(prompts, max_new_tokens, seed=sample_seed(seed, j), progress=progress)
            stats = gen.last_stats
            return answers, score(answers), stats.llm_tokens, stats.wall_seconds, 0

        drawn = _samples(samples, agent_draw, repeat=deterministic)
        matched_tokens = drawn.llm_tokens if matched_tokens is None else matched_tokens
        systems.append(
            drawn.result(
                name,
                prompts,
                samples,
                kl=np.array([g.kl for g in drawn.answers]),
                extra={"decisions": int(sum(g.num_decisions for g in drawn.answers)), "repeated": deterministic},
            )
        )

    for gen in args_gens:

        def args_draw(j: int, gen: ARGSGenerator = gen) -> tuple[list[Generation], Any, int, float, int]:
            answers = gen.generate(prompts, max_new_tokens, seed=sample_seed(seed, j), progress=progress)
            stats = gen.last_stats
            return answers, score(answers), stats.llm_tokens, stats.wall_seconds, stats.extra["scorer_calls"]

        drawn = _samples(samples, args_draw, repeat=gen.deterministic)
        matched_tokens = drawn.llm_tokens if matched_tokens is None else matched_tokens
        systems.append(
            drawn.result(
                gen.name,
                prompts,
                samples,
                extra={"weight": gen.weight, "k": gen.k, "sample": gen.sample, "repeated": gen.deterministic},
            )
        )

    n = best_of
    if best_of == "auto":
        n = max(2, round(matched_tokens / max(base.llm_tokens, 1)))
    if n >= 2:
        systems.append(_best_of_n(n, samples, prompts, base_gen, score, max_new_tokens, seed, progress))

    if cost_model is None:
        # No cost model: every cost is 0 and the paper's rule would call everything a tie. Compare on R
        # alone by giving each answer cost -R (lower cost <=> higher reward).
        for system in systems:
            system.extra["cost_note"] = "no cost model: cost_score shown is -reward_score"
            system.cost_score = -system.reward_score
    info = {
        "llm": replicas[0].name,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "samples_per_prompt": samples,
        "reward_model": str(reward_model),
        "cost_model": str(cost_model),
        "alpha_r": alpha_r,
        "alpha_c": alpha_c,
        "cost_scale": cost_scale,
        "best_of": n,
        "args": [g.name for g in args_gens],
        "deterministic_agents": deterministic,
        "agents": len(agents),
        **{k: v for k, v in generator_kwargs.items() if isinstance(v, (int, float, str, type(None)))},
        **(dict(meta) if meta else {}),
    }
    return write_report(out, systems, baseline=BASE, meta=info, training_log=training_log, spread_over=list(agents))


def _best_of_n(
    n: int,
    samples: int,
    prompts: list[str],
    gen: MARAGenerator,
    score: Callable[[Sequence[Generation]], Any],
    max_new_tokens: int,
    seed: int,
    progress: bool,
) -> SystemResult:
    """Per prompt and sample, ``n`` fresh base answers (streams ``samples + j * n + m``); keep the highest reward."""
    bar = tqdm(total=samples * n, desc=f"best-of-{n}", unit="draw", disable=not progress)

    def draw(j: int) -> tuple[list[Generation], Any, int, float, int]:
        candidates, all_scores = [], []
        llm_tokens, wall = 0, 0.0
        for m in range(n):
            # Streams 0 .. samples - 1 are the systems' own samples: best-of-N never reuses the base's.
            answers = gen.generate_raw(prompts, max_new_tokens, seed=sample_seed(seed, samples + j * n + m))
            llm_tokens += gen.last_stats.llm_tokens
            wall += gen.last_stats.wall_seconds  # generation only, as for every system
            candidates.append(answers)
            all_scores.append(score(answers))
            bar.update(1)
        pick = np.argmax(np.stack([s.reward for s in all_scores]), axis=0)  # highest alpha_r * R - alpha_c * g(C)
        chosen = [candidates[m][i] for i, m in enumerate(pick)]
        picked = TerminalScores(
            *(np.array([getattr(all_scores[m], f)[i] for i, m in enumerate(pick)]) for f in TerminalScores._fields)
        )
        return chosen, picked, llm_tokens, wall, n * len(prompts)  # n (prompt, answer) pairs scored per answer

    drawn = _samples(samples, draw)
    bar.close()
    return drawn.result(
        f"best-of-{n}",
        prompts,
        samples,
        # KL of best-of-n to the base distribution is at most log n - (n - 1) / n (Beirami et al., 2024): the n
        # draws are independent samples of the base distribution (just not the base system's own).
        extra={"kl_bound": float(np.log(n) - (n - 1) / n), "n": n},
    )


# --------------------------------------------------------------------------------------------- learning curves


def _mean(values: Sequence[float] | np.ndarray) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()) if array.size else float("nan")


def summarize_generations(answers: Sequence[Generation], terminal: TerminalReward) -> dict[str, Any]:
    """Score answers and summarise them: one point of a learning curve.

    :param answers: answers of one evaluation, in prompt order.
    :param terminal: the task's reward and cost models.
    :return: ``reward``, ``cost``, ``terminal`` (``alpha_r R - alpha_c C``), ``kl`` (nats), ``tokens``
        (means over answers), ``accept_first`` (share of answer tokens that were the first candidate)
        and ``accept_positions`` (shares of positions 1 .. 9 and 10+).
    """
    scores = terminal([a.prompt for a in answers], [a.text for a in answers])
    counts = accept_position_counts([a.accepted_ranks for a in answers], max_rank=ACCEPT_POSITION_BINS)
    total = int(counts.sum())
    shares = (counts / total).tolist() if total else [float("nan")] * ACCEPT_POSITION_BINS
    return {
        "reward": _mean(scores.reward_score),
        "cost": _mean(scores.cost_score),
        "terminal": _mean(scores.reward),
        "kl": _mean([a.kl for a in answers]),
        "tokens": _mean([a.num_tokens for a in answers]),
        "accept_first": shares[0],
        "accept_positions": shares,
    }
