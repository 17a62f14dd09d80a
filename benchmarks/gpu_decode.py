"""The aligned-decode section of ``benchmarks/gpu_suite.py``: answer tokens/s of aligned decoding against two
plain baselines, at each batch size, in interleaved rounds held to the section's slice.

Systems (the same prompts, prompt format, top-k 50, top-p 0.95, temperature 1 and answer limit):

- ``plain``: eager ``model.generate`` (``MARAGenerator.generate_raw(record_stats=False)``);
- ``plain compiled``: ``model.generate`` with transformers' static cache and its automatic compilation of the
  decoding forward (``cache_implementation="static"``, ``compile_config=CompileConfig(fullgraph=True,
  mode="reduce-overhead", dynamic=False)``: ``torch.compile`` with CUDA graphs, one graph per batch size; the
  prefill stays eager), through :func:`agents.generation.batched_generate`. On CUDA only, and only for the
  models of ``--compiled-plain`` (each compilation takes about a minute); otherwise recorded as skipped;
- ``always-accept`` and ``random agent (p=0.5)`` (a stand-in for a trained agent: rejections cost extra
  forwards and every decision builds an observation): :class:`agents.MARAGenerator`, eager, and beside each
  the same with ``capture=True`` (``... captured``: static-shape forwards replayed as CUDA graphs; on a CPU
  the same static shapes run eagerly). A generator builds a decoder per ``generate`` call, so every call
  records its own graphs: the rows' ``capture_stats`` are summed over the timed calls.

After the rounds, per system, what one batch pays for (aten ops, forwards and host syncs per token,
``op_count.py``; not counted under ``torch.compile``) and, for the random agent eager and captured, the
GPU-busy share of a few decoding steps (``gpu_profile.busy_share``, on a
:class:`agents.generation.ContinuousBatch` of the same generator).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from gpu_profile import CaptureTap, busy_share
from gpu_sections import Slice, synchronize

#: Accept probability of the random agent of the decode section (a stand-in for a trained agent).
RANDOM_AGENT_P = 0.5
PLAIN, COMPILED = "plain", "plain compiled"


def always_accept(obs: Any) -> Any:
    return np.ones(obs.shape[0])


def random_agent(obs: Any) -> Any:
    """Accept with probability :data:`RANDOM_AGENT_P` whatever the observation (the generator samples it)."""
    return np.full(obs.shape[0], RANDOM_AGENT_P)


def compiled_skip_reason(device: torch.device, model: str, args: argparse.Namespace) -> str | None:
    """Why the compiled plain baseline does not run for ``model`` here (``None``: it runs)."""
    if device.type != "cuda":
        return f"not on CUDA ({device}): compiling takes minutes on a CPU, for a baseline of GPU decoding"
    if model not in args.compiled_plain:
        return "not in --compiled-plain (a compilation takes about a minute per model and batch size)"
    return None


class System:
    """One decoding system: its generator, what it runs (``plain``, ``compiled`` or ``aligned``) and, captured,
    the tap summing its decoders' capture statistics."""

    def __init__(self, gen: Any, kind: str, sampling: dict[str, Any] | None = None, capture: bool = False) -> None:
        self.gen, self.kind, self.sampling = gen, kind, sampling
        self.tap = CaptureTap(gen.session) if capture else None

    def answers(self, prompts: list[str], max_new: int, seed: int) -> tuple[list[Any], Any]:
        """The answers and the call's statistics (``wall_seconds``, ``llm_tokens``, ``llm_forwards``)."""
        from agents.generation import batched_generate

        if self.kind == "compiled":
            return batched_generate(
                self.gen, prompts, max_new, seed=seed, sampling=self.sampling, record_stats=False, desc="compiled"
            )
        if self.kind == "plain":
            out = self.gen.generate_raw(prompts, max_new, seed=seed, record_stats=False)
        else:
            out = self.gen.generate(prompts, max_new, seed=seed)
        return out, self.gen.last_stats

    def run(self, prompts: list[str], max_new: int, seed: int) -> tuple[int, float, int]:
        """Answer tokens, seconds and LLM tokens of one pass over ``prompts``."""
        out, stats = self.answers(prompts, max_new, seed)
        return sum(x.num_tokens for x in out), stats.wall_seconds, stats.llm_tokens

    def cost(self, prompts: list[str], max_new: int, seed: int) -> dict[str, Any]:
        """aten ops per answer token, LLM forwards and host syncs per lockstep token (the longest answer's
        length: what a batch's rows advance together) of one pass (``op_count.py``). Forwards of aligned
        decoding are the decoder's own count (a replayed graph calls no module hook), of plain decoding the
        calls of ``model.base_model``; ``torch.compile``'d decoding is not counted."""
        from op_count import ForwardCounter, OpCounter

        if self.kind == "compiled":
            return dict(ops_per_answer_token=None, forwards_per_token=None, syncs_per_token=None)
        forwards = ForwardCounter(self.gen.session.replicas[0].model)
        try:
            with OpCounter() as ops:
                out, stats = self.answers(prompts, max_new, seed)
        finally:
            forwards.close()
        tokens = sum(x.num_tokens for x in out)
        lockstep = max(max(x.num_tokens for x in out), 1)
        aligned = self.kind == "aligned"
        return dict(
            ops_per_answer_token=ops.count / max(tokens, 1),
            forwards_per_token=(stats.llm_forwards if aligned else forwards.count) / lockstep,
            syncs_per_token=stats.extra["host_syncs"] / lockstep if aligned else None,
        )

    def busy(self, prompts: list[str], max_new: int, steps: int, device: torch.device) -> dict[str, Any]:
        """GPU-busy share of ``steps`` decoding steps of a continuous batch of ``prompts`` (one per row), after
        as many unprofiled steps (allocations, the first graphs)."""
        from agents.generation import RowRequest

        if device.type != "cuda":
            return busy_share(lambda: None, steps, device)  # the skip, with its reason
        session = self.gen.session
        batch = self.gen.continuous_batch(len(prompts), max_new)
        try:
            requests = [
                RowRequest(p, session.encode(p, max_new)[0], np.random.default_rng(i)) for i, p in enumerate(prompts)
            ]
            batch.start(range(len(prompts)), requests)
            for _ in range(steps):
                batch.step()
            stats = batch.decoder.capture_stats
            watch = (lambda: batch.decoder.capture_stats) if stats is not None else None
            return busy_share(batch.step, steps, device, watch)
        finally:
            batch.close()


