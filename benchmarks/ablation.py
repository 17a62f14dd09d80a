"""Which part of MARA-v1 does what: the default run with reference features, anchored policy and shaping on and off.

Each variant is the default ``mara train`` run (:data:`agents.training.run_config.DEFAULT_RUN`: DiscreteSAC,
the embedded SmolLM2-135M-Instruct, the default prompt set's train part, 48-token answers, the same
number of decisions and seed) with some of MARA-v1's three parts turned off:

- **features**: the reference's features appended to the observation (``observation="hidden+ref"``);
- **anchor**: actor logits ``log p_ref(. | k) + f(s)`` with ``f = 0`` at the start, and the warm-up
  following that policy instead of uniform actions (``policy_kwargs.reference_logits``; needs features);
- **shaping**: potential-based shaping by the prefix's score (``reward_shaping="potential"``).

=====================  ========  ======  =======
variant                features  anchor  shaping
=====================  ========  ======  =======
``v0``                 -         -       -          the paper's MDP (MARA-v0)
``shaping``            -         -       yes
``features``           yes       -       -
``features+anchor``    yes       yes     -
``features+shaping``   yes       -       yes
``v1``                 yes       yes     yes        MARA-v1, the default run
=====================  ========  ======  =======

Every variant is then decoded on the same held-out prompts (the test part of the default set, never
trained on) with the same seeds and compared with the base LLM in one report
(:func:`agents.evaluation.pipeline.run_comparison`): preference rate with its prompt-bootstrap interval, the
mean reward and cost differences, KL to the reference. Training runs are kept under
``<out>/runs/<variant>/`` and reused when their ``model.zip`` exists (``--retrain`` trains again),
so an interrupted benchmark continues where it stopped.

Usage::

    python benchmarks/ablation.py                       # all six, 30k decisions each, 157 held-out prompts
    python benchmarks/ablation.py --variants v0 v1 --decisions 10000 --num-prompts 64

Outputs under ``--out`` (default ``benchmarks/results/ablation/``): ``ablation.md`` and
``ablation.json`` (the table), ``ablation.png`` (preference and KL per variant), ``report/`` (the full
comparison report) and ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.evaluation import held_out_prompts, run_comparison
from agents.training.run_config import RunConfig
from agents.training.run_folder import CONFIG_FILE, MODEL_FILE
from agents.training.runner import train_run

RESULTS = Path(__file__).resolve().parent / "results" / "ablation"

#: variant -> (features, anchor, shaping)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "v0": (False, False, False),
    "shaping": (False, False, True),
    "features": (True, False, False),
    "features+anchor": (True, True, False),
    "features+shaping": (True, False, True),
    "v1": (True, True, True),
}


def variant_config(name: str, decisions: int | None = None) -> RunConfig:
    """The default run with the variant's parts on or off."""
    features, anchor, shaping = VARIANTS[name]
    env = {
        "env_id": "MARA-v1" if features else "MARA-v0",
        "observation": "hidden+ref" if features else "hidden",
        "reward_shaping": "potential" if shaping else "none",
    }
    # "auto" anchors whenever the observation has the features; None keeps the plain actor
    agent = {"policy_kwargs": {"reference_logits": "auto" if anchor else None}}
    train: dict[str, Any] = {"progress_bar": False}
    if decisions is not None:
        train["total_decisions"] = decisions
    return RunConfig.from_sections({"env": env, "agent": agent, "train": train}, source=f"ablation {name}")


