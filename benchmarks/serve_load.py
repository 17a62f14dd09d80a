"""Load on ``mara serve``: concurrent clients on loopback against offline ``MARAGenerator.generate``, side by side.

For each client count ``c`` (default 1, 4, 16) the same number of prompts is answered twice, in one run:

- ``offline``: :meth:`agents.MARAGenerator.generate` with ``batch_size=c`` in this process (rows take the next
  prompt as soon as theirs ends);
- ``served``: ``mara serve --max-batch 16`` in a subprocess (its own interpreter, as deployed), and ``c``
  concurrent ``openai.AsyncOpenAI`` clients, each sending its share of the prompts one request after another
  (``/v1/chat/completions``, not streamed). The server's continuous batching keeps about ``c`` rows decoding.

Throughput is answer tokens per second (an ending EOS included) over the wall time of the whole level; the
served latencies are per request (p50, p90, p99). Both use the same LLM, agent, decoding settings and
``--max-new-tokens``. The agent decides deterministically (``pi(accept | s) >= 0.5``; ``temperature=0`` in the
requests, ``deterministic=True`` offline), so both sides decode the very same answers and the ratio measures
the server alone; the run reports how many served answers equal the offline ones. ``--sampled`` samples the
decisions instead (then the two sides' random draws, and answer lengths, differ a little).
Bar (issue 14): 16 concurrent clients reach >= 0.8x the offline batch-16 throughput.

The agent is an untrained actor (random weights, ``pi(accept | s)`` near 0.5, MARA-v1 observation), saved in
the authors' layout so that the server loads it with ``--agent``: decoding costs as with a trained agent that
rejects often. Usage::

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py                  # 1, 4, 16 clients, embedded SmolLM2
    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --quick          # smoke run: 1 and 4 clients, short answers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import machine_info
from gymnasium import spaces
from stable_baselines3.common.torch_layers import FlattenExtractor
from tqdm.auto import tqdm

from agents.authors_format import export_authors_actor
from agents.generation import MARAGenerator
from agents.sac_discrete.policies import DiscreteActor
from mara_env import ObservationLayout, PromptSet, load_replicas

RESULTS = Path(__file__).parent / "results" / "serve_load"
DECODING = dict(top_k=50, top_p=0.95, temperature=1.0)


def untrained_actor(hidden_size: int, seed: int = 0) -> DiscreteActor:
    size = ObservationLayout("hidden+ref", hidden_size).size
    space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
    torch.manual_seed(seed)
    return DiscreteActor(
        space,
        spaces.Discrete(2),
        net_arch=[256, 256],
        features_extractor=FlattenExtractor(space),
        features_dim=size,
        input_layer_norm=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    agent: Path, port: int, max_batch: int, max_new: int, extra: list[str] | None = None, llm: str | None = None
) -> subprocess.Popen:
    """``mara serve`` in a process of its own, once its ``/health`` answers (``extra``: more flags)."""
    cmd = [sys.executable, "-m", "agents.cli", "serve", "--agent", str(agent), "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--queue-size", "64", "--max-new-tokens", str(max_new)]
    cmd += ["--top-k", str(DECODING["top_k"]), "--top-p", str(DECODING["top_p"])]
    cmd += ["--temperature", str(DECODING["temperature"]), *(extra or []), *(["--llm", llm] if llm else [])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


async def served_level(
    url: str, model: str, prompts: list[str], clients: int, max_new: int, seed: int, max_seconds: float, sampled: bool
) -> dict:
    """``clients`` concurrent clients over ``prompts``; a client sends no new request after ``max_seconds``."""
    import openai

    api = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    shares = [list(range(len(prompts)))[i::clients] for i in range(clients)]
    texts: dict[int, str] = {}
    latencies: list[float] = []
    tokens = 0
    bar = tqdm(total=len(prompts), desc=f"served c={clients}", unit="req", leave=False)
    start = time.perf_counter()

    async def client(share: list[int]) -> None:
        nonlocal tokens
        for i in share:
            if time.perf_counter() - start > max_seconds:
                return
            t0 = time.perf_counter()
            out = await api.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompts[i]}],
                max_tokens=max_new,
                seed=seed,
                temperature=None if sampled else 0,
            )
            texts[i] = out.choices[0].message.content
            latencies.append(time.perf_counter() - t0)
            tokens += out.usage.completion_tokens
            bar.update(1)

    await asyncio.gather(*(client(s) for s in shares))
    wall = time.perf_counter() - start
    bar.close()
    await api.close()
    return dict(requests=len(latencies), answer_tokens=tokens, seconds=wall, latencies=latencies, texts=texts)


def offline_level(gen: MARAGenerator, prompts: list[str], max_new: int, seed: int, sampled: bool) -> dict:
    out = gen.generate(prompts, max_new, seed=seed, deterministic=not sampled, progress=True)
    tokens = sum(g.num_tokens for g in out)
    return dict(
        requests=len(out), answer_tokens=tokens, seconds=gen.last_stats.wall_seconds, texts=[g.text for g in out]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests-per-client", type=int, default=2, help="prompts per level = this x clients")
    p.add_argument("--min-requests", type=int, default=4, help="at least this many prompts per level")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer limit (the default run's 48)")
    p.add_argument("--max-seconds", type=float, default=300, help="per level: no new request after this")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per level (their totals are reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampled", action="store_true", help="sample the agent's decisions (default: deterministic)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 and 4 clients, 16-token answers")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    if args.quick:
        args.clients, args.max_new_tokens, args.rounds = [1, 4], 16, 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    max_batch = max(args.clients)

    replicas = load_replicas(None)
    actor = untrained_actor(replicas[0].hidden_size)
    gen_by_batch = {c: MARAGenerator(replicas, actor, batch_size=c, **DECODING) for c in args.clients}
    test = PromptSet.from_source("default", part="test")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        agent_file = Path(tmp) / "untrained-actor.pt"
        export_authors_actor(actor, agent_file)
        server = start_server(agent_file, port, max_batch, args.max_new_tokens)
        try:
            model = httpx.get(f"{url}/models").json()["data"][0]["id"]
            # warm-up of both (first-call allocations)
            asyncio.run(served_level(url, model, [test[0], test[1]], 2, 8, args.seed, 60, args.sampled))
            gen_by_batch[args.clients[0]].generate([test[0], test[1]], 8, seed=args.seed)
            for c in args.clients:
                n = max(args.min_requests, c * args.requests_per_client)
                prompts = [test[i % len(test)] for i in range(n)]
                # interleaved rounds (offline first, then served first), so background load hits both alike
                offline = dict(requests=0, answer_tokens=0, seconds=0.0)
                served = dict(requests=0, answer_tokens=0, seconds=0.0, latencies=[])
                same = 0
                for r in range(args.rounds):
                    for side in ("offline", "served") if r % 2 == 0 else ("served", "offline"):
                        if side == "offline":
                            o = offline_level(gen_by_batch[c], prompts, args.max_new_tokens, args.seed, args.sampled)
                            offline_texts = o["texts"]
                            part, total = o, offline
                        else:
                            level = served_level(
                                url, model, prompts, c, args.max_new_tokens, args.seed, args.max_seconds, args.sampled
                            )
                            part, total = asyncio.run(level), served
                            served_texts = part["texts"]
                            total["latencies"] += part["latencies"]
                        for key in ("requests", "answer_tokens", "seconds"):
                            total[key] += part[key]
                    same += sum(offline_texts[i] == text for i, text in served_texts.items())
                served["p50"], served["p90"], served["p99"] = np.percentile(served["latencies"], [50, 90, 99])
                stats = httpx.get(url.removesuffix("/v1") + "/health").json()["stats"]
                off_tps = offline["answer_tokens"] / offline["seconds"]
                srv_tps = served["answer_tokens"] / served["seconds"]
                rows.append(
                    dict(
                        clients=c,
                        requests=served["requests"],
                        offline_requests=offline["requests"],
                        served_answers_equal_offline=same,
                        offline_answer_tokens=offline["answer_tokens"],
                        served_answer_tokens=served["answer_tokens"],
                        offline_tokens_per_s=round(off_tps, 2),
                        served_tokens_per_s=round(srv_tps, 2),
                        x_offline=round(srv_tps / off_tps, 3),
                        latency_p50_s=round(served["p50"], 2),
                        latency_p90_s=round(served["p90"], 2),
                        latency_p99_s=round(served["p99"], 2),
                        server_max_rows_per_step_so_far=stats["max_rows_per_step"],
                    )
                )
                print(
                    f"c={c}: offline {off_tps:.1f} tok/s, served {srv_tps:.1f} tok/s ({srv_tps / off_tps:.2f}x), "
                    f"p50 {served['p50']:.2f}s p99 {served['p99']:.2f}s",
                    flush=True,
                )
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    bar = next((r for r in rows if r["clients"] == 16), None)
    verdict = None if bar is None else bool(bar["x_offline"] >= 0.8)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        machine=machine_info(replicas),
        cpus=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(replicas[0].device),
        dtype=str(replicas[0].model.dtype),
        llm=replicas[0].name,
        agent="untrained DiscreteActor (net_arch 256x256, MARA-v1 observation, seed 0)",
        decisions="sampled" if args.sampled else "deterministic (pi >= 0.5)",
        max_new_tokens=args.max_new_tokens,
        server_max_batch=max_batch,
        rounds=args.rounds,
        command=" ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        **DECODING,
    )
    lines = [
        "| clients | requests | offline tok/s (batch = clients) | served tok/s | served / offline "
        "| latency p50 / p90 / p99 (s) | answers equal offline |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['offline_tokens_per_s']:.1f} | {r['served_tokens_per_s']:.1f} "
            f"| {r['x_offline']:.2f} | {r['latency_p50_s']:.2f} / {r['latency_p90_s']:.2f} / {r['latency_p99_s']:.2f} "
            f"| {r['served_answers_equal_offline']}/{r['requests']} |"
        )
    if verdict is not None:
        lines.append(
            f"\nBar: 16 clients >= 0.8x offline batch 16: {bar['x_offline']:.2f}x, {'met' if verdict else 'NOT met'}."
        )
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(dict(meta=meta, rows=rows, bar_met=verdict), indent=2))
    cpu = meta["machine"]["cpu"]
    header = f"# serve_load\n\n`{meta['command']}` on {cpu} ({meta['cpus']} CPUs, {meta['threads']} torch "
    header += f"thread), {meta['llm']}, {meta['agent']}, {meta['decisions']} decisions, "
    header += f"max_new_tokens {meta['max_new_tokens']}, "
    header += f"server --max-batch {max_batch}, {meta['date']}.\n\n"
    (out / "serve_load.md").write_text(header + table + "\n")
    print(f"wrote {out / 'serve_load.json'} and {out / 'serve_load.md'}")


if __name__ == "__main__":
    main()
