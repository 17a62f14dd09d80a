"""The learner of distributed training: an off-policy algorithm and its replay buffer in this process,
fed by Ray collector actors (:class:`~agents.distributed.collector.Collector`).

The loop (:meth:`DistributedLearner.learn`):

1. publish the policy: one ``ray.put`` of a :class:`~agents.distributed.policy_sync.PolicySnapshot`
   per sync; each task carries only its object reference and version, never the weights;
2. keep ``max_in_flight`` collection tasks per collector (backpressure: a collector never runs ahead
   of the learner by more than that);
3. ``ray.wait`` for the next batch, file its vector steps into the algorithm through SB3's public
   ``collect_rollouts`` (:mod:`agents.distributed.steps`: the replay buffer, the decision count, the
   schedules and DQN's target network as in single-process training) and take the gradient steps
   single-process training would take for them (``gradient_steps`` every ``train_freq`` vector steps
   once ``learning_starts`` decisions are stored), then publish the new weights and give the
   collector its next task;
4. a collector that dies loses only the batch it was collecting: Ray restarts it
   (``max_restarts``), the learner gives it new work, and training goes on; one that stays dead is
   left out and the others carry on.

Logged with SB3's logger beside the run's ``mara/*`` columns, over the batches since the last row:
``distributed/staleness_mean`` and ``_max`` (gradient steps between the weights a batch was
collected with and the learner's when it arrived), ``distributed/decisions_per_second`` (received
by the learner) and ``distributed/collector_<i>/decisions_per_second`` (each collector's own),
``distributed/replay_ratio`` (gradient steps per decision received), ``distributed/collectors_alive``,
``distributed/lost_batches`` and ``distributed/weight_syncs``.

Checkpoints, logs and ``--resume`` are those of single-process training: the runner
(:func:`agents.training.runner.train_run`) builds the algorithm on :meth:`DistributedLearner.start`'s
environment and passes the same callbacks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from agents.distributed.batch import TransitionBatch
from agents.distributed.cluster import (
    SCORER_CPUS,
    check_distributed,
    connect,
    plan_collectors,
    plan_scorer_gpus,
    require_ray,
)
from agents.distributed.collector import Collector
from agents.distributed.policy_sync import behaviour_settings, take_snapshot
from agents.distributed.scorer_service import ScorerService
from agents.distributed.steps import StepFiler, begin_run
from agents.errors import CommandFailed
from agents.spaces_env import SpacesOnlyVecEnv
from agents.training.callbacks import MARALoggingCallback
from agents.training.run_config import RunConfig

__all__ = ["DistributedLearner"]


class DistributedLearner:
    """Train with ``config.train.collectors`` Ray collectors feeding this process's replay buffer.

    Use::

        learner = DistributedLearner(config)
        venv = learner.start()                      # Ray, the collectors, their spaces
        try:
            model = make_algorithm(config.agent.algo, venv, ...)
            learner.learn(model, config.train.total_decisions, MARALoggingCallback(1000))
        finally:
            learner.close()

    :func:`agents.training.runner.train_run` does this when ``config.train.collectors`` is set.

    :param config: the run's settings (``train.collectors``, ``ray_address``, ``collector_gpus``,
        ``collect_steps`` place the collectors; ``scorer_placement``, ``scorer_gpus`` their score models).
    :param max_in_flight: collection tasks per collector at once.
    :param max_restarts: times Ray restarts a collector that dies (its ``max_restarts``).
    :param start_timeout: seconds to wait for the collectors to load their LLMs.
    :param num_cpus: CPUs of a local cluster started here (``None``: all).
    :raises ValueError: settings that cannot train with collectors (:func:`check_distributed`).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        max_in_flight: int = 2,
        max_restarts: int = 3,
        start_timeout: float = 900.0,
        num_cpus: int | None = None,
    ) -> None:
        if config.train.collectors is None:
            raise ValueError("DistributedLearner needs config.train.collectors (>= 1).")
        check_distributed(config)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 task per collector, got {max_in_flight}.")
        self.config = config
        self.max_in_flight = int(max_in_flight)
        self.max_restarts = int(max_restarts)
        self.start_timeout = float(start_timeout)
        self.num_cpus = num_cpus
        #: Ray actor handles, by collector index.
        self.collectors: list[Any] = []
        #: The shared scorer's actor handle (``train.scorer_placement="shared"``), else ``None``.
        self.scorer_service: Any = None
        #: Where each collector runs (:meth:`Collector.describe` without the spaces), and the cluster.
        self.layout: dict[str, Any] = {}
        #: Counters over the whole run: batches and decisions received, lost batches, syncs.
        self.stats: dict[str, Any] = {}
        #: Gradient steps taken by this learner: the version of the weights it publishes.
        self.gradient_steps = 0
        self._started_ray = False
        self._alive: list[bool] = []  # not left out after too many deaths
        self._suspect: list[bool] = []  # died; waiting for a ping to answer after the restart
        self._deaths: list[int] = []

    # ------------------------------------------------------------------------------------- start

    def start(self) -> SpacesOnlyVecEnv:
        """Connect to Ray, start the collectors and wait until each has built its environment.

        :return: the environment to build the learner's algorithm on (the collectors' spaces).
        :raises ValueError: Ray missing, an unreachable address, more GPUs or CPUs asked for than the
            cluster has, or a collector whose environment fails on a setting (its own message).
        :raises CommandFailed: a collector failed otherwise, or did not start in time.
        """
        ray = require_ray()
        train = self.config.train
        try:
            self._started_ray = connect(train.ray_address, num_cpus=self.num_cpus)
            plan = plan_collectors(int(train.collectors), train.collector_gpus, ray.cluster_resources())
            # The resolved config records the layout: GPUs per collector as placed
            resolved = dict(collector_gpus=plan.gpus)
            if train.scorer_placement == "shared":
                # one actor holds the score models for every collector's rows (agents.distributed.scorer_service)
                resolved["scorer_gpus"] = plan_scorer_gpus(train.scorer_gpus, plan)
                self.scorer_service = (
                    ray.remote(ScorerService)
                    .options(num_cpus=SCORER_CPUS, num_gpus=resolved["scorer_gpus"], max_restarts=self.max_restarts)
                    .remote(self.config.env_kwargs, plan.collectors * train.num_envs, int(SCORER_CPUS))
                )
            self.config = dataclasses.replace(self.config, train=dataclasses.replace(train, **resolved))
            remote = ray.remote(Collector).options(
                num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=self.max_restarts, max_task_retries=0
            )
            self.collectors = [
                remote.remote(self.config, i, int(plan.cpus), self.scorer_service) for i in range(plan.collectors)
            ]
            descriptions = self._wait_described(ray)
            scorers = self._describe_scorer_service(ray)
        except BaseException:
            self.close()
            raise
        self._alive = [True] * len(self.collectors)
        self._suspect = [False] * len(self.collectors)
        self._deaths = [0] * len(self.collectors)
        first = descriptions[0]
        placed = [{k: v for k, v in d.items() if k not in _SPACE_KEYS} for d in descriptions]
        self.layout = {
            "collectors": placed,
            "gpus_per_collector": plan.gpus,
            "cpus_per_collector": plan.cpus,
            "scorer_placement": train.scorer_placement,
            **({"scorer_service": scorers} if scorers is not None else {}),
            "cluster": {
                "address": train.ray_address or ("local" if self._started_ray else "connected"),
                **_cluster_nodes(ray),
                "cpus": plan.cluster_cpus,
                "gpus": plan.cluster_gpus,
            },
        }
        return SpacesOnlyVecEnv(
            first["num_envs"],
            first["observation_space"],
            first["action_space"],
            agent_contract=first["agent_contract"],
        )

    def _describe_scorer_service(self, ray: Any) -> dict[str, Any] | None:
        """Where the shared scorer runs and its models' devices; ``None`` without one."""
        if self.scorer_service is None:
            return None
        try:
            return ray.get(self.scorer_service.describe.remote(), timeout=self.start_timeout)
        except ray.exceptions.RayError as error:
            raise CommandFailed(f"the shared scorer did not start: {_cause(error)}") from None

    def _wait_described(self, ray: Any) -> list[dict[str, Any]]:
        refs = [collector.describe.remote() for collector in self.collectors]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
        if pending:
            raise CommandFailed(
                f"{len(pending)} of {len(refs)} collectors did not start within {self.start_timeout:.0f} s "
                f"(loading their LLMs, or waiting for resources: the cluster has {ray.available_resources()} free)."
            )
        descriptions = []
        for index, ref in enumerate(refs):
            try:
                descriptions.append(ray.get(ref))
            except ray.exceptions.RayError as error:
                raise CommandFailed(f"collector {index} did not start: {_cause(error)}") from None
        for d in descriptions:
            if "error" in d:
                where = f" on {d['node_ip']}" if d.get("node_ip") else ""
                message = f"collector {d['index']}{where} could not build its environment: {d['error']}"
                raise (ValueError if d["input"] else CommandFailed)(message)
        return descriptions

    # ------------------------------------------------------------------------------------- learn

    def learn(
        self,
        model: BaseAlgorithm,
        decisions: int,
        logging_callback: MARALoggingCallback,
        callbacks: Sequence[BaseCallback] = (),
        *,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> BaseAlgorithm:
        """Train ``model`` for ``decisions`` more decisions collected by the collectors.

        The same contract as :func:`agents.training.runner.learn`: callbacks see ``on_training_start``,
        one ``on_step`` and ``on_rollout_end`` per batch received (``self.locals["finished_episodes"]``
        holds its episodes), and ``on_training_end``.

        :raises CommandFailed: every collector died, or one failed while collecting (its own error).
        """
        ray = require_ray()
        if not self.collectors:
            raise RuntimeError("call start() before learn().")
        if not isinstance(model, OffPolicyAlgorithm):
            raise TypeError(
                f"DistributedLearner trains off-policy algorithms from a replay buffer; got {type(model).__name__}. "
                "Train it in one process (agents.training.runner.learn)."
            )
        total = begin_run(model, decisions, reset_num_timesteps)
        callback = CallbackList([logging_callback, *callbacks])
        callback.init_callback(model)
        filer = StepFiler(model)
        num_envs = model.n_envs
        frequency = int(model.train_freq.frequency)
        gradient_steps = model.gradient_steps if model.gradient_steps >= 0 else frequency * num_envs
        start_timesteps = model.num_timesteps
        self.stats = {
            "batches": 0,
            "decisions": 0,
            "lost_batches": 0,
            "weight_syncs": 0,
            "collector_decisions": [0] * len(self.collectors),
            "collector_seconds": [0.0] * len(self.collectors),  # in collect(), stepping
            "restarts": [0] * len(self.collectors),
            "retired": [],
        }
        # object ref -> (collector, decisions); a ping (decisions -1) asks whether a collector that died is back
        in_flight: dict[Any, tuple[int, int]] = {}
        vector_steps = 0
        snapshot = [None, -1]  # [object ref, version]
        window = _Window(len(self.collectors))
        dumped_at = logging_callback.dumped_at

        def publish() -> None:
            if snapshot[1] != self.gradient_steps:
                snapshot[:] = [ray.put(take_snapshot(model, self.gradient_steps)), self.gradient_steps]
                self.stats["weight_syncs"] += 1

        def seed_for(index: int) -> int | None:
            seed = self.config.train.seed
            if seed is None:
                return None
            # Distinct episodes per collector and per restart, and after a resume
            return seed + start_timesteps + num_envs * (index + len(self.collectors) * self._deaths[index])

        def top_up() -> None:
            for index, actor in enumerate(self.collectors):
                while self._usable(index) and sum(1 for c, _ in in_flight.values() if c == index) < self.max_in_flight:
                    remaining = total - model.num_timesteps - sum(max(d, 0) for _, d in in_flight.values())
                    steps = min(self.config.train.collect_steps, math.ceil(remaining / num_envs))
                    if steps <= 0:
                        return
                    settings = behaviour_settings(model)
                    ref = actor.collect.remote(steps, settings, snapshot[1], [snapshot[0]], seed_for(index))
                    in_flight[ref] = (index, steps * num_envs)

        pings_due: dict[int, float] = {}  # collector -> when to ask again whether it is back

        def ping(index: int) -> None:
            in_flight[self.collectors[index].ping.remote()] = (index, _PING)

        def ping_due() -> None:
            for index, due in list(pings_due.items()):
                if time.monotonic() >= due:
                    del pings_due[index]
                    ping(index)

        # The first episodes start before the clock does, as SB3 resets its env in learn's set-up
        try:
            ray.get([actor.reset.remote(seed_for(i)) for i, actor in enumerate(self.collectors) if self._alive[i]])
        except ray.exceptions.RayError as error:
            raise CommandFailed(f"a collector could not start its episodes: {_cause(error)}") from None
        callback.on_training_start(locals(), globals())
        bar = _progress(total, model.num_timesteps) if progress_bar else None
        publish()
        top_up()
        keep_going = True
        try:
            while keep_going and model.num_timesteps < total:
                ping_due()
                if not in_flight and not pings_due:
                    raise CommandFailed(
                        f"every collector died ({self.stats['lost_batches']} batches lost); training cannot go on"
                    )
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_WAIT_S) if in_flight else ([], [])
                if not ready:
                    if not in_flight:
                        time.sleep(_WAIT_S)
                    continue
                index, decisions = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.ActorUnavailableError:
                    # Restarting (or out of reach for a moment): not another death; ask again shortly
                    if decisions != _PING:
                        self.stats["lost_batches"] += 1
                        self._suspect[index] = True
                    if index not in pings_due and not any(c == index and d == _PING for c, d in in_flight.values()):
                        pings_due[index] = time.monotonic() + _WAIT_S
                    continue
                except ray.exceptions.RayActorError as error:
                    if self._died(index, error, batch_lost=decisions != _PING):
                        ping(index)
                    top_up()
                    continue
                except ray.exceptions.RayTaskError as error:
                    raise CommandFailed(f"collector {index} failed while collecting: {_cause(error)}") from None
                if decisions == _PING:  # back after a restart
                    self._suspect[index] = False
                    self.stats["restarts"][index] += 1
                    top_up()
                    continue
                batch: TransitionBatch = result
                staleness = self.gradient_steps - batch.policy_version
                updates_before = self.gradient_steps
                vector_steps = self._receive(model, filer, batch, vector_steps, frequency, gradient_steps)
                window.add(batch, staleness, self.gradient_steps - updates_before)
                self._record(model, window)
                callback.update_locals({"finished_episodes": batch.episodes, "batch": batch})
                keep_going = callback.on_step()
                callback.on_rollout_end()
                if logging_callback.dumped_at != dumped_at:
                    dumped_at = logging_callback.dumped_at
                    window = _Window(len(self.collectors))
                if bar is not None:
                    bar.update(model.num_timesteps - bar.n)
                publish()
                if keep_going:
                    top_up()
        finally:
            if bar is not None:
                bar.close()
        callback.on_training_end()
        return model

    def _receive(
        self,
        model: OffPolicyAlgorithm,
        filer: StepFiler,
        batch: TransitionBatch,
        vector_steps: int,
        frequency: int,
        gradient_steps: int,
    ) -> int:
        """Store ``batch`` and train as single-process training would have after its steps."""
        records = iter([info for info, _ in batch.episodes])  # in the order of the batch's done rows
        for t in range(batch.steps):
            # SB3's per-step work (counters, schedules, DQN's target network) through its public collect_rollouts
            filer.file(batch, t, [next(records) for _ in range(int(np.count_nonzero(batch.dones[t])))])
            vector_steps += 1
            # SB3: gradient_steps after every train_freq vector steps, once past learning_starts
            if vector_steps % frequency == 0 and model.num_timesteps > model.learning_starts and gradient_steps > 0:
                model.train(gradient_steps=gradient_steps, batch_size=model.batch_size)
                self.gradient_steps += gradient_steps
        self.stats["batches"] += 1
        self.stats["decisions"] += batch.decisions
        self.stats["collector_decisions"][batch.collector] += batch.decisions
        self.stats["collector_seconds"][batch.collector] += batch.seconds
        return vector_steps

    def _usable(self, index: int) -> bool:
        return self._alive[index] and not self._suspect[index]

    def _died(self, index: int, error: BaseException, *, batch_lost: bool) -> bool:
        """A collector's task failed because its actor died: count it; return whether to ask if it is back.

        Every task in flight on the dead actor fails, but the first failure alone counts as a death; the
        collector gets no work until a ping answers (Ray queues it until the restart). A ping that
        fails is another death; after ``max_restarts`` of them the collector is left out.
        """
        if batch_lost:
            self.stats["lost_batches"] += 1
        if not self._alive[index]:
            return False
        if self._suspect[index] and batch_lost:
            return False  # another task of the same death; its ping is in flight
        self._deaths[index] += 1
        if self._deaths[index] > self.max_restarts:
            self._alive[index] = False
            self.stats["retired"].append(index)
            print(
                f"mara train: warning: collector {index} died and was not restarted ({self._deaths[index] - 1} "
                f"restarts allowed); {sum(self._alive)} collector(s) go on: {_cause(error)}",
                file=sys.stderr,
            )
            return False
        if not self._suspect[index]:
            print(
                f"mara train: warning: collector {index} died; the batch it was collecting is lost, Ray restarts "
                "it and training goes on.",
                file=sys.stderr,
            )
        self._suspect[index] = True
        return True

    def _record(self, model: BaseAlgorithm, window: _Window) -> None:
        logger = model.logger
        for key, value in window.values().items():
            logger.record(key, value)
        logger.record("distributed/collectors_alive", sum(self._alive))
        logger.record("distributed/lost_batches", self.stats["lost_batches"])
        logger.record("distributed/weight_syncs", self.stats["weight_syncs"])

    # ------------------------------------------------------------------------------------- close

    def close(self) -> None:
        """Stop the collectors (and the local Ray cluster if :meth:`start` started it)."""
        try:
            import ray
        except ModuleNotFoundError:
            return
        if ray.is_initialized():
            for actor in [*self.collectors, *([self.scorer_service] if self.scorer_service is not None else [])]:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
            self.collectors = []
            self.scorer_service = None
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False