def train_variant(name: str, folder: Path, decisions: int | None, retrain: bool) -> dict[str, Any]:
    """Train one variant into ``folder`` unless its model exists; return its summary."""
    config = variant_config(name, decisions)
    model = folder / MODEL_FILE
    if model.is_file() and not retrain:
        saved = RunConfig.from_file(folder / CONFIG_FILE)
        if saved.changes_from(config):
            raise SystemExit(
                f"{folder} was trained with other settings ({', '.join(saved.changes_from(config))}); pass --retrain."
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)  # a run that stopped half-way starts over, in place
        config.dump(folder / CONFIG_FILE)
        started = time.perf_counter()
        train_run(config, folder)
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((folder / "summary.json").read_text())


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Held-out prompts: {meta['prompts']} x {meta['samples_per_prompt']} samples; "
        f"{meta['decisions']} training decisions per variant, seed {meta['seed']}.",
        "",
        "| variant | features | anchor | shaping | preference vs base [95% CI] | reward diff [95% CI] "
        "| cost diff [95% CI] | KL (nats) | train time |",
        "|---|:-:|:-:|:-:|---|---|---|---:|---:|",
    ]
    for r in rows:
        mark = ["yes" if on else "-" for on in VARIANTS[r["variant"]]]
        p, dr, dc = r["preference"], r["reward_diff"], r["cost_diff"]
        lines.append(
            f"| {r['variant']} | {' | '.join(mark)} | {p['rate'] * 100:+.1f}% [{p['ci_low'] * 100:+.1f}, "
            f"{p['ci_high'] * 100:+.1f}] | {dr['mean']:+.3f} [{dr['ci_low']:+.3f}, {dr['ci_high']:+.3f}] "
            f"| {dc['mean']:+.4f} [{dc['ci_low']:+.4f}, {dc['ci_high']:+.4f}] | {r['kl']:.2f} "
            f"| {r['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    names = [r["variant"] for r in rows]
    ax, bx = fig.subplots(1, 2)
    rates = [r["preference"]["rate"] * 100 for r in rows]
    low = [rate - r["preference"]["ci_low"] * 100 for rate, r in zip(rates, rows)]
    high = [r["preference"]["ci_high"] * 100 - rate for rate, r in zip(rates, rows)]
    ax.barh(names, rates, xerr=[low, high], color="tab:blue", capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("preference vs base LLM (%), 95% CI")
    ax.invert_yaxis()
    bx.barh(names, [r["kl"] for r in rows], color="tab:orange")
    bx.set_xlabel("KL to the reference (nats per answer)")
    bx.invert_yaxis()
    bx.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--decisions", type=int, help="training decisions per variant (default: the default run's)")
    p.add_argument("--num-prompts", type=int, help="held-out prompts (default: all)")
    p.add_argument("--samples-per-prompt", type=int, default=1, help="answers per prompt and system (default 1)")
    p.add_argument("--seed", type=int, default=0, help="decoding seed of the comparison (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts decoded at once (default 64)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--retrain", action="store_true", help="train every variant again")
    args = p.parse_args(argv)

    summaries = {
        name: train_variant(name, args.out / "runs" / name, args.decisions, args.retrain) for name in args.variants
    }
    env = RunConfig.default().env
    prompts = held_out_prompts(env["prompts"], test_fraction=env["test_fraction"], split_seed=env["split_seed"])
    if args.num_prompts is not None:
        prompts = prompts[: args.num_prompts]
    report = run_comparison(
        {name: str(args.out / "runs" / name / MODEL_FILE) for name in args.variants},
        args.out / "report",
        prompts=prompts,
        max_new_tokens=env["max_new_tokens"],
        seed=args.seed,
        samples_per_prompt=args.samples_per_prompt,
        best_of=0,
        reward_model=env["reward_model"],
        cost_model=env["cost_model"],
        alpha_r=env["alpha_r"],
        alpha_c=env["alpha_c"],
        top_k=env["top_k"],
        top_p=env["top_p"],
        temperature=env["temperature"],
        batch_size=args.batch_size,
        meta={"benchmark": "ablation"},
    )
    rows = []
    for name in args.variants:
        c = report["comparisons"][name]
        rows.append(
            {
                "variant": name,
                "features": VARIANTS[name][0],
                "anchor": VARIANTS[name][1],
                "shaping": VARIANTS[name][2],
                "preference": {k: c[k] for k in ("rate", "ci_low", "ci_high", "wins", "ties", "losses")},
                "reward_diff": c["reward_diff"],
                "cost_diff": c["cost_diff"],
                "kl": report["systems"][name]["kl_mean"],
                "reward": report["systems"][name]["reward_mean"],
                "cost": report["systems"][name]["cost_mean"],
                "train_seconds": summaries[name]["wall_seconds"],
                "train_decisions": summaries[name]["decisions"],
            }
        )
    meta = {
        "prompts": len(prompts),
        "samples_per_prompt": args.samples_per_prompt,
        "decisions": summaries[args.variants[0]]["decisions"],
        "seed": args.seed,
        "base": report["systems"]["base"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, meta)
    (args.out / "ablation.md").write_text(table)
    plot(rows, args.out / "ablation.png")
    print(table)
    return rows


if __name__ == "__main__":
    main()
