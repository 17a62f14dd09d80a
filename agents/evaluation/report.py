"""The report: every system compared with a baseline, written as ``report.json``, ``report.md`` and figures."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation.figures import plot_accept_positions, plot_scores, plot_training_curves, read_training_log
from agents.evaluation.results import SystemResult, _truncate
from agents.evaluation.statistics import _check_bootstrap_args, compare, mean_difference, preference
from agents.files import finite_or_none as _num
from agents.files import jsonable as _jsonable
from agents.files import write_text_atomic

__all__ = ["write_report"]


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
    spread = report.get("spread")
    if spread:
        rate = spread["rate"]
        lines += [
            "",
            f"**Spread over {len(spread['systems'])} agents** ({', '.join(spread['systems'])}; e.g. training seeds of "
            f"one recipe): preference rate mean {rate['mean'] * 100:+.2f}% ± {rate['std'] * 100:.2f} (sample standard "
            "deviation); each agent's interval above counts its answers only, not the spread between training runs.",
        ]
    elif len(report["comparisons"]) and report["meta"].get("agents") == 1:
        lines += [
            "",
            "One agent is one training run: the same recipe trained with another seed scores differently (the "
            "README's measured results give the spread over seeds). Pass several runs' agents (`mara evaluate "
            "--agent NAME=PATH`, repeated) to report their mean and spread.",
        ]
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
    spread_over: Sequence[str] = (),
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
    :param spread_over: Systems of one recipe (e.g. agents trained with different seeds): with two or more, the
        mean and sample standard deviation of their preference rates against the baseline (``spread``)
    :return: The contents of ``report.json``: ``meta``, ``baseline``, ``level``, ``n_resamples``, ``seed``,
        ``samples_per_prompt``, ``systems`` (name -> :meth:`SystemResult.summary`), ``comparisons`` (name ->
        ``Preference.to_dict()`` plus ``baseline``, ``samples_per_prompt``, and ``reward_diff`` and ``cost_diff``,
        each ``MeanDifference.to_dict()`` of system - baseline), ``head_to_head`` (``"A vs B"`` for every
        other pair of non-baseline systems, A listed first: the same fields with B as the opponent), ``rows``
        (per prompt and sample: ``index``, ``sample``, ``prompt`` and per system ``response``, ``reward``,
        ``cost``, ``num_tokens`` and ``outcome`` against the baseline), ``spread`` (with ``spread_over``:
        ``systems`` and ``rate`` with ``mean``, ``std``, ``values``; else ``None``), ``missing_training_columns``
        and ``files``
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

    spread = None
    unknown = [name for name in spread_over if name not in comparisons]
    if unknown:
        listed = ", ".join(names)
        raise ValueError(f"spread_over names {', '.join(unknown)}, which are not compared systems ({listed}).")
    if len(spread_over) >= 2:
        rates = np.array([comparisons[name]["rate"] for name in spread_over])
        spread = {
            "systems": list(spread_over),
            "rate": {"mean": float(rates.mean()), "std": float(rates.std(ddof=1)), "values": rates.tolist()},
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
            "spread": spread,
            "rows": rows,
            "missing_training_columns": missing_columns,
            "files": files,
        }
    )
    write_text_atomic(out / "report.md", _markdown(report, systems, outcomes, examples))
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
