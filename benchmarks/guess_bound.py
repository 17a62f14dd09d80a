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

With ``--accuracy``, one more drafter per value ``q`` says how good a guesser must be: it guesses the
recorded token with probability ``q`` (fixed per context, as a trained guesser is deterministic) and a wrong
token otherwise, where that chain stops; where the context was not recorded it falls back to the
n-grams. ``q`` is the top-1 accuracy a draft head would need, on the contexts the decoder guesses in.

Usage::

    python benchmarks/guess_bound.py                 # N=32, 4 warm-up steps, 60 counted
    python benchmarks/guess_bound.py --envs 8 --steps 12
    python benchmarks/guess_bound.py --steps 24 --accuracy 0.9 0.75 0.6 0.45 0.3
"""

from __future__ import annotations

import argparse
import zlib
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


class PartialOracle(Drafter):
    """Right with probability ``accuracy`` per guess where the context was recorded: a guesser of that top-1
    accuracy. Whether a context's guess is right is fixed by a hash of the context, so every run and every row
    meeting it agree; a wrong guess ends the chain (the decoder drops what follows it anyway)."""

    def __init__(self, max_tokens: int, record: dict[tuple[int, ...], int], accuracy: float) -> None:
        super().__init__(max_tokens)
        self.record, self.accuracy = record, accuracy

    def draft(self, row: RowIndex, extra: Sequence[int], count: int | None = None) -> list[int]:
        count = self.max_tokens if count is None else min(count, self.max_tokens)
        context, out = [*row.tokens, *(int(t) for t in extra)], []
        while len(out) < count and (known := self.record.get(tuple(context))) is not None:
            right = zlib.crc32(repr(context).encode()) % 10_000 < self.accuracy * 10_000
            out.append(known if right else (known - 1 if known else 1))  # a wrong id in the vocabulary
            if not right:
                return out
            context.append(known)
        return out if out else super().draft(row, extra, count)


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
    parser.add_argument(
        "--accuracy", type=float, nargs="*", default=[], help="top-1 accuracies of partial oracles (0 < q < 1)"
    )
    args = parser.parse_args()
    bad = [q for q in args.accuracy if not 0 < q < 1]
    if bad:
        parser.error(f"--accuracy takes values strictly between 0 and 1, got {bad}")
    replica = load_replicas(None)[0]
    recorder = RecordingDrafter(4)
    plain = run(replica, args.envs, args.steps, recorder)
    rows = [("n-grams (the library's)", plain)]
    for q in sorted(args.accuracy, reverse=True):
        rows.append(
            (
                f"right with probability {q:.2f} (else n-grams)",
                run(replica, args.envs, args.steps, PartialOracle(4, recorder.record, q)),
            )
        )
    rows.append(
        (
            "oracle (the LLM's greedy tokens, recorded)",
            run(replica, args.envs, args.steps, OracleDrafter(4, recorder.record)),
        )
    )
    print(f"LLM forwards per env step, N={args.envs}, accelerators' rule, draft_tokens=4, {args.steps} steps")
    print("| guesses | forwards per step |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
