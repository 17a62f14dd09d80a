"""The main job over training seeds: ``mara train && mara evaluate`` on the defaults, once per seed.

One run of the default recipe says little: three runs of the same command gave MARA +24.8%, +34.4% and
+28.0% against the base LLM. This script runs the main job exactly as a user does, as child processes
(``mara train --seed S --out RUN && mara evaluate --run RUN``: the held-out prompts, best-of-N with N
picked as ``mara evaluate`` picks it), for each seed of ``--seeds``, timing each command (wall and the
children's CPU seconds), then:

- per seed: preference against the base LLM with its 95% interval, head to head against best-of-2,
  KL, scorer calls per answer at inference (0 for MARA), the teacher's scorer calls during training;
- over seeds: mean and sample standard deviation of the preference; MARA against best-of-2 with every
  seed's pairs pooled (a bootstrap over prompts, a prompt's pairs from every seed together);
- ARGS (w 10, k 10; reward-guided decoding at 475 scorer calls per answer) once on the same prompts (its
  greedy answers do not depend on a training seed; the base answers are ``mara evaluate``'s, same seeds
  and batches), for the moonshot: MARA within 10 points of ARGS;
- the bars of issue 23, each met or not.

Usage::

    python benchmarks/main_job_seeds.py                      # seeds 0 1 2, about 3 x 20 min on 2 idle cores
    python benchmarks/main_job_seeds.py --seeds 0 --no-args
    python benchmarks/main_job_seeds.py --seeds 0 1 \\
        --train-args="--total-decisions 256 --num-envs 4 --max-new-tokens 8" \\
        --evaluate-args="--num-prompts 4" --out /tmp/seeds --runs /tmp/seeds/runs   # smoke run

A seed whose report is already in its run folder is not run again (``--rerun`` runs it again); a seed
whose training was stopped goes on from its checkpoint (``mara train --resume``), and one that finished
training is only evaluated. Writes
``benchmarks/results/main_job_seeds.json`` (``{"runs": [{"seed", "preference", "ci", "vs_best_of_2",
"kl", ...}], "mean", "std", ...}``), ``main_job_seeds.md`` and ``main_job_seeds.png``; run folders in
``runs/main_job_seeds/``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seeded_runs import (  # benchmarks/seeded_runs.py, beside this script
    compare_agents,
    cpu_seconds,
    machine,
    percent,
    pooled_head_to_head,
    scores,
    spread,
)

from agents.evaluation.statistics import compare, preference
from agents.training.run_config import RunConfig
from agents.training.run_folder import CONFIG_FILE

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
#: ARGS's setting in the README's table and the moonshot bar.
ARGS = {"weight": 10.0, "k": 10}
#: The bars of issue 23 (held-out prompts, mean over training seeds).
BARS = {
    "preference_mean": 0.40,
    "preference_ci_low_each": 0.15,
    "kl_max": 5.0,
    "main_job_minutes": 20.0,
    "args_gap_points": 10.0,
}


def timed(command: list[str], log: Path) -> dict[str, float]:
    """Run ``command`` (output to ``log``); its wall seconds and CPU seconds (all its threads)."""
    start_wall, start_cpu = time.perf_counter(), cpu_seconds(children=True)
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False).returncode
    if code != 0:
        raise SystemExit(f"{shlex.join(command)} failed (exit code {code}); see {log}")
    return {"wall_seconds": time.perf_counter() - start_wall, "cpu_seconds": cpu_seconds(children=True) - start_cpu}


def main_job(seed: int, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``mara train`` then ``mara evaluate`` for one seed (skipped when its report exists); their timings."""
    report = run / "eval" / "report.json"
    timing_file = run / "main_job_timing.json"
    if report.is_file() and timing_file.is_file() and not args.rerun:
        return json.loads(timing_file.read_text())
    mara = [sys.executable, "-m", "agents.cli"]
    train = [*mara, "train", "--seed", str(seed), "--out", str(run), "--no-progress", *shlex.split(args.train_args)]
    if run.exists() and args.rerun:
        shutil.rmtree(run)  # asked for: this seed starts afresh
    elif (run / "checkpoint").is_dir() and not (run / "model.zip").is_file():
        # a training run that was stopped: go on from its checkpoint rather than throw hours away
        train = [*mara, "train", "--out", str(run), "--resume", "--no-progress"]
    elif run.exists() and not (run / "model.zip").is_file():
        raise SystemExit(
            f"{run} exists but holds neither a finished run nor a checkpoint to resume; move it away, or pass "
            "--rerun to start this seed afresh."
        )
    run.parent.mkdir(parents=True, exist_ok=True)
    evaluate = [*mara, "evaluate", "--run", str(run), "--no-progress", *shlex.split(args.evaluate_args)]
    timing = {}
    trained_before = (run / "model.zip").is_file()
    if not trained_before:
        print(f"seed {seed}: {shlex.join(train[2:])}", flush=True)
        timing["train"] = timed(train, run.parent / f"seed{seed}-train.log")
    if trained_before or "--resume" in train:
        # not all of its training ran here: the trainer's own wall total counts it all; its CPU time is not known
        wall = json.loads((run / "summary.json").read_text())["wall_seconds"]
        timing["train"] = {"wall_seconds": wall, "cpu_seconds": None}
    print(f"seed {seed}: {shlex.join(evaluate[2:])}", flush=True)
    timing["evaluate"] = timed(evaluate, run.parent / f"seed{seed}-evaluate.log")
    timing["commands"] = [shlex.join(train[2:]), shlex.join(evaluate[2:])]
    timing_file.write_text(json.dumps(timing, indent=2) + "\n")
    return timing