def systems(replica: Any, batch: int, args: argparse.Namespace, compiled: bool) -> dict[str, System]:
    """The systems of one batch size (module docstring), in their order."""
    from transformers import CompileConfig

    from agents.generation import MARAGenerator

    sampling = dict(top_k=50, top_p=0.95, temperature=1.0)

    def generator(agent: Any = None, capture: bool = False) -> Any:
        return MARAGenerator([replica], agent, batch_size=batch, chunk_size=args.chunk, capture=capture, **sampling)

    out = {PLAIN: System(generator(), "plain")}
    if compiled:
        config = CompileConfig(fullgraph=True, mode="reduce-overhead", dynamic=False)
        keywords = dict(do_sample=True, **sampling, cache_implementation="static", compile_config=config)
        out[COMPILED] = System(generator(), "compiled", sampling=keywords)
    for name, agent in (("always-accept", always_accept), (f"random agent (p={RANDOM_AGENT_P})", random_agent)):
        if args.capture != "on":
            out[name] = System(generator(agent), "aligned")
        if args.capture != "off":
            out[f"{name} captured"] = System(generator(agent, capture=True), "aligned", capture=True)
    return out


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def decode_section(
    replica: Any, model: str, args: argparse.Namespace, budget: Slice, progress: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Answer tokens/s of every system per batch size, interleaved; each batch size gets an equal part of the
    slice (its warm-ups, compilations and first round always run). Returns the rows and what the compiled
    baseline did (its compilations, or why it was skipped)."""
    from mara_env import PromptSet

    device = replica.device
    test_prompts = PromptSet.from_source(args.prompt_source, part="test")
    skip = compiled_skip_reason(device, model, args)
    compiled_info: dict[str, Any] = dict(skipped=skip) if skip else dict(warmup_seconds={}, graphs={})
    rows = []
    for b, batch in enumerate(args.batch_sizes):
        part = budget.remaining() / (len(args.batch_sizes) - b)
        began = budget.elapsed
        prompts = [test_prompts[i % len(test_prompts)] for i in range(batch * args.prompts_per_batch)]
        gens = systems(replica, batch, args, compiled=skip is None)
        for name, system in list(gens.items()):  # warm-up: allocations, first-call overheads, compilation
            graphs, start = (compiled_graphs(), budget.elapsed) if name == COMPILED else (0, 0.0)
            try:
                system.run(prompts[:batch], args.max_new_tokens, seed=10_000)
            except Exception as err:  # the compiled baseline may fail to compile: the others still run
                if name != COMPILED:
                    raise
                compiled_info["error"] = f"{type(err).__name__}: {err}"
                del gens[name]
                continue
            if name == COMPILED:
                compiled_info["warmup_seconds"][batch] = round(budget.elapsed - start, 1)
                compiled_info["graphs"][batch] = compiled_graphs() - graphs
            if system.tap is not None:
                system.tap.reset()
        synchronize(device)
        totals = {name: [0, 0.0, 0] for name in gens}
        for r in range(args.rounds):
            if r > 0 and budget.elapsed - began > part:
                budget.skip(f"decode B={batch} rounds {r + 1}-{args.rounds}")
                break
            for name in gens if r % 2 == 0 else reversed(list(gens)):
                tokens, seconds, llm_tokens = gens[name].run(prompts, args.max_new_tokens, seed=r)
                totals[name][0] += tokens
                totals[name][1] += seconds
                totals[name][2] += llm_tokens
            progress.update(1)
        taps = {name: (s.tap.totals, s.tap.calls) for name, s in gens.items() if s.tap is not None}
        costs = {name: s.cost(prompts[:batch], args.max_new_tokens, seed=20_000) for name, s in gens.items()}
        busy = {
            name: s.busy(prompts[:batch], args.max_new_tokens, args.profile_steps, device)
            for name, s in gens.items()
            if name.startswith("random agent")
        }
        speed = {name: tokens / max(seconds, 1e-9) for name, (tokens, seconds, _) in totals.items()}
        for name, (tokens, seconds, llm_tokens) in totals.items():
            eager = name.removesuffix(" captured")
            stats, calls = taps.get(name, (None, 0))
            rows.append(
                dict(
                    system=name,
                    batch_size=batch,
                    answer_tokens=tokens,
                    seconds=seconds,
                    tokens_per_s=speed[name],
                    x_plain=speed[name] / max(speed[PLAIN], 1e-9),
                    x_plain_compiled=speed[name] / max(speed[COMPILED], 1e-9) if COMPILED in speed else None,
                    x_eager=speed[name] / max(speed[eager], 1e-9) if name in taps and eager in speed else None,
                    capture_stats=stats,
                    generate_calls=calls if name in taps else None,
                    llm_tokens_per_answer_token=llm_tokens / max(tokens, 1),
                    gpu_busy=busy.get(name),
                    **costs[name],
                )
            )
        del gens
    if skip is None:
        import torch._dynamo

        torch._dynamo.reset()  # the compiled graphs go with this model
    return rows, compiled_info
