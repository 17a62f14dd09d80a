"""The training runner: a run folder trained as a :class:`~agents.training.run_config.RunConfig` says,
with checkpoints, logs, resumption and the published model. ``mara train`` is its command line.

A run folder::

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

:func:`~agents.training.environment.make_env` and :func:`learn` are the steps every training shares
(``mara train`` and ``benchmarks/algorithms.py``): the vector environment SB3 trains on, and
``model.learn`` with the logging callback. With ``train.collectors`` set, Ray collector actors step the environments and
this process learns (:class:`agents.distributed.DistributedLearner`), with the same run folder,
checkpoints and resumption. Nothing a run does destroys finished work: see :func:`train_run` for ``replace``
and :func:`resume_run` for damaged checkpoints.
"""

from __future__ import annotations

import csv
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
from stable_baselines3.common.logger import CSVOutputFormat, HumanOutputFormat, Logger, make_output_format

from agents.agent_file import AGENT_SETTINGS, AGENT_WEIGHTS, save_agent_file
from agents.distributed import DistributedLearner
from agents.errors import CommandFailed, describe
from agents.files import copy_atomic, write_text_atomic
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
    CHECKPOINT_DIR,
    MODEL_FILE,
    REPLAY_BUFFER_FILE,
    file_digest,
    find_checkpoint,
    load_replay_buffer,
    read_checkpoint_state,
    recover_checkpoint,
    set_aside_damaged,
)
from agents.training.environment import make_env
from agents.training.hparams import log_run_config
from agents.training.run_config import RunConfig, check_agent_flags
from agents.training.run_folder import CONFIG_FILE, replaced_path
from agents.training.run_lock import run_lock

__all__ = [
    "CLUSTER_FILE",
    "CONFIG_FILE",
    "MODEL_FILE",
    "PROGRESS_FILE",
    "SUMMARY_FILE",
    "TEACHER_FILE",
    "TENSORBOARD_DIR",
    "learn",
    "make_logger",
    "resume_run",
    "train_run",
]

#: Distributed runs: where each collector ran (node, GPUs, LLM devices) and what it delivered.
CLUSTER_FILE = "cluster.json"
PROGRESS_FILE = "progress.csv"
SUMMARY_FILE = "summary.json"
TEACHER_FILE = "teacher.json"
DEMONSTRATIONS_FILE = "teacher-demonstrations.npz"
TENSORBOARD_DIR = "tb"

# Settings that --resume may change: the run's length, how progress is shown, and where it runs (the
# learner's model and replay buffer are the same with or without Ray collectors, on any cluster).
_RESUMABLE_CHANGES = {
    "train.total_decisions",
    "train.progress_bar",
    "train.collectors",
    "train.ray_address",
    "train.collector_gpus",
    "train.collect_steps",
}


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


def resume_run(out: Path, flags: dict[str, dict[str, Any]], *, verbose: int) -> int:
    config_path = out / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"--resume: {out} has no {CONFIG_FILE}, so it is not a run folder to continue.")
    saved = RunConfig.from_file(config_path)
    check_agent_flags(flags["agent"], flags["agent"].get("algo", saved.agent.algo))
    wanted = RunConfig.from_sections(flags, source="command line", base=saved)
    changed = [name for name in wanted.changes_from(saved) if name not in _RESUMABLE_CHANGES]
    if changed:
        raise ValueError(
            f"--resume continues the run as configured in {config_path}, but the flags change "
            f"{', '.join(changed)}. Only --total-decisions, --no-progress and the cluster flags (--collectors, "
            "--ray-address, --collector-gpus, --collect-steps) may be given with --resume; "
            "start a new run in another --out folder to change settings."
        )
    if wanted.train.total_decisions < saved.train.total_decisions:
        raise ValueError(
            f"--total-decisions {wanted.train.total_decisions} is below the run's {saved.train.total_decisions}; "
            "with --resume it may only be raised."
        )
    checkpoint, problems = find_checkpoint(out)
    done = None if checkpoint is None else int(read_checkpoint_state(checkpoint)["num_timesteps"])
    if done is not None and done >= wanted.train.total_decisions:
        if not _is_published(out, checkpoint):  # killed while publishing, or the published files damaged
            _publish(out, saved, checkpoint, resumed=True)
        return _say_finished(out, done, wanted)
    published = _published_decisions(out)
    if published is not None and published >= wanted.train.total_decisions:
        return _say_finished(out, published, wanted)  # a finished model is never trained over
    if checkpoint is None:
        if problems or (out / MODEL_FILE).exists():
            # Never advise --overwrite here: it would delete what is intact
            kept = (
                f"The run's model {out / MODEL_FILE} is not affected (mara evaluate --run {out} reads it). "
                if (out / MODEL_FILE).is_file()
                else ""
            )
            what = "; ".join(problems) if problems else f"{out} has a model but no checkpoint"
            raise ValueError(
                f"--resume: {what}, and no intact earlier checkpoint is left to continue from; nothing was changed. "
                f"{kept}To train again with these settings, start a new run: mara train --config {config_path} "
                "--out NEW_FOLDER."
            )
        print(
            f"mara train: note: {out} has no checkpoint yet (the run stopped before its first, due at "
            f"{saved.train.checkpoint_every} decisions): starting it again from decision 0 with {config_path}.",
            file=sys.stderr,
        )
        return train_run(wanted, out, verbose=verbose, write_config=wanted != saved)
    if problems:
        damaged = set_aside_damaged(out)
        checkpoint = out / CHECKPOINT_DIR
        print(
            f"mara train: warning: {problems[0]}; continuing from the checkpoint before it "
            f"({read_checkpoint_state(checkpoint)['num_timesteps']} decisions). The damaged copy is kept in {damaged}.",
            file=sys.stderr,
        )
    state = read_checkpoint_state(checkpoint)
    return train_run(wanted, out, verbose=verbose, checkpoint=checkpoint, state=state, write_config=wanted != saved)


