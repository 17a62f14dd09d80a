"""The run's time plan of ``benchmarks/gpu_suite.py`` (:class:`Budget`, :class:`Slice`) and two of its measured
sections: environment throughput and the SAC learners, each held to its slice (the decode section is in
``gpu_decode.py``, the shaping section in ``gpu_shaping.py``).

They reuse the CPU benchmarks' runners (``env_throughput.py``, ``sac_update_speed.py``), imported as siblings.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from gpu_profile import SetSizes, busy_share

#: Each section's weight in the run's time plan: a section's slice is its weight's share of the time left, over
#: the weights of the sections still to run (:meth:`Budget.slice`). ``compiled``: the compiled plain baseline's
#: extra share of a decode section (its compilations).
WEIGHTS = dict(build=0.4, env=1.0, decode=1.0, compiled=1.0, shaping=1.0, sac=0.6)


class Slice:
    """One section's share of the run's time (``seconds`` from its start): rounds and parts after it are
    skipped, each recorded in ``skipped`` with the reason; the first round of a section always runs."""

    def __init__(self, label: str, seconds: float) -> None:
        self.label, self.seconds, self.start = label, seconds, time.perf_counter()
        self.used: float | None = None
        self.skipped: list[str] = []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed

    def left(self) -> bool:
        return self.elapsed < self.seconds

    def skip(self, what: str) -> None:
        """Record that ``what`` did not run because this slice was spent."""
        self.skipped.append(f"{what} (its slice of {self.seconds:.0f} s spent)")

    def close(self) -> None:
        self.used = self.elapsed

    def record(self) -> dict[str, Any]:
        used = self.elapsed if self.used is None else self.used
        return dict(section=self.label, slice_s=round(self.seconds, 1), used_s=round(used, 1))


class Budget:
    """The whole run's time (``--budget-s``), shared out among its sections in :meth:`plan`'s order.

    Each section gets its weight's share of the time left over the sections still to run, so a section that
    overran (a compilation, a warm-up) takes its overrun out of every later section, not out of the last one
    alone; a section is skipped only once the whole budget is spent.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()
        self.pending: dict[str, float] = {}  # label -> weight, in run order
        self.slices: list[Slice] = []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed < self.seconds

    def plan(self, sections: Sequence[tuple[str, float]]) -> None:
        """The sections to run, in order, as ``(label, weight)``."""
        self.pending = dict(sections)

    def drop(self, label: str) -> None:
        """A planned section that will not run (its model failed to build, say)."""
        self.pending.pop(label, None)

    def slice(self, label: str) -> Slice:
        """Section ``label``'s slice, from now (an unplanned label gets weight 1)."""
        weight = self.pending.pop(label, 1.0)
        share = weight / max(weight + sum(self.pending.values()), 1e-9)
        piece = Slice(label, max(0.0, self.seconds - self.elapsed) * share)
        self.slices.append(piece)
        return piece

    def overruns(self) -> list[str]:
        """The sections that ran past their slice, by how much."""
        return [
            f"{s.label} +{s.used - s.seconds:.0f} s" for s in self.slices if s.used is not None and s.used > s.seconds
        ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_settings(args: argparse.Namespace) -> list[tuple[int, bool, bool]]:
    """The vector-env rows, as ``(N, lookahead, capture)``: every N working ahead (the default), the largest
    also without it ("wait"), and under ``--capture both`` the largest again with captured forwards; under
    ``--capture on`` every row captured."""
    top = max(args.envs)
    rows = [(n, True) for n in args.envs] + [(top, False)]
    if args.capture == "on":
        return [(n, ahead, True) for n, ahead in rows]
    captured = [(top, True, True)] if args.capture == "both" else []
    return [(n, ahead, False) for n, ahead in rows] + captured


def env_label(n: int, lookahead: bool, capture: bool) -> str:
    return f"mara N={n}" + ("" if lookahead else " wait") + (" captured" if capture else "")


def env_section(
    replica: Any, args: argparse.Namespace, budget: Slice, progress: Any, sets: SetSizes
) -> list[dict[str, Any]]:
    """Decisions/s of the authors' strategy, lazy batch-1 and the vector env at each N (eager and captured),
    in interleaved rounds sized to the section's slice; then per row what it pays for (op_count), and the
    GPU-busy share of the largest N's eager and captured rows. Every set the vector envs' rows take goes to
    ``sets``."""
    from env_throughput import Batch1Baseline, MaraRunner, measure

    from mara_env import PromptSet

    device = replica.device
    prompts = PromptSet.from_source(args.prompt_source, part="train")
    runners: dict[str, tuple[Callable[[], None], Callable[[], tuple[int, int]]]] = {}
    mara: dict[str, Any] = {}
    for label, eager in (("authors", True), ("lazy batch-1", False)):
        baseline = Batch1Baseline(replica, prompts, args.max_new_tokens, eager=eager, seed=0)
        runners[label] = (baseline.step_position, lambda b=baseline: (b.decisions, b.tokens))
    for n, lookahead, capture in env_settings(args):
        name = env_label(n, lookahead, capture)
        runner = MaraRunner(
            replica,
            n,
            args.chunk,
            args.max_new_tokens,
            seed=0,
            prompts=args.prompt_source,
            lookahead=lookahead,
            capture=capture,
        )

        def step(r: Any = runner) -> None:
            r.step()
            sets.observe(r.envs.core.decoder)

        runners[name] = (step, runner.counters)
        mara[name] = runner

    for step, _ in runners.values():  # warm-up: allocations, first prefill, kernel selection, first captures
        for _ in range(2):
            step()
    synchronize(device)
    # each configuration's time per round: what the slice leaves after the warm-up (a tenth kept for the
    # counting and profiling after the rounds), at most --seconds
    seconds = min(args.seconds, max(0.25, 0.9 * budget.remaining() / (len(runners) * args.rounds)))
    totals = {name: [0.0, 0, 0] for name in runners}
    for rnd in range(args.rounds):
        if rnd > 0 and not budget.left():
            budget.skip(f"env rounds {rnd + 1}-{args.rounds}")
            break
        for name, (step, counters) in runners.items():
            elapsed, decisions, tokens = measure(step, counters, seconds)
            synchronize(device)
            totals[name][0] += elapsed
            totals[name][1] += decisions
            totals[name][2] += tokens
            progress.update(1)
    # what a GPU pays for per step (op_count), counted after the timed rounds
    costs = {name: runner.cost(args.count_steps) for name, runner in mara.items()}
    busy = {}
    for name, runner in mara.items():
        if name.startswith(f"mara N={max(args.envs)}") and " wait" not in name:
            decoder = runner.envs.core.decoder
            watch = (lambda d=decoder: d.capture_stats) if decoder.capture_stats is not None else None
            busy[name] = busy_share(runner.step, args.profile_steps, device, watch)
    rate = {name: d / max(t, 1e-9) for name, (t, d, _) in totals.items()}
    rows = []
    for name, (elapsed, decisions, tokens) in totals.items():
        runner = mara.get(name)
        eager = name.removesuffix(" captured")
        captured = runner is not None and runner.envs.core.decoder.capture_stats is not None
        rows.append(
            dict(
                strategy=name,
                decisions_per_s=rate[name],
                tokens_per_s=tokens / max(elapsed, 1e-9),
                decisions=decisions,
                tokens=tokens,
                seconds=elapsed,
                seconds_per_round=seconds,
                x_lazy_b1=rate[name] / max(rate["lazy batch-1"], 1e-9),
                x_authors=rate[name] / max(rate["authors"], 1e-9),
                x_eager=rate[name] / max(rate[eager], 1e-9) if captured and eager in rate else None,
                capture_stats=runner.envs.core.decoder.capture_stats if runner is not None else None,
                gpu_busy=busy.get(name),
                forwards_per_step=runner.forwards_per_step() if runner is not None else None,
                chunk_size=chunk_size(runner) if runner is not None else None,
                **{k: v for k, v in costs.get(name, {}).items() if k != "forwards_per_step"},
            )
        )
    for runner in mara.values():
        runner.envs.close()
    return rows


def chunk_size(runner: Any) -> str:
    """The chunk rule a vector env runs (what ``--chunk`` resolved to), as text."""
    config = runner.envs.core.decoder.config
    if config.chunk_coverage is None:
        return str(config.chunk_size)
    return f"adaptive (<= {config.chunk_size}, coverage {config.chunk_coverage})"


def sac_section(
    hiddens: Sequence[int], args: argparse.Namespace, device: torch.device, budget: Slice, progress: Any
) -> list[dict[str, Any]]:
    """Gradient steps/s of DiscreteSAC and SB3's SAC at each observation size H, alternating call by call; each
    H gets an equal part of what the slice has left (at most ``--sac-seconds`` per learner)."""
    import numpy as np
    from sac_update_speed import fill_buffer, make_learners
    from stable_baselines3.common.logger import Logger

    rows = []
    rng = np.random.default_rng(0)
    for i, hidden in enumerate(hiddens):
        if i > 0 and not budget.left():
            budget.skip(f"SAC H={hidden}")
            rows.append(dict(hidden=hidden, skipped=f"its section's slice of {budget.seconds:.0f} s spent"))
            progress.update(1)
            continue
        start = time.perf_counter()
        learners = make_learners(hidden, args.sac_batch, args.sac_buffer, device=device)
        del learners["DiscreteSAC (plain Adam)"]  # the CPU benchmark's optimiser comparison
        for model in learners.values():
            fill_buffer(model, rng)
            model.set_logger(Logger(folder=None, output_formats=[]))
            model.train(gradient_steps=2, batch_size=args.sac_batch)  # warm-up: allocations, optimiser state
        synchronize(device)
        part = budget.remaining() / (len(hiddens) - i)  # this H's part, after its set-up
        seconds = min(args.sac_seconds, max(0.2, 0.9 * part / len(learners)))
        spent = dict.fromkeys(learners, 0.0)
        steps = dict.fromkeys(learners, 0)
        while min(spent.values()) < seconds:
            for name, model in learners.items():
                began = time.perf_counter()
                model.train(gradient_steps=args.sac_steps, batch_size=args.sac_batch)
                synchronize(device)
                spent[name] += time.perf_counter() - began
                steps[name] += args.sac_steps
        rate = {name: steps[name] / spent[name] for name in learners}
        for name in learners:
            rows.append(
                dict(
                    hidden=hidden,
                    learner=name,
                    batch_size=args.sac_batch,
                    gradient_steps_per_s=rate[name],
                    gradient_steps=steps[name],
                    seconds=spent[name],
                    setup_seconds=round(time.perf_counter() - start - sum(spent.values()), 2),
                    x_sb3_sac=rate[name] / rate["SB3 SAC"],
                )
            )
        del learners
        free_memory(device)
        progress.update(1)
    return rows


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
