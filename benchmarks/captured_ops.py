"""What a captured step would launch on a GPU, counted on any device: aten ops per env step and per answer token,
eager against ``capture=True`` (:mod:`mara_env.capture`).

Eager PyTorch on a GPU launches every aten op on its own (~10-15 us of host time each); with ``capture`` each
LLM forward of the rows layout is one CUDA graph replay. On a CPU the captured buckets run eagerly, so their
ops can be counted exactly (``op_count.CapturedOps``), and ``ops outside the buckets + bucket forwards`` is the
number of launches a captured step makes on a GPU. Both systems run the same seeded decisions; the script
checks that they give the same tokens.

- **env**: MARA-v1 on the embedded model, N sub-environments, one candidate per forward and 48-token answers
  (the shared ``ops_per_step`` tool's settings), the accelerators' rule of working ahead forced on (what a
  GPU runs), a random agent accepting with probability 0.7; 4 warm-up steps, then ``--steps`` counted.
- **decode**: ``MARAGenerator`` without an agent (the reference's own accept probabilities) at each batch size,
  a GPU's chunk plan (``chunk_size="adaptive"`` as resolved on CUDA: no packed layout, which stays eager),
  ``--max-new-tokens`` per answer.

Usage::

    python benchmarks/captured_ops.py                       # env N = 1, 8, 32; decode batch 1 and 16
    python benchmarks/captured_ops.py --envs 32 --batches 16 --steps 6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine_info
from forwards_per_step import counted_env  # benchmarks/forwards_per_step.py, beside this script
from op_count import CapturedOps, ForwardCounter, OpCounter
from tqdm import tqdm

import mara_env  # noqa: F401  (registers MARA-v1)
from agents.generation import MARAGenerator
from mara_env import load_replicas
from mara_env.config import resolve_chunking
from mara_env.prompts import PromptSet

RESULTS = Path(__file__).resolve().parent / "results"


def launches(total: int, inside: int, graphs: int) -> int:
    """Kernel launches of captured work: the ops outside the buckets one by one, each bucket forward once.

    >>> launches(total=5000, inside=4400, graphs=2)
    602
    """
    return total - inside + graphs


def env_counts(replica: Any, n: int, steps: int, capture: bool) -> dict[str, Any]:
    """Ops, forwards and (captured) launches per step of an N-row MARA-v1 under seeded random decisions."""
    # the accelerators' rule (what a GPU runs), with the default guesses
    env = counted_env(replica, n, both=True, draft=4, capture=capture)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(4):
        env.step((rng.random(n) < 0.7).astype(np.int64))
    forwards, tokens = ForwardCounter(replica.model), []
    with OpCounter() as ops, CapturedOps() as inside:
        for _ in range(steps):
            _, _, _, _, info = env.step((rng.random(n) < 0.7).astype(np.int64))
            tokens.append(np.asarray(info["token_id"]).tolist())
    forwards.close()
    env.close()
    return {
        "ops_per_step": ops.count / steps,
        "forwards_per_step": forwards.count / steps,
        "launches_per_step": launches(ops.count, inside.count, inside.steps) / steps if capture else ops.count / steps,
        "tokens": tokens,
    }


def decode_counts(replica: Any, prompts: list[str], batch: int, max_new: int, capture: bool) -> dict[str, Any]:
    """Ops, forwards and (captured) launches per answer token of reference decoding at ``batch`` rows."""
    plan = resolve_chunking("adaptive", torch.device("cuda"), 50)  # a GPU's plan: no packed layout
    gen = MARAGenerator([replica], None, chunk_size=plan, batch_size=batch, capture=capture)
    forwards = ForwardCounter(replica.model)
    with OpCounter() as ops, CapturedOps() as inside:
        out = gen.generate(prompts, max_new, seed=0)
    forwards.close()
    tokens = sum(x.num_tokens for x in out)
    lockstep = max(x.num_tokens for x in out)
    total = launches(ops.count, inside.count, inside.steps) if capture else ops.count
    return {
        "ops_per_token": ops.count / max(tokens, 1),
        "forwards_per_lockstep_token": forwards.count / max(lockstep, 1),
        "launches_per_token": total / max(tokens, 1),
        "texts": [x.text for x in out],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8, 32], help="env sizes N (default: 1 8 32)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="decode batch sizes (default: 1 16)")
    parser.add_argument("--steps", type=int, default=12, help="counted env steps (default: 12)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="decode answer limit (default: 32)")
    parser.add_argument("--out", default=str(RESULTS / "captured_ops.json"))
    args = parser.parse_args()
    replica = load_replicas(None)[0]
    rows: list[dict[str, Any]] = []
    print("| work | eager ops | captured: ops outside graphs + graph replays | x fewer launches | forwards | same |")
    print("|---|---:|---:|---:|---:|:-:|")
    for n in tqdm(args.envs, desc="env", leave=False):
        eager, captured = (env_counts(replica, n, args.steps, capture) for capture in (False, True))
        same = eager.pop("tokens") == captured.pop("tokens")
        rows.append({"work": "env step", "n": n, "eager": eager, "captured": captured, "same_tokens": same})
        ratio = eager["ops_per_step"] / captured["launches_per_step"]
        tqdm.write(
            f"| env step, N={n} | {eager['ops_per_step']:,.0f} | {captured['launches_per_step']:,.0f} | {ratio:.1f}"
            f" | {eager['forwards_per_step']:.2f} | {'yes' if same else 'NO'} |"
        )
    prompts = list(PromptSet.from_source("default", part="test"))
    for batch in tqdm(args.batches, desc="decode", leave=False):
        chosen = prompts[:batch]
        eager, captured = (
            decode_counts(replica, chosen, batch, args.max_new_tokens, capture) for capture in (False, True)
        )
        same = eager.pop("texts") == captured.pop("texts")
        rows.append({"work": "answer token", "batch": batch, "eager": eager, "captured": captured, "same_texts": same})
        ratio = eager["ops_per_token"] / captured["launches_per_token"]
        tqdm.write(
            f"| answer token, batch {batch} | {eager['ops_per_token']:,.0f} | {captured['launches_per_token']:,.0f}"
            f" | {ratio:.1f} | {eager['forwards_per_lockstep_token']:.2f} | {'yes' if same else 'NO'} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine_info(), "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
