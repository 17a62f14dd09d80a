"""``mara train --resume``: a run continued from its latest intact checkpoint, with the settings it was started with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from agents.training.checkpoints import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    find_checkpoint,
    read_checkpoint_state,
    set_aside_damaged,
)
from agents.training.publish import is_published, publish, published_decisions
from agents.training.run_config import RunConfig
from agents.training.run_folder import CONFIG_FILE
from agents.training.runner import train_run

__all__ = ["RESUMABLE_CHANGES", "resume_run"]

#: Settings that ``--resume`` may change: the run's length, how progress is shown, and where it runs (the
#: learner's model and replay buffer are the same with or without Ray collectors, on any cluster).
RESUMABLE_CHANGES = {
    "train.total_decisions",
    "train.progress_bar",
    "train.collectors",
    "train.ray_address",
    "train.collector_gpus",
    "train.collect_steps",
    "train.scorer_placement",
    "train.scorer_gpus",
}


def resume_run(out: Path, flags: dict[str, dict[str, Any]], *, verbose: int) -> int:
    """Continue the run in ``out`` from its latest intact checkpoint, with ``flags`` (the command line's sections)
    changing only what :data:`RESUMABLE_CHANGES` allows; returns the exit code of :func:`train_run`.

    A finished run is not trained over (its publication is completed if a kill cut it short); a damaged
    checkpoint is set aside and the one before it used; a run with no checkpoint starts again from 0.
    """
    config_path = out / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"--resume: {out} has no {CONFIG_FILE}, so it is not a run folder to continue.")
    saved = RunConfig.from_file(config_path)
    wanted = RunConfig.from_sections(flags, source="command line", base=saved)
    changed = [name for name in wanted.changes_from(saved) if name not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(
            f"--resume continues the run as configured in {config_path}, but the flags change "
            f"{', '.join(changed)}. Only --total-decisions, --no-progress and the cluster flags (--collectors, "
            "--ray-address, --collector-gpus, --collect-steps, --scorer-placement, --scorer-gpus) may be given "
            "with --resume; start a new run in another --out folder to change settings."
        )
    if wanted.train.total_decisions < saved.train.total_decisions:
        raise ValueError(
            f"--total-decisions {wanted.train.total_decisions} is below the run's {saved.train.total_decisions}; "
            "with --resume it may only be raised."
        )
    checkpoint, problems = find_checkpoint(out)
    done = None if checkpoint is None else int(read_checkpoint_state(checkpoint)["num_timesteps"])
    if done is not None and done >= wanted.train.total_decisions:
        if not is_published(out, checkpoint):  # killed while publishing, or the published files damaged
            publish(out, saved, checkpoint, resumed=True)
        return _say_finished(out, done, wanted)
    published = published_decisions(out)
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
