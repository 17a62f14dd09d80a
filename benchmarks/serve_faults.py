"""One request against ``mara serve``: does ``/health`` still answer, does the request get a 4xx, how much memory?

Issue 21 found that a 50 MB chat body stalled ``mara serve`` for minutes (its 400 came after 153 s,
``/health`` waited up to 120 s, memory grew from 1.0 to 7.7 GB). This script starts the real
``mara serve`` (its own process, the embedded SmolLM2-135M by default, an untrained actor in the authors'
layout as ``--agent``, as ``serve_load.py`` does) and sends, one scenario at a time:

- ``20 MB body``: a 20 MB chat request with its ``Content-Length`` (refused before it is read);
- ``20 MB chunked``: the same without a length (read until it passes ``--max-request-bytes``);
- ``largest allowed, one message``: a body just under the limit (4 MiB) holding one long user message
  (refused by its length before templating and tokenising);
- ``largest allowed, many messages``: a body just under the limit made of the most messages a request may hold (the most
  JSON and validation work a body of that size asks for);
- ``longest prompt that is tokenised``: a message just under the character bound, which is templated and
  tokenised on the worker thread before the context check refuses it.

While each runs, ``/health`` is polled every 50 ms; the script prints, per scenario, the big request's
status and time, the slowest and median ``/health`` answer, and the server's resident memory before and its
peak (``VmHWM`` of ``/proc/<pid>/status``) after. Bars (issue 21): ``/health`` < 3 s during the 20 MB
request, a 4xx for it, peak memory < 3 GB; ``/health`` < 1 s while the largest allowed request is processed.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/serve_faults.py          # embedded SmolLM2, ~1 min
    python benchmarks/serve_faults.py --llm PATH --max-request-bytes 8388608

Writes ``benchmarks/results/serve_faults.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import machine_info
from serve_load import free_port, start_server, untrained_actor

from agents.authors_format import export_authors_actor
from agents.serving.protocol import MAX_MESSAGES
from mara_env import load_replicas

RESULTS = Path(__file__).parent / "results"
MB = 1 << 20


def rss(pid: int) -> dict[str, float]:
    """The process's resident memory now and at its peak, in GB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / (1 << 20)  # kB -> GB
    return {"now_gb": round(fields["VmRSS"], 3), "peak_gb": round(fields["VmHWM"], 3)}


