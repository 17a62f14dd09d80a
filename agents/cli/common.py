"""What ``mara generate`` and ``mara evaluate`` share: finding a training run's settings and agent."""

from __future__ import annotations

import argparse
import re
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


def check_run_folder(run: Path) -> None:
    """Refuse a ``--run`` that is not a training run folder, saying what it is and which flag takes it."""
    if not run.exists():
        from agents.training.run_folder import replaced_path  # the flag check itself loads no SB3

        aside = replaced_path(run)
        if aside.is_dir():
            raise FileNotFoundError(_replaced_message(run, aside))
        raise FileNotFoundError(
            f"--run {searched(run)} does not exist. Pass the folder `mara train --out` wrote, or run the command "
            "from the folder where you trained."
        )
    if run.is_file():
        raise NotADirectoryError(
            f"--run {run} is a file, not a training run folder; to use it as the agent, pass --agent {run}."
        )
    if not (run / "config.yaml").is_file():
        from agents.agent_file import is_agent_file

        if is_agent_file(run):
            raise FileNotFoundError(
                f"--run {run} is an agent folder, not a training run (no config.yaml): pass it with --agent {run}."
            )
        raise FileNotFoundError(
            f"{searched(run)} is not a training run: it has no config.yaml. Pass the folder `mara train` wrote."
        )


def check_agent_path(path: str | Path, flag: str = "--agent") -> None:
    """Refuse an agent path that does not exist, or a folder holding no agent, saying which flag takes it."""
    from agents.agent_file import AGENT_SETTINGS, is_agent_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag} '{path}' does not exist.")
    if path.is_dir() and not is_agent_file(path):
        if (path / "config.yaml").is_file():
            raise IsADirectoryError(
                f"{flag} {path} is a training run folder, not an agent file: pass it with --run {path} (its agent and "
                "its decoding settings)."
            )
        if not (path / "model.zip").is_file():
            raise IsADirectoryError(
                f"{flag} {path} is a folder holding no agent (no {AGENT_SETTINGS}, no model.zip). Pass an agent file: "
                "a run's agent.json or model.zip, an agent folder, or an actor .pt."
            )


def _replaced_message(run: Path, aside: Path) -> str:
    return (
        f"{run} holds no agent, but an interrupted `mara train --overwrite` left the run it was replacing in "
        f"{aside}: `mara train --out {run} --resume` puts it back (or pass --run {aside})."
    )


def run_env_settings(run: Path | None) -> dict[str, Any]:
    """The ``env`` section of a run's ``config.yaml`` (all ``MARA-v0`` settings), or the defaults."""
    from agents.training.run_config import RunConfig

    if run is None:
        return dict(RunConfig.default().env)
    check_run_folder(run)
    return dict(RunConfig.from_file(run / "config.yaml").env)


def run_agent(run: Path) -> Path:
    """The run's final agent (its agent file, else ``model.zip``), or its last checkpoint if training did not finish."""
    from agents.agent_file import AGENT_SETTINGS
    from agents.training.run_folder import replaced_path

    for path in (run / AGENT_SETTINGS, run / "model.zip", run / "checkpoint" / "model.zip"):
        if path.is_file():
            return path
    aside = replaced_path(run)
    if aside.is_dir():
        raise FileNotFoundError(_replaced_message(run, aside))
    raise FileNotFoundError(
        f"{searched(run)} holds no agent (no {AGENT_SETTINGS}, no model.zip, no checkpoint/model.zip). Train it with "
        f"`mara train --out {run}` or `--resume` it, or pass --agent PATH."
    )


def local_agent_path(path: str) -> str:
    """An ``--agent`` value as a local path: an ``hf:ID[@REVISION][:FILE]`` reference is downloaded first
    (:func:`agents.hub.hub_agent_path`), anything else is returned as it is."""
    if path.startswith("hf:"):
        from agents.hub import hub_agent_path

        return str(hub_agent_path(path))
    return path


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
    agent = local_agent_path(args.agent) if args.agent else args.agent
    run_dir = run_folder(args)
    if run_dir is None and agent and agent != args.agent and (Path(agent) / "config.yaml").is_file():
        run_dir = Path(agent)  # an agent pulled from the Hub decodes with the settings it was trained under
    if run_dir is not None:
        check_run_folder(run_dir)
    if agent:
        check_agent_path(agent)
        return run_dir, agent
    if run_dir is not None:
        return run_dir, str(run_agent(run_dir))
    offers = "pass --run DIR or --agent PATH" + (f", or {fallback}" if fallback else "")
    raise FileNotFoundError(
        f"no agent: no --run or --agent was given and the default run {searched(DEFAULT_RUN_DIR)} does not exist. "
        f"Train one with `mara train` (it writes {DEFAULT_RUN_DIR} under the current directory), {offers}."
    )


#: What a torch device is called: ``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|npu|hpu|meta)(:\d+)?")


def device_name(text: str) -> str:
    """An argparse type for ``--devices``: a device name, else an error that says a prompt may have been taken."""
    if not _DEVICE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device (cpu, cuda, cuda:N, mps). --devices takes every word after it: put prompts "
            "before --devices, or after a -- that ends the flags"
        )
    return text.strip()


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
        type=device_name,
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
    g.add_argument(
        "--capture",
        action="store_true",
        help="record the LLM's forwards as CUDA graphs and replay them (CUDA devices; the same answers; off by "
        "default: not yet measured to win)",
    )


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
    if getattr(args, "capture", False):
        settings["capture"] = True
    max_new = args.max_new_tokens if args.max_new_tokens is not None else env.get("max_new_tokens", 512)
    return settings, max_new
