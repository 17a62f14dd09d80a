"""A run's checkpoints on disk: written atomically, recovered after a kill, verified before a resume.

Checkpoint layout::

    <run>/checkpoint/model.zip           model.save(): weights, optimisers, entropy coefficient, counters
    <run>/checkpoint/replay_buffer.npz   off-policy only: the filled part of the replay buffer (no pickle)
    <run>/checkpoint/state.json          num_timesteps, episodes, wall seconds, the logging callback's counters,
                                         and the size and SHA-256 of each file above
    <run>/checkpoint.prev/               the checkpoint before, the fallback when checkpoint/ is found damaged
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer

CHECKPOINT_DIR = "checkpoint"
MODEL_FILE = "model.zip"
REPLAY_BUFFER_FILE = "replay_buffer.npz"
STATE_FILE = "state.json"


def write_checkpoint(run_dir: str | Path, model: BaseAlgorithm, state: dict[str, Any]) -> Path:
    """Write ``<run_dir>/checkpoint/`` so that a kill at any moment leaves a complete checkpoint.

    Order: (1) write model, replay buffer and, last, ``state.json`` (with the size and SHA-256 of
    each file, :func:`verify_checkpoint`) into ``checkpoint.tmp/`` and fsync them; (2) rename the
    current ``checkpoint/`` to ``checkpoint.old/``; (3) rename ``checkpoint.tmp/`` to ``checkpoint/``;
    (4) fsync the run folder, then make ``checkpoint.old/`` the new ``checkpoint.prev/``, the
    fallback when ``checkpoint/`` is found damaged. Every rename is an ``os.replace`` of a folder
    onto a free name, atomic on POSIX file systems. A kill during (1) leaves ``checkpoint/``
    untouched; after (2) every complete copy exists under one of the names, and
    :func:`recover_checkpoint` puts each back in its place. A failure during (1) (a full disk, a
    folder that cannot be written) deletes ``checkpoint.tmp/`` and raises, leaving the others intact.

    :param run_dir: the run folder.
    :param model: the model to save (with its replay buffer when off-policy).
    :param state: JSON-able counters; ``replay_buffer_transitions`` and ``files`` are added.
    :return: the ``checkpoint`` folder.
    """
    run_dir = Path(run_dir)
    final, tmp, old, prev = _checkpoint_folders(run_dir)
    recover_checkpoint(run_dir)
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / MODEL_FILE)
        buffer = getattr(model, "replay_buffer", None)
        state = {**state, "replay_buffer_transitions": None}
        if isinstance(buffer, ReplayBuffer):
            save_replay_buffer(buffer, tmp / REPLAY_BUFFER_FILE)
            state["replay_buffer_transitions"] = int(buffer.size() * buffer.n_envs)
        # Read back, so that the digests describe what reached the file system
        state["files"] = {file.name: file_digest(file) for file in sorted(tmp.iterdir())}
        state["state_sha256"] = _state_digest(state)  # state.json's own, over the other keys
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs back
        raise
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(run_dir)
    if old.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(old, prev)
    return final


def recover_checkpoint(run_dir: str | Path) -> Path | None:
    """Tidy up after a kill during :func:`write_checkpoint`; return the complete checkpoint, if any.

    ``checkpoint/`` missing: with a finished ``checkpoint.tmp/`` (its ``state.json`` is written
    last) the kill came between the renames, so the newer copy is promoted; else ``checkpoint.old/``
    is put back. A complete ``checkpoint.old/`` left beside ``checkpoint/`` becomes
    ``checkpoint.prev/``. An unfinished ``checkpoint.tmp/`` is deleted. Only the structure is checked
    here (files present, sizes as recorded); :func:`verify_checkpoint` reads the contents.

    :param run_dir: the run folder.
    :return: ``<run_dir>/checkpoint`` or ``None`` when there is no complete checkpoint.
    """
    final, tmp, old, prev = _checkpoint_folders(Path(run_dir))
    if not final.exists():
        if _complete(tmp):
            os.replace(tmp, final)
        elif _complete(old):
            os.replace(old, final)
    if _complete(old):  # the kill came after the swap: this copy is newer than checkpoint.prev/
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(old, prev)
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    return final if _complete(final) else None


def find_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint of a run, and what is wrong with each newer one.

    Tries ``checkpoint/``, then ``checkpoint.prev/``, each checked with :func:`verify_checkpoint`
    after :func:`recover_checkpoint` has tidied up after a kill.

    :param run_dir: the run folder.
    :return: ``(folder, problems)``: the intact checkpoint (``None`` if there is none) and one line
        per damaged checkpoint found before it. No checkpoint at all gives ``(None, [])``.
    """
    recover_checkpoint(run_dir)
    final, _, _, prev = _checkpoint_folders(Path(run_dir))
    problems = []
    for folder in (final, prev):
        if folder.exists():
            problem = verify_checkpoint(folder)
            if problem is None:
                return folder, problems
            problems.append(problem)
    return None, problems


