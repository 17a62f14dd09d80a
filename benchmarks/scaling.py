"""Does more experience help? Preference against training decisions, for the default recipe, over seeds.

For each seed the default run (:data:`agents.training.run_config.DEFAULT_RUN`, only ``train.seed``,
``train.total_decisions`` and ``train.checkpoint_every`` changed) is trained to every budget of
``--budgets``: budgets up to ``--chain-from`` (default 30,000, the default run's budget) are runs of
their own; the larger ones continue a copy of the ``--chain-from`` run (``mara train --resume
--total-decisions``), a copy of its model kept at every stop (a resumed run starts new episodes and
reseeds, so a continued budget is a run of the same recipe, not bit for bit the uninterrupted one). Every
model is then decoded on the same prompts in one comparison with the base LLM (best-of-N and ARGS
left out): preference rate with its 95% prompt-bootstrap interval, mean KL to the reference.

Tune on training prompts (``--part train``, the default: the budget is a setting of the default
run); ``--part test`` gives the held-out figures for the report.

Usage::

    python benchmarks/scaling.py                                   # 15k-120k, seeds 100 101, 96 training prompts x 2
    python benchmarks/scaling.py --part test --num-prompts 157 --samples-per-prompt 1
    python benchmarks/scaling.py --budgets 2000 4000 --seeds 0 --num-prompts 4 --quick-env   # smoke run

Outputs under ``--out`` (default ``benchmarks/results/scaling/``): ``scaling.json`` (every run: budget,
seed, preference, interval, KL, reward, cost, wall and CPU seconds of training; per budget the mean and
standard deviation over seeds), ``scaling.md``, ``scaling.png`` and ``report-<part>/`` (the
comparison); run folders under ``runs/`` (kept, reused when their model exists).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from seeded_runs import (  # benchmarks/seeded_runs.py, beside this script
    TIMING_FILE,
    assignments,
    compare_agents,
    extend,
    machine,
    percent,
    prompts_of,
    spread,
    train,
    trained,
)

from agents.training.run_config import RunConfig
from agents.training.run_folder import CONFIG_FILE, MODEL_FILE, PROGRESS_FILE, SUMMARY_FILE

RESULTS = Path(__file__).resolve().parent / "results" / "scaling"
#: What a snapshot of a run folder keeps: enough to evaluate it and to read how it was trained.
SNAPSHOT_FILES = (CONFIG_FILE, MODEL_FILE, SUMMARY_FILE, TIMING_FILE, PROGRESS_FILE)


def budget_config(seed: int, decisions: int, checkpoint_every: int, extra: Sequence[str] = ()) -> RunConfig:
    """The default run with its seed and length set (``extra``: ``section.key=value`` changes for smoke runs)."""
    sections: dict[str, dict[str, Any]] = {
        "train": {
            "seed": seed,
            "total_decisions": decisions,
            "checkpoint_every": checkpoint_every,
            "progress_bar": False,
        }
    }
    return RunConfig.from_sections(assignments(extra, sections), source="scaling")


def snapshot(folder: Path, to: Path) -> None:
    """Copy the run's model and records (not its checkpoint) to ``to``."""
    to.mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, to / name)


def train_seed(seed: int, budgets: list[int], chain_from: int, out: Path, args: argparse.Namespace) -> dict[int, Path]:
    """Every budget of one seed; returns budget -> the folder holding that budget's model."""
    folders: dict[int, Path] = {}
    chain = out / "runs" / f"seed{seed}" / "chain"
    for budget in budgets:
        kept = out / "runs" / f"seed{seed}" / f"d{budget}"
        if (kept / MODEL_FILE).is_file() and (budget < chain_from or (chain / MODEL_FILE).is_file()):
            folders[budget] = kept
            continue
        if budget <= chain_from:
            # its own run, kept whole (checkpoint included): the chain continues the one at chain_from
            train(budget_config(seed, budget, args.checkpoint_every, args.set), kept)
            if budget == chain_from and not (chain / MODEL_FILE).is_file():
                shutil.rmtree(chain, ignore_errors=True)
                shutil.copytree(kept, chain)
        else:
            if not (chain / MODEL_FILE).is_file():
                raise SystemExit(f"{chain} is missing: train budget {chain_from} (--chain-from) first.")
            extend(chain, budget)
            snapshot(chain, kept)
            # the kept config says how far this model was trained
            config = RunConfig.from_file(kept / CONFIG_FILE)
            RunConfig.from_sections({"train": {"total_decisions": budget}}, base=config).dump(kept / CONFIG_FILE)
        folders[budget] = kept
        print(f"seed {seed}: {budget} decisions done", flush=True)
    return folders


