"""One writer per run folder: an exclusive lock that ``mara train`` takes on ``--out`` before it reads or moves it.

Two trainings writing one folder corrupt it (a checkpoint renamed under the other's feet, a model of one
seed beside the other's ``config.yaml``, ``progress.csv`` rows of mixed widths). The lock is the file
``<out>.lock`` beside the folder, not in it (``--overwrite`` moves the folder aside and back), held with
``fcntl.flock``: the kernel drops it when its process ends, however it ends, so a lock left by a killed
run is stale by construction and the next run takes it over. The file holds the holder's pid and
command line for the message a second writer gets::

    >>> import tempfile; from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with run_lock(out):
    ...     with run_lock(out):          # the same process may take it again (the CLI, then the runner)
    ...         out.with_name("run.lock").is_file()
    True
    >>> out.with_name("run.lock").exists()   # removed when the last holder lets go
    False

The lock is advisory: it binds ``mara train`` and the Ray learner (:func:`agents.training.runner.train_run`),
on file systems with working ``flock`` (local disks; NFS only where the server supports it).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agents.errors import CommandFailed

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there (said once, below)
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_SUFFIX", "RunLocked", "lock_path", "run_lock"]

#: ``<out>`` + this: the lock file of a run folder.
LOCK_SUFFIX = ".lock"

_held: dict[Path, list[int]] = {}  # lock file -> [fd, depth] of the locks this process holds
_guard = threading.Lock()


class RunLocked(CommandFailed):
    """Another process is writing the run folder (``mara`` exits with status 1)."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of the run folder ``out``: ``<out>.lock`` beside it."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + LOCK_SUFFIX)


@contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of the run folder ``out`` for the block (re-entrant within a process).

    :raises RunLocked: another live process holds it; the message names its pid and the lock file.
    :raises PermissionError: the lock file cannot be created (a read-only parent folder).
    """
    path = lock_path(out)
    with _guard:
        if path in _held:
            _held[path][1] += 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            _held[path] = [_acquire(path, Path(out)), 1]
    try:
        yield path
    finally:
        with _guard:
            _held[path][1] -= 1
            if _held[path][1] == 0:
                fd = _held.pop(path)[0]
                try:
                    path.unlink()  # while still locked: a waiting process then finds a fresh file
                except OSError:
                    pass
                os.close(fd)


def _acquire(path: Path, out: Path) -> int:
    if fcntl is None:
        warnings.warn(f"this platform has no flock: {out} is not locked against a second writer.", stacklevel=3)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            pid = holder.split(" ", 1)[0] if holder else "?"
            raise RunLocked(
                f"{out} is being written by another process (pid {pid}: {holder.partition(' ')[2] or 'unknown'}); "
                f"its lock is {path}. Wait for it to finish or stop it, or choose another --out."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before may have unlinked the file between our open and our lock: then this lock is on a
        # file nobody else will open, and the path must be opened again
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _read(fd)
        if stale:
            print(
                f"mara train: note: took over the lock of {out} left by pid {stale.split(' ', 1)[0]}, which is no "
                "longer running.",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv)[:300]}\n".encode(), 0)
        return fd


def _holder(fd: int, patience: float = 1.0) -> str:
    """The lock holder's ``pid command`` line. The holder writes it just after taking the lock, so a process
    refused in between reads an empty file (or a dead holder's line): read again for up to ``patience``
    seconds until the line names a live process, then give the last one read."""
    deadline = time.monotonic() + patience
    while True:
        holder = _read(fd)
        if (holder and _alive(holder.split(" ", 1)[0])) or time.monotonic() >= deadline:
            return holder
        time.sleep(0.01)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 400, 0).decode(errors="replace").strip()
    except OSError:
        return ""
