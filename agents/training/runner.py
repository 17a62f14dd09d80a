"""The training runner: a run folder trained as a :class:`~agents.training.run_config.RunConfig` says,
with checkpoints, logs and the published model. ``mara train`` is its command line.

A run folder (file names in :mod:`agents.training.run_folder`)::

    config.yaml        the fully resolved settings: `mara train --config config.yaml` repeats the run
    progress.csv       one row per log_every decisions: mara/* means, time/*, rollout/*, train/*
    tb/                TensorBoard event files (the same values)
    checkpoint/        the latest checkpoint (model.zip, replay_buffer.npz, state.json), written atomically
    checkpoint.prev/   the one before, where --resume continues when checkpoint/ is found damaged
    model.zip          the final model (any registered algorithm; agents.loading.load_algorithm reads it)
    agent.json         the final agent as an agent file (agents.agent_file): settings as JSON, and
    agent.safetensors  its weights; what mara generate/evaluate/serve read (no pickle)
    summary.json       decisions, episodes, wall seconds, decisions/s, the final means, the teacher's cost
    teacher.json       with train.teacher: what the teacher did and cost (agents.teacher.TeacherReport)
    teacher-demonstrations.npz   with train.teacher_bc > 0: the demonstrated decisions, for --resume
    cluster.json       with train.collectors: where each Ray collector ran and what it delivered

:func:`train_run` reads top to bottom as a run goes: the environment (local sub-environments, or Ray
collectors with this process as the learner, :class:`agents.distributed.DistributedLearner`), the algorithm
(new, or a checkpoint's), the teacher's demonstrations, the folder, then :func:`learn` with its callbacks and
the publication (:mod:`agents.training.publish`). :func:`~agents.training.environment.make_env` and
:func:`learn` are the steps every training shares (``mara train`` and ``benchmarks/algorithms.py``).
Resumption is :mod:`agents.training.resume`, the logs :mod:`agents.training.logs`. Nothing a run does
destroys finished work: see :func:`train_run` for ``replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents.distributed import DistributedLearner
from agents.errors import CommandFailed, describe
from agents.files import write_text_atomic
from agents.loading import load_algorithm
from agents.registry import get_spec, make_algorithm
from agents.teacher import (
    BehaviourCloning,
    Demonstrations,
    TeacherReport,
    load_demonstrations,
    pretrain_steps,
    run_teacher,
    save_demonstrations,
)
from agents.training.callbacks import InterruptBetweenSteps, MARALoggingCallback, RunCheckpointCallback
from agents.training.checkpoints import (
    MODEL_FILE,
    REPLAY_BUFFER_FILE,
    load_replay_buffer,
    read_checkpoint_state,
    recover_checkpoint,
)
from agents.training.environment import make_env
from agents.training.hparams import log_run_config
from agents.training.logs import make_logger
from agents.training.publish import publish
from agents.training.run_config import RunConfig
from agents.training.run_folder import (
    CLUSTER_FILE,
    CONFIG_FILE,
    DEMONSTRATIONS_FILE,
    TEACHER_FILE,
    replaced_path,
)
from agents.training.run_lock import run_lock

__all__ = [
    "learn",
    "train_run",
    "with_scorer_placement",
]


def train_run(
    config: RunConfig,
    out: str | Path,
    *,
    verbose: int = 0,
    checkpoint: Path | None = None,
    state: dict[str, Any] | None = None,
    write_config: bool = True,
    replace: bool = False,
) -> int:
    """Train as ``config`` says in the run folder ``out``; resume from ``checkpoint`` if given.

    The run folder's lock (:mod:`agents.training.run_lock`) is held throughout: a second writer is refused.
    Nothing in ``out`` changes until the run is known to start: the environment (LLM, prompts,
    scorers) and the model (or the checkpoint) are loaded first, so a run that cannot start leaves
    the folder as it was.

    :param config: the run's settings.
    :param out: the run folder.
    :param verbose: 0 quiet, 1 SB3's log table on stdout, 2 debug.
    :param checkpoint: a checkpoint folder to continue from (see :func:`agents.training.checkpoints.write_checkpoint`).
    :param state: that checkpoint's ``state.json``.
    :param write_config: write ``config`` to ``out/config.yaml`` once the run starts.
    :param replace: ``out`` holds a run to replace: it is moved to ``<out>.overwritten`` when the new
        run starts and deleted after the new run's first checkpoint; if the new run stops before
        that, the old run is put back.
    :return: 0, or 130 after Ctrl-C.
    :raises CommandFailed: training stopped with an error (the message says what is left and how to go on).
    """
    out = Path(out)
    check_teacher(config)  # a teacher setting that cannot work is refused before anything is locked or loaded
    with run_lock(out):  # one writer per run folder (re-entrant: mara train holds it already)
        return _train_run(config, out, verbose, checkpoint, state, write_config, replace)


def check_teacher(config: RunConfig) -> None:
    """Refuse a teacher setting the run cannot use, before anything is loaded."""
    train = config.train
    if train.teacher is None:
        return
    if train.collectors is not None:
        raise ValueError(
            "--teacher replays its demonstrations in this process and cannot be combined with --collectors "
            "(Ray collectors); leave one of them out."
        )
    spec = get_spec(config.agent.algo)
    if spec.on_policy:
        raise ValueError(
            f"--teacher puts demonstrations into a replay buffer, and --algo {config.agent.algo} learns on-policy "
            "without one: use sac-discrete (or dqn / qrdqn, without --teacher-bc)."
        )
    if train.teacher_bc > 0 and config.agent.algo != "sac-discrete":
        raise ValueError(
            f"--teacher-bc adds a term to DiscreteSAC's actor loss; --algo {config.agent.algo} has no actor: "
            "use --algo sac-discrete or --teacher-bc 0."
        )


def _train_run(
    config: RunConfig,
    out: Path,
    verbose: int,
    checkpoint: Path | None,
    state: dict[str, Any] | None,
    write_config: bool,
    replace: bool,
) -> int:
    # 1. the environment, and the settings it resolved (scorer placement, the cluster's layout)
    distributed = DistributedLearner(config) if config.train.collectors is not None else None
    if distributed is not None:
        venv = distributed.start()  # Ray collectors step the environments; this process learns
        resolved = distributed.config
    else:
        venv = make_env(config.env_id, config.train.num_envs, **config.env_kwargs)
        resolved = with_scorer_placement(config, venv.get_attr("scorer_placement")[0])
    write_config = write_config or resolved != config
    config, train = resolved, resolved.train
    logger = None
    try:
        # 2. the algorithm: new, or the checkpoint's with its replay buffer and counters
        logging_callback = MARALoggingCallback(train.log_every)
        if checkpoint is None:
            model = make_algorithm(
                config.agent.algo,
                venv,
                seed=train.seed,
                verbose=verbose,
                kl_coef=config.env["kl_coef"],
                device=train.device,
                **config.agent.hyperparameters,
            )
        else:
            model = _load_checkpoint(config, checkpoint, venv, verbose)
            logging_callback.load_state_dict((state or {}).get("logging", {}))

        # 3. the teacher: its decisions go into the replay buffer and count as the run's first decisions
        teacher: TeacherReport | None = None
        demos: Demonstrations | None = None
        if checkpoint is None and train.teacher is not None:
            teacher, demos = run_teacher(
                model,
                config.env_id,
                config.env_kwargs,
                prompts=train.teacher_prompts,
                weight=train.teacher_weight,
                k=train.teacher_k,
                seed=train.seed,
                progress=train.progress_bar,
            )
        elif train.teacher is not None and train.teacher_bc > 0 and (out / DEMONSTRATIONS_FILE).is_file():
            demos = load_demonstrations(out / DEMONSTRATIONS_FILE)  # resumed: the cloning goes on where it was

        # 4. the run starts: from here on the folder changes
        replaced = _ReplacedRun(out)
        created = not out.exists()
        try:
            if replace:
                replaced.set_aside()
            out.mkdir(parents=True, exist_ok=True)
            if write_config:
                config.dump(out / CONFIG_FILE)
            if distributed is not None:
                write_text_atomic(out / CLUSTER_FILE, json.dumps(distributed.layout, indent=2))
            if teacher is not None:
                write_text_atomic(out / TEACHER_FILE, json.dumps(teacher.to_dict(), indent=2))
                if demos is not None and train.teacher_bc > 0:
                    save_demonstrations(out / DEMONSTRATIONS_FILE, demos)
        except BaseException:  # e.g. a folder that cannot be written: undo, and report it as given
            if not replaced.put_back() and created:
                shutil.rmtree(out, ignore_errors=True)
            raise

        # 5. learn, with checkpoints (the first lets the replaced run go), then publish the model
        checkpoint_callback = RunCheckpointCallback(out, train.checkpoint_every, logging_callback, replaced.drop)
        interrupt = InterruptBetweenSteps()
        try:
            logger = make_logger(out, verbose, keep_until=model.num_timesteps if checkpoint else None)
            model.set_logger(logger)
            log_run_config(logger, config, model.num_timesteps)  # TensorBoard's HParams tab and config.yaml
            if demos is not None and train.teacher_bc > 0:
                model.auxiliary_actor_loss = BehaviourCloning(
                    demos, train.teacher_bc, train.teacher_bc_decisions, model.batch_size, seed=train.seed
                )
            if teacher is not None:
                _pretrain(model, teacher, out)
                logging_callback.load_state_dict({"wall_seconds": teacher.wall_seconds})
            interrupt.install()
            (learn if distributed is None else distributed.learn)(
                model,
                train.total_decisions - model.num_timesteps,
                logging_callback,
                [checkpoint_callback, interrupt],
                reset_num_timesteps=checkpoint is None and teacher is None,
                progress_bar=train.progress_bar,
            )
            interrupt.restore()
            if distributed is not None:  # the layout with what each collector delivered
                layout = {**distributed.layout, "stats": distributed.stats}
                write_text_atomic(out / CLUSTER_FILE, json.dumps(layout, indent=2))
            # The final checkpoint lets a larger --total-decisions continue from the end
            summary = publish(out, config, checkpoint_callback.save(), resumed=checkpoint is not None)
        except (Exception, KeyboardInterrupt) as exc:
            interrupt.restore()
            where = _where(out, config, put_back=replaced.put_back())
            if isinstance(exc, KeyboardInterrupt):
                print(f"\nmara train: interrupted at {model.num_timesteps} decisions. {where}", file=sys.stderr)
                return 130
            raise CommandFailed(
                f"training stopped at {model.num_timesteps} decisions: {describe(exc).rstrip('.')}. {where}"
            ) from exc
        print(
            f"Trained {config.agent.algo} for {summary['decisions']} decisions ({summary['episodes']} episodes) in "
            f"{summary['wall_seconds']:.0f} s; model: {out / MODEL_FILE}"
        )
        return 0
    finally:
        if logger is not None:
            try:
                logger.close()  # flushes progress.csv and TensorBoard, whose writer thread ends here
            except Exception as error:  # e.g. a folder made read-only: never hide the error being raised
                warnings.warn(f"the training logs in {out} could not be closed: {describe(error)}", stacklevel=1)
        venv.close()
        if distributed is not None:
            distributed.close()


def with_scorer_placement(config: RunConfig, placement: dict[str, dict[str, str]]) -> RunConfig:
    """``config`` with its reward/cost models' resolved devices and dtype (``TerminalReward.placement``), so the
    run records where they ran; unchanged when no scorer is a model (nothing to place)."""
    if not placement:
        return config
    devices = [placement.get(role, placement.get(other, {})).get("device") for role, other in _ROLES]
    dtypes = {where["dtype"] for where in placement.values()}
    env = dict(config.env, scorer_devices=devices[0] if devices[0] == devices[1] else devices)
    if len(dtypes) == 1:  # one setting holds one dtype (two checkpoints' own dtypes may differ)
        env["scorer_dtype"] = dtypes.pop()
    return RunConfig(env=env, agent=config.agent, train=config.train)


_ROLES = (("reward", "cost"), ("cost", "reward"))


def _load_checkpoint(config: RunConfig, checkpoint: Path, venv: Any, verbose: int) -> Any:
    """The checkpoint's model on ``venv``, with its replay buffer, reseeded for the next episodes."""
    model = load_algorithm(checkpoint / MODEL_FILE, env=venv, algo=config.agent.algo, device=config.train.device)
    model.verbose = verbose
    if not get_spec(config.agent.algo).on_policy:
        buffer_file = checkpoint / REPLAY_BUFFER_FILE
        if not buffer_file.is_file():
            raise FileNotFoundError(f"{checkpoint} is incomplete: {REPLAY_BUFFER_FILE} is missing.")
        load_replay_buffer(model.replay_buffer, buffer_file)
    if config.train.seed is not None:
        # New episodes and exploration, reproducibly, rather than a replay of the run's start
        model.set_random_seed(config.train.seed + model.num_timesteps)
    return model


