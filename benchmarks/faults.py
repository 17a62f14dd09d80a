"""Fault injection against ``mara train`` on a tiny model: kills at random moments, damaged files, unwritable folders.

Every fault hits a run of the test suite's tiny model (a word-level tokenizer and a 2-layer Llama built
in code, :mod:`mara_env.tiny`) through the command line itself, then the benchmark types what a user
would type next (``--resume``, or the same command again) until the run is finished. Each trial ends as

- **recovered**: the run finished as configured: ``model.zip`` trained for ``--total-decisions``,
  ``summary.json`` agreeing, the rows of ``progress.csv`` in order, nothing left over
  (``checkpoint.tmp/``, ``checkpoint.old/``, ``<out>.overwritten/``);
- **refused**: nothing was left to recover from (every copy of a checkpoint file damaged, a mistyped
  flag), and the command said so in one line and changed nothing;
- **lost**: anything else: finished work changed or gone, a traceback, an error of more than one line,
  a resume that could not finish. The bar is 0.

And on the way every command obeys the command line's rules: exit status 0, 1 (a failure while
running) or 2 (bad input) with one ``mara train: error:`` line and no traceback, 130 after Ctrl-C.

Faults (kills seeded by ``--seed``):

``SIGKILL``, ``SIGINT``
    ``kill -9`` or Ctrl-C of ``mara train`` at a random moment, ``--kills-per-run`` times per run, each
    followed by the next command; processes of their own. A quarter of the moments fall in the
    start-up (uniform in the first 6 s: imports, loading), the rest uniform in the first
    ``--max-delay`` seconds of training (a checkpoint every 32 decisions, so some land in its writing).
checkpoint file damaged
    ``model.zip``, ``replay_buffer.npz`` and ``state.json`` of ``checkpoint/`` in turn, truncated to
    half, with one byte flipped, emptied or deleted; then ``--resume`` to a larger total.
every copy damaged
    the same file flipped in ``checkpoint/`` and ``checkpoint.prev/``: nothing intact to continue from.
published file damaged
    a finished run's ``model.zip`` (flipped, deleted) or ``summary.json`` (damaged); then ``--resume``.
read-only folder
    ``--out`` in a read-only folder, the run folder made read-only while training, ``--overwrite`` of a
    run in a read-only folder; then the permissions are restored and the command repeated. As root
    (whom permissions do not bind) these processes run without ``CAP_DAC_OVERRIDE``.
file-size limit (disk full)
    ``RLIMIT_FSIZE`` below the size of a checkpoint, so every checkpoint write fails (``EFBIG``, as a
    full disk fails with ``ENOSPC``) in a fresh and in a resumed run; then the limit is lifted.
mistyped ``--overwrite``
    ``--overwrite`` of a finished run with a mistyped prompts path, a device that does not exist,
    ``--batch-size 0`` or ``--top-k 0``.
second writer
    a second ``mara train`` on the same ``--out`` while the first trains: it must exit 1 at once naming the
    first's pid (the run folder's lock), and the first must finish the run intact.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/faults.py            # every fault, ~6 min on a shared 2-core CPU
    python benchmarks/faults.py --kills-per-run 5 --runs 3   # more kills
    python benchmarks/faults.py --quick                      # smoke run: a few faults of each kind

Writes ``benchmarks/results/faults.json`` (every trial, with what each command printed last).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine_info
from faults_harness import (
    CHECKPOINT_EVERY,
    KILL_TOTAL,
    REPO,
    STARTUP_SECONDS,
    TOTAL,
    Attempt,
    Lost,
    Trial,
    check_finished,
    finish,
    in_process,
    judged,
    next_args,
    record,
    snapshot,
    subprocess_run,
    train_flags,
)

from mara_env.tiny import save_tiny_files

RESULTS = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------ faults


def kill_trials(sig: signal.Signals, runs: int, kills: int, max_delay: float, rng: random.Random, base: Path, files):
    """``runs`` runs, each stopped by ``sig`` ``kills`` times at random moments, then finished."""
    trials = []
    for run_index in range(runs):
        out = base / f"{sig.name.lower()}-{run_index}" / "run"
        out.parent.mkdir(parents=True)
        flags = train_flags(*files, out, total=KILL_TOTAL)
        with judged(trials, Trial(sig.name, f"run {run_index}: {kills} kills at random moments", injected=0)) as trial:
            moments = []
            for _ in range(kills):
                # A quarter of the kills while the command starts (imports, loading), the rest while it trains
                in_startup = rng.random() < 0.25
                after = rng.uniform(0.3, STARTUP_SECONDS) if in_startup else rng.uniform(0.0, max_delay)
                attempt = record(
                    trial,
                    subprocess_run(next_args(flags, out), send=sig, after=after, training=None if in_startup else out),
                )
                if attempt.signalled is None:  # finished before the signal was due
                    break
                trial.injected += 1
                during = any((out / name).exists() for name in ("checkpoint.tmp", "checkpoint.old"))
                moments.append(
                    f"{'start-up' if in_startup else 'training'} +{after:.1f}s"
                    + (" (checkpoint being written)" if during else "")
                )
            finish(trial, flags, out, subprocess_run)
            check_finished(out, KILL_TOTAL)
            trial.outcome, trial.note = "recovered", "kills at " + ", ".join(moments)
    return trials


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "byte flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    elif how == "emptied":
        path.write_bytes(b"")
    else:
        path.unlink()


def damage_trials(finished: Path, files, base: Path, modes: list[str]) -> list[Trial]:
    """Each checkpoint file damaged in turn, then in every copy; then the published files of a finished run."""
    trials = []
    cases = [("checkpoint file damaged", [name], how) for name in ("model.zip", "replay_buffer.npz", "state.json")
             for how in modes]  # fmt: skip
    cases += [("every copy damaged", [name, f"../checkpoint.prev/{name}"], "byte flipped")
              for name in ("model.zip", "replay_buffer.npz", "state.json")]  # fmt: skip
    for index, (fault, names, how) in enumerate(cases):
        out = base / f"damage-{index}" / "run"
        shutil.copytree(finished, out)
        with judged(trials, Trial(fault, f"{names[0]} {how}")) as trial:
            for name in names:
                damage(out / "checkpoint" / name, how)
            before = snapshot(out)
            flags = train_flags(*files, out, total=TOTAL + 2 * CHECKPOINT_EVERY)
            attempt = record(trial, in_process([*flags, "--resume"]))
            if fault == "every copy damaged":
                if attempt.returncode != 2 or snapshot(out) != before or "--overwrite" in attempt.stderr:
                    raise Lost(f"not refused cleanly (exit status {attempt.returncode}): {attempt.last_line}")
                trial.outcome, trial.note = "refused", attempt.last_line
            else:
                if attempt.returncode != 0 or names[0] not in attempt.stderr:
                    raise Lost(f"not recovered with a named warning: {attempt.last_line}")
                check_finished(out, TOTAL + 2 * CHECKPOINT_EVERY)
                trial.outcome = "recovered"

    for index, (name, how) in enumerate([("model.zip", "byte flipped"), ("model.zip", "deleted"),
                                         ("summary.json", "truncated")]):  # fmt: skip
        out = base / f"published-{index}" / "run"
        shutil.copytree(finished, out)
        with judged(trials, Trial("published file damaged", f"{name} {how}")) as trial:
            damage(out / name, how)
            attempt = record(trial, in_process([*train_flags(*files, out), "--resume"]))
            if (
                attempt.returncode != 0
                or (out / "model.zip").read_bytes() != (out / "checkpoint/model.zip").read_bytes()
            ):
                raise Lost(f"the published model was not restored: {attempt.last_line}")
            check_finished(out, TOTAL)
            trial.outcome = "recovered"
    return trials


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


def read_only_trials(finished: Path, files, base: Path) -> list[Trial]:
    trials = []
    # --out inside a read-only folder
    parent = base / "ro-parent"
    parent.mkdir()
    out = parent / "run"
    with judged(trials, Trial("read-only folder", "--out inside a read-only folder")) as trial:
        _set_writable(parent, False)
        attempt = record(trial, subprocess_run(train_flags(*files, out), no_dac=True))
        if attempt.returncode != 2 or "Permission denied" not in attempt.last_line or out.exists():
            raise Lost(f"not refused by name: {attempt.last_line}")
        _set_writable(parent, True)
        finish(trial, train_flags(*files, out), out, subprocess_run)
        check_finished(out, TOTAL)
        trial.outcome = "recovered"

    # the run folder made read-only while it trains: the next checkpoint cannot be written
    out = base / "ro-midrun" / "run"
    out.parent.mkdir()
    with judged(trials, Trial("read-only folder", "run folder made read-only after its first checkpoint")) as trial:
        attempt = record(
            trial,
            subprocess_run(
                train_flags(*files, out),
                no_dac=True,
                when=lambda: (out / "checkpoint" / "state.json").exists(),
                then=lambda: _set_writable(out, False),
            ),
        )
        if attempt.returncode != 1 or "Permission denied" not in attempt.last_line:
            raise Lost(f"not stopped with a named error: {attempt.last_line}")
        _set_writable(out, True)
        finish(trial, train_flags(*files, out), out, subprocess_run)
        check_finished(out, TOTAL)
        trial.outcome = "recovered"

    # --overwrite of a finished run whose folder's parent is read-only: the old run cannot be moved aside
    parent = base / "ro-overwrite"
    out = parent / "run"
    shutil.copytree(finished, out)
    with judged(trials, Trial("read-only folder", "--overwrite of a run in a read-only folder")) as trial:
        before = snapshot(out)
        parent.chmod(parent.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        attempt = record(trial, subprocess_run([*train_flags(*files, out), "--overwrite"], no_dac=True))
        parent.chmod(parent.stat().st_mode | stat.S_IWUSR)
        if attempt.returncode != 2 or snapshot(out) != before:
            raise Lost(f"the old run changed, or no named refusal: {attempt.last_line}")
        record(trial, in_process([*train_flags(*files, out), "--overwrite"]))
        check_finished(out, TOTAL)
        trial.outcome = "recovered"
    return trials


def disk_full_trials(finished: Path, files, base: Path) -> list[Trial]:
    """Every checkpoint write fails (a file-size limit below a checkpoint's model.zip), in a fresh and a resumed run."""
    trials = []
    limit = (finished / "checkpoint" / "model.zip").stat().st_size // 2
    for detail in ("fresh run", "resumed run"):
        out = base / f"disk-{detail.split()[0]}" / "run"
        if detail == "resumed run":
            shutil.copytree(finished, out)
        with judged(trials, Trial("file-size limit (disk full)", detail)) as trial:
            total = TOTAL if detail == "fresh run" else TOTAL + 2 * CHECKPOINT_EVERY
            flags = train_flags(*files, out, total=total)
            attempt = record(trial, subprocess_run(next_args(flags, out), file_size=limit))
            if attempt.returncode != 1 or "File too large" not in attempt.last_line:
                raise Lost(f"not stopped with a named error: {attempt.last_line}")
            finish(trial, flags, out)
            check_finished(out, total)
            trial.outcome = "recovered"
    return trials


def second_writer_trials(files, base: Path) -> list[Trial]:
    """Two ``mara train --out X`` at once: the second is refused at once naming the first's pid; the first finishes."""
    trials = []
    out = base / "two-writers" / "run"
    out.parent.mkdir()
    flags = train_flags(*files, out)
    with judged(
        trials, Trial("second writer", "a second mara train on the same --out while the first trains")
    ) as trial:
        first: list[Attempt] = []
        thread = threading.Thread(target=lambda: first.append(subprocess_run(flags)))
        thread.start()
        lock = out.with_name(out.name + ".lock")
        deadline = time.monotonic() + 60
        while not lock.exists():
            if time.monotonic() > deadline or not thread.is_alive():
                raise Lost("the first run never took its lock")
            time.sleep(0.02)
        holder = lock.read_text().split()[0]
        attempt = record(trial, subprocess_run(flags))
        if attempt.returncode != 1 or f"pid {holder}" not in attempt.last_line or not thread.is_alive():
            raise Lost(f"the second writer was not refused at once by the lock: {attempt.last_line}")
        thread.join()
        record(trial, first[0])
        if first[0].returncode != 0:
            raise Lost(f"the first run did not finish: {first[0].last_line}")
        check_finished(out, TOTAL)
        trial.outcome, trial.note = "recovered", attempt.last_line
    return trials


def mistyped_trials(finished: Path, files, base: Path) -> list[Trial]:
    trials = []
    for index, bad in enumerate(
        [["--prompts", "promtps.txt"], ["--devices", "cuda:9"], ["--batch-size", "0"], ["--top-k", "0"]]
    ):
        out = base / f"mistyped-{index}" / "run"
        shutil.copytree(finished, out)
        with judged(trials, Trial("mistyped --overwrite", " ".join(bad))) as trial:
            before = snapshot(out)
            attempt = record(trial, in_process([*train_flags(*files, out), *bad, "--overwrite"]))
            if attempt.returncode != 2 or snapshot(out) != before:
                raise Lost(f"the finished run changed, or no named refusal: {attempt.last_line}")
            trial.outcome, trial.note = "refused", attempt.last_line
    return trials


# ------------------------------------------------------------------------------------------ main


def table(trials: list[Trial]) -> str:
    faults = list(dict.fromkeys(t.fault for t in trials))
    lines = [
        "| fault | faults injected | runs | recovered | refused, nothing changed | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fault in faults:
        mine = [t for t in trials if t.fault == fault]
        count = {o: sum(t.outcome == o for t in mine) for o in ("recovered", "refused", "lost")}
        injected = sum(t.injected for t in mine)
        lines.append(
            f"| {fault} | {injected} | {len(mine)} | {count['recovered']} | {count['refused']} | {count['lost']} |"
        )
    total = {o: sum(t.outcome == o for t in trials) for o in ("recovered", "refused", "lost")}
    lines.append(
        f"| **all** | {sum(t.injected for t in trials)} | {len(trials)} | {total['recovered']} | "
        f"{total['refused']} | **{total['lost']}** |"
    )
    return "\n".join(lines)


def main_benchmark() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--runs", type=int, default=2, help="runs per kill signal (default 2)")
    p.add_argument("--kills-per-run", type=int, default=3, help="kills per run (default 3)")
    p.add_argument(
        "--max-delay", type=float, default=6.0, help="latest kill, seconds after training starts (default 6)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: one run of 2 kills per signal, 2 damage modes")
    p.add_argument("--out", default=str(RESULTS / "faults.json"), help="result file")
    args = p.parse_args()
    runs, kills = (1, 2) if args.quick else (args.runs, args.kills_per_run)
    modes = ["truncated", "byte flipped"] if args.quick else ["truncated", "byte flipped", "emptied", "deleted"]
    rng = random.Random(args.seed)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mara-faults-") as tmp:
        base = Path(tmp)
        files = save_tiny_files(base)
        finished = base / "finished" / "run"
        first = in_process(train_flags(*files, finished))  # the run the file faults start from
        if first.returncode != 0:
            raise SystemExit(f"the base run failed: {first.last_line}")
        trials = []
        for sig in (signal.SIGKILL, signal.SIGINT):
            trials += kill_trials(sig, runs, kills, args.max_delay, rng, base, files)
            print(f"{sig.name}: done ({time.time() - started:.0f} s)", flush=True)
        trials += damage_trials(finished, files, base, modes)
        trials += read_only_trials(finished, files, base)
        trials += disk_full_trials(finished, files, base)
        trials += mistyped_trials(finished, files, base)
        trials += second_writer_trials(files, base)
    seconds = time.time() - started
    print()
    print(table(trials))
    for t in trials:
        if t.outcome == "lost":
            print(f"LOST {t.fault} / {t.detail}: {t.note}")
    meta = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=machine_info(),
        seed=args.seed,
        runs=runs,
        kills_per_run=kills,
        max_delay=args.max_delay,
        total_decisions=TOTAL,
        killed_runs_total_decisions=KILL_TOTAL,
        checkpoint_every=CHECKPOINT_EVERY,
        seconds=round(seconds),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, table=table(trials), trials=[vars(t) for t in trials]), indent=2))
    print(f"\n{len(trials)} trials in {seconds:.0f} s; wrote {out}")
    return 1 if any(t.outcome == "lost" for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main_benchmark())
