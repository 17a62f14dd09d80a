"""The measured sections of ``benchmarks/gpu_suite.py``: environment throughput, aligned decode speed and the
SAC learners, each time-boxed by the run's :class:`Budget`.

They reuse the CPU benchmarks' runners (``env_throughput.py``, ``decode_speed.py``, ``sac_update_speed.py``),
imported as siblings.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Accept probability of the random agent of the decode section (a stand-in for a trained agent).
RANDOM_AGENT_P = 0.5


class Budget:
    """The whole run's time limit: a section that would start after it is skipped and recorded so."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed < self.seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_section(replica: Any, args: argparse.Namespace, budget: Budget, progress: Any) -> list[dict[str, Any]]:
    """Decisions/s of the authors' strategy, lazy batch-1 and the vector env at each N, in interleaved rounds."""
    from env_throughput import Batch1Baseline, MaraRunner, measure

    from mara_env import PromptSet

    device = replica.device
    prompts = PromptSet.from_source(args.prompt_source, part="train")
    runners: dict[str, tuple[Callable[[], None], Callable[[], tuple[int, int]]]] = {}
    mara: dict[str, Any] = {}
    for label, eager in (("authors", True), ("lazy batch-1", False)):
        baseline = Batch1Baseline(replica, prompts, args.max_new_tokens, eager=eager, seed=0)
        runners[label] = (baseline.step_position, lambda b=baseline: (b.decisions, b.tokens))
    # every N works ahead of the decisions (the default); the largest N also without it ("wait")
    settings = [(n, True) for n in args.envs] + [(max(args.envs), False)]
    for n, lookahead in settings:
        name = f"mara N={n}" + ("" if lookahead else " wait")
        runner = MaraRunner(
            replica, n, args.chunk, args.max_new_tokens, seed=0, prompts=args.prompt_source, lookahead=lookahead
        )
        runners[name] = (runner.step, runner.counters)
        mara[name] = runner

    for step, _ in runners.values():  # warm-up: allocations, first prefill, kernel selection
        for _ in range(2):
            step()
    synchronize(device)
    totals = {name: [0.0, 0, 0] for name in runners}
    for rnd in range(args.rounds):
        if rnd > 0 and not budget.left():
            break
        for name, (step, counters) in runners.items():
            elapsed, decisions, tokens = measure(step, counters, args.seconds)
            synchronize(device)
            totals[name][0] += elapsed
            totals[name][1] += decisions
            totals[name][2] += tokens
            progress.update(1)
    # what a GPU pays for per step (op_count), counted after the timed rounds
    costs = {name: runner.cost(args.count_steps) for name, runner in mara.items()}
    rate = {name: d / max(t, 1e-9) for name, (t, d, _) in totals.items()}
    rows = []
    for name, (elapsed, decisions, tokens) in totals.items():
        rows.append(
            dict(
                strategy=name,
                decisions_per_s=rate[name],
                tokens_per_s=tokens / max(elapsed, 1e-9),
                decisions=decisions,
                tokens=tokens,
                seconds=elapsed,
                x_lazy_b1=rate[name] / max(rate["lazy batch-1"], 1e-9),
                x_authors=rate[name] / max(rate["authors"], 1e-9),
                forwards_per_step=mara[name].forwards_per_step() if name in mara else None,
                chunk_size=chunk_size(mara[name]) if name in mara else None,
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


def random_agent(obs: Any) -> Any:
    """Accept with probability :data:`RANDOM_AGENT_P` whatever the observation (the generator samples it)."""
    import numpy as np

    return np.full(obs.shape[0], RANDOM_AGENT_P)


def decode_section(replica: Any, args: argparse.Namespace, budget: Budget, progress: Any) -> list[dict[str, Any]]:
    """Answer tokens/s of plain ``generate``, always-accept and a random agent, per batch size, interleaved."""
    from decode_speed import always_accept, cost, run

    from agents.generation import MARAGenerator
    from mara_env import PromptSet

    sampling = dict(top_k=50, top_p=0.95, temperature=1.0)
    test_prompts = PromptSet.from_source(args.prompt_source, part="test")
    agents = {"plain": None, "always-accept": always_accept, f"random agent (p={RANDOM_AGENT_P})": random_agent}
    rows = []
    for batch in args.batch_sizes:
        prompts = [test_prompts[i % len(test_prompts)] for i in range(batch * args.prompts_per_batch)]
        gens = {
            name: MARAGenerator([replica], agent, batch_size=batch, chunk_size=args.chunk, **sampling)
            for name, agent in agents.items()
        }
        for name in gens:  # warm-up
            run(gens, name, prompts[:batch], args.max_new_tokens, seed=10_000)
        totals = {name: [0, 0.0, 0] for name in gens}
        for r in range(args.rounds):
            if r > 0 and not budget.left():
                break
            for name in gens if r % 2 == 0 else reversed(list(gens)):
                tokens, seconds, llm_tokens = run(gens, name, prompts, args.max_new_tokens, seed=r)
                totals[name][0] += tokens
                totals[name][1] += seconds
                totals[name][2] += llm_tokens
            progress.update(1)
        costs = {name: cost(gens, name, prompts[:batch], args.max_new_tokens, seed=20_000) for name in gens}
        plain = totals["plain"][0] / max(totals["plain"][1], 1e-9)
        for name, (tokens, seconds, llm_tokens) in totals.items():
            speed = tokens / max(seconds, 1e-9)
            rows.append(
                dict(
                    system=name,
                    batch_size=batch,
                    answer_tokens=tokens,
                    seconds=seconds,
                    tokens_per_s=speed,
                    x_plain=speed / max(plain, 1e-9),
                    llm_tokens_per_answer_token=llm_tokens / max(tokens, 1),
                    **costs[name],
                )
            )
    return rows


def sac_section(
    hiddens: Sequence[int], args: argparse.Namespace, device: torch.device, budget: Budget, progress: Any
) -> list[dict[str, Any]]:
    """Gradient steps/s of DiscreteSAC and SB3's SAC at each observation size H, alternating call by call."""
    import numpy as np
    from sac_update_speed import fill_buffer, make_learners
    from stable_baselines3.common.logger import Logger

    rows = []
    rng = np.random.default_rng(0)
    for hidden in hiddens:
        if not budget.left():
            rows.append(dict(hidden=hidden, skipped="time budget spent"))
            progress.update(1)
            continue
        learners = make_learners(hidden, args.sac_batch, args.sac_buffer, device=device)
        del learners["DiscreteSAC (plain Adam)"]  # the CPU benchmark's optimiser comparison
        for model in learners.values():
            fill_buffer(model, rng)
            model.set_logger(Logger(folder=None, output_formats=[]))
            model.train(gradient_steps=2, batch_size=args.sac_batch)  # warm-up: allocations, optimiser state
        synchronize(device)
        spent = dict.fromkeys(learners, 0.0)
        steps = dict.fromkeys(learners, 0)
        while min(spent.values()) < args.sac_seconds:
            for name, model in learners.items():
                start = time.perf_counter()
                model.train(gradient_steps=args.sac_steps, batch_size=args.sac_batch)
                synchronize(device)
                spent[name] += time.perf_counter() - start
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
