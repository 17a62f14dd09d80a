"""What ``mara generate`` and ``mara evaluate`` share: finding a training run's settings and agent."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agents.cli.flags import with_default

#: Where ``mara train`` puts the default run, and where the other commands look for it: relative to the
#: current directory, as every path a user types (errors name the absolute path that was searched).
DEFAULT_RUN_DIR = Path("runs/mara-default")
#: How the help shows the default run.
DEFAULT_RUN_HELP = f"{DEFAULT_RUN_DIR} under the current directory, when it exists"
#: Help of ``--agent``.
AGENT_HELP = (
    "agent file: an SB3 .zip, an actor in the authors' .pt layout, a folder `mara pull` wrote, or hf:ID[@REVISION]"
    "[:FILE] on the Hugging Face Hub; overrides --run's agent"
)


def searched(path: Path) -> str:
    """``path`` and, when it is relative, the absolute path it was looked for at (for errors)."""
    return str(path) if path.is_absolute() else f"{path} (looked for at {Path.cwd() / path})"


#: Environment settings that decoding must repeat exactly (the agent was trained under them).
DECODING_KEYS = ("top_k", "top_p", "temperature", "system_prompt", "chunk_size", "max_prompt_tokens", "prompt_overflow")
#: Environment settings that place the LLM.
LLM_KEYS = ("llm", "devices", "dtype", "trust_remote_code")


def run_env_settings(run: Path | None) -> dict[str, Any]:
    """The ``env`` section of a run's ``config.yaml`` (all ``MARA-v0`` settings), or the defaults."""
    from agents.training.run_config import RunConfig

    if run is None:
        return dict(RunConfig.default().env)
    config = run / "config.yaml"
    if not run.exists():
        raise FileNotFoundError(
            f"no training run at {searched(run)}. Pass --run with the folder `mara train --out` wrote, or run the "
            "command from the folder where you trained."
        )
    if not config.is_file():
        raise FileNotFoundError(
            f"{searched(run)} is not a training run: it has no config.yaml. Pass the folder `mara train` wrote."
        )
    return dict(RunConfig.from_file(config).env)


def run_agent(run: Path) -> Path:
    """The run's final agent, or its last checkpoint if training did not finish."""
    for path in (run / "model.zip", run / "checkpoint" / "model.zip"):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{searched(run)} holds no agent (no model.zip, no checkpoint/model.zip). Train it with "
        f"`mara train --out {run}` or `--resume` it, or pass --agent PATH."
    )


def run_folder(args: argparse.Namespace) -> Path | None:
    """``--run``, else the default run when it exists and no ``--agent`` is given."""
    if args.run is None and not args.agent and DEFAULT_RUN_DIR.exists():
        return DEFAULT_RUN_DIR
    return args.run


def resolve_agent(args: argparse.Namespace, fallback: str = "") -> tuple[Path | None, str]:
    """The run folder (:func:`run_folder`) and the agent file (``--agent``, else the run's agent).

    :param fallback: what else the command offers without an agent, for the error (e.g. ``--raw``).
    :raises FileNotFoundError: neither an agent nor a run.
    """
    run_dir = run_folder(args)
    if args.agent:
        return run_dir, args.agent
    if run_dir is not None:
        return run_dir, str(run_agent(run_dir))
    offers = "pass --run DIR or --agent PATH" + (f", or {fallback}" if fallback else "")
    raise FileNotFoundError(
        f"no agent: no --run or --agent was given and the default run {searched(DEFAULT_RUN_DIR)} does not exist. "
        f"Train one with `mara train` (it writes {DEFAULT_RUN_DIR} under the current directory), {offers}."
    )


def add_decoding_arguments(parser: argparse.ArgumentParser, batch_size: int | None = 16) -> None:
    """Flags that override the run's decoding settings (default: the run's own values).

    :param batch_size: the default of ``--batch-size``; ``None``: no such flag (``mara serve`` has ``--max-batch``).
    """
    from mara_env.llm import DTYPES

    run = "the run's"
    g = parser.add_argument_group("LLM and decoding (default: the training run's settings)")
    g.add_argument(
        "--llm",
        metavar="TEXT",
        help=with_default("LLM: hub id, local folder or .gguf", None, shown="the run's; else embedded SmolLM2"),
    )
    g.add_argument(
        "--devices",
        nargs="+",
        metavar="TEXT",
        help=with_default("devices of LLM replicas, e.g. cuda:0 cuda:1", None, shown=run),
    )
    g.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        help=with_default("LLM dtype (auto: float32 on CPU, bfloat16 on CUDA)", None, shown=run),
    )
    g.add_argument("--top-k", type=int, metavar="INT", help=with_default("candidates per position", None, shown=run))
    g.add_argument("--top-p", type=float, metavar="FLOAT", help=with_default("nucleus mass in (0, 1]", None, shown=run))
    g.add_argument(
        "--temperature", type=float, metavar="FLOAT", help=with_default("applied before the cuts", None, shown=run)
    )
    g.add_argument("--system-prompt", metavar="TEXT", help=with_default("system message", None, shown=run))
    g.add_argument(
        "--chunk-size",
        metavar="INT|TEXT",
        help=with_default("candidates per forward: an integer, 'all', 'auto' or 'adaptive'", None, shown=run),
    )
    g.add_argument(
        "--max-new-tokens", type=int, metavar="INT", help=with_default("answer-length limit", None, shown=run)
    )
    if batch_size is not None:
        g.add_argument(
            "--batch-size",
            type=int,
            metavar="INT",
            default=batch_size,
            help=with_default("prompts decoded at once", batch_size),
        )
    g.add_argument("--seed", type=int, metavar="INT", default=0, help=with_default("sampling seed", 0))
    g.add_argument("--deterministic", action="store_true", help="accept when pi(accept|s) >= 0.5 instead of sampling")


def generator_settings(env: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Keyword arguments for :class:`~agents.generation.MARAGenerator`, and the answer limit."""
    settings = {k: env[k] for k in (*LLM_KEYS, *DECODING_KEYS) if k in env}
    for key in ("llm", "devices", "dtype", "top_k", "top_p", "temperature", "system_prompt"):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if args.chunk_size is not None:
        settings["chunk_size"] = int(args.chunk_size) if args.chunk_size.isdigit() else args.chunk_size
    if "batch_size" in args:
        settings["batch_size"] = args.batch_size
    max_new = args.max_new_tokens if args.max_new_tokens is not None else env.get("max_new_tokens", 512)
    return settings, max_new