def verify_checkpoint(checkpoint: str | Path) -> str | None:
    """What is wrong with a checkpoint folder, naming the file; ``None`` when it is intact.

    ``state.json`` must be a JSON object with ``num_timesteps`` whose values match its own recorded
    SHA-256; every file it lists must have the size and SHA-256 recorded when it was written
    (checkpoints of earlier versions record none, so only ``model.zip`` and, for off-policy runs,
    ``replay_buffer.npz`` must exist).
    """
    checkpoint = Path(checkpoint)
    state_file = checkpoint / STATE_FILE
    if not state_file.is_file():
        return f"{state_file} is missing"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{state_file} is damaged ({error})"
    if not isinstance(state, dict) or not isinstance(state.get("num_timesteps"), int):
        return f"{state_file} is damaged (it has no num_timesteps)"
    if "state_sha256" in state and state["state_sha256"] != _state_digest(state):
        return f"{state_file} is damaged (its values changed after it was written: the SHA-256 differs)"
    files = state.get("files")
    if not isinstance(files, dict):  # an earlier version's checkpoint: existence only
        needed = [MODEL_FILE] + ([REPLAY_BUFFER_FILE] if state.get("replay_buffer_transitions") is not None else [])
        files = {name: {} for name in needed}
    for name, recorded in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        if not recorded:
            continue
        actual = file_digest(path)
        if actual["bytes"] != recorded.get("bytes"):
            return f"{path} is damaged ({actual['bytes']} bytes, {recorded.get('bytes')} when it was written)"
        if actual["sha256"] != recorded.get("sha256"):
            return f"{path} is damaged (its contents changed after it was written: the SHA-256 differs)"
    return None


def set_aside_damaged(run_dir: str | Path) -> Path:
    """Move a damaged ``checkpoint/`` to a free ``checkpoint.damaged*`` name and make ``checkpoint.prev/`` current.

    Kept, not deleted: the damaged files stay for inspection. Afterwards the next checkpoint
    rotates as usual, so the intact copy is never replaced by the damaged one.

    :return: where the damaged checkpoint now is.
    """
    final, _, _, prev = _checkpoint_folders(Path(run_dir))
    aside = final.with_name(f"{CHECKPOINT_DIR}.damaged")
    number = 1
    while aside.exists():
        number += 1
        aside = final.with_name(f"{CHECKPOINT_DIR}.damaged-{number}")
    os.replace(final, aside)
    os.replace(prev, final)
    return aside


