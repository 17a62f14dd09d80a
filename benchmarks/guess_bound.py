"""How far better guesses could cut forwards: the accelerators' rule with guesses that are always right.

Forwards per env step at N=32 on the embedded model (the ``forwards_per_step`` set-up: random agent
accepting with probability 0.7, 48-token answers, the accelerators' rule forced on so that a CPU can
count it) for two drafters on the same seeded decisions, hence the same episodes:

- ``n-grams``: the library's :class:`mara_env.drafting.Drafter`; this run also records the LLM's greedy
  token after every full context the decoder met (:meth:`Drafter.learn` is told each of them);
- ``oracle``: guesses those recorded tokens first (right wherever the first run met the context), then
  falls back to the n-grams.

The gap is what a better guesser (one that knows the LLM, such as a draft head on its hidden states)
could win; the oracle's figure is the floor for one decision per row per step.

Usage::

    python benchmarks/guess_bound.py                 # N=32, 4 warm-up steps, 60 counted
    python benchmarks/guess_bound.py --envs 8 --steps 12
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from forwards_per_step import counted_env  # benchmarks/forwards_per_step.py, beside this script
from op_count import ForwardCounter  # benchmarks/op_count.py, beside this script
from tqdm import tqdm

from mara_env import load_replicas
from mara_env.drafting import Drafter, RowIndex


class RecordingDrafter(Drafter):
    """The library's drafter, also keeping the LLM's greedy token after every full context it is told."""

    def __init__(self, max_tokens: int) -> None:
        super().__init__(max_tokens)
        self.record: dict[tuple[int, ...], int] = {}

    def learn(self, context: Sequence[int], token: int) -> None:
        self.record[tuple(context)] = int(token)
        super().learn(context, token)


class OracleDrafter(Drafter):
    """Guesses the recorded greedy tokens while the context is known, then the library's n-grams."""

    def __init__(self, max_tokens: int, record: dict[tuple[int, ...], int]) -> None:
        super().__init__(max_tokens)
        self.record = record

    def draft(self, row: RowIndex, extra: Sequence[int], count: int | None = None) -> list[int]:
        count = self.max_tokens if count is None else min(count, self.max_tokens)
        context, out = [*row.tokens, *(int(t) for t in extra)], []
        while len(out) < count and (known := self.record.get(tuple(context))) is not None:
            out.append(known)
            context.append(known)
        if len(out) < count:
            out += super().draft(row, [*extra, *out], count - len(out))
        return out


def run(replica, envs: int, steps: int, drafter: Drafter, warmup: int = 4) -> float:
    """Forwards per step over ``steps`` steps after ``warmup``, with ``drafter`` guessing."""
    env = counted_env(replica, envs, both=True, draft=drafter.max_tokens)
    decoder = env.unwrapped.core.decoder
    decoder.drafter = drafter
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    counter = ForwardCounter(replica.model)
    for step in tqdm(range(warmup + steps), desc=type(drafter).__name__, leave=False):
        if step == warmup:
            start = counter.count
        env.step((rng.random(envs) < 0.7).astype(np.int64))
    counter.close()
    env.close()
    return (counter.count - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=32, help="sub-environments (default: 32)")
    parser.add_argument("--steps", type=int, default=60, help="counted steps (default: 60)")
    args = parser.parse_args()
    replica = load_replicas(None)[0]
    recorder = RecordingDrafter(4)
    plain = run(replica, args.envs, args.steps, recorder)
    oracle = run(replica, args.envs, args.steps, OracleDrafter(4, recorder.record))
    print(f"LLM forwards per env step, N={args.envs}, accelerators' rule, draft_tokens=4, {args.steps} steps")
    print("| guesses | forwards per step |\n|---|---:|")
    print(f"| n-grams (the library's) | {plain:.2f} |\n| oracle (the LLM's greedy tokens, recorded) | {oracle:.2f} |")


if __name__ == "__main__":
    main()