def train_seconds(folder: Path) -> tuple[float, float | None]:
    """Training wall and CPU seconds up to this folder's budget (a continued budget includes its earlier stops)."""
    summary = trained(folder)
    return summary["train_wall_seconds"], summary["train_cpu_seconds"]


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"{meta['prompts']} {meta['part']} prompts x {meta['samples_per_prompt']} samples; seeds "
        f"{', '.join(map(str, meta['seeds']))}; {meta['machine']['torch_threads']} torch thread(s), shared machine.",
        "",
        "| decisions | preference vs base, mean ± std (per seed [95% CI]) | KL (nats) "
        "| train wall min | train CPU min |",
        "|---:|---|---:|---:|---:|",
    ]
    for budget in meta["budgets"]:
        agg = result["budgets"][str(budget)]
        runs = [r for r in result["runs"] if r["decisions"] == budget]
        per_seed = "; ".join(f"{percent(r['preference'])} [{percent(r['ci'][0])}, {percent(r['ci'][1])}]" for r in runs)
        p, kl = agg["preference"], agg["kl"]
        wall, cpu = agg["train_wall_seconds"], agg["train_cpu_seconds"]
        cpu_text = "-" if cpu["mean"] is None else f"{cpu['mean'] / 60:.1f}"
        lines.append(
            f"| {budget:,} | **{percent(p['mean'])} ± {p['std'] * 100:.1f}** ({per_seed}) | "
            f"{kl['mean']:.2f} ± {kl['std']:.2f} | {wall['mean'] / 60:.1f} | {cpu_text} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    budgets = result["meta"]["budgets"]
    fig = Figure(figsize=(11, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, scale, label in (
        (axes[0], "preference", 100, "preference vs base LLM (%)"),
        (axes[1], "kl", 1, "KL to the reference (nats per answer)"),
        (axes[2], "train_cpu_seconds", 1 / 60, "training CPU time (min)"),
    ):
        means = [result["budgets"][str(b)][key]["mean"] for b in budgets]
        stds = [result["budgets"][str(b)][key]["std"] for b in budgets]
        if any(m is None for m in means):
            continue
        for run in result["runs"]:
            if run.get(key) is not None:
                ax.plot(run["decisions"], run[key] * scale, "o", color="tab:gray", alpha=0.5, ms=4)
        ax.errorbar(budgets, [m * scale for m in means], yerr=[s * scale for s in stds], marker="s", capsize=3)
        ax.set_xscale("log")
        ax.minorticks_off()  # the log axis's minor labels (2 x 10^4, ...) would crowd the budgets' own
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b // 1000}k" for b in budgets])
        ax.set_xlabel("training decisions")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("mean ± std over seeds (grey: each seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[15_000, 30_000, 60_000, 120_000])
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="training seeds (default: tuning seeds)")
    p.add_argument("--chain-from", type=int, default=30_000, help="larger budgets continue this budget's run")
    p.add_argument("--checkpoint-every", type=int, default=15_000, help="decisions between checkpoints")
    p.add_argument("--part", choices=["train", "test"], default="train", help="prompts: train (tuning) or test")
    p.add_argument("--num-prompts", type=int, default=96)
    p.add_argument("--samples-per-prompt", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-only", action="store_true", help="train (and keep) the runs, compare nothing")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="other settings (smoke runs)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = sorted(set(args.budgets))
    chain_from = args.chain_from
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    host = machine(args.threads)

    folders = {seed: train_seed(seed, budgets, chain_from, args.out, args) for seed in args.seeds}
    if args.train_only:
        return {}
    prompts = prompts_of(args.part, args.num_prompts)
    agents = {f"s{seed}-d{budget}": folders[seed][budget] / MODEL_FILE for seed in args.seeds for budget in budgets}
    report = compare_agents(
        agents,
        args.out / f"report-{args.part}",
        prompts,
        samples_per_prompt=args.samples_per_prompt,
        meta={"benchmark": "scaling", "part": args.part},
    )
    runs = []
    for seed in args.seeds:
        for budget in budgets:
            name = f"s{seed}-d{budget}"
            c, s = report["comparisons"][name], report["systems"][name]
            wall, cpu = train_seconds(folders[seed][budget])
            runs.append(
                {
                    "seed": seed,
                    "decisions": budget,
                    "trained_decisions": trained(folders[seed][budget])["decisions"],
                    "preference": c["rate"],
                    "ci": [c["ci_low"], c["ci_high"]],
                    "wins_ties_losses": [c["wins"], c["ties"], c["losses"]],
                    "kl": s["kl_mean"],
                    "reward": s["reward_mean"],
                    "cost": s["cost_mean"],
                    "train_wall_seconds": wall,
                    "train_cpu_seconds": cpu,
                    "continued": budget > chain_from,
                }
            )
    keys = ("preference", "kl", "reward", "train_wall_seconds", "train_cpu_seconds")
    per_budget = {str(b): {k: spread([r[k] for r in runs if r["decisions"] == b]) for k in keys} for b in budgets}
    result = {
        "meta": {
            "created": started,
            "machine": host,
            "part": args.part,
            "prompts": len(prompts),
            "samples_per_prompt": args.samples_per_prompt,
            "seeds": args.seeds,
            "budgets": budgets,
            "chain_from": chain_from,
            "base": {k: report["systems"]["base"][k] for k in ("reward_mean", "cost_mean")},
        },
        "runs": runs,
        "budgets": per_budget,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.part == "train" else "-test"
    (args.out / f"scaling{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / f"scaling{suffix}.md").write_text(table)
    plot(result, args.out / f"scaling{suffix}.png")
    print(table)
    return result


if __name__ == "__main__":
    main()