def _checkpoint_folders(run_dir: Path) -> tuple[Path, Path, Path, Path]:
    """``checkpoint/``, ``checkpoint.tmp/``, ``checkpoint.old/`` and ``checkpoint.prev/`` of a run."""
    final = run_dir / CHECKPOINT_DIR
    return (
        final,
        final.with_name(f"{CHECKPOINT_DIR}.tmp"),
        final.with_name(f"{CHECKPOINT_DIR}.old"),
        final.with_name(f"{CHECKPOINT_DIR}.prev"),
    )


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole checkpoint as written: ``state.json`` last, every file it lists at its size."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict):
        return (folder / MODEL_FILE).is_file()
    try:
        return all((folder / name).stat().st_size == entry.get("bytes") for name, entry in files.items())
    except (OSError, AttributeError):
        return False


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a ``state.json``'s values other than this digest itself."""
    values = {key: value for key, value in state.items() if key != "state_sha256"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def file_digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file (about a second per GB)."""
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            sha.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def read_checkpoint_state(checkpoint: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder.

    :raises FileNotFoundError: no complete checkpoint there.
    """
    checkpoint = Path(checkpoint)
    if not _complete(checkpoint):
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (it needs {MODEL_FILE} and {STATE_FILE}).")
    return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))


def _fsync(path: Path) -> None:
    """Flush a file's or folder's data to disk (folders: their entries), so renames follow writes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. folders on Windows cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Replay buffers as plain arrays (no pickle: loading a checkpoint runs no code)


def _buffer_arrays(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    arrays = {}
    for name, value in vars(buffer).items():
        if isinstance(value, dict) and any(isinstance(v, np.ndarray) for v in value.values()):
            raise TypeError(f"Checkpoints cannot store a {type(buffer).__name__} (dict observations) yet.")
        if isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[0] == buffer.buffer_size:
            arrays[name] = value
    return arrays


def save_replay_buffer(buffer: ReplayBuffer, path: str | Path) -> None:
    """Save the filled part of ``buffer``'s arrays, its position and fullness, to an ``.npz`` file.

    :param buffer: an SB3 ``ReplayBuffer`` (or subclass with the same array layout).
    :param path: the file to write.
    """
    filled = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {f"array_{name}": value[:filled] for name, value in _buffer_arrays(buffer).items()}
    meta = np.array([buffer.pos, int(buffer.full), buffer.buffer_size, buffer.n_envs], dtype=np.int64)
    with open(path, "wb") as file:
        np.savez(file, _meta=meta, **arrays)


def load_replay_buffer(buffer: ReplayBuffer, path: str | Path) -> None:
    """Fill ``buffer`` (freshly built with the same settings) from :func:`save_replay_buffer`'s file.

    :raises ValueError: the file is damaged, or does not fit the buffer (another size, number of envs or
        observation shape).
    """
    # What a damaged .npz raises, from the archive or from an array inside it
    damaged = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)

    def read(saved: Any, key: str) -> np.ndarray:
        try:
            return saved[key]
        except damaged as error:
            raise ValueError(f"{path} is damaged: its {key!r} array cannot be read ({error}).") from error

    try:
        saved = np.load(path, allow_pickle=False)
    except damaged as error:
        raise ValueError(f"{path} is damaged: it is not a readable .npz file ({error}).") from error
    with saved:
        if "_meta" not in saved:
            raise ValueError(f"{path} is damaged: it has no '_meta' array (not a replay buffer saved by mara train).")
        pos, full, size, n_envs = (int(v) for v in read(saved, "_meta"))
        if (size, n_envs) != (buffer.buffer_size, buffer.n_envs):
            raise ValueError(
                f"{path}: the saved replay buffer has {size} slots x {n_envs} envs, the model's has "
                f"{buffer.buffer_size} x {buffer.n_envs}; resume with the run's own settings."
            )
        for name, target in _buffer_arrays(buffer).items():
            key = f"array_{name}"
            if key not in saved:
                raise ValueError(f"{path}: the saved replay buffer has no {name!r} array.")
            values = read(saved, key)
            if values.shape[1:] != target.shape[1:] or len(values) > len(target):
                raise ValueError(f"{path}: saved {name} has shape {values.shape}, the buffer's is {target.shape}.")
            target[: len(values)] = values
    buffer.pos, buffer.full = pos, bool(full)
