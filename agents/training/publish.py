"""A run's published model: ``model.zip``, its agent file and ``summary.json``, written from a checkpoint.

Publishing copies the final checkpoint's model to the run folder, writes the agent file (safetensors and JSON,
what ``mara generate``/``evaluate``/``serve`` read) beside it, and ``summary.json`` last, with the digests
of both: :func:`is_published` and :func:`published_decisions` tell a publication a kill cut short, so that
``--resume`` finishes it and never trains over a finished model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from agents.agent_file import AGENT_SETTINGS, AGENT_WEIGHTS, save_agent_file
from agents.errors import describe
from agents.files import copy_atomic, write_text_atomic
from agents.loading import load_algorithm
from agents.training.checkpoints import MODEL_FILE, file_digest, read_checkpoint_state
from agents.training.run_config import RunConfig
from agents.training.run_folder import SUMMARY_FILE, TEACHER_FILE

__all__ = ["is_published", "publish", "published_decisions", "read_summary"]


def publish(out: Path, config: RunConfig, checkpoint: Path, *, resumed: bool) -> dict[str, Any]:
    """Put the checkpoint's model at ``out/model.zip``, its agent file beside it, and write ``summary.json``.

    Each file is written atomically; ``summary.json`` last, with the SHA-256 of both models, so that
    :func:`is_published` tells a publication a kill cut short.
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


def is_published(out: Path, checkpoint: Path) -> bool:
    """Whether ``out/model.zip`` and ``summary.json`` are ``checkpoint``'s model and counters, intact."""
    state = read_checkpoint_state(checkpoint)
    summary = read_summary(out)
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


def published_decisions(out: Path) -> int | None:
    """The decisions of the run's published ``model.zip`` if it is intact (``summary.json`` records its SHA-256)."""
    summary = read_summary(out)
    decisions, digest = summary.get("decisions"), summary.get("model_sha256")
    if not isinstance(decisions, int) or not (out / MODEL_FILE).is_file():
        return None
    if digest is not None and file_digest(out / MODEL_FILE)["sha256"] != digest:
        return None
    return decisions


def read_summary(out: Path) -> dict[str, Any]:
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
