"""The summary of ``benchmarks/algorithms.py``: statistics across seeds, the markdown table and the
learning curves."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agents.registry import ALGORITHMS

__all__ = ["SUMMARY_METRICS", "aggregate", "duration", "markdown", "plot_learning_curves", "pm"]

SUMMARY_METRICS = (
    "preference_rate",
    "reward",
    "cost",
    "kl",
    "accept_first",
    "base_reward",
    "base_cost",
    "decisions",
    "decisions_per_s",
    "train_seconds",
    "eval_seconds",
    "wall_seconds",
)


def aggregate(runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation (0 for one seed), count and values of each metric, per algorithm."""
    summary: dict[str, dict[str, Any]] = {}
    for algo, by_seed in runs.items():
        summary[algo] = {}
        for metric in SUMMARY_METRICS:
            values = [r[metric] for r in by_seed.values() if r.get(metric) is not None]
            array = np.asarray(values, dtype=np.float64)
            summary[algo][metric] = {
                "mean": float(array.mean()) if array.size else None,
                "std": float(array.std(ddof=1)) if array.size > 1 else (0.0 if array.size else None),
                "n": int(array.size),
                "values": values,
            }
    return summary


def pm(stats: Mapping[str, Any], spec: str = ".3f", scale: float = 1.0, unit: str = "") -> str:
    if stats.get("mean") is None:
        return "n/a"
    text = f"{stats['mean'] * scale:{spec}}{unit}"
    return text + (f" ± {stats['std'] * scale:{spec.lstrip('+')}}" if stats["n"] > 1 else "")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(results: Mapping[str, Any]) -> str:
    """The summary table of ``results.json`` as markdown."""
    meta, summary, runs = results["meta"], results["summary"], results["runs"]
    budget = meta["budget"]
    settings = meta["settings"]
    changes = meta.get("variant_changes") or {}
    lines = [
        f"# {meta['task']}: RL algorithms",
        "",
        f"- **task**: {meta['task']}"
        + (f" with {', '.join(f'{k}={v}' for k, v in changes.items())}" if changes else "")
        + f"; LLM {settings.get('llm')}, prompts {settings.get('prompts')!s:.60}, "
        f"reward {settings.get('reward_model')}, cost {settings.get('cost_model')}, "
        f"top_k {settings.get('top_k')}, top_p {settings.get('top_p')}, "
        f"kl_coef {settings.get('kl_coef')}, max_new_tokens {settings.get('max_new_tokens')}",
        f"- **budget**: {budget['decisions']:,} decisions per run, seeds {budget['seeds']}, "
        f"{budget['num_envs']} envs; evaluation every {budget['eval_every']:,} decisions on {meta['eval_prompts']} "
        f"held-out prompts; comparison on {meta['compare_prompts']} held-out prompts",
        f"- **machine**: {meta['machine']['cpu']} ({meta['machine']['cpu_count']} cores), "
        f"GPUs {meta['machine']['gpus'] or 'none'}, LLM on {', '.join(meta['machine']['llm_devices'])} "
        f"({meta['machine']['llm_dtype']}), torch {meta['machine']['torch']} with "
        f"{meta['machine']['torch_threads']} threads",
        f"- **date**: {meta['date']}",
        "",
        "Preference rate: (wins - losses) / prompts against the base LLM on the same held-out prompts (win: higher "
        "reward *and* lower cost). Mean ± standard deviation across seeds; per seed its 95% bootstrap interval. "
        "Reward, cost, KL (nats, to the reference) and accept@1 (share of answer tokens that were the first "
        "candidate) are the agent's means on those prompts. Decisions/s: training only (evaluation excluded); "
        "wall time: training, evaluations and comparison of one run.",
        "",
        "| algorithm | preference rate vs base | reward | cost | KL | accept@1 share | decisions/s | wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base_reward = {"mean": None, "n": 0}
    base_cost = {"mean": None, "n": 0}
    base_accept: list[float] = []
    for algo, stats in summary.items():
        per_seed = "; ".join(
            f"s{seed} {r['preference_rate'] * 100:+.1f}% [{r['preference_ci_low'] * 100:+.1f}, "
            f"{r['preference_ci_high'] * 100:+.1f}]"
            for seed, r in runs[algo].items()
        )
        lines.append(
            f"| {algo} | {pm(stats['preference_rate'], '+.1f', 100, '%')} ({per_seed}) | {pm(stats['reward'])} "
            f"| {pm(stats['cost'])} | {pm(stats['kl'])} | {pm(stats['accept_first'])} "
            f"| {pm(stats['decisions_per_s'], '.1f')} | {duration(stats['wall_seconds']['mean'])} |"
        )
        base_reward, base_cost = stats["base_reward"], stats["base_cost"]
        base_accept += [r["base_accept_first"] for r in runs[algo].values() if r.get("base_accept_first") is not None]
    if summary:
        accept = {"mean": float(np.mean(base_accept)) if base_accept else None, "n": 1}
        lines.append(
            f"| base LLM (no agent) | 0 (reference) | {pm(base_reward)} | {pm(base_cost)} | 0 | {pm(accept)} | | |"
        )
    if meta.get("resumed_runs"):
        lines += ["", f"Runs reused from an earlier invocation (--resume): {', '.join(meta['resumed_runs'])}."]
    lines += [
        "",
        "![learning curves](learning_curves.png)",
        "",
        "Per-run reports (answers, accepted positions, reward vs cost): "
        "`runs/<algorithm>/seed<k>/comparison/report.md`.",
    ]
    return "\n".join(lines) + "\n"


def plot_learning_curves(
    runs: Mapping[str, Mapping[int, Mapping[str, Any]]], base_eval: Mapping[str, Any], path: Path, title: str = ""
) -> None:
    """Evaluation reward, cost and KL against training decisions: one line per algorithm (mean over
    seeds, +- one standard deviation band), the base LLM's level dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (("reward", "evaluation reward score R"), ("cost", "evaluation cost score C"), ("kl", "KL to reference"))
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels))
    order = list(ALGORITHMS)
    for algo, by_seed in runs.items():
        curves = [r["curve"] for r in by_seed.values() if r.get("curve")]
        if not curves:
            continue
        length = min(len(c) for c in curves)  # seeds evaluate at the same decisions; align by index
        color = f"C{order.index(algo) if algo in order else len(order)}"
        x = np.mean([[p["decisions"] for p in c[:length]] for c in curves], axis=0)
        for ax, (key, _) in zip(axes, panels):
            y = np.array([[np.nan if p[key] is None else p[key] for p in c[:length]] for c in curves], dtype=float)
            mean = np.nanmean(y, axis=0)
            ax.plot(x, mean, color=color, marker="o", ms=3, label=f"{algo} ({len(curves)} seed(s))")
            if len(curves) > 1:
                std = np.nanstd(y, axis=0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    for ax, (key, label) in zip(axes, panels):
        level = base_eval.get(key)
        if level is not None and math.isfinite(level):
            ax.axhline(level, color="gray", ls="--", lw=1, label="base LLM")
        ax.set_title(label)
        ax.set_xlabel("training decisions")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        figure.suptitle(f"{title}: evaluation on held-out prompts during training")
    figure.savefig(path, dpi=120)