def _say_finished(out: Path, done: int, wanted: RunConfig) -> int:
    print(
        f"{out}: the run is already finished ({done} of {wanted.train.total_decisions} decisions; the model is "
        f"{out / MODEL_FILE}). Pass a larger --total-decisions to train further."
    )
    return 0


def _is_published(out: Path, checkpoint: Path) -> bool:
    """Whether ``out/model.zip`` and ``summary.json`` are ``checkpoint``'s model and counters, intact."""
    state = read_checkpoint_state(checkpoint)
    summary = _read_summary(out)
    recorded = (state.get("files") or {}).get(MODEL_FILE, {}).get("sha256")
    return (
        summary.get("decisions") == state["num_timesteps"]
        and (out / MODEL_FILE).is_file()
        and (recorded is None or file_digest(out / MODEL_FILE)["sha256"] == recorded)
        and _agent_file_intact(out, summary)
    )


def _agent_file_intact(out: Path, summary: dict[str, Any]) -> bool:
    """Whether the run's agent file is the one ``summary.json`` records, its weights matching it."""
    if summary.get("agent_sha256") is None:
        return True  # published by a version that wrote no agent file
    try:
        return file_digest(out / AGENT_SETTINGS)["sha256"] == summary["agent_sha256"] and (
            json.loads((out / AGENT_SETTINGS).read_text(encoding="utf-8"))["weights"]["sha256"]
            == file_digest(out / AGENT_WEIGHTS)["sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _published_decisions(out: Path) -> int | None:
    """The decisions of the run's published ``model.zip`` if it is intact (``summary.json`` records its SHA-256)."""
    summary = _read_summary(out)
    decisions, digest = summary.get("decisions"), summary.get("model_sha256")
    if not isinstance(decisions, int) or not (out / MODEL_FILE).is_file():
        return None
    if digest is not None and file_digest(out / MODEL_FILE)["sha256"] != digest:
        return None
    return decisions


def _read_summary(out: Path) -> dict[str, Any]:
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


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


def _train_run(
    config: RunConfig,
    out: Path,
    verbose: int,
    checkpoint: Path | None,
    state: dict[str, Any] | None,
    write_config: bool,
    replace: bool,
) -> int:
    distributed = None
    if config.train.collectors is not None:
        # Ray collectors step the environments; this process holds the learner (agents.distributed)
        distributed = DistributedLearner(config)
        venv = distributed.start()
        write_config = write_config or distributed.config != config
        config = distributed.config  # with the cluster layout resolved (GPUs per collector)
    else:
        venv = make_env(config.env_id, config.train.num_envs, **config.env_kwargs)
        placed = with_scorer_placement(config, venv.venv.venv.unwrapped.core.terminal.placement)
        write_config = write_config or placed != config
        config = placed
    train = config.train
    logger = None
    try:
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
        teacher: TeacherReport | None = None
        demos: Demonstrations | None = None
        if checkpoint is None and train.teacher is not None:
            # The teacher's decisions go into the replay buffer and count as the run's first decisions
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

        # The run starts: from here on the folder changes
        aside = None
        created = not out.exists()
        try:
            if replace and out.is_dir() and any(out.iterdir()):
                os.replace(out, replaced_path(out))
                aside = replaced_path(out)  # only once it is there: the undo below deletes out
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
            if aside is not None:
                shutil.rmtree(out, ignore_errors=True)
                os.replace(aside, out)
            elif created:
                shutil.rmtree(out, ignore_errors=True)
            raise

        def drop_replaced(_: Path) -> None:
            nonlocal aside
            if aside is not None:  # the new run can be resumed now: the replaced one may go
                shutil.rmtree(aside)
                aside = None

        checkpoint_callback = RunCheckpointCallback(out, train.checkpoint_every, logging_callback, drop_replaced)
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
            summary = _publish(out, config, checkpoint_callback.save(), resumed=checkpoint is not None)
        except (Exception, KeyboardInterrupt) as exc:
            interrupt.restore()
            if aside is not None:
                shutil.rmtree(out, ignore_errors=True)
                os.replace(aside, out)
            where = _where(out, config, put_back=aside is not None)
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


def _publish(out: Path, config: RunConfig, checkpoint: Path, *, resumed: bool) -> dict[str, Any]:
    """Put the checkpoint's model at ``out/model.zip``, its agent file beside it, and write ``summary.json``.

    Each file is written atomically; ``summary.json`` last, with the SHA-256 of both models, so that
    :func:`_is_published` tells a publication a kill cut short.
    """
    state = read_checkpoint_state(checkpoint)
    copy_atomic(checkpoint / MODEL_FILE, out / MODEL_FILE)
    # The agent file (safetensors + JSON) is what generate/evaluate/serve read: no pickle in it
    try:
        save_agent_file(load_algorithm(out / MODEL_FILE, device="cpu"), out)
        agent_sha256 = file_digest(out / AGENT_SETTINGS)["sha256"]
    except TypeError as error:  # a setting the format cannot name (a custom class): model.zip serves alone
        warnings.warn(f"no agent file written for {out}: {describe(error)} The run's model.zip is.", stacklevel=2)
        for stale in (AGENT_SETTINGS, AGENT_WEIGHTS):  # an earlier segment's must not stand for this model
            (out / stale).unlink(missing_ok=True)
        agent_sha256 = None
    wall = float(state.get("wall_seconds") or 0.0)
    summary = {
        "algo": config.agent.algo,
        "decisions": int(state["num_timesteps"]),
        "episodes": state.get("episodes"),
        "wall_seconds": round(wall, 2),
        "decisions_per_second": round(state["num_timesteps"] / wall, 3) if wall > 0 else None,
        "final": state.get("logging", {}).get("last_means", {}),
        "resumed": resumed,
        "model": MODEL_FILE,
        "model_sha256": file_digest(out / MODEL_FILE)["sha256"],  # lets --resume tell a damaged model.zip
        "agent_file": AGENT_SETTINGS if agent_sha256 else None,
        "agent_sha256": agent_sha256,  # its weights' digest is inside
    }
    if (out / TEACHER_FILE).is_file():  # the teacher's cost: scorer calls, LLM tokens, time (in wall_seconds too)
        summary["teacher"] = json.loads((out / TEACHER_FILE).read_text(encoding="utf-8"))
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2))
    return summary


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


