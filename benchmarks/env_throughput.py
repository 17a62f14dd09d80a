"""Environment throughput of MARA-v0 against two batch-1 baselines, measured side by side.

Reports agent decisions per second and generated response tokens per second for:

- ``authors``: the authors' strategy: at each position every candidate of the set gets its own
  batch-1 forward on a full copy of the prefix KV cache, all before the first decision;
- ``lazy-b1``: a lazy batch-1 strategy: one batch-1 forward (on a copy of the prefix cache) for the
  candidate under decision only, and one for each forced token;
- ``mara N=.. C=..``: ``TokenAcceptRejectVectorEnv`` with N sub-environments and chunk size C, working
  ahead of the decisions (``lookahead=True``, the default: forced tokens after the candidates under
  decision are forwarded in rounds that run anyway); ``... wait`` rows are the same without it;
- ``bound N=..``: the physical limit of an N-row environment on this machine: one full-batch forward
  per step (each of the N rows runs one candidate token through the LLM and its output head, on a
  prefix as long as the environment's) and nothing else. Each ``mara`` row prints the fraction of
  its N's bound that it reaches.

Every strategy runs the same workload: prompts from the default set, the same candidate-set rules
(top-k 50, top-p 0.95), and an agent that accepts each candidate with probability 0.7 (about the
paper's share of first-candidate accepts). Scoring is switched off (reward "zero") so only the
LLM work is timed. Configurations are measured in interleaved rounds so background load affects
all alike.

Usage::

    python benchmarks/env_throughput.py                      # full table (about 10 minutes on 2 CPU cores)
    python benchmarks/env_throughput.py --quick              # smoke run
    python benchmarks/env_throughput.py --dtype bfloat16 --envs 1 8 32 --chunks 1 2 4
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine_info
from op_count import OpCounter, plain_forward_ops
from transformers import DynamicCache

from mara_env import TokenAcceptRejectVectorEnv
from mara_env.buffer_cache import cache_argument
from mara_env.candidates import CandidateConfig, candidate_sets
from mara_env.engine import ReplicaEngine
from mara_env.llm import LLMReplica, PromptFormat, load_replicas
from mara_env.prompts import PromptSet

ACCEPT_PROB = 0.7


class Batch1Baseline:
    """A single sequence decoded with batch-1 forwards and copied prefix caches (no batching)."""

    def __init__(self, replica: LLMReplica, prompts: PromptSet, max_new_tokens: int, eager: bool, seed: int):
        self.model, self.replica = replica.model, replica
        self.device = replica.device
        self.fmt = PromptFormat(replica.tokenizer)
        self.prompts, self.max_new = prompts, max_new_tokens
        self.eager = eager
        self.cfg = CandidateConfig()
        self.rng = np.random.default_rng(seed)
        self.eos = replica.eos_token_ids
        self.cache_arg = cache_argument(self.model.base_model)
        self.decisions = self.tokens = 0
        self._new_episode()

    @torch.no_grad()
    def _forward(self, cache: DynamicCache, token: int) -> tuple[DynamicCache, torch.Tensor]:
        """One batch-1 forward of ``token`` on a private copy of ``cache``."""
        copy = DynamicCache()
        for i, layer in enumerate(cache.layers):
            copy.update(layer.keys.clone(), layer.values.clone(), i)
        ids = torch.tensor([[token]], device=self.device)
        out = self.model.base_model(input_ids=ids, use_cache=True, **{self.cache_arg: copy})
        return copy, out.last_hidden_state[0, -1]

    @torch.no_grad()
    def _new_episode(self) -> None:
        prompt = self.prompts[int(self.rng.integers(len(self.prompts)))]
        ids = self.fmt.token_ids(prompt)[0]
        self.cache = DynamicCache()
        out = self.model.base_model(
            input_ids=torch.tensor([ids], device=self.device), use_cache=True, **{self.cache_arg: self.cache}
        )
        self.hidden = out.last_hidden_state[0, -1]
        self.length = 0

    @torch.no_grad()
    def step_position(self) -> None:
        """Decode one response position (several decisions, one token)."""
        logits = self.model.get_output_embeddings()(self.hidden[None])
        cands = candidate_sets(logits, self.cfg)[0]
        n = len(cands)
        if self.eager:  # authors: every candidate forwarded up front
            results = [self._forward(self.cache, int(t)) for t in cands.tokens]
        chosen = n - 1
        for k in range(n - 1):
            self.decisions += 1
            if self.rng.random() < ACCEPT_PROB:
                chosen = k
                break
            if not self.eager:
                self._forward(self.cache, int(cands.tokens[k]))  # the observation of a rejected candidate
        if self.eager:
            self.cache, self.hidden = results[chosen]
        else:
            # observation of the accepted candidate (or the forced last one): its cache is kept
            self.cache, self.hidden = self._forward(self.cache, int(cands.tokens[chosen]))
        self.tokens += 1
        self.length += 1
        if int(cands.tokens[chosen]) in self.eos or self.length >= self.max_new:
            self._new_episode()


def measure(
    step: Callable[[], None], counters: Callable[[], tuple[int, int]], seconds: float
) -> tuple[float, int, int]:
    d0, t0 = counters()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
    elapsed = time.perf_counter() - start
    d1, t1 = counters()
    return elapsed, d1 - d0, t1 - t0


class MaraRunner:
    """``TokenAcceptRejectVectorEnv`` stepped by an agent accepting each candidate with ``ACCEPT_PROB``.

    :param env_kwargs: further environment settings (e.g. ``prompts``).
    """

    def __init__(
        self, replica: LLMReplica, n_envs: int, chunk: int | str, max_new_tokens: int, seed: int, **env_kwargs: Any
    ):
        self.envs = TokenAcceptRejectVectorEnv(
            n_envs,
            llm=(replica.model, replica.tokenizer),
            reward_model="zero",
            cost_model=None,
            chunk_size=chunk,
            max_new_tokens=max_new_tokens,
            devices=[str(replica.device)],
            **env_kwargs,
        )
        self.rng = np.random.default_rng(seed)
        self.envs.reset(seed=seed)
        self.decisions = self.done_tokens = self.steps = 0
        self.n = n_envs

    def step(self) -> None:
        actions = (self.rng.random(self.n) < ACCEPT_PROB).astype(np.int64)
        _, _, terminated, _, info = self.envs.step(actions)
        self.decisions += self.n
        self.steps += 1
        if terminated.any():
            self.done_tokens += int(info["final_info"]["num_tokens"][terminated].sum())

    def forwards_per_step(self) -> float:
        """LLM forwards per environment step (prompt prefills included)."""
        return self.envs.core.decoder.num_forwards / max(self.steps, 1)

    def cost(self, steps: int = 8) -> dict[str, float]:
        """aten ops, LLM forwards and host syncs per step over ``steps`` counted steps (op_count)."""
        decoder = self.envs.core.decoder
        forwards, syncs = decoder.num_forwards, decoder.num_syncs
        with OpCounter() as ops:
            for _ in range(steps):
                self.step()
        forwards = (decoder.num_forwards - forwards) / steps
        return {
            "ops_per_step": ops.count / steps,
            "forwards_per_step": forwards,
            "syncs_per_step": (decoder.num_syncs - syncs) / steps,
            "ops_per_forward": ops.count / steps / max(forwards, 1e-9),
        }

    def counters(self) -> tuple[int, int]:
        """Decisions so far, and response tokens so far (finished episodes plus running ones)."""
        running = sum(len(r.response) for r in self.envs.core.decoder.rows)
        return self.decisions, self.done_tokens + running


class ForwardBound:
    """One full-batch forward per step for ``n_envs`` rows: the physical limit of the environment.

    The rows hold a formatted prompt plus half an episode of response tokens (the mean prefix of an
    episode of ``max_new_tokens``); each step runs one candidate token per row through the model and
    its output head, as the environment's single forward would, and commits nothing, so the prefix
    stays that long.
    """

    def __init__(self, replica: LLMReplica, prompts: PromptSet, n_envs: int, max_new_tokens: int, seed: int):
        self.engine = ReplicaEngine(replica, n_envs)
        fmt = PromptFormat(replica.tokenizer)
        rng = np.random.default_rng(seed)
        vocab = replica.model.get_output_embeddings().weight.shape[0]
        prefixes = []
        for _ in range(n_envs):
            ids = fmt.token_ids(prompts[int(rng.integers(len(prompts)))])[0]
            prefixes.append(list(ids) + rng.integers(vocab, size=max_new_tokens // 2).tolist())
        self.engine.run(list(range(n_envs)), chain=prefixes)
        self.rows = list(range(n_envs))
        self.tokens = [[int(t)] for t in rng.integers(vocab, size=n_envs)]
        self.decisions = 0

    def step(self) -> None:
        out = self.engine.run(self.rows, tree=self.tokens)
        self.engine.logits(out.hidden)
        self.decisions += len(self.rows)

    def counters(self) -> tuple[int, int]:
        return self.decisions, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--chunks", nargs="+", default=["1", "adaptive"], help="integers, 'all', 'adaptive', 'auto'")
    parser.add_argument(
        "--lookahead", nargs="+", default=["on", "off"], choices=["on", "off"], help="env lookahead settings"
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="measured time per configuration per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--count-steps", type=int, default=8, help="steps counted (aten ops, forwards, host syncs) after the timing"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--llm", default=None, help="model id or folder (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--quick", action="store_true", help="N in {1, 8}, chunks {1, adaptive}, 3 s, 1 round")
    parser.add_argument("--out", default="benchmarks/results/env_throughput.json")
    args = parser.parse_args()
    if args.quick:
        args.envs, args.chunks, args.seconds, args.rounds = [1, 8], ["1", "adaptive"], 3.0, 1
    chunks = [c if c in ("all", "adaptive", "auto") else int(c) for c in args.chunks]

    replica = load_replicas(args.llm, devices=[args.device] if args.device else None, dtype=args.dtype)[0]
    prompts = PromptSet.from_source("default", part="train")
    runners: dict[str, tuple[Callable[[], None], Callable[[], tuple[int, int]]]] = {}
    mara: dict[str, MaraRunner] = {}
    authors = Batch1Baseline(replica, prompts, args.max_new_tokens, eager=True, seed=0)
    runners["authors (batch-1, all candidates up front)"] = (
        authors.step_position,
        lambda: (authors.decisions, authors.tokens),
    )
    lazy = Batch1Baseline(replica, prompts, args.max_new_tokens, eager=False, seed=0)
    runners["lazy batch-1"] = (lazy.step_position, lambda: (lazy.decisions, lazy.tokens))
    for n in args.envs:
        bound = ForwardBound(replica, prompts, n, args.max_new_tokens, seed=0)
        runners[f"bound N={n}"] = (bound.step, bound.counters)
        for c in chunks:
            for setting in args.lookahead:
                name = f"mara N={n} C={c}" + (" wait" if setting == "off" else "")
                r = MaraRunner(replica, n, c, args.max_new_tokens, seed=0, lookahead=setting == "on")
                runners[name] = (r.step, r.counters)
                mara[name] = r

    totals = {name: [0.0, 0, 0] for name in runners}
    for step, _ in runners.values():  # warm-up (allocations, first prefill)
        for _ in range(2):
            step()
    for rnd in range(args.rounds):
        for name, (step, counters) in runners.items():
            elapsed, d, t = measure(step, counters, args.seconds)
            totals[name][0] += elapsed
            totals[name][1] += d
            totals[name][2] += t
            print(
                f"round {rnd + 1} {name:45s} {d / elapsed:8.2f} decisions/s {t / elapsed:8.2f} tokens/s",
                flush=True,
            )

    # What a GPU pays for, counted after the timed rounds (counting slows the ops it counts).
    costs = {name: r.cost(args.count_steps) for name, r in mara.items()}
    plain_ops = {n: plain_forward_ops(replica.model, n) for n in args.envs}
    for name, c in costs.items():
        n_envs = int(name.split("N=")[1].split()[0])
        c["ops_per_forward_x_plain"] = c["ops_per_forward"] / plain_ops[n_envs]
        print(
            f"{name:45s} {c['ops_per_step']:8.0f} aten ops/step {c['forwards_per_step']:5.2f} forwards/step "
            f"{c['syncs_per_step']:5.2f} host syncs/step {c['ops_per_forward']:6.0f} ops/forward "
            f"({c['ops_per_forward_x_plain']:.2f}x a plain forward's {plain_ops[n_envs]})",
            flush=True,
        )

    lazy_rate = totals["lazy batch-1"][1] / totals["lazy batch-1"][0]
    authors_rate = (
        totals["authors (batch-1, all candidates up front)"][1]
        / totals["authors (batch-1, all candidates up front)"][0]
    )
    rows = []
    bounds = {name.split("N=")[1]: totals[name][1] / totals[name][0] for name in totals if name.startswith("bound")}
    for name, (elapsed, d, t) in totals.items():
        rate = d / elapsed
        n_envs = name.split("N=")[1].split()[0] if "N=" in name else None
        rows.append(
            {
                "strategy": name,
                "decisions_per_s": rate,
                "tokens_per_s": None if name.startswith("bound") else t / elapsed,
                "decisions": d,
                "tokens": t,
                "seconds": elapsed,
                "x_lazy_b1": rate / lazy_rate,
                "x_authors": rate / authors_rate,
                "forwards_per_step": mara[name].forwards_per_step() if name in mara else None,
                **({f"counted_{k}": v for k, v in costs[name].items()} if name in costs else {}),
                "bound_decisions_per_s": bounds[n_envs] if name in mara else None,
                "fraction_of_bound": rate / bounds[n_envs] if name in mara else None,
            }
        )
    header = (
        "| strategy | decisions/s | tokens/s | x lazy batch-1 | x authors | forwards/step | aten ops/step "
        "| ops/forward (x plain) | host syncs/step | bound (decisions/s) | of bound |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )

    def cell(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    def ops_cell(r: dict) -> str:
        if r.get("counted_ops_per_forward") is None:
            return ""
        return f"{r['counted_ops_per_forward']:.0f} ({r['counted_ops_per_forward_x_plain']:.2f}x)"

    lines = [header] + [
        f"| {r['strategy']} | {r['decisions_per_s']:.1f} | {cell(r['tokens_per_s'], '.1f')} "
        f"| {r['x_lazy_b1']:.1f} | {r['x_authors']:.1f} | {cell(r['forwards_per_step'], '.2f')} "
        f"| {cell(r.get('counted_ops_per_step'), '.0f')} | {ops_cell(r)} "
        f"| {cell(r.get('counted_syncs_per_step'), '.2f')} "
        f"| {cell(r['bound_decisions_per_s'], '.1f')} | {cell(r['fraction_of_bound'], '.0%')} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print()
    print(table)
    meta = {
        "llm": replica.name,
        "device": str(replica.device),
        "dtype": str(replica.model.dtype),
        "max_new_tokens": args.max_new_tokens,
        "accept_prob": ACCEPT_PROB,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "machine": machine_info([replica]),
        "date": time.strftime("%Y-%m-%d"),
        "counted_steps": args.count_steps,
        "plain_forward_ops": plain_ops,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows, "markdown": table}, indent=2))
    plot(rows, meta, out.with_suffix(".png"))
    print(f"\nwritten to {out} and {out.with_suffix('.png')}")


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    """Bar chart of decisions per second, one bar per strategy, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [r["strategy"].replace(" (batch-1, all candidates up front)", "") for r in rows]
    rates = [r["decisions_per_s"] for r in rows]
    colors = [
        "tab:blue" if n.startswith("mara") else "tab:green" if n.startswith("bound") else "tab:gray" for n in names
    ]
    ax.barh(names, rates, color=colors)
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:.1f}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("agent decisions per second (log scale)")
    ax.set_title(f"MARA-v0 throughput: {meta['llm']} on {meta['device']} ({meta['dtype']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
