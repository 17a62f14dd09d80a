"""Decisions per second of distributed training (Ray collectors) against the single-process vector env.

Three ways to spend the same budget of decisions, measured side by side in one run on one Ray cluster:

- ``single``: ``mara train`` as usual, the vector env in this process (one torch thread);
- ``collectors=1``: one Ray collector actor (one torch thread) with its own LLM and vector env,
  feeding the learner in this process;
- ``collectors=2``: two such collectors.

Every configuration is the same :class:`~agents.training.run_config.RunConfig` (the default run's
environment: embedded SmolLM2-135M, sentiment reward, toxicity cost, unless ``--llm`` names another),
``num_envs`` sub-environments per process, with ``learning_starts`` at the budget by default so that
the time measured is collection (LLM, policy, scoring) and the learner's bookkeeping, not gradient
steps (``--learn`` keeps the algorithm's own ``learning_starts``). Decisions per second are the run's
decisions over its training wall time (``summary.json``: from the first step, so the collectors'
start-up and LLM loading, reported separately, are left out). Scaling efficiency =
``dps(collectors=2) / (2 * dps(collectors=1))``. Configurations run in interleaved rounds.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/distributed.py                 # 2,048 decisions per run, 1 round
    python benchmarks/distributed.py --decisions 4096 --rounds 2 --collectors 1 2 4
    python benchmarks/distributed.py --quick                           # smoke run: 256 decisions

Writes ``benchmarks/results/distributed/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine_info
from tqdm.auto import tqdm

from agents.distributed.cluster import worker_niceness
from agents.training.run_config import RunConfig
from agents.training.runner import train_run

RESULTS = Path(__file__).resolve().parent / "results" / "distributed"


def run_config(args: argparse.Namespace, collectors: int | None) -> RunConfig:
    env: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.llm:
        env["llm"] = args.llm
    agent: dict[str, Any] = {} if args.learn else {"learning_starts": args.decisions + 1}
    train = dict(
        total_decisions=args.decisions,
        num_envs=args.num_envs,
        checkpoint_every=10 * args.decisions,  # only the final checkpoint
        log_every=max(args.decisions // 4, 1),
        progress_bar=False,
        collectors=collectors,
        collect_steps=args.collect_steps,
        device="cpu",
    )
    return RunConfig.from_sections({"env": env, "agent": agent, "train": train})


def measure(args: argparse.Namespace, collectors: int | None, folder: Path) -> dict[str, Any]:
    out = folder / f"run-{collectors or 'single'}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    assert train_run(run_config(args, collectors), out) == 0
    total = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    result = {
        "mode": "single" if collectors is None else f"collectors={collectors}",
        "collectors": collectors,
        "decisions": summary["decisions"],
        "training_seconds": summary["wall_seconds"],
        "decisions_per_second": summary["decisions"] / summary["wall_seconds"],
        "startup_seconds": round(total - summary["wall_seconds"], 1),
    }
    if collectors:
        with open(out / "progress.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        stats = json.loads((out / "cluster.json").read_text())["stats"]
        # Each collector's own speed: its decisions over the seconds it spent stepping
        result["collector_decisions_per_second"] = [
            d / s if s else None for d, s in zip(stats["collector_decisions"], stats["collector_seconds"])
        ]
        # The share of the training time each collector spent stepping (1: never idle)
        result["collector_busy"] = [s / summary["wall_seconds"] for s in stats["collector_seconds"]]
        result["staleness_mean"] = statistics.fmean(float(r["distributed/staleness_mean"]) for r in rows)
        result["collector_decisions"] = stats["collector_decisions"]
    return result


def markdown(results: dict[str, Any]) -> str:
    rows = results["summary"]
    base = rows["single"]["decisions_per_second"]
    lines = [
        "| configuration | decisions/s | vs single process | per collector (its own) | collectors busy | start-up s |",
        "|---|---|---|---|---|---|",
    ]
    for mode, row in rows.items():
        own = ", ".join(f"{v:.1f}" for v in row.get("collector_decisions_per_second") or [] if v) or "-"
        busy = ", ".join(f"{v:.0%}" for v in row.get("collector_busy") or []) or "-"
        lines.append(
            f"| {mode} | {row['decisions_per_second']:.1f} | {row['decisions_per_second'] / base:.2f}x | {own} | "
            f"{busy} | {row['startup_seconds']:.0f} |"
        )
    lines.append("")
    for key, value in results["scaling_efficiency"].items():
        lines.append(f"Scaling efficiency {key}: {value:.2f}")
    settings = results["settings"]
    cores = results["machine"].get("cpu_count", results["machine"].get("cpus"))  # older result files: "cpus"
    lines.append("")
    lines.append(
        f"{settings['decisions']} decisions per run, {settings['num_envs']} envs per process, "
        f"{settings['rounds']} round(s), LLM {settings['llm'] or 'embedded SmolLM2-135M'}, "
        f"{'with' if settings['learn'] else 'without'} gradient steps, Ray workers at niceness "
        f"{settings['worker_niceness']}, {cores} CPU cores, "
        f"torch threads {results['machine']['torch_threads']} per process, {results['machine']['date']}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=2048, help="decisions per run (default 2048)")
    parser.add_argument("--collectors", type=int, nargs="+", default=[1, 2], help="collector counts (default 1 2)")
    parser.add_argument("--num-envs", type=int, default=32, help="sub-environments per process (default 32)")
    parser.add_argument("--collect-steps", type=int, default=8, help="vector steps per collection task")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--llm", help="LLM (default: the embedded SmolLM2-135M)")
    parser.add_argument("--learn", action="store_true", help="keep the algorithm's learning_starts (gradient steps)")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs of the local cluster (one per collector)")
    parser.add_argument(
        "--worker-niceness", type=int, default=0, help="niceness of Ray's workers (Ray's own default: 15)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 decisions, 8 envs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.decisions, args.num_envs = 256, 8
    torch.set_num_threads(1)

    import ray

    cpus = max(max(args.collectors), 1)
    # As agents.distributed starts a local cluster: collectors at the same priority as this process
    with worker_niceness(args.worker_niceness):
        ray.init(num_cpus=cpus, num_gpus=args.gpus or None, include_dashboard=False, logging_level="warning")
    modes: list[int | None] = [None, *args.collectors]
    measured: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="mara-distributed-") as tmp,
        tqdm(total=args.rounds * len(modes), desc="runs", unit="run") as bar,
    ):
        for _ in range(args.rounds):
            for collectors in modes:
                result = measure(args, collectors, Path(tmp))
                measured.setdefault(result["mode"], []).append(result)
                bar.set_postfix(last=f"{result['mode']} {result['decisions_per_second']:.1f}/s")
                bar.update()
    ray.shutdown()

    summary = {}
    for mode, runs in measured.items():
        row = dict(runs[-1])
        row["decisions_per_second"] = statistics.fmean(r["decisions_per_second"] for r in runs)
        row["startup_seconds"] = statistics.fmean(r["startup_seconds"] for r in runs)
        summary[mode] = row
    efficiency = {}
    if "collectors=1" in summary:
        one = summary["collectors=1"]["decisions_per_second"]
        for n in args.collectors:
            if n > 1:
                efficiency[f"{n} collectors"] = summary[f"collectors={n}"]["decisions_per_second"] / (n * one)
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            **machine_info(),
            "ray": ray.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "runs": measured,
        "summary": summary,
        "scaling_efficiency": efficiency,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
