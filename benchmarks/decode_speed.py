"""Decode speed of aligned generation against plain ``model.generate``, measured side by side.

For each batch size, three systems answer the same prompts with the same sampling settings
(prompt format, top-k, top-p, temperature, answer limit):

- ``plain``: ``model.generate(do_sample=True, top_k, top_p, temperature)``, left-padded batches
  (``MARAGenerator.generate_raw(record_stats=False)``): the physical limit;
- ``always-accept``: :class:`agents.MARAGenerator` with an agent that accepts every first candidate,
  i.e. the accept/reject machinery (candidate sets, tree forwards, KV commits) at its cheapest;
- ``trained``: :class:`agents.MARAGenerator` with a trained agent (rejections cost extra forwards,
  and the agent's MLP runs at every decision).

Speed is answer tokens per second (EOS included; padding excluded). Systems run in interleaved
rounds after a warm-up, so background load affects all alike. Plain ``generate`` at the same batch
size is the physical limit of decoding on this machine (one forward of one token per answer token);
every row prints it as the bound and the fraction reached. Bars: always-accept at least 0.9x plain
(0.95x on a GPU), trained at least 0.75x plain.

The ``--chunks`` option measures the aligned systems under several chunk rules (``1``, ``adaptive``,
an integer, ``auto``) side by side.

Usage::

    python benchmarks/decode_speed.py --agent runs/mara-default/model.zip
    python benchmarks/decode_speed.py --agent none --quick   # no trained agent: plain vs always-accept
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_info
from op_count import ForwardCounter, OpCounter

from agents.generation import MARAGenerator
from mara_env.config import ChunkPlan
from mara_env.llm import load_replicas
from mara_env.prompts import PromptSet

RESULTS = Path(__file__).parent / "results"


def always_accept(obs: np.ndarray) -> np.ndarray:
    return np.ones(obs.shape[0])


def chunk_rule(text: str) -> int | str | ChunkPlan:
    """``--chunks`` entries: an integer, a name (``adaptive``, ``auto``, ``all``) or ``adaptive:SIZE:COVERAGE``."""
    if text.isdigit():
        return int(text)
    if text.startswith("adaptive:"):
        _, size, coverage = text.split(":")
        return ChunkPlan(int(size), float(coverage))
    return text


def run(
    gens: dict[str, MARAGenerator], name: str, prompts: list[str], max_new: int, seed: int
) -> tuple[int, float, int]:
    """One pass of system ``name`` over ``prompts``: answer tokens, seconds, LLM tokens."""
    g = gens[name]
    out = answers(g, name, prompts, max_new, seed)
    return sum(x.num_tokens for x in out), g.last_stats.wall_seconds, g.last_stats.llm_tokens


def answers(g: MARAGenerator, name: str, prompts: list[str], max_new: int, seed: int) -> list:
    """System ``name``'s answers: plain ``generate`` for ``plain``, aligned decoding otherwise."""
    if name == "plain":
        return g.generate_raw(prompts, max_new, seed=seed, record_stats=False)
    return g.generate(prompts, max_new, seed=seed)


