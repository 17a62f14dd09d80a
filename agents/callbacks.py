"""Stable-Baselines3 callbacks of a MARA training run: episode logging and atomic checkpoints.

:class:`MARALoggingCallback` writes the run's learning curves (``mara/*`` columns of
``progress.csv`` and TensorBoard, against ``time/total_timesteps``); :class:`RunCheckpointCallback`
keeps ``<run>/checkpoint/`` (model, replay buffer, counters) so that a killed run can resume.

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
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import safe_mean

from agents.algorithms import accept_probabilities

#: Episode-end info keys of MARA-v0 and the ``mara/*`` columns their means are logged as.
EPISODE_METRICS = {
    "reward_score": "mara/reward_score",
    "cost_score": "mara/cost_score",
    "terminal_reward": "mara/terminal_reward",
    "num_tokens": "mara/response_tokens",
    "num_decisions": "mara/decisions_per_episode",
}
KL_COLUMN = "mara/kl"
SPEED_COLUMN = "mara/decisions_per_second"

CHECKPOINT_DIR = "checkpoint"
MODEL_FILE = "model.zip"
REPLAY_BUFFER_FILE = "replay_buffer.npz"
STATE_FILE = "state.json"


class MARALoggingCallback(BaseCallback):
    """Log the means of MARA-v0's episode results, and a KL estimate, every ``log_every`` decisions.

    Each dump records, over the episodes finished since the previous dump, the mean of every
    :data:`EPISODE_METRICS` column and ``mara/kl``, the per-episode estimate of
    ``KL(pi || reference) = sum_t log pi_b(a_t|s_t) - log p_ref(a_t|k_t)`` where ``pi_b`` is the
    behaviour policy that chose the actions (uniform during an off-policy warm-up unless the
    algorithm warms up on its policy, epsilon-greedy for DQN), evaluated on the observation each
    action was taken on, and ``log p_ref`` is the step info's ``ref_logp``. Also
    ``mara/decisions_per_second``, ``time/total_timesteps``, ``time/episodes``, ``time/time_elapsed``
    and ``rollout/ep_rew_mean`` / ``rollout/ep_len_mean``,
    then ``logger.dump(num_timesteps)``: one row of ``progress.csv``, one TensorBoard point.

    Pass ``log_interval=None`` to ``learn`` so that rows come from this callback only.

    :param log_every: decisions (SB3 timesteps over all sub-environments) between dumps.
    :param verbose: SB3 callback verbosity.
    """

    def __init__(self, log_every: int, verbose: int = 0) -> None:
        super().__init__(verbose)
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1 decision, got {log_every}.")
        self.log_every = int(log_every)
        #: Episodes finished over the whole run (kept across resumes through :meth:`state_dict`).
        self.episodes = 0
        #: Means of the last dump, by column name (for summaries).
        self.last_means: dict[str, float] = {}
        self._wall_before = 0.0  # seconds of earlier segments of a resumed run
        self._pending: dict[str, list[float]] = {}
        self._episode_kl = np.zeros(0)
        self._next_dump = 0
        self._dump_time = 0.0
        self._dump_timesteps = 0
        self._start_time = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Counters to keep across a resume (episodes finished, wall seconds so far, the last means)."""
        return {"episodes": self.episodes, "wall_seconds": self.wall_seconds, "last_means": dict(self.last_means)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before ``learn``)."""
        self.episodes = int(state.get("episodes", 0))
        self._wall_before = float(state.get("wall_seconds", 0.0))
        self.last_means = dict(state.get("last_means", {}))

    @property
    def wall_seconds(self) -> float:
        """Training wall time over all segments of the run."""
        return self._wall_before + (time.time() - self._start_time if self._start_time else 0.0)

    def _on_training_start(self) -> None:
        self._episode_kl = np.zeros(self.training_env.num_envs)
        self._pending = {column: [] for column in [*EPISODE_METRICS.values(), KL_COLUMN]}
        self._next_dump = (self.num_timesteps // self.log_every + 1) * self.log_every
        self._start_time = self._dump_time = time.time()
        self._dump_timesteps = self.num_timesteps

    def _warming_up(self) -> bool:
        """Whether this step's actions were uniformly random (an off-policy algorithm's warm-up)."""
        model = self.model
        # DiscreteSAC with an anchored actor warms up on its policy (`uniform_warmup` False)
        if not isinstance(model, OffPolicyAlgorithm) or not getattr(model, "uniform_warmup", True):
            return False
        # num_timesteps was already advanced past the step whose actions were chosen
        before = self.num_timesteps - self.training_env.num_envs
        return before < model.learning_starts and not (model.use_sde and model.use_sde_at_warmup)

    def _on_step(self) -> bool:
        infos: list[dict[str, Any]] = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        actions = np.asarray(self.locals["actions"]).reshape(-1)
        # _last_obs is still the observation these actions were taken on (SB3 replaces it after callbacks)
        if self._warming_up():
            p_accept = np.full(len(actions), 0.5)
        else:
            p_accept = accept_probabilities(self.model, self.model._last_obs, behaviour=True)
        p_action = np.where(actions == 1, p_accept, 1.0 - p_accept)
        ref_logp = np.array([info.get("ref_logp", np.nan) for info in infos], dtype=np.float64)
        self._episode_kl += np.log(np.maximum(p_action, np.finfo(np.float64).tiny)) - ref_logp

        for i in np.flatnonzero(dones):
            info = infos[i]  # SB3VecEnv puts the episode-end info here when dones[i]
            self.episodes += 1
            for key, column in EPISODE_METRICS.items():
                if key in info and info[key] is not None:
                    self._pending[column].append(float(info[key]))
            if np.isfinite(self._episode_kl[i]):
                self._pending[KL_COLUMN].append(float(self._episode_kl[i]))
            self._episode_kl[i] = 0.0

        if self.num_timesteps >= self._next_dump:
            self.dump()
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps > self._dump_timesteps:
            self.dump()

    def dump(self) -> None:
        """Record the means since the last dump and write one row (``logger.dump(num_timesteps)``)."""
        now = time.time()
        for column, values in self._pending.items():
            if values:
                self.last_means[column] = float(np.mean(values))
                self.logger.record(column, self.last_means[column])
            values.clear()
        elapsed = max(now - self._dump_time, 1e-9)
        speed = (self.num_timesteps - self._dump_timesteps) / elapsed
        self.last_means[SPEED_COLUMN] = speed
        self.logger.record(SPEED_COLUMN, speed)
        self.logger.record("time/total_timesteps", self.num_timesteps)
        self.logger.record("time/episodes", self.episodes)
        self.logger.record("time/time_elapsed", round(self.wall_seconds, 1))
        ep_infos = self.model.ep_info_buffer
        if ep_infos:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in ep_infos]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in ep_infos]))
        self.logger.dump(self.num_timesteps)
        self._dump_time, self._dump_timesteps = now, self.num_timesteps
        self._next_dump = (self.num_timesteps // self.log_every + 1) * self.log_every


class RunCheckpointCallback(BaseCallback):
    """Write ``<run>/checkpoint/`` atomically every ``checkpoint_every`` decisions.

    A checkpoint is taken at the end of a rollout (off-policy: every ``train_freq`` steps;
    on-policy: every ``n_steps`` steps, before the update on it), where the replay buffer holds
    exactly the transitions counted by ``num_timesteps``. See :func:`write_checkpoint` for why a
    kill at any moment leaves a complete checkpoint.

    :param run_dir: the run folder.
    :param checkpoint_every: decisions between checkpoints.
    :param logging_callback: its counters go into ``state.json``.
    :param on_save: called with the checkpoint folder after each checkpoint is written.
    :param verbose: SB3 callback verbosity.
    """

    def __init__(
        self,
        run_dir: str | Path,
        checkpoint_every: int,
        logging_callback: MARALoggingCallback | None = None,
        on_save: Callable[[Path], None] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 decision, got {checkpoint_every}.")
        self.run_dir = Path(run_dir)
        self.checkpoint_every = int(checkpoint_every)
        self.logging_callback = logging_callback
        self.on_save = on_save
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.checkpoint_every + 1) * self.checkpoint_every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps >= self._next:
            self.save()

    def save(self) -> Path:
        """Write a checkpoint now; returns its folder."""
        state: dict[str, Any] = {
            "num_timesteps": int(self.model.num_timesteps),
            "episodes": self.logging_callback.episodes if self.logging_callback else None,
            "wall_seconds": self.logging_callback.wall_seconds if self.logging_callback else None,
            "logging": self.logging_callback.state_dict() if self.logging_callback else {},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = write_checkpoint(self.run_dir, self.model, state)
        self._next = (self.num_timesteps // self.checkpoint_every + 1) * self.checkpoint_every
        if self.on_save is not None:
            self.on_save(path)
        if self.verbose:
            print(f"Checkpoint at {self.num_timesteps} decisions: {path}")
        return path


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
