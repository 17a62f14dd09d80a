"""The harness of ``benchmarks/faults.py``: running ``mara train`` (in this process or as a process of its
own), the command line's rules every command must obey, and how a trial is judged and finished.

A trial records every command it typed (:class:`Attempt`) and ends ``recovered``, ``refused`` or ``lost``
(:class:`Trial`); :class:`Lost` is raised where a rule is broken or work is lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agents.cli import main
from agents.loading import read_saved_data

REPO = Path(__file__).resolve().parents[1]

#: Decisions of every run, and between its checkpoints: several checkpoints per run, each ~13 MB.
TOTAL, CHECKPOINT_EVERY = 256, 32
#: Decisions of the runs that are killed: ~10 s of training here, so that several kills land in each.
KILL_TOTAL = 768
#: Seconds a command takes to start training here (imports, the tiny LLM, the model): start-up kills land in it.
STARTUP_SECONDS = 6.0
#: Lines that are not messages of the command: transformers' progress bar while it loads weights.
NOISE = ("Loading weights",)


class Lost(Exception):
    """A trial lost work or broke a rule of the command line; the message says which."""


@dataclass
class Attempt:
    """One ``mara train`` command and what came of it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    signalled: str | None = None  # the signal this benchmark sent, if it arrived before the command ended

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip() and not line.startswith(NOISE)]
        return lines[-1] if lines else (self.stdout.strip().splitlines() or [""])[-1]


@dataclass
class Trial:
    fault: str
    detail: str
    outcome: str = "lost"
    note: str = ""
    injected: int = 1
    attempts: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ commands


def train_flags(llm: Path, prompts: Path, out: Path, total: int = TOTAL) -> list[str]:
    return [
        *("--out", str(out), "--llm", str(llm), "--prompts", str(prompts), "--prompt-split", "all"),
        *("--reward-model", "length", "--cost-model", "none", "--max-new-tokens", "12", "--top-k", "8"),
        *("--devices", "cpu", "--num-envs", "4", "--no-progress", "--learning-starts", "64"),
        *("--batch-size", "32", "--buffer-size", "4000", "--log-every", "64"),
        *("--checkpoint-every", str(CHECKPOINT_EVERY), "--total-decisions", str(total)),
    ]


def in_process(args: list[str]) -> Attempt:
    """``mara train ARGS`` in this process (no start-up cost), its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *args])
    return Attempt(args, code, out.getvalue(), err.getvalue())


def _drop_dac_override() -> None:
    """In the child: lose the capabilities that let root ignore file permissions (read-only faults)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def subprocess_run(
    args: list[str],
    *,
    send: signal.Signals | None = None,
    after: float = 0.0,
    training: Path | None = None,
    when: Callable[[], bool] | None = None,
    then: Callable[[], None] | None = None,
    no_dac: bool = False,
    file_size: int | None = None,
) -> Attempt:
    """``python -m agents.cli train ARGS`` in a process of its own.

    :param send: a signal to send ``after`` seconds after the start (if the command is still running).
    :param training: a run folder: count ``after`` from the moment its training starts (``progress.csv``
        is opened, after the LLM, the model and any checkpoint are loaded) instead of the process start.
    :param when: poll this; once true, call ``then`` (e.g. make the folder read-only mid-run).
    :param no_dac: run without the capabilities that let root write into read-only folders.
    :param file_size: a file-size limit (bytes) for the command.
    """
    setups = ([_drop_dac_override] if no_dac and os.geteuid() == 0 else []) + (
        [_limit_file_size(file_size)] if file_size else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "train", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            preexec_fn=(lambda: [setup() for setup in setups]) if setups else None,
        )
        signalled = None
        start, started_at = time.monotonic(), time.time()
        while proc.poll() is None:
            if training is not None and _mtime(training / "progress.csv") >= started_at:
                start, training = time.monotonic(), None  # the countdown starts with the training
            if send is not None and signalled is None and training is None and time.monotonic() - start >= after:
                proc.send_signal(send)
                signalled = send.name
            if when is not None and then is not None and when():
                then()
                when = None
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return Attempt(args, proc.returncode, out.read(), err.read(), signalled)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ------------------------------------------------------------------------------------------ checks


def check_rules(attempt: Attempt) -> None:
    """The command line's rules: a known exit status, one error line, no traceback."""
    code, err = attempt.returncode, attempt.stderr
    if code == -signal.SIGKILL and attempt.signalled == "SIGKILL":
        return
    if "Traceback" in err:
        raise Lost(f"a traceback (exit status {code}): {attempt.last_line}")
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(NOISE)]
    errors = [line for line in lines if line.startswith("mara train: error: ")]
    if code == 130:
        if attempt.signalled != "SIGINT" or not any("interrupted" in line for line in lines):
            raise Lost(f"exit status 130 without a Ctrl-C message: {attempt.last_line}")
    elif code in (1, 2):
        others = [line for line in lines if not line.startswith(("mara train: warning:", "mara train: note:"))]
        if len(errors) != 1 or len(others) != 1:
            raise Lost(f"exit status {code} with {len(others)} lines instead of one error line: {attempt.last_line}")
    elif code != 0:
        raise Lost(f"exit status {code}: {attempt.last_line}")


def check_finished(out: Path, total: int) -> None:
    """The run is complete: the model, the summary, the progress rows, and no leftovers."""
    try:
        decisions = read_saved_data(out / "model.zip")["num_timesteps"]
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as error:
        raise Lost(f"no finished model: {error}") from error
    if decisions != total or summary.get("decisions") != total:
        raise Lost(f"model.zip holds {decisions} decisions and summary.json {summary.get('decisions')}, not {total}")
    with open(out / "progress.csv") as file:
        rows = [line.split(",") for line in file.read().splitlines()]
    column = rows[0].index("time/total_timesteps")
    steps = [int(float(row[column])) for row in rows[1:]]
    if steps != sorted(set(steps)) or steps[-1] != total:
        raise Lost(f"progress.csv rows out of order or short: {steps}")
    leftovers = [p.name for p in out.iterdir() if p.name in ("checkpoint.tmp", "checkpoint.old", "model.tmp.zip")]
    if leftovers or out.with_name(out.name + ".overwritten").exists():
        raise Lost(f"left over: {leftovers or [out.name + '.overwritten']}")


@contextlib.contextmanager
def judged(trials: list[Trial], trial: Trial) -> Iterator[Trial]:
    """Add ``trial`` to ``trials``; a :class:`Lost` raised in the block marks it lost, with the reason."""
    trials.append(trial)
    try:
        yield trial
    except Lost as lost:
        trial.outcome, trial.note = "lost", str(lost)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def next_args(flags: list[str], out: Path) -> list[str]:
    """What a user types after a stop: ``--resume`` once the run folder exists, else the command again."""
    return [*flags, "--resume"] if (out / "config.yaml").is_file() else flags


def finish(trial: Trial, flags: list[str], out: Path, run: Callable[[list[str]], Attempt] = in_process) -> None:
    """Type the next command once the fault is gone: it must finish the run."""
    attempt = record(trial, run(next_args(flags, out)))
    if attempt.returncode != 0:
        raise Lost(f"the next command failed (exit status {attempt.returncode}): {attempt.last_line}")


def record(trial: Trial, attempt: Attempt) -> Attempt:
    total = attempt.args.index("--total-decisions")
    trial.attempts.append(
        dict(
            args=attempt.args[total:],  # the standard flags before are train_flags()'s
            returncode=attempt.returncode,
            signalled=attempt.signalled,
            said=attempt.last_line[:400],
        )
    )
    check_rules(attempt)
    return attempt
