"""
Head-to-head evaluation: the base LLM, MARA agents and best-of-N answer the same held-out prompts.

:func:`run_comparison` generates every system's answers, scores them with the reward and cost models,
and writes the report of :func:`agents.evaluation.write_report` (win/tie/lose by the paper's rule,
preference rate with a bootstrap interval, figures). Systems:

- ``base``: the LLM alone, sampling with the same prompt format, temperature, top-k and top-p
  (:meth:`~agents.generation.MARAGenerator.generate_raw`); the baseline of every comparison;
- one system per agent (``{"mara": "runs/mara-default/model.zip", "ppo": ...}``), decoded by
  :meth:`~agents.generation.MARAGenerator.generate` with exactly the environment's rules;
- ``best-of-N``: ``N`` base answers per prompt, keeping the one with the highest terminal reward
  ``alpha_r * R - alpha_c * C`` under the same reward and cost models. ``N="auto"`` matches the
  first agent's compute: ``N = round(LLM tokens of the agent / LLM tokens of one base pass)``, at
  least 2. Both systems' LLM token counts are reported.

Evaluation prompts come from the held-out (``"test"``) part of the prompt set, the part that
``MARA-v0`` with ``prompt_split="train"`` never draws.

Example::

    >>> from agents.comparison import run_comparison
    >>> report = run_comparison({"mara": "runs/mara-default/model.zip"}, "runs/mara-default/eval", max_new_tokens=48)
    >>> report["comparisons"]["mara"]["rate"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import SystemResult, write_report
from agents.generation import Generation, MARAGenerator
from mara_env.llm import load_replicas
from mara_env.prompts import PromptSet
from mara_env.scoring import TerminalReward

#: The baseline system's name.
BASE = "base"


def held_out_prompts(
    prompts: Any = "default",
    *,
    part: str = "test",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    prompt_column: str | None = None,
    dataset_split: str = "train",
    num_prompts: int | None = None,
) -> list[str]:
    """The evaluation prompts: the ``part`` of the prompt set's deterministic split, in order.

    Use the same ``test_fraction`` and ``split_seed`` as training so no evaluation prompt was trained on.
    """
    found = PromptSet.from_source(
        prompts, part=part, test_fraction=test_fraction, seed=split_seed, column=prompt_column, split=dataset_split
    )
    if len(found) == 0:
        raise ValueError(
            f"the {part!r} part of the prompt set {prompts!r} is empty; lower test_fraction or add prompts."
        )
    out = [found[i] for i in range(len(found))]
    if num_prompts is not None:
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}.")
        out = out[:num_prompts]
    return out


def _result(
    name: str, prompts: list[str], gens: Sequence[Generation], reward: np.ndarray, cost: np.ndarray, **kw: Any
) -> SystemResult:
    return SystemResult(
        name=name,
        prompts=list(prompts),
        responses=[g.text for g in gens],
        reward_score=np.asarray(reward, dtype=np.float64),
        cost_score=np.asarray(cost, dtype=np.float64),
        num_tokens=np.array([g.num_tokens for g in gens]),
        **kw,
    )


def run_comparison(
    agents: Mapping[str, Any],
    out: str | Path,
    *,
    llm: Any = None,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 512,
    seed: int = 0,
    best_of: int | str = "auto",
    reward_model: Any = "sentiment",
    cost_model: Any = "toxicity",
    alpha_r: float = 1.0,
    alpha_c: float = 1.0,
    scorer_device: Any = None,
    deterministic: bool = False,
    training_log: str | Path | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    **generator_kwargs: Any,
) -> dict[str, Any]:
    """Generate, score and compare; write the report into ``out``; return the report's JSON dict.

    :param agents: system name -> agent (anything :class:`~agents.generation.MARAGenerator` accepts).
    :param out: report folder (created; existing files are replaced).
    :param llm: the LLM, in any form ``MARA-v0`` accepts.
    :param prompts: evaluation prompts (default: :func:`held_out_prompts` of the default set).
    :param max_new_tokens: answer-length limit (use the training environment's).
    :param seed: seeds every system's sampling.
    :param best_of: ``N`` for the best-of-N system, ``"auto"`` (match the first agent's compute) or 0 (none).
    :param reward_model: R, as for ``MARA-v0``.
    :param cost_model: C, as for ``MARA-v0``; ``None``: no cost, so answers are compared on R alone.
    :param alpha_r: weight of R in best-of-N's selection score.
    :param alpha_c: weight of C in best-of-N's selection score.
    :param scorer_device: device for model-based scorers (default: the LLM's).
    :param deterministic: agents accept when ``pi(accept | s) >= 0.5`` instead of sampling.
    :param training_log: a training run's ``progress.csv``, for the training-curve figure.
    :param meta: extra facts for the report header.
    :param progress: show progress bars.
    :param generator_kwargs: ``top_k``, ``top_p``, ``temperature``, ``system_prompt``, ``chunk_size``,
        ``batch_size``, ``devices``, ``dtype``, ... (see :class:`~agents.generation.MARAGenerator`);
        use the training environment's values.
    """
    if not agents:
        raise ValueError("agents is empty: give at least one agent to compare with the base LLM.")
    if BASE in agents or any(name.startswith("best-of-") for name in agents):
        raise ValueError(f"agent names {BASE!r} and 'best-of-...' are reserved for the built-in systems.")
    if not (best_of == "auto" or (isinstance(best_of, int) and not isinstance(best_of, bool) and best_of >= 0)):
        raise ValueError(f"best_of must be 'auto' or an integer >= 0 (0: no best-of-N system), got {best_of!r}.")
    prompts = held_out_prompts() if prompts is None else list(prompts)
    device_kw = {k: generator_kwargs.pop(k) for k in ("devices", "dtype", "trust_remote_code") if k in generator_kwargs}
    replicas = load_replicas(llm, **device_kw)
    terminal = TerminalReward(
        reward_model,
        cost_model,
        alpha_r=alpha_r,
        alpha_c=alpha_c,
        device=scorer_device if scorer_device is not None else replicas[0].device,
    )

    def score(gens: Sequence[Generation]) -> Any:
        return terminal(prompts, [g.text for g in gens])

    # Every agent is loaded (and checked against the LLM) before any decoding, so a bad file fails at once.
    agent_gens = {
        name: MARAGenerator(replicas, agent, deterministic=deterministic, **generator_kwargs)
        for name, agent in agents.items()
    }
    systems: list[SystemResult] = []
    base_gen = MARAGenerator(replicas, None, **generator_kwargs)
    base = base_gen.generate_raw(prompts, max_new_tokens, seed=seed, progress=progress)
    base_stats = base_gen.last_stats
    base_scores = score(base)
    systems.append(
        _result(
            BASE,
            prompts,
            base,
            base_scores.reward_score,
            base_scores.cost_score,
            kl=np.zeros(len(prompts)),
            accepted_ranks=[g.accepted_ranks for g in base],
            llm_tokens=base_stats.llm_tokens,
            wall_seconds=base_stats.wall_seconds,
        )
    )
    agent_tokens: int | None = None
    for name, gen in agent_gens.items():
        answers = gen.generate(prompts, max_new_tokens, seed=seed, progress=progress)
        stats = gen.last_stats
        scores = score(answers)
        agent_tokens = stats.llm_tokens if agent_tokens is None else agent_tokens
        systems.append(
            _result(
                name,
                prompts,
                answers,
                scores.reward_score,
                scores.cost_score,
                kl=np.array([g.kl for g in answers]),
                accepted_ranks=[g.accepted_ranks for g in answers],
                llm_tokens=stats.llm_tokens,
                wall_seconds=stats.wall_seconds,
                extra={"decisions": int(sum(g.num_decisions for g in answers))},
            )
        )

    n = best_of
    if best_of == "auto":
        n = max(2, round(agent_tokens / max(base_stats.llm_tokens, 1)))
    if n >= 2:
        systems.append(_best_of_n(n, prompts, base, base_scores, base_stats, base_gen, score, max_new_tokens, seed))

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
        "reward_model": str(reward_model),
        "cost_model": str(cost_model),
        "alpha_r": alpha_r,
        "alpha_c": alpha_c,
        "best_of": n,
        "deterministic_agents": deterministic,
        **{k: v for k, v in generator_kwargs.items() if isinstance(v, (int, float, str, type(None)))},
        **(dict(meta) if meta else {}),
    }
    return write_report(out, systems, baseline=BASE, meta=info, training_log=training_log)


def _best_of_n(
    n: int,
    prompts: list[str],
    first: list[Generation],
    first_scores: Any,
    first_stats: Any,
    gen: MARAGenerator,
    score: Any,
    max_new_tokens: int,
    seed: int,
) -> SystemResult:
    """``n`` base answers per prompt (the first is the base system's), keep the highest terminal reward."""
    candidates, rewards = [first], [np.asarray(first_scores.reward)]
    all_scores = [first_scores]
    llm_tokens, wall = first_stats.llm_tokens, first_stats.wall_seconds
    for j in range(1, n):
        answers = gen.generate_raw(prompts, max_new_tokens, seed=seed + 7919 * j)
        scores = score(answers)
        llm_tokens += gen.last_stats.llm_tokens
        wall += gen.last_stats.wall_seconds  # generation only, as for every system
        candidates.append(answers)
        rewards.append(np.asarray(scores.reward))
        all_scores.append(scores)
    pick = np.argmax(np.stack(rewards), axis=0)
    chosen = [candidates[j][i] for i, j in enumerate(pick)]
    return _result(
        f"best-of-{n}",
        prompts,
        chosen,
        np.array([all_scores[j].reward_score[i] for i, j in enumerate(pick)]),
        np.array([all_scores[j].cost_score[i] for i, j in enumerate(pick)]),
        accepted_ranks=[g.accepted_ranks for g in chosen],
        llm_tokens=llm_tokens,
        wall_seconds=wall,
        # KL of best-of-n to the base distribution is at most log n - (n - 1) / n (Beirami et al., 2024).
        extra={"kl_bound": float(np.log(n) - (n - 1) / n), "n": n},
    )