class _ReplacedRun:
    """The run ``--overwrite`` replaces, kept in ``<out>.overwritten`` until the new run's first checkpoint:
    dropped then (:meth:`drop`), or put back if the new run stops before it (:meth:`put_back`)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.aside: Path | None = None

    def set_aside(self) -> None:
        if self.out.is_dir() and any(self.out.iterdir()):
            os.replace(self.out, replaced_path(self.out))
            self.aside = replaced_path(self.out)  # only once it is there: put_back deletes out

    def drop(self, _: Path | None = None) -> None:
        """The new run can be resumed now (a checkpoint callback's hook): the replaced one may go."""
        if self.aside is not None:
            shutil.rmtree(self.aside)
            self.aside = None

    def put_back(self) -> bool:
        """Put the replaced run back in place of the new one; whether there was one to put back."""
        if self.aside is None:
            return False
        shutil.rmtree(self.out, ignore_errors=True)
        os.replace(self.aside, self.out)
        self.aside = None
        return True


def learn(
    model: BaseAlgorithm,
    decisions: int,
    logging_callback: MARALoggingCallback,
    callbacks: Sequence[BaseCallback] = (),
    *,
    reset_num_timesteps: bool = True,
    progress_bar: bool = False,
) -> BaseAlgorithm:
    """Train ``model`` for ``decisions`` more decisions, logging with ``logging_callback`` (then ``callbacks``).

    ``log_interval=None``: the rows of ``progress.csv`` come from the logging callback only, every
    ``log_every`` decisions.
    """
    return model.learn(
        decisions,
        callback=[logging_callback, *callbacks],
        log_interval=None,
        reset_num_timesteps=reset_num_timesteps,
        progress_bar=progress_bar,
    )


def _pretrain(model: Any, teacher: TeacherReport, out: Path) -> None:
    """The gradient steps the teacher's decisions earn under the model's schedule, before its own first step."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    steps = pretrain_steps(model, model.num_timesteps)
    if steps > 0 and model.replay_buffer.size() * model.n_envs >= model.batch_size:
        model.train(gradient_steps=steps, batch_size=model.batch_size)
        teacher.pretrain_steps = steps
    teacher.seconds["pretrain"] = time.perf_counter() - start_wall
    teacher.wall_seconds += teacher.seconds["pretrain"]
    teacher.cpu_seconds += time.process_time() - start_cpu
    write_text_atomic(out / TEACHER_FILE, json.dumps(teacher.to_dict(), indent=2))


def _where(out: Path, config: RunConfig, *, put_back: bool) -> str:
    """What is left after training stopped early, and how to go on."""
    if put_back:
        return f"The new run had no checkpoint yet, so the run that --overwrite replaced is back in {out}."
    saved = recover_checkpoint(out)
    if saved is None:
        return (
            f"No checkpoint was written yet (the first is due at {config.train.checkpoint_every} decisions); "
            f"start it again with: mara train --out {out} --resume"
        )
    done = read_checkpoint_state(saved)["num_timesteps"]
    return f"The last checkpoint ({done} decisions) is in {saved}. Continue with: mara train --out {out} --resume"
