"""The ``mara`` command: ``mara train``, ``mara generate``, ``mara evaluate``.

Each subcommand is a module of this package exposing ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``mara train`` never
loads the generation or evaluation code (and ``mara --help`` loads none).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

#: Subcommand name -> one-line description. The module is ``agents.cli.<name>``.
SUBCOMMANDS: dict[str, str] = {
    "train": "train an agent on MARA-v0 (checkpoints, TensorBoard, resumable)",
    "generate": "generate responses with a trained agent",
    "evaluate": "evaluate trained agents against the reference LLM",
}

#: Exit code for errors in the user's input (as argparse uses).
USAGE_ERROR = 2
#: Exit code after Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mara`` parser; only ``command``'s subparser gets its arguments (importing its module).

    :param command: the chosen subcommand, or ``None`` for the top-level help.
    """
    parser = argparse.ArgumentParser(
        prog="mara", description="MARA: token-level accept/reject alignment of LLMs with reinforcement learning."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    subparsers.required = True
    for name, description in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=description, description=description)
        # Also accepted after the subcommand; SUPPRESS keeps the top-level value when absent
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        if name == command:
            _load(name).add_arguments(sub)
    return parser


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"agents.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"agents.cli.{name}":
            raise ValueError(
                f"'mara {name}' is not available in this installation (no module agents.cli.{name})."
            ) from exc
        raise


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first argument naming a subcommand (options before it are top-level flags)."""
    for arg in argv:
        if arg in SUBCOMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mara`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Errors in the user's input (``ValueError``, ``FileNotFoundError``, ``FileExistsError``) print
    ``mara <command>: error: <message>`` and return 2; ``--debug`` also prints the traceback.
    Ctrl-C returns 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    debug = "--debug" in argv
    try:
        parser = build_parser(command)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse's --help (0) and usage errors (2)
            return int(exc.code or 0) if not isinstance(exc.code, str) else USAGE_ERROR
        return int(_load(args.command).run(args))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{_prog(command)}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{_prog(command)}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _prog(command: str | None) -> str:
    return f"mara {command}" if command else "mara"
