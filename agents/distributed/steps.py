"""The learner's hook into Stable-Baselines3: collected vector steps filed through SB3's public API.

SB3 does the per-step work of an off-policy run inside its public ``collect_rollouts``: it counts the
decisions, updates the remaining progress that learning-rate and exploration schedules read, runs the
algorithm's step hook (DQN and QR-DQN: the target network and epsilon), counts episodes and fills
``ep_info_buffer``. The learner has all of it done by SB3 itself, as in single-process training, by
calling ``model.collect_rollouts`` for one collected vector step at a time (:meth:`StepFiler.file`) on

- :class:`CollectedStepEnv`, a ``VecEnv`` whose one step returns the collector's rewards, dones and
  episode records, and
- :class:`CollectedStepWriter` as the ``replay_buffer`` argument, which stores the collector's transition
  (its observations and the actions its policy took), not the ones SB3's learner-side sampling picked.

The set-up of a run (counters, episode buffers, the logger, the total the schedules read) is SB3's public
``learn``, stopped once it has set the model up: :func:`begin_run`. This is the subclass-free extension
point distributed training needs: any off-policy algorithm of the registry works unchanged, and nothing
here reads or writes SB3's private attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from agents.distributed.batch import TransitionBatch
from agents.spaces_env import SpacesOnlyVecEnv

__all__ = ["CollectedStepEnv", "CollectedStepWriter", "StepFiler", "begin_run"]

_ONE_STEP = TrainFreq(1, TrainFrequencyUnit.STEP)
# The learner's own action of a filed step is never used (the writer stores the collector's); asking SB3
# for a warm-up draw keeps it to a uniform sample, without a forward pass or a draw from the global RNG
_NO_POLICY_ACTION = 2**62


class _SetUp(Exception):
    """Raised by :class:`_StopAfterSetUp` to leave ``learn`` once SB3 has set the run up."""


class _StopAfterSetUp(BaseCallback):
    def _on_training_start(self) -> None:
        raise _SetUp()

    def _on_step(self) -> bool:
        return False


def begin_run(model: BaseAlgorithm, decisions: int, reset_num_timesteps: bool) -> int:
    """Set ``model`` up for ``decisions`` more decisions as SB3's ``learn`` does, and return the run's total.

    SB3's public ``learn`` runs its set-up (decision and episode counters reset or kept, ``ep_info_buffer``,
    the logger unless one was set, the total the schedules read), then calls ``on_training_start``, where
    a callback leaves it before any step: the collectors take the steps.

    :return: the ``num_timesteps`` at which the run ends.
    """
    try:
        model.learn(
            decisions,
            callback=_StopAfterSetUp(),
            log_interval=None,  # type: ignore[arg-type]
            tb_log_name="run",
            reset_num_timesteps=reset_num_timesteps,
        )
    except _SetUp:
        # SB3 counts the run's total from the decisions so far (0 unless a resume kept them)
        return decisions + int(model.num_timesteps)
    raise RuntimeError(f"{type(model).__name__}.learn() returned without calling on_training_start.")


class CollectedStepEnv(SpacesOnlyVecEnv):
    """A ``VecEnv`` whose next step is vector step ``t`` of a collected batch (:meth:`show`)."""

    def __init__(self, num_envs: int, observation_space: Any, action_space: Any) -> None:
        super().__init__(num_envs, observation_space, action_space)
        self.batch: TransitionBatch | None = None
        self.t = 0
        self._infos: list[dict[str, Any]] = []

    def show(self, batch: TransitionBatch, t: int, episodes: list[dict[str, Any]]) -> None:
        """Step ``t`` of ``batch`` is next; ``episodes`` are the records of the episodes it ends, in row order."""
        if batch.num_envs != self.num_envs:
            raise ValueError(
                f"a batch of {batch.num_envs} sub-environments cannot be filed on a learner built for "
                f"{self.num_envs}; every collector must run config.train.num_envs sub-environments."
            )
        self.batch, self.t = batch, t
        self._infos = [{"TimeLimit.truncated": bool(timeout)} for timeout in batch.timeouts[t]]
        ends = iter(episodes)
        for i in np.flatnonzero(batch.dones[t]):
            record = next(ends)
            if "episode" in record:
                self._infos[i]["episode"] = record["episode"]  # VecMonitor's, for ep_info_buffer

    def step_async(self, actions: np.ndarray) -> None:
        pass  # the collector chose the actions

    def step_wait(self) -> VecEnvStepReturn:
        batch, t = self.current()
        return batch.next_observations[t], batch.rewards[t], batch.dones[t], self._infos

    def current(self) -> tuple[TransitionBatch, int]:
        """The batch and the step :meth:`show` set."""
        if self.batch is None:
            raise RuntimeError("CollectedStepEnv: show() a collected step before stepping.")
        return self.batch, self.t


class CollectedStepWriter:
    """The ``replay_buffer`` of a filed step: stores the collector's transition into ``buffer``.

    :param buffer: the learner's replay buffer.
    :param env: the :class:`CollectedStepEnv` whose step is being filed.
    """

    def __init__(self, buffer: Any, env: CollectedStepEnv) -> None:
        self.buffer = buffer
        self.env = env

    def add(self, obs: Any, next_obs: Any, action: Any, reward: Any, done: Any, infos: list[dict[str, Any]]) -> None:
        """SB3's ``ReplayBuffer.add``; the observations and actions are the collector's, not the arguments'."""
        batch, t = self.env.current()
        self.buffer.add(
            batch.observations[t], batch.next_observations[t], batch.actions[t], batch.rewards[t], batch.dones[t], infos
        )


class StepFiler:
    """Files collected vector steps into ``model`` through ``model.collect_rollouts``.

    :param model: the learner's off-policy algorithm, set up by :func:`begin_run`.
    """

    def __init__(self, model: OffPolicyAlgorithm) -> None:
        self.model = model
        self.env = CollectedStepEnv(model.n_envs, model.observation_space, model.action_space)
        self.writer = CollectedStepWriter(model.replay_buffer, self.env)
        self.callback = ConvertCallback(None)  # the run's callbacks see whole batches (DistributedLearner.learn)
        self.callback.init_callback(model)

    def file(self, batch: TransitionBatch, t: int, episodes: list[dict[str, Any]]) -> None:
        """Store vector step ``t`` of ``batch`` and do SB3's bookkeeping of one step (see the module)."""
        self.env.show(batch, t, episodes)
        self.model.collect_rollouts(
            self.env,
            callback=self.callback,
            train_freq=_ONE_STEP,
            replay_buffer=self.writer,  # type: ignore[arg-type]
            learning_starts=_NO_POLICY_ACTION,
            log_interval=None,
        )
