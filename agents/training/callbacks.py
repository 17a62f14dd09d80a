"""Stable-Baselines3 callbacks of a MARA training run: episode logging, checkpoints, periodic evaluation.

:class:`MARALoggingCallback` writes the run's learning curves (``mara/*`` columns of
``progress.csv`` and TensorBoard, against ``time/total_timesteps``); :class:`RunCheckpointCallback`
keeps ``<run>/checkpoint/`` (:mod:`agents.training.checkpoints`) so that a killed run can resume;
:class:`EvaluationCallback` evaluates the model being trained every so many decisions (the
evaluation learning curves of ``benchmarks/algorithms.py``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecEnv

from agents.accept import EpisodeKL
from agents.training.checkpoints import write_checkpoint

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
        self._episode_kl = EpisodeKL(0)
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
        self._episode_kl = EpisodeKL(self.training_env.num_envs)
        self._pending = {column: [] for column in [*EPISODE_METRICS.values(), KL_COLUMN]}
        self._next_dump = (self.num_timesteps // self.log_every + 1) * self.log_every
        self._start_time = self._dump_time = time.time()
        self._dump_timesteps = self.num_timesteps

    @property
    def dumped_at(self) -> int:
        """``num_timesteps`` of the last dump (of the training start before the first)."""
        return self._dump_timesteps

    def record_episode(self, info: dict[str, Any], kl: float) -> None:
        """Count one finished episode: its end-of-episode ``info`` and its KL estimate, for the next dump."""
        self.episodes += 1
        for key, column in EPISODE_METRICS.items():
            if key in info and info[key] is not None:
                self._pending[column].append(float(info[key]))
        if np.isfinite(kl):
            self._pending[KL_COLUMN].append(float(kl))

    def _on_step(self) -> bool:
        # A learner whose steps were taken elsewhere (agents.distributed) passes the finished episodes,
        # each (info, kl) with the KL summed by the collector that ran it
        if "finished_episodes" in self.locals:
            for info, kl in self.locals["finished_episodes"]:
                self.record_episode(info, kl)
            if self.num_timesteps >= self._next_dump:
                self.dump()
            return True
        infos: list[dict[str, Any]] = self.locals["infos"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        # num_timesteps was already advanced past the step whose actions were chosen
        before = self.num_timesteps - self.training_env.num_envs
        self._episode_kl.step(self.model, acted_on(self.training_env), self.locals["actions"], infos, before)

        for i in np.flatnonzero(dones):
            # SB3VecEnv puts the episode-end info here when dones[i]
            self.record_episode(infos[i], self._episode_kl.finish(i))

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


def acted_on(env: VecEnv) -> np.ndarray:
    """The observations the latest step of ``env`` took its actions on, from MARA's
    :class:`~mara_env.sb3.SB3VecEnv` inside it (through wrappers such as ``VecMonitor``).

    :raises ValueError: ``env`` has no ``SB3VecEnv`` inside, or has not been stepped.
    """
    observations = getattr(env, "acted_on", None)
    if observations is None:
        raise ValueError(
            f"MARALoggingCallback needs the observations each step's actions were taken on, which MARA's "
            f"SB3VecEnv keeps (its acted_on attribute); the training env {type(env).__name__} has none, or was not "
            "stepped. Train on VecMonitor(SB3VecEnv(gym.make_vec('MARA-v1', ...))) or "
            "agents.training.environment.make_env."
        )
    return observations


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


class EvaluationCallback(BaseCallback):
    """Evaluate the model being trained at the start, every ``every`` decisions before ``total``, and at the end.

    Periodic evaluations stop short of ``total`` because training runs a little past it (to the end
    of a rollout or a ``train_freq`` period), where the final evaluation comes anyway. Also drives a
    progress bar over decisions. The time spent evaluating is kept in :attr:`seconds` so that
    training speed can leave it out.

    :param evaluate: model -> summary dict (:func:`agents.evaluation.summarize_generations` of its answers).
    :param every: decisions between evaluations.
    :param total: the training budget in decisions.
    :param bar: a tqdm bar over decisions, or ``None``.
    """

    def __init__(
        self, evaluate: Callable[[BaseAlgorithm], dict[str, Any]], every: int, total: int, bar: Any = None
    ) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.every = int(every)
        self.total = int(total)
        self.bar = bar
        self.points: list[dict[str, Any]] = []
        self.seconds = 0.0
        self._next = 0

    def _run(self) -> None:
        start = time.perf_counter()
        point = {"decisions": int(self.num_timesteps), **self.evaluate(self.model)}
        point["seconds"] = time.perf_counter() - start
        self.seconds += point["seconds"]
        self.points.append(point)
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{point['reward']:.3f}", cost=f"{point['cost']:.3f}", refresh=False)

    def _on_training_start(self) -> None:
        self._run()  # the untrained policy: where every curve starts
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.num_timesteps - self.bar.n)
        if self._next <= self.num_timesteps and self._next < self.total:
            self._run()
            self._next = (self.num_timesteps // self.every + 1) * self.every
        return True

    def _on_training_end(self) -> None:
        if self.points[-1]["decisions"] < self.num_timesteps:
            self._run()


class InterruptBetweenSteps(BaseCallback):
    """Ctrl-C stops training between two steps: the first SIGINT only asks, and the next step raises
    ``KeyboardInterrupt`` from here, outside any write of the logs or of a checkpoint (an interrupt landing inside
    a library's bookkeeping, e.g. a log writer's lock, could leave the process unable to close); a second Ctrl-C
    interrupts at once. Install with :meth:`install` and take it out with :meth:`restore` (main thread only;
    elsewhere it does nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = False
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._ask)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _ask(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.restore()  # a second Ctrl-C is the default KeyboardInterrupt, at once

    def _on_step(self) -> bool:
        if self.requested:
            raise KeyboardInterrupt
        return True