# ------------------------------------------------------------------------------------------ logging


def make_logger(out: Path, verbose: int, *, keep_until: int | None = None) -> Logger:
    """SB3 logger writing ``out/progress.csv`` and ``out/tb/`` (and stdout when ``verbose``).

    :param keep_until: when resuming, keep the rows of ``progress.csv`` up to this many decisions
        (the checkpoint's) and append after them; rows logged after the checkpoint are redone.
    """
    formats = [
        _ResumableCSVOutputFormat(out / PROGRESS_FILE, keep_until),
        make_output_format("tensorboard", str(out / TENSORBOARD_DIR)),
    ]
    if verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    return Logger(folder=str(out), output_formats=formats)


class _ResumableCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV writer (which truncates its file), starting from the kept rows of an earlier segment."""

    def __init__(self, filename: Path, keep_until: int | None) -> None:
        header: list[str] = []
        rows: list[list[str]] = []
        table: list[list[str]] = []
        if keep_until is not None and filename.is_file():
            try:
                with open(filename, newline="", encoding="utf-8") as file:
                    table = list(csv.reader(file))
            except (csv.Error, UnicodeDecodeError) as error:
                aside = filename.with_name(f"{filename.stem}.damaged{filename.suffix}")
                os.replace(filename, aside)
                warnings.warn(f"{filename} cannot be read ({error}); kept as {aside}, a new one begins.", stacklevel=2)
        if table and "time/total_timesteps" in table[0]:
            header, column = table[0], table[0].index("time/total_timesteps")
            damaged = 0
            for row in filter(None, table[1:]):
                decisions = _number(row[column]) if len(row) == len(header) else None
                if decisions is None:
                    damaged += 1  # e.g. the last row, cut short by a kill
                elif decisions <= keep_until:
                    rows.append(row)
            if damaged:
                warnings.warn(f"{filename}: dropped {damaged} damaged row(s), e.g. cut short by a kill.", stacklevel=2)
        super().__init__(str(filename))
        if header:
            writer = csv.writer(self.file, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            self.file.flush()
            self.keys = header


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
