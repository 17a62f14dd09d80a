"""A run folder: the names of its files, whether ``--out`` may be used, and the run an ``--overwrite`` replaces.

Shared by the runner (:mod:`agents.training.runner`), resumption (:mod:`agents.training.resume`), the published
model (:mod:`agents.training.publish`), the benchmarks and ``mara train`` / ``mara generate`` (which name the
folder an interrupted ``--overwrite`` left), so the layout and the rules live in one place.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from agents.training.checkpoints import CHECKPOINT_DIR, MODEL_FILE, recover_checkpoint

__all__ = [
    "CLUSTER_FILE",
    "CONFIG_FILE",
    "DEMONSTRATIONS_FILE",
    "MODEL_FILE",
    "PROGRESS_FILE",
    "REPLACED_SUFFIX",
    "SUMMARY_FILE",
    "TEACHER_FILE",
    "TENSORBOARD_DIR",
    "check_out",
    "put_back_replaced",
    "replaced_path",
]

#: A run's fully resolved settings: ``mara train --config config.yaml`` repeats the run.
CONFIG_FILE = "config.yaml"
#: One row per ``log_every`` decisions: ``mara/*`` means, ``time/*``, ``rollout/*``, ``train/*``.
PROGRESS_FILE = "progress.csv"
#: TensorBoard event files (the same values as ``progress.csv``).
TENSORBOARD_DIR = "tb"
#: Decisions, episodes, wall seconds, the final means, the digests of the published model and agent file.
SUMMARY_FILE = "summary.json"
#: With ``train.teacher``: what the teacher did and cost (:class:`agents.teacher.TeacherReport`).
TEACHER_FILE = "teacher.json"
#: With ``train.teacher_bc > 0``: the demonstrated decisions, for ``--resume``.
DEMONSTRATIONS_FILE = "teacher-demonstrations.npz"
#: Distributed runs: where each collector ran (node, GPUs, LLM devices) and what it delivered.
CLUSTER_FILE = "cluster.json"
#: ``<out>`` + this: where ``--overwrite`` keeps the replaced run until the new run's first checkpoint.
REPLACED_SUFFIX = ".overwritten"


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that a new run may not use; changes nothing."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder.")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if overwrite:
        if not (out / CONFIG_FILE).is_file():  # --overwrite replaces a folder; only ever one that a run made
            raise FileExistsError(
                f"--overwrite only replaces run folders (with {CONFIG_FILE}); {out} is not one. Choose another --out."
            )
        return
    never_saved = not any(out.glob(CHECKPOINT_DIR + "*")) and not (out / MODEL_FILE).exists()
    if (out / CONFIG_FILE).is_file() and never_saved:
        raise FileExistsError(
            f"{out} holds a run that stopped before its first checkpoint (it has no trained model): pass --resume to "
            "start it again with its own settings, --overwrite to replace it with these, or choose another --out."
        )
    raise FileExistsError(
        f"{out} already exists and is not empty: pass --overwrite to replace it, --resume to continue the run in it, "
        "or choose another --out."
    )


def replaced_path(out: Path) -> Path:
    """Where ``--overwrite`` keeps the run it replaces until the new run's first checkpoint."""
    return out.with_name(out.name + REPLACED_SUFFIX)


def put_back_replaced(out: Path) -> None:
    """Finish what a killed ``--overwrite`` left: drop the replaced run, or put it back if the new one never started.

    The replaced run is deleted right after the new run's first checkpoint; a kill before that leaves
    it in ``<out>.overwritten``, and since the new run then holds nothing to resume, the old one comes back.
    """
    aside = replaced_path(out)
    if not aside.is_dir():
        return
    if out.is_dir() and recover_checkpoint(out) is not None:
        shutil.rmtree(aside)  # killed between the first checkpoint and the deletion
        return
    if out.exists():
        shutil.rmtree(out)
    os.replace(aside, out)
    print(
        f"mara train: note: an earlier --overwrite of {out} stopped before the new run's first checkpoint; the run it "
        f"replaced is back in {out}.",
        file=sys.stderr,
    )