def body_of_size(size: int, messages: int = 1) -> bytes:
    """A chat body of about ``size`` bytes: one long user message, or ``messages`` short ones."""
    head = b'{"model": "mara", "max_tokens": 8, "messages": ['
    if messages == 1:
        text = b"word " * ((size - len(head) - 64) // 5)
        return head + b'{"role": "user", "content": "' + text + b'"}]}'
    one = b'{"role": "user", "content": "' + b"w " * max((size // messages - 40) // 2, 1) + b'"},'
    return head + one * (messages - 1) + one[:-1] + b"]}"


def scenario(url: str, pid: int, name: str, send) -> dict:
    """Run ``send()`` (the big request) on a thread while polling ``/health``; what each saw."""
    result: dict = {}

    def big() -> None:
        start = time.monotonic()
        try:
            response = send()
            result.update(status=response.status_code, code=(response.json().get("error") or {}).get("code"))
        except httpx.HTTPError as error:  # e.g. the server closed the connection after its 413
            result.update(status=None, code=f"{type(error).__name__}")
        result["seconds"] = round(time.monotonic() - start, 3)

    before = rss(pid)
    thread = threading.Thread(target=big)
    thread.start()
    latencies = []
    started = time.monotonic()
    while thread.is_alive() or time.monotonic() - started < 2.0:
        t = time.monotonic()
        ok = httpx.get(f"{url}/health", timeout=60).status_code == 200
        latencies.append(time.monotonic() - t if ok else float("inf"))
        time.sleep(0.05)
    thread.join()
    after = rss(pid)
    row = {
        "scenario": name,
        "status": result.get("status"),
        "code": result.get("code"),
        "request_s": result.get("seconds"),
        "health_max_s": round(max(latencies), 3),
        "health_median_s": round(statistics.median(latencies), 4),
        "health_polls": len(latencies),
        "rss_before_gb": before["now_gb"],
        "rss_peak_gb": after["peak_gb"],
    }
    print(
        f"| {name} | {row['status']} {row['code'] or ''} | {row['request_s']} | {row['health_max_s']} | "
        f"{row['health_median_s']} | {row['rss_before_gb']} | {row['rss_peak_gb']} |",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default=None, help="LLM (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--max-request-bytes", type=int, default=4 * MB, help="the server's body limit (default 4 MiB)")
    p.add_argument("--out", default=str(RESULTS / "serve_faults.json"))
    args = p.parse_args()

    replica = load_replicas(args.llm, devices=["cpu"])[0]
    hidden, tokenizer = replica.hidden_size, replica.tokenizer
    context = replica.model.config.max_position_embeddings
    from agents.serving.limits import longest_token_chars

    token_chars = longest_token_chars(tokenizer)
    del replica
    with tempfile.TemporaryDirectory() as tmp:
        agent = Path(tmp) / "actor.pt"
        export_authors_actor(untrained_actor(hidden), agent)
        port = free_port()
        extra = ["--max-request-bytes", str(args.max_request_bytes)]
        server = start_server(agent, port, max_batch=4, max_new=16, extra=extra, llm=args.llm)
        url = f"http://127.0.0.1:{port}"
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        post = f"{url}/v1/chat/completions"
        headers = {"Content-Type": "application/json"}

        def fix(body: bytes) -> bytes:
            return body.replace(b'"model": "mara"', json.dumps({"model": model})[1:-1].encode())

        limit = args.max_request_bytes
        big = fix(body_of_size(20 * MB))
        largest = fix(body_of_size(limit - 1024))
        many = fix(body_of_size(limit - 1024, messages=MAX_MESSAGES))
        # the longest single message that passes the character bound: it is templated and tokenised
        longest = fix(body_of_size(min(context * token_chars - 256, limit - 1024)))

        def chunked(data: bytes):
            for i in range(0, len(data), 64 << 10):
                yield data[i : i + (64 << 10)]

        print(f"mara serve on {args.llm or 'embedded SmolLM2-135M'} (pid {server.pid}), --max-request-bytes {limit}")
        print("| scenario | status | request s | /health max s | /health median s | RSS before GB | RSS peak GB |")
        print("|---|---|---:|---:|---:|---:|---:|")
        rows = [scenario(url, server.pid, "idle (no request)", lambda: httpx.get(f"{url}/health"))]
        try:
            for name, data, stream in (
                ("20 MB body", big, False),
                ("20 MB chunked", big, True),
                ("largest allowed, one message", largest, False),
                ("largest allowed, many messages", many, False),
                ("longest prompt that is tokenised", longest, False),
            ):
                rows.append(
                    scenario(
                        url,
                        server.pid,
                        name,
                        lambda data=data, stream=stream: httpx.post(
                            post, content=chunked(data) if stream else data, headers=headers, timeout=300
                        ),
                    )
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    bars = {
        "health_under_3s_during_20MB": all(r["health_max_s"] < 3 for r in rows if r["scenario"].startswith("20 MB")),
        "20MB_gets_4xx": all(400 <= (r["status"] or 0) < 500 for r in rows if r["scenario"].startswith("20 MB")),
        "peak_memory_under_3GB": max(r["rss_peak_gb"] for r in rows) < 3,
        "health_under_1s_during_largest_allowed": all(
            r["health_max_s"] < 1 for r in rows if r["scenario"].startswith(("largest", "longest"))
        ),
    }
    print("bars:", json.dumps(bars))
    meta = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=machine_info(),
        llm=args.llm or "embedded SmolLM2-135M-Instruct",
        max_request_bytes=limit,
        context=context,
        longest_token_chars=token_chars,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows, bars=bars), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