def seed_row(seed: int, run: Path, timing: dict[str, Any]) -> dict[str, Any]:
    report = json.loads((run / "eval" / "report.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    best = next(name for name in report["systems"] if name.startswith("best-of-"))
    c, s, h = report["comparisons"]["mara"], report["systems"]["mara"], report["head_to_head"][f"mara vs {best}"]
    minutes = (timing["train"]["wall_seconds"] + timing["evaluate"]["wall_seconds"]) / 60
    return {
        "seed": seed,
        "preference": c["rate"],
        "ci": [c["ci_low"], c["ci_high"]],
        "vs_best_of_2": h["rate"],
        "vs_best_of_2_ci": [h["ci_low"], h["ci_high"]],
        "best_of": best,
        "kl": s["kl_mean"],
        "reward": s["reward_mean"],
        "cost": s["cost_mean"],
        "best_of_vs_base": report["comparisons"][best]["rate"],
        "scorer_calls_per_answer": s["scorer_calls_per_answer"],
        "teacher_scorer_calls": (summary.get("teacher") or {}).get("scorer_calls", 0),
        "train_decisions": summary["decisions"],
        "train_wall_seconds": timing["train"]["wall_seconds"],
        "train_cpu_seconds": timing["train"]["cpu_seconds"],
        "evaluate_wall_seconds": timing["evaluate"]["wall_seconds"],
        "evaluate_cpu_seconds": timing["evaluate"]["cpu_seconds"],
        "main_job_minutes": minutes,
        "commands": timing.get("commands"),
    }


def bars(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each bar: the measured value and whether it is met."""
    runs = result["runs"]
    pooled = result["pooled_vs_best_of_2"]
    out = {
        "preference_mean >= +40%": {"value": result["mean"], "met": result["mean"] >= BARS["preference_mean"]},
        "each seed's lower CI end > +15%": {
            "value": [r["ci"][0] for r in runs],
            "met": all(r["ci"][0] > BARS["preference_ci_low_each"] for r in runs),
        },
        "MARA vs best-of-2 pooled > 0, 95% CI above 0": {
            "value": [pooled["rate"], pooled["ci_low"], pooled["ci_high"]],
            "met": pooled["rate"] > 0 and pooled["ci_low"] > 0,
        },
        "KL <= 5 nats": {"value": [r["kl"] for r in runs], "met": all(r["kl"] <= BARS["kl_max"] for r in runs)},
        "0 scorer calls at inference": {
            "value": [r["scorer_calls_per_answer"] for r in runs],
            "met": all(r["scorer_calls_per_answer"] == 0 for r in runs),
        },
        "main job within 20 minutes (wall, this machine)": {
            "value": [r["main_job_minutes"] for r in runs],
            "met": all(r["main_job_minutes"] <= BARS["main_job_minutes"] for r in runs),
        },
    }
    if result.get("args") is not None:
        gap = (result["args"]["preference"] - result["mean"]) * 100
        out["moonshot: MARA within 10 points of ARGS (w 10, k 10)"] = {
            "value": gap,
            "met": gap <= BARS["args_gap_points"],
        }
    return out


def args_system(prompts_from: Path, out: Path, runs: dict[int, Path], evaluate_args: str) -> dict[str, Any]:
    """ARGS against the base on the first run's held-out prompts, and each seed's MARA against ARGS."""
    first = json.loads((prompts_from / "eval" / "report.json").read_text())
    prompts = list(dict.fromkeys(row["prompt"] for row in first["rows"]))
    batch = shlex.split(evaluate_args)
    batch_size = int(batch[batch.index("--batch-size") + 1]) if "--batch-size" in batch else 64
    env = RunConfig.from_file(prompts_from / CONFIG_FILE).env  # decoded with the runs' own settings
    report = compare_agents({}, out, prompts, args=ARGS, batch_size=batch_size, progress=False, env=env)
    name = next(n for n in report["systems"] if n.startswith("args-"))
    base_again = [row["systems"]["base"]["response"] for row in report["rows"]]
    same_base = base_again == [row["systems"]["base"]["response"] for row in first["rows"]]
    c = report["comparisons"][name]
    args_scores = scores(report, name)
    per_seed = {}
    pairs = []
    for seed, run in runs.items():
        mara = scores(json.loads((run / "eval" / "report.json").read_text()), "mara")
        pairs.append((mara, args_scores))
        per_seed[seed] = preference(compare(mara[0], mara[1], args_scores[0], args_scores[1])).rate
    return {
        "system": name,
        "preference": c["rate"],
        "ci": [c["ci_low"], c["ci_high"]],
        "scorer_calls_per_answer": report["systems"][name]["scorer_calls_per_answer"],
        "same_base_answers_as_mara_evaluate": same_base,
        "mara_vs_args_per_seed": per_seed,
        "mara_vs_args_pooled": pooled_head_to_head(pairs),
    }


def minutes(seconds: float | None) -> str:
    """Seconds as minutes; ``None`` (not measured: a run resumed in another process) as "n/a"."""
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Held-out prompts: {result['prompts']}; one `mara train --seed S && mara evaluate` per seed "
        f"({result['machine']['date']}; shared machine: CPU time beside wall time).",
        "",
        "| seed | preference vs base [95% CI] | vs best-of-2 [95% CI] | KL (nats) | scorer calls / answer "
        "| train wall / CPU min | evaluate wall / CPU min |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {percent(r['preference'])} [{percent(r['ci'][0])}, {percent(r['ci'][1])}] "
            f"| {percent(r['vs_best_of_2'])} [{percent(r['vs_best_of_2_ci'][0])}, {percent(r['vs_best_of_2_ci'][1])}] "
            f"| {r['kl']:.2f} | {r['scorer_calls_per_answer']:.0f} "
            f"| {minutes(r['train_wall_seconds'])} / {minutes(r['train_cpu_seconds'])} "
            f"| {minutes(r['evaluate_wall_seconds'])} / {minutes(r['evaluate_cpu_seconds'])} |"
        )
    pooled = result["pooled_vs_best_of_2"]
    lines += [
        "",
        f"**MARA vs base: mean {percent(result['mean'])} ± {result['std'] * 100:.1f} (std over "
        f"{len(result['runs'])} seeds)**; MARA vs best-of-2, pooled over seeds: {percent(pooled['rate'])} "
        f"[{percent(pooled['ci_low'])}, {percent(pooled['ci_high'])}] ({pooled['pairs']} pairs).",
    ]
    if result.get("args"):
        a = result["args"]
        m = a["mara_vs_args_pooled"]
        lines.append(
            f"ARGS {a['system']} vs base: {percent(a['preference'])} [{percent(a['ci'][0])}, {percent(a['ci'][1])}] "
            f"at {a['scorer_calls_per_answer']:.0f} scorer calls per answer; MARA vs ARGS pooled {percent(m['rate'])} "
            f"[{percent(m['ci_low'])}, {percent(m['ci_high'])}]."
        )
    lines += ["", "| bar | measured | met |", "|---|---|:-:|"]
    for name, bar in result["bars"].items():
        value = bar["value"]
        shown = ", ".join(f"{v:.3g}" for v in value) if isinstance(value, list) else f"{value:.3g}"
        lines.append(f"| {name} | {shown} | {'yes' if bar['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = result["runs"]
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2)
    labels = [f"seed {r['seed']}" for r in runs]
    for axis, key, ci_key, title in (
        (ax, "preference", "ci", "MARA vs base LLM (%)"),
        (bx, "vs_best_of_2", "vs_best_of_2_ci", "MARA vs best-of-2, head to head (%)"),
    ):
        values = [r[key] * 100 for r in runs]
        low = [v - r[ci_key][0] * 100 for v, r in zip(values, runs)]
        high = [r[ci_key][1] * 100 - v for v, r in zip(values, runs)]
        axis.errorbar(range(len(runs)), values, yerr=[low, high], fmt="o", capsize=4, label="each seed, 95% CI")
        axis.set_xticks(range(len(runs)))
        axis.set_xticklabels(labels)
        axis.axhline(0, color="black", lw=0.8)
        axis.set_title(title, fontsize=10)
    ax.axhline(result["mean"] * 100, color="tab:blue", ls="--", label=f"mean {result['mean'] * 100:+.1f}%")
    ax.axhline(BARS["preference_mean"] * 100, color="tab:red", ls=":", label="bar +40%")
    if result.get("args"):
        ax.axhline(result["args"]["preference"] * 100, color="tab:green", ls="-.", label="ARGS w10 k10")
    pooled = result["pooled_vs_best_of_2"]
    bx.axhspan(pooled["ci_low"] * 100, pooled["ci_high"] * 100, color="tab:orange", alpha=0.2, label="pooled 95% CI")
    bx.axhline(pooled["rate"] * 100, color="tab:orange", ls="--", label=f"pooled {pooled['rate'] * 100:+.1f}%")
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "main_job_seeds", help="where the run folders go")
    p.add_argument("--train-args", default="", help="more flags for mara train (smoke runs)")
    p.add_argument("--evaluate-args", default="", help="more flags for mara evaluate (smoke runs)")
    p.add_argument("--no-args", action="store_true", help="leave out ARGS (the moonshot comparison)")
    p.add_argument("--rerun", action="store_true", help="run seeds again whose report exists")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of main_job_seeds.json/.md/.png")
    args = p.parse_args(argv)
    host = machine()

    runs = {seed: args.runs / f"seed{seed}" for seed in args.seeds}
    rows = [seed_row(seed, run, main_job(seed, run, args)) for seed, run in runs.items()]
    reports = {seed: json.loads((run / "eval" / "report.json").read_text()) for seed, run in runs.items()}
    pooled = pooled_head_to_head(
        [(scores(reports[s], "mara"), scores(reports[s], row["best_of"])) for s, row in zip(args.seeds, rows)]
    )
    stats = spread([r["preference"] for r in rows])
    result: dict[str, Any] = {
        "runs": rows,
        "mean": stats["mean"],
        "std": stats["std"],
        "pooled_vs_best_of_2": pooled,
        "kl": spread([r["kl"] for r in rows]),
        # meta["prompts"] is mara evaluate's prompt source (a name); the count comes from the rows
        "prompts": len({row["index"] for row in reports[args.seeds[0]]["rows"]}),
        "prompt_source": reports[args.seeds[0]]["meta"].get("prompts"),
        "machine": host,
        "args": None,
    }
    if not args.no_args:
        result["args"] = args_system(runs[args.seeds[0]], args.runs / "args", runs, args.evaluate_args)
    result["bars"] = bars(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "main_job_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "main_job_seeds.md").write_text(table)
    plot(result, args.out / "main_job_seeds.png")
    print(table)
    return result


if __name__ == "__main__":
    main()
