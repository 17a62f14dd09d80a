"""LLM forwards per environment step of MARA-v1, per rule of working ahead, with and without guesses.

The same seeded random agent (accept with probability 0.7, the shared ``ops_per_step`` tool's) drives
three vector environments on the embedded model: the CPU's rule of working ahead (which guesses
nothing), and the accelerators' (``ahead_both``) with guessed forced chains (``draft_tokens=4``, the
default) and without (``draft_tokens=0``). The decisions, hence the episodes, are the same in all
three, so the counts compare the rules alone. Counts are exact on any device; the accelerators' rule
is forced on here so that a CPU can count it.

Usage::

    python benchmarks/forwards_per_step.py                  # N=32, 4 warm-up steps, then 12 and 60 counted
    python benchmarks/forwards_per_step.py --envs 8 --steps 12
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
from op_count import ForwardCounter  # benchmarks/op_count.py, beside this script
from tqdm import tqdm

import mara_env  # noqa: F401  (registers MARA-v1)
from mara_env import load_replicas


def counted_env(replica, envs: int, both: bool, draft: int, capture: bool = False):
    """The vector env whose forwards these benchmarks count (48-token answers, no scorers, one candidate per
    forward), with the accelerators' rule of working ahead forced on or off (``both``) and, with ``capture``,
    static-shape forwards (``captured_ops.py``)."""
    env = gym.make_vec(
        "MARA-v1",
        num_envs=envs,
        llm=(replica.model, replica.tokenizer),
        max_new_tokens=48,
        reward_model="zero",
        cost_model="zero",
        reward_shaping="none",
        chunk_size=1,
        draft_tokens=draft,
        capture=capture,
    )
    env.unwrapped.core.decoder.ahead_both = both
    return env


def count(replica, envs: int, steps: list[int], both: bool, draft: int, warmup: int = 4) -> dict[int, float]:
    """Forwards per step after ``warmup`` steps, at each of ``steps`` (cumulative counts)."""
    env = counted_env(replica, envs, both, draft)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    counter = ForwardCounter(replica.model)
    out = {}
    for step in tqdm(range(warmup + max(steps)), desc=f"both={both} draft={draft}", leave=False):
        if step == warmup:
            start = counter.count
        env.step((rng.random(envs) < 0.7).astype(np.int64))
        if step + 1 - warmup in steps:
            out[step + 1 - warmup] = (counter.count - start) / (step + 1 - warmup)
    counter.close()
    env.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=32, help="sub-environments (default: 32)")
    parser.add_argument("--steps", type=int, nargs="+", default=[12, 60], help="counted steps (default: 12 60)")
    args = parser.parse_args()
    replica = load_replicas(None)[0]
    print(f"LLM forwards per env step, N={args.envs}, random agent (accept 0.7), seed 0")
    print("| rule | guesses | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    print("|---|---|" + "---:|" * len(args.steps))
    for both, draft in ((False, 0), (True, 0), (True, 4)):
        got = count(replica, args.envs, args.steps, both, draft)
        rule = "accelerators (both branches)" if both else "CPU"
        cells = " | ".join(f"{got[s]:.2f}" for s in args.steps)
        print(f"| {rule} | {'draft_tokens=4' if draft else 'none'} | {cells} |")


if __name__ == "__main__":
    main()
