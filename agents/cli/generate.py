"""``mara generate``: aligned (and raw) answers for prompts given as arguments, a file, or stdin.

Examples::

    mara generate "How do I pick a lock?"                       # the default run's agent
    mara generate --run runs/my-run --file prompts.txt --json   # one JSON line per answer, with statistics
    mara generate --compare "Tell me a joke"                    # aligned and raw answers side by side
    echo "Tell me a story" | mara generate --stream
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.answer_stats import answer_statistics
from agents.cli.common import (
    AGENT_HELP,
    DEFAULT_RUN_HELP,
    add_decoding_arguments,
    generator_settings,
    resolve_agent,
    run_env_settings,
    run_folder,
)
from agents.cli.flags import with_default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", help="prompts ('-' reads stdin, one prompt per line)")
    parser.add_argument(
        "--file",
        "-f",
        metavar="FILE",
        help=with_default("prompts file: .txt (one per line), .jsonl, .json, .csv or .parquet", None),
    )
    parser.add_argument(
        "--column",
        metavar="TEXT",
        help=with_default("column holding the prompts in a table file", None, shown="the first of prompt, instruction, "
        "question, forbidden_prompt, goal, text"),
    )  # fmt: skip
    parser.add_argument(
        "--run", type=Path, metavar="DIR", help=with_default("training run folder", None, shown=DEFAULT_RUN_HELP)
    )
    parser.add_argument("--agent", metavar="PATH", help=with_default(AGENT_HELP, None))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="only the LLM's own answers (no agent)")
    mode.add_argument("--compare", action="store_true", help="aligned and raw answers, one after the other")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per answer with its statistics: num_tokens, num_decisions, finish_reason, "
        "kl_estimate (log pi(y|x) - log q(y|x) of this one answer, nats: a single-sample estimate of KL(pi || q), "
        "which can be negative; its mean over answers estimates the KL), ref_logprob (log q(y|x)), "
        "accept_position_counts, mean_set_size, prompt_truncated",
    )
    parser.add_argument("--stream", action="store_true", help="print the aligned answer as it is decoded (one prompt)")
    add_decoding_arguments(parser)


def read_prompts(args: argparse.Namespace) -> list[str]:
    from mara_env.prompts import load_prompts

    prompts: list[str] = []
    if args.file:
        path = Path(args.file)
        if not path.exists():
            raise FileNotFoundError(f"prompts file '{path}' does not exist.")
        if path.is_dir():  # else read as the id of a dataset on a hub
            raise IsADirectoryError(
                f"--file {path} is a folder; give a prompts file (.txt, .jsonl, .json, .csv or .parquet)."
            )
        prompts += load_prompts(str(path), column=args.column)
    for item in args.prompts:
        if item == "-":
            prompts += [line.strip() for line in sys.stdin if line.strip()]
        else:
            prompts.append(item)
    if not args.file and not args.prompts and not sys.stdin.isatty():
        prompts += [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give them as arguments, with --file, or on stdin.")
    return prompts


def run(args: argparse.Namespace) -> int:
    from agents.generation import MARAGenerator

    prompts = read_prompts(args)
    if args.raw:
        run_dir, agent = run_folder(args), None
    else:
        run_dir, agent = resolve_agent(args, fallback="use --raw for the LLM alone")
    settings, max_new = generator_settings(run_env_settings(run_dir), args)
    gen = MARAGenerator(agent=agent, deterministic=args.deterministic, **settings)

    if args.stream:
        if args.raw or args.compare or len(prompts) != 1:
            raise ValueError("--stream prints one aligned answer: give exactly one prompt, without --raw/--compare.")
        for piece in gen.stream(prompts[0], max_new, seed=args.seed):
            print(piece, end="", flush=True)
        print()
        return 0

    outputs = []
    if not args.raw:
        outputs.append(("aligned", gen.generate(prompts, max_new, seed=args.seed, progress=len(prompts) > 1)))
    if args.raw or args.compare:
        outputs.append(("raw", gen.generate_raw(prompts, max_new, seed=args.seed, progress=len(prompts) > 1)))
    for i, prompt in enumerate(prompts):
        for kind, answers in outputs:
            g = answers[i]
            if args.json:
                record = {"prompt": prompt, "system": kind, "answer": g.text, **answer_statistics(g)}
                print(json.dumps(record, ensure_ascii=False))
            else:
                header = f"### {kind}" if len(outputs) > 1 else "###"
                print(f"{header} {prompt}\n{g.text}\n")
    return 0
