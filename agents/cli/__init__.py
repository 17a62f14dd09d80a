"""The ``mara`` command: ``mara train``, ``generate``, ``evaluate``, ``serve``, ``push`` and ``pull``.

Each subcommand is a module of this package exposing ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen subcommand's module is imported, so ``mara train`` never
loads the generation or evaluation code (and ``mara --help`` loads none).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from types import ModuleType

from agents.errors import INPUT_ERRORS, CommandFailed, UserFacingError, describe

__all__ = ["INPUT_ERRORS", "CommandFailed", "build_parser", "describe", "main"]

#: Subcommand name -> one-line description. The module is ``agents.cli.<name>``.
SUBCOMMANDS: dict[str, str] = {
    "train": "train an agent on MARA-v1 (or MARA-v0): checkpoints, TensorBoard, resumable",
    "generate": "generate answers with a trained agent (or the LLM alone)",
    "evaluate": "compare trained agents with the base LLM, best-of-N and ARGS on held-out prompts",
    "serve": "serve the aligned model behind an OpenAI-compatible HTTP API",
    "push": "share a training run's agent on the Hugging Face Hub, with a model card",
    "pull": "download an agent shared on the Hugging Face Hub",
}

#: Exit code for errors in the user's input (as argparse uses).
USAGE_ERROR = 2
#: Exit code for a failure while the command runs (training, decoding, writing its results).
FAILURE = 1
#: Exit code after Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


class _UsageError(UserFacingError):
    """argparse found a wrong flag or value."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors reach :func:`main` (one line, not the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see {self.prog} --help)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mara`` parser; only ``command``'s subparser gets its arguments (importing its module).

    :param command: the chosen subcommand, or ``None`` for the top-level help.
    """
    parser = _Parser(
        prog="mara", description="MARA: token-level accept/reject alignment of LLMs with reinforcement learning."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s (mara-rl) {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    subparsers.required = True
    for name, description in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=description, description=description)
        # Also accepted after the subcommand; SUPPRESS keeps the top-level value when absent
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        if name == command:
            _load(name).add_arguments(sub)
    return parser


def version() -> str:
    """The installed mara-rl's version (``pyproject.toml`` is the one place it is written; read without
    importing the packages, so that ``mara --help`` stays instant)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mara-rl")
    except PackageNotFoundError:  # a source tree that was never installed, as mara_env.__version__
        return "0+unknown"


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

    The one error boundary of the command line: every failure prints one line,
    ``mara <command>: error: <what failed and what to do>``, and returns 2 for bad input (a flag, a
    setting, a file) or 1 for a failure while the command ran (:class:`CommandFailed`, or an
    unexpected error, shown with its type). ``--debug`` also prints the traceback. Ctrl-C returns
    130. Warnings, and errors of background threads, print as one line each, ``mara <command>: warning: ...``.
    Called without ``argv`` (as the program), it ignores Ctrl-C once the command has finished.
    """
    program = argv is None  # run as the ``mara`` program, not called from Python
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    debug = "--debug" in argv
    thread_hook = threading.excepthook
    if not debug:
        # A background thread (TensorBoard's writer) that fails prints a traceback; its error reaches
        # the main thread too, which reports it, so the thread says one line
        threading.excepthook = lambda hook: print(
            f"{_prog(command)}: warning: a background thread failed: {describe(hook.exc_value)}", file=sys.stderr
        )
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{_prog(command)}: warning: {message}", file=sys.stderr)
        try:
            parser = build_parser(command)
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help
                return int(exc.code or 0) if not isinstance(exc.code, str) else USAGE_ERROR
            return int(_load(args.command).run(args))
        except KeyboardInterrupt:
            print(f"{_prog(command)}: interrupted", file=sys.stderr)
            return INTERRUPTED
        except Exception as exc:
            if debug:
                traceback.print_exc()
            code = USAGE_ERROR if isinstance(exc, (_UsageError, *INPUT_ERRORS)) else FAILURE
            unexpected = code == FAILURE and not isinstance(exc, CommandFailed)
            hint = " (rerun with --debug for the traceback)" if unexpected and not debug else ""
            print(f"{_prog(command)}: error: {describe(exc)}{hint}", file=sys.stderr)
            return code
        finally:
            threading.excepthook = thread_hook
            if program:
                # The command is done and has said so: a Ctrl-C while Python shuts down could only turn
                # its exit status into a kill by SIGINT
                signal.signal(signal.SIGINT, signal.SIG_IGN)


def _prog(command: str | None) -> str:
    return f"mara {command}" if command else "mara"
