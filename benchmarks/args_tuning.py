"""Tune ARGS (reward-guided decoding, :mod:`agents.reward_guided`) on *training* prompts.

ARGS's weight ``w`` and candidate count ``k`` are chosen here, on the ``"train"`` part of the prompt
set (the part ``MARA-v0`` trains on), so that the held-out prompts ``mara evaluate`` reports on are
never used to pick them. Every setting of the grid answers the same prompts and is compared with the
base LLM by :func:`agents.evaluation.pipeline.run_comparison` (the paper's win/tie/lose rule, preference rate
and mean reward / cost differences with 95% prompt-bootstrap intervals). The base LLM samples
``--samples-per-prompt`` answers per prompt; greedy ARGS is deterministic, so its one answer per prompt
is paired with each of them.

Defaults: the embedded SmolLM2-135M-Instruct, the first 48 training prompts of the default set, 48
answer tokens, sentiment reward and toxicity cost (``alpha_r = alpha_c = 1``), base sampling with
top-k 50 / top-p 0.95, ``w`` in {0.5, 1, 2, 5, 10} x ``k`` in {5, 10, 20}.

The best setting is the one with the highest preference rate against the base (ties: the lower
``k``, i.e. fewer scorer calls). Writes ``benchmarks/results/args_tuning.json`` (the table, the best
setting, the settings of the run) and the full report under ``benchmarks/results/args_tuning/``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/args_tuning.py                       # 12.5 min measured, one CPU thread
    python benchmarks/args_tuning.py --weights 1 5 --ks 10 --num-prompts 16  # a smaller grid
    python benchmarks/args_tuning.py --quick --out /tmp/a.json --report /tmp/a  # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine_info

from agents.evaluation import BASE, held_out_prompts, run_comparison
from agents.reward_guided import args_name

RESULTS = Path(__file__).parent / "results"


def _row(name: str, system: dict, comparison: dict | None) -> dict:
    row = {
        "system": name,
        "reward": system["reward_mean"],
        "cost": system["cost_mean"],
        "scorer_calls_per_answer": system["scorer_calls_per_answer"],
        "llm_tokens_per_answer_token": system["llm_tokens_per_response_token"],
        # a greedy setting's answers are repeated per sample and its time counted per sample: one decode's time
        "wall_seconds": system["wall_seconds"] / system["samples_per_prompt"],
    }
    if comparison is not None:
        row.update(
            rate=comparison["rate"],
            ci_low=comparison["ci_low"],
            ci_high=comparison["ci_high"],
            wins=comparison["wins"],
            ties=comparison["ties"],
            losses=comparison["losses"],
            reward_diff=comparison["reward_diff"],
            cost_diff=comparison["cost_diff"],
        )
    return row


def _table(rows: list[dict]) -> str:
    lines = [
        "| system | preference vs base [95% CI] | W / T / L | reward | cost | reward diff [95% CI] "
        "| scorer calls / answer | LLM tokens / answer token | wall s |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if "rate" in r:
            pref = f"{r['rate'] * 100:+.1f}% [{r['ci_low'] * 100:+.1f}, {r['ci_high'] * 100:+.1f}]"
            wtl = f"{r['wins']} / {r['ties']} / {r['losses']}"
            d = r["reward_diff"]
            diff = f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        else:
            pref, wtl, diff = "0 (reference)", "", ""
        lines.append(
            f"| {r['system']} | {pref} | {wtl} | {r['reward']:.3f} | {r['cost']:.3f} | {diff} "
            f"| {r['scorer_calls_per_answer']:.0f} | {r['llm_tokens_per_answer_token']:.2f} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default=None, help="LLM (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", default="default", help="prompt set; its 'train' part is used")
    p.add_argument("--num-prompts", type=int, default=48, help="the first N training prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--samples-per-prompt", type=int, default=2, help="base LLM samples per prompt")
    p.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0, 10.0])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--reward-model", default="sentiment")
    p.add_argument("--cost-model", default="toxicity")
    p.add_argument("--top-k", type=int, default=50, help="the base LLM's sampling top-k")
    p.add_argument("--top-p", type=float, default=0.95, help="the base LLM's sampling top-p")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=str(RESULTS / "args_tuning.json"))
    p.add_argument("--report", default=str(RESULTS / "args_tuning"), help="folder for the full report")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 prompts, 8 tokens, w in {1, 5}, k = 5")
    args = p.parse_args()
    if args.quick:
        args.num_prompts, args.max_new_tokens, args.weights, args.ks = 8, 8, [1.0, 5.0], [5]
    torch.set_num_threads(args.threads)

    prompts = held_out_prompts(args.prompts, part="train", num_prompts=args.num_prompts)  # never the test part
    grid = [{"weight": w, "k": k} for w in args.weights for k in args.ks]
    start = time.perf_counter()
    report = run_comparison(
        {},
        args.report,
        llm=args.llm,
        prompts=prompts,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        samples_per_prompt=args.samples_per_prompt,
        best_of=0,
        args=grid,
        reward_model=args.reward_model,
        cost_model=args.cost_model,
        top_k=args.top_k,
        top_p=args.top_p,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        meta={"prompts": f"{args.prompts} (train part, first {len(prompts)})", "purpose": "ARGS tuning"},
    )
    total = time.perf_counter() - start

    systems, comparisons = report["systems"], report["comparisons"]
    rows = [_row(BASE, systems[BASE], None)]
    rows += [_row(n, systems[n], comparisons[n]) for n in (args_name(s["weight"], s["k"]) for s in grid)]
    tuned = rows[1:]
    best = max(tuned, key=lambda r: (r["rate"], -systems[r["system"]]["scorer_calls"]))
    setting = next(s for s in grid if args_name(s["weight"], s["k"]) == best["system"])
    print(
        f"\nARGS on the first {len(prompts)} training prompts, {args.max_new_tokens} tokens, base LLM with "
        f"{args.samples_per_prompt} samples per prompt ({len(prompts) * args.samples_per_prompt} pairs per setting); "
        f"{total / 60:.1f} min\n"
    )
    print(_table(rows))
    print(
        f"\nbest: w={setting['weight']:g}, k={setting['k']} ({best['system']}): preference "
        f"{best['rate'] * 100:+.1f}% [{best['ci_low'] * 100:+.1f}, {best['ci_high'] * 100:+.1f}] against the base LLM"
    )
    out = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(threads=args.threads),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report", "no_progress", "quick")},
        "num_prompts": len(prompts),
        "prompt_part": "train",
        "total_seconds": total,
        "rows": rows,
        "best": {**setting, "system": best["system"], "rate": best["rate"], "ci": [best["ci_low"], best["ci_high"]]},
        "rule": "highest preference rate against the base LLM; ties: fewer scorer calls",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out} and {Path(args.report) / 'report.md'}")


if __name__ == "__main__":
    main()