def cost(gens: dict[str, MARAGenerator], name: str, prompts: list[str], max_new: int, seed: int) -> dict[str, float]:
    """What one pass of system ``name`` over ``prompts`` (one batch) pays for (op_count): aten ops per answer
    token, LLM forwards and host syncs per lockstep token (the longest answer's length: what a batch's
    rows advance together), beside plain decoding's one forward per token."""
    g = gens[name]
    model = g.session.replicas[0].model
    forwards = ForwardCounter(model)
    try:
        with OpCounter() as ops:
            out = answers(g, name, prompts, max_new, seed)
    finally:
        forwards.close()
    tokens = sum(x.num_tokens for x in out)
    lockstep = max(x.num_tokens for x in out)
    syncs = None if name == "plain" else g.last_stats.extra.get("host_syncs")
    return dict(
        ops_per_answer_token=ops.count / max(tokens, 1),
        forwards_per_token=forwards.count / max(lockstep, 1),
        syncs_per_token=None if syncs is None else syncs / max(lockstep, 1),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", default="runs/mara-default/model.zip", help="trained agent (.zip/.pt), or 'none'")
    p.add_argument("--llm", default=None, help="LLM (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompts-per-batch", type=int, default=2, help="prompts per run = this x batch size")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--part", default="test", choices=["train", "test"], help="prompt part (tune on train)")
    p.add_argument(
        "--chunks",
        nargs="+",
        default=["auto"],
        help="chunk rules of the aligned systems: an integer, adaptive, auto, all, or adaptive:SIZE:COVERAGE",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 16 tokens")
    p.add_argument("--out", default=str(RESULTS / "decode_speed.json"))
    args = p.parse_args()
    if args.quick:
        args.rounds, args.max_new_tokens = 1, 16
    if args.threads:
        torch.set_num_threads(args.threads)

    replicas = load_replicas(args.llm, dtype=args.dtype)
    sampling = dict(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    agents: dict[str, object] = {"always-accept": always_accept}
    if args.agent.lower() != "none":
        if not Path(args.agent).is_file():
            raise SystemExit(f"--agent {args.agent}: no such file. Train one with `mara train` or pass --agent none.")
        agents["trained"] = args.agent
    prompts_all = PromptSet.from_source("default", part=args.part)
    rows = []
    for batch in args.batch_sizes:
        n = batch * args.prompts_per_batch
        prompts = [prompts_all[i % len(prompts_all)] for i in range(n)]
        gens = {"plain": MARAGenerator(replicas, None, batch_size=batch, **sampling)}
        for name, agent in agents.items():
            for chunk in args.chunks:
                label = name if len(args.chunks) == 1 else f"{name} C={chunk}"
                gens[label] = MARAGenerator(replicas, agent, batch_size=batch, chunk_size=chunk_rule(chunk), **sampling)

        for name in gens:  # warm-up (allocations, first-call overheads)
            run(gens, name, prompts, args.max_new_tokens, seed=10_000)
        totals = {name: [0, 0.0, 0] for name in gens}
        for r in range(args.rounds):
            for name in gens if r % 2 == 0 else reversed(list(gens)):
                tokens, seconds, llm_tokens = run(gens, name, prompts, args.max_new_tokens, seed=r)
                totals[name][0] += tokens
                totals[name][1] += seconds
                totals[name][2] += llm_tokens
            print(f"B={batch} round {r + 1}/{args.rounds} done", flush=True)
        # What a GPU pays for, counted on one batch after the timed rounds (counting slows what it counts).
        costs = {name: cost(gens, name, prompts[:batch], args.max_new_tokens, seed=20_000) for name in gens}
        plain_speed = totals["plain"][0] / totals["plain"][1]
        for name, (tokens, seconds, llm_tokens) in totals.items():
            speed = tokens / seconds
            rows.append(
                dict(
                    system=name,
                    batch_size=batch,
                    answer_tokens=tokens,
                    seconds=round(seconds, 2),
                    tokens_per_s=round(speed, 2),
                    bound_tokens_per_s=round(plain_speed, 2),
                    x_plain=round(speed / plain_speed, 3),
                    llm_tokens_per_answer_token=round(llm_tokens / tokens, 2),
                    **{k: None if v is None else round(v, 2) for k, v in costs[name].items()},
                )
            )

    lines = [
        "| system | batch | tokens/s | bound: plain tokens/s | of bound (x plain) | LLM tokens per answer token "
        "| forwards per token | aten ops per answer token | host syncs per token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        syncs = "" if row["syncs_per_token"] is None else f"{row['syncs_per_token']:.2f}"
        lines.append(
            f"| {row['system']} | {row['batch_size']} | {row['tokens_per_s']:.1f} | {row['bound_tokens_per_s']:.1f} "
            f"| {row['x_plain']:.2f} | {row['llm_tokens_per_answer_token']:.2f} | {row['forwards_per_token']:.2f} "
            f"| {row['ops_per_answer_token']:.0f} | {syncs} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    bars = {"always-accept": 0.9, "trained": 0.75}
    for row in rows:
        bar = bars.get(row["system"].split(" C=")[0])
        if bar is not None:
            print(f"bar {row['system']} B={row['batch_size']}: {row['x_plain']:.2f} >= {bar}: {row['x_plain'] >= bar}")

    meta = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=machine_info(replicas),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(replicas[0].device),
        dtype=str(replicas[0].model.dtype),
        llm=replicas[0].name,
        agent=args.agent,
        max_new_tokens=args.max_new_tokens,
        rounds=args.rounds,
        chunks=args.chunks,
        prompt_part=args.part,
        **sampling,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows, markdown=table), indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch_size"] for r in rows})
    names = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        by_batch = {r["batch_size"]: r["tokens_per_s"] for r in rows if r["system"] == name}
        speeds = [by_batch.get(b, 0.0) for b in batches]
        ax.bar(np.arange(len(batches)) + i * width, speeds, width, label=name)
    ax.set_xticks(np.arange(len(batches)) + width * (len(names) - 1) / 2, [f"batch {b}" for b in batches])
    ax.set_ylabel("answer tokens / s")
    ax.set_title("Aligned decoding vs plain model.generate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
