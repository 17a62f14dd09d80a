"""``mara serve``: the aligned model (and its base LLM) behind an OpenAI-compatible HTTP API.

Examples::

    mara serve                                        # the default run, on http://127.0.0.1:8000/v1
    mara serve --run runs/my-run --port 8080 --api-key secret
    mara serve --agent agent.zip --llm HuggingFaceTB/SmolLM2-135M-Instruct --max-batch 32
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from agents.cli.common import (
    AGENT_HELP,
    DEFAULT_RUN_HELP,
    add_decoding_arguments,
    generator_settings,
    resolve_agent,
    run_env_settings,
)
from agents.cli.flags import with_default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", type=Path, metavar="DIR", help=with_default("training run folder", None, shown=DEFAULT_RUN_HELP)
    )
    parser.add_argument("--agent", metavar="PATH", help=with_default(AGENT_HELP, None))
    parser.add_argument(
        "--host",
        metavar="TEXT",
        default="127.0.0.1",
        help=with_default("address to listen on (127.0.0.1: this machine only)", "127.0.0.1"),
    )
    parser.add_argument("--port", type=int, metavar="INT", default=8000, help=with_default("port", 8000))
    parser.add_argument(
        "--api-key",
        metavar="TEXT",
        help=with_default("bearer token every route requires", None, shown="$MARA_API_KEY; neither: no authentication"),
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        metavar="INT",
        default=16,
        help=with_default("answers decoded at once (rows of the batch)", 16),
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        metavar="INT",
        default=64,
        help=with_default("answers that may wait for a row before 503", 64),
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="INT",
        default=4 << 20,
        help=with_default("largest request body read, in bytes; larger ones get 413", None, shown="4194304 (4 MiB)"),
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        metavar="FLOAT",
        default=600.0,
        help=with_default("seconds an answer may take from its request's arrival before it is stopped with 504", 600),
    )
    parser.add_argument(
        "--model-name",
        metavar="TEXT",
        help=with_default("the aligned model's name", None, shown="the run folder's name"),
    )
    add_decoding_arguments(parser, batch_size=None)


def run(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"mara serve needs {' and '.join(missing)}: pip install 'mara-rl[serve]'.")
    from agents.generation import MARAGenerator
    from agents.serving import model_names, serve
    from agents.serving.limits import RequestLimits

    api_key = args.api_key if args.api_key is not None else os.environ.get("MARA_API_KEY")
    if api_key is not None and not api_key.strip():
        source = "--api-key is empty" if args.api_key is not None else "$MARA_API_KEY is set but empty"
        raise ValueError(
            f"{source}: every client would pass with an empty bearer token. Give a real key, or leave both unset to "
            "serve without authentication."
        )
    limits = RequestLimits(max_body_bytes=args.max_request_bytes, timeout_s=args.request_timeout)
    run_dir, agent = resolve_agent(args)
    settings, max_new = generator_settings(run_env_settings(run_dir), args)
    settings["batch_size"] = args.max_batch  # the decoder's rows: the continuous batch's width
    gen = MARAGenerator(agent=agent, deterministic=args.deterministic, **settings)
    aligned, base = model_names(gen, run_dir if not args.agent else None, args.agent)
    aligned = args.model_name or aligned
    print(f"mara serve: {aligned!r} (aligned) and {base!r} (base LLM) on http://{args.host}:{args.port}/v1", flush=True)
    serve(
        gen,
        aligned_name=aligned,
        base_name=base,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_batch=args.max_batch,
        queue_size=args.queue_size,
        max_tokens=max_new,
        limits=limits,
    )
    return 0