_PING = -1  # in_flight's decisions of a ping
_WAIT_S = 0.5  # seconds between looks at the tasks in flight, and between pings of a restarting collector
_SPACE_KEYS = ("observation_space", "action_space", "config", "agent_contract")


class _Window:
    """Batches received since the last row of the logs."""

    def __init__(self, collectors: int) -> None:
        self.start = time.perf_counter()
        self.decisions = 0
        self.updates = 0
        self.staleness: list[int] = []
        self.collector_decisions = [0] * collectors
        self.collector_seconds = [0.0] * collectors

    def add(self, batch: TransitionBatch, staleness: int, updates: int) -> None:
        self.decisions += batch.decisions
        self.updates += updates
        self.staleness.append(staleness)
        self.collector_decisions[batch.collector] += batch.decisions
        self.collector_seconds[batch.collector] += batch.seconds

    def values(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        values = {
            "distributed/decisions_per_second": self.decisions / elapsed,
            # Fedus et al. (2020): gradient updates per environment transition
            "distributed/replay_ratio": self.updates / max(self.decisions, 1),
            "distributed/staleness_mean": sum(self.staleness) / max(len(self.staleness), 1),
            "distributed/staleness_max": max(self.staleness, default=0),
        }
        for index, (decisions, seconds) in enumerate(zip(self.collector_decisions, self.collector_seconds)):
            if seconds > 0:
                values[f"distributed/collector_{index}/decisions_per_second"] = decisions / seconds
        return values


def _cluster_nodes(ray: Any) -> dict[str, Any]:
    """The cluster's GCS address and live nodes, where this connection can tell (Ray Client may not)."""
    try:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        return {"gcs_address": ray.get_runtime_context().gcs_address, "nodes": nodes}
    except Exception:
        return {"gcs_address": None, "nodes": None}


def _progress(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="decision", desc="mara train", dynamic_ncols=True)


def _cause(error: BaseException) -> str:
    """The collector's own error inside Ray's wrapper, in one line, without Ray's traceback."""
    from agents.errors import describe

    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return describe(cause)
    text = str(error).strip().splitlines()
    return " ".join(text[0].split()) if text else type(error).__name__
