"""Learning from ARGS, ablated: SAC alone vs teacher data vs teacher data + behaviour cloning, on training prompts.

Three arms of the default run (:data:`agents.training.run_config.DEFAULT_RUN`), the same number of
decisions and the same tuning seeds:

- ``sac``: the default recipe, the agent's own experience only;
- ``teacher``: ``train.teacher="args"``: ARGS's answers to training prompts replayed through the
  environment into the replay buffer (:mod:`agents.teacher`); the replayed decisions count in the budget;
- ``teacher+bc``: the same, plus the fading behaviour-cloning term on the actor (``train.teacher_bc``).

Every model is decoded on the same *training* prompts (these runs choose the default: held-out prompts
are for the report only) in one comparison with the base LLM and best-of-2; per arm the mean and
standard deviation over seeds of the preference rate against the base and of the head-to-head rate
against best-of-2, KL, training wall and CPU time and the teacher's scorer calls. The arm with the
highest mean preference against the base wins.

Usage::

    python benchmarks/teacher_ablation.py                       # 3 arms x seeds 100 101 102, 30k decisions
    python benchmarks/teacher_ablation.py --arms sac teacher --seeds 100 --train-only
    python benchmarks/teacher_ablation.py --sac-runs benchmarks/results/scaling/runs   # reuse scaling's 30k runs
    python benchmarks/teacher_ablation.py --arms teacher+bc --merge earlier/teacher_ablation.json  # add an arm

``--merge`` adds arms to an earlier result without decoding its agents again: every system's answers
depend only on its own seeds (:mod:`agents.evaluation.pipeline`), so the base LLM and best-of-2 answer
as they did then; the merge checks that they did (their mean scores and best-of-2's rate against the base
must be equal) and refuses otherwise.

Outputs under ``--out`` (default ``benchmarks/results/teacher_ablation/``): ``teacher_ablation.json``,
``teacher_ablation.md``, ``teacher_ablation.png``, ``report/`` (the comparison); run folders in ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from seeded_runs import (  # benchmarks/seeded_runs.py, beside this script
    compare_agents,
    machine,
    percent,
    prompts_of,
    spread,
    train,
    trained,
)

from agents.training.run_config import RunConfig
from agents.training.run_folder import MODEL_FILE

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_ablation"

#: arm -> the train settings it changes
ARMS: dict[str, dict[str, Any]] = {
    "sac": {"teacher": None},
    "teacher": {"teacher": "args", "teacher_bc": 0.0},
    "teacher+bc": {"teacher": "args"},
}


def arm_config(arm: str, seed: int, decisions: int, bc: float, prompts: int) -> RunConfig:
    train: dict[str, Any] = {"seed": seed, "total_decisions": decisions, "progress_bar": False, **ARMS[arm]}
    if arm == "teacher+bc":
        train["teacher_bc"] = bc
    if train["teacher"] is not None:
        train["teacher_prompts"] = prompts
    return RunConfig.from_sections({"train": train}, source=f"teacher ablation {arm}")


def same_comparison(earlier: dict[str, Any], report: dict[str, Any], args: argparse.Namespace) -> None:
    """Refuse to merge unless the base LLM and best-of-2 answered as in ``earlier`` (equal mean scores and rate)."""
    then, now = earlier["meta"], report["systems"]
    checks = [(f"best-of-2 {k}", then["best_of_2"][k], now["best-of-2"][k]) for k in ("reward_mean", "cost_mean")]
    checks.append(("best-of-2 vs base", then["best_of_2_vs_base"], report["comparisons"]["best-of-2"]["rate"]))
    if "base" in then:  # results written before the base's scores were kept say only the rate above
        checks += [(f"base {k}", then["base"][k], now["base"][k]) for k in ("reward_mean", "cost_mean")]
    differ = [f"{name}: {a!r} then, {b!r} now" for name, a, b in checks if a != b]
    if differ:
        raise SystemExit(
            f"--merge {args.merge}: the base LLM or best-of-2 answered otherwise than in that comparison "
            f"({'; '.join(differ)}), so its figures and this run's are not one comparison. Run every arm "
            "together instead (drop --merge)."
        )


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"{meta['prompts']} training prompts x {meta['samples_per_prompt']} samples; {meta['decisions']:,} decisions "
        f"per run, seeds {', '.join(map(str, meta['seeds']))}; {meta['machine']['torch_threads']} torch thread(s), "
        "shared machine.",
        "",
        "| arm | preference vs base, mean ± std (per seed) | vs best-of-2, mean ± std | KL (nats) "
        "| train CPU min | teacher scorer calls |",
        "|---|---|---|---:|---:|---:|",
    ]
    for arm in meta["arms"]:
        agg = result["arms"][arm]
        runs = [r for r in result["runs"] if r["arm"] == arm]
        seeds = "; ".join(percent(r["preference"]) for r in runs)
        p, h, kl, cpu = agg["preference"], agg["vs_best_of_2"], agg["kl"], agg["train_cpu_seconds"]
        calls = agg["scorer_calls"]["mean"]
        cpu_text = "-" if cpu["mean"] is None else f"{cpu['mean'] / 60:.1f}"
        lines.append(
            f"| {arm} | **{percent(p['mean'])} ± {p['std'] * 100:.1f}** ({seeds}) | {percent(h['mean'])} ± "
            f"{h['std'] * 100:.1f} | {kl['mean']:.2f} | {cpu_text} | {calls or 0:,.0f} |"
        )
    merged = meta.get("merged_from")
    if merged:
        new_arms = [arm for arm in meta["arms"] if arm not in merged["arms"]]
        lines += [
            "",
            f"The {', '.join(merged['arms'])} arm(s) come from the comparison of {merged['created']}; "
            f"{', '.join(new_arms)} was decoded on {meta['created']} and merged (the base LLM and best-of-2 "
            "answered as they did then: equal mean scores and rate).",
        ]
    lines += ["", f"Winner (highest mean preference vs base): **{result['winner']}**."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = result["meta"]["arms"]
    fig = Figure(figsize=(10, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, scale, label in (
        (axes[0], "preference", 100, "preference vs base LLM (%)"),
        (axes[1], "vs_best_of_2", 100, "head to head vs best-of-2 (%)"),
        (axes[2], "kl", 1, "KL to the reference (nats)"),
    ):
        means = [result["arms"][a][key]["mean"] * scale for a in arms]
        stds = [result["arms"][a][key]["std"] * scale for a in arms]
        ax.bar(arms, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
        for i, arm in enumerate(arms):
            values = [r[key] * scale for r in result["runs"] if r["arm"] == arm]
            ax.plot([i] * len(values), values, "o", color="black", ms=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_title("mean ± std over seeds (dots: each seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102], help="training seeds (tuning seeds)")
    p.add_argument("--decisions", type=int, default=30_000, help="decisions per run, teacher's included")
    p.add_argument("--bc", type=float, default=1.0, help="teacher_bc of the teacher+bc arm")
    p.add_argument("--teacher-prompts", type=int, default=64, help="training prompts ARGS answers")
    p.add_argument("--sac-runs", type=Path, help="take the sac arm from these scaling runs (seed<S>/d<decisions>)")
    p.add_argument("--num-prompts", type=int, default=96, help="training prompts of the comparison")
    p.add_argument("--samples-per-prompt", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--merge", type=Path, help="an earlier teacher_ablation.json whose arms this run adds to")
    args = p.parse_args(argv)
    earlier = json.loads(args.merge.read_text()) if args.merge is not None else None
    if earlier is not None:
        if overlap := sorted(set(earlier["meta"]["arms"]) & set(args.arms)):
            p.error(f"--merge: {args.merge} already has the arm(s) {overlap}; pass only new arms with --arms.")
        for key, value in (
            ("seeds", args.seeds),
            ("decisions", args.decisions),
            ("samples_per_prompt", args.samples_per_prompt),
            ("prompts", args.num_prompts),
            ("teacher_prompts", args.teacher_prompts),
        ):
            if earlier["meta"][key] != value:
                p.error(f"--merge: {args.merge} has {key}={earlier['meta'][key]!r}, this run {value!r}; use the same.")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    host = machine(args.threads)

    folders: dict[tuple[str, int], Path] = {}
    for seed in args.seeds:
        for arm in args.arms:
            folder = args.out / "runs" / arm / f"seed{seed}"
            if arm == "sac" and args.sac_runs is not None:
                folder = args.sac_runs / f"seed{seed}" / f"d{args.decisions}"
            train(arm_config(arm, seed, args.decisions, args.bc, args.teacher_prompts), folder)
            folders[arm, seed] = folder
            print(f"{arm} seed {seed}: trained", flush=True)
    if args.train_only:
        return {}

    prompts = prompts_of("train", args.num_prompts)
    names = {key: f"{key[0]}-s{key[1]}" for key in folders}
    report = compare_agents(
        {names[key]: folder / MODEL_FILE for key, folder in folders.items()},
        args.out / ("report" if earlier is None else "report-" + "-".join(args.arms)),
        prompts,
        samples_per_prompt=args.samples_per_prompt,
        best_of=2,
        meta={"benchmark": "teacher ablation", "part": "train"},
    )
    runs = []
    for (arm, seed), folder in folders.items():
        name = names[arm, seed]
        c, s = report["comparisons"][name], report["systems"][name]
        h = report["head_to_head"][f"{name} vs best-of-2"]
        summary = trained(folder)
        runs.append(
            {
                "arm": arm,
                "seed": seed,
                "preference": c["rate"],
                "ci": [c["ci_low"], c["ci_high"]],
                "vs_best_of_2": h["rate"],
                "vs_best_of_2_ci": [h["ci_low"], h["ci_high"]],
                "kl": s["kl_mean"],
                "reward": s["reward_mean"],
                "cost": s["cost_mean"],
                "train_wall_seconds": summary["train_wall_seconds"],
                "train_cpu_seconds": summary["train_cpu_seconds"],
                "scorer_calls": (summary.get("teacher") or {}).get("scorer_calls", 0),
                "teacher": summary.get("teacher"),
            }
        )
    all_arms = list(args.arms)
    if earlier is not None:
        same_comparison(earlier, report, args)
        all_arms = [*earlier["meta"]["arms"], *args.arms]
        runs = [*earlier["runs"], *runs]
    keys = ("preference", "vs_best_of_2", "kl", "reward", "train_wall_seconds", "train_cpu_seconds", "scorer_calls")
    arms = {arm: {k: spread([r[k] for r in runs if r["arm"] == arm]) for k in keys} for arm in all_arms}
    winner = max(all_arms, key=lambda arm: arms[arm]["preference"]["mean"])
    result = {
        "meta": {
            "created": started,
            "machine": host,
            "part": "train",
            "prompts": len(prompts),
            "samples_per_prompt": args.samples_per_prompt,
            "decisions": args.decisions,
            "seeds": args.seeds,
            "arms": all_arms,
            "merged_from": None
            if earlier is None
            else {"created": earlier["meta"]["created"], "arms": earlier["meta"]["arms"]},
            "bc": args.bc,
            "teacher_prompts": args.teacher_prompts,
            "base": {k: report["systems"]["base"][k] for k in ("reward_mean", "cost_mean")},
            "best_of_2": {k: report["systems"]["best-of-2"][k] for k in ("reward_mean", "cost_mean")},
            "best_of_2_vs_base": report["comparisons"]["best-of-2"]["rate"],
        },
        "runs": runs,
        "arms": arms,
        "winner": winner,
        "rule": "highest mean preference against the base LLM over the seeds, on training prompts",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher_ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "teacher_ablation.md").write_text(table)
    plot(result, args.out / "teacher_ablation.png")
    print(table)
    return result


if __name__ == "__main__":
    main()
