"""What the seed and budget studies share: timed training runs, one comparison of many agents, seed statistics.

Used by ``benchmarks/main_job_seeds.py`` (the default main job over training seeds, held-out prompts),
``benchmarks/scaling.py`` (preference against training decisions) and ``benchmarks/recipe_arms.py``
(arms of the default recipe, on training prompts; ``teacher_ablation.py`` is one preset of it). Every training
run records its wall time and the CPU time of the process (all threads) beside it, since the machine these figures
come from is shared: wall time alone says little about the run when other jobs share the cores.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import machine_info

from agents.cli.common import DECODING_KEYS, LLM_KEYS
from agents.evaluation import held_out_prompts, run_comparison
from agents.evaluation.statistics import compare, mean_difference, preference
from agents.training.checkpoints import find_checkpoint, read_checkpoint_state
from agents.training.resume import resume_run
from agents.training.run_config import RunConfig
from agents.training.run_folder import CONFIG_FILE, MODEL_FILE, SUMMARY_FILE
from agents.training.runner import train_run

#: Written beside a run's summary: wall and CPU seconds of every training segment.
TIMING_FILE = "timing.json"
#: Settings that do not change what a run learns: a run trained with other values of these is reused.
BOOKKEEPING = {"train.checkpoint_every", "train.log_every", "train.progress_bar"}


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process (all its threads), or of its finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine(threads: int | None = None) -> dict[str, Any]:
    """Where and how a figure was measured: :func:`common.machine_info`, with the load and date of the run."""
    return {
        **machine_info(threads=threads),
        "load_average_at_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shared": "the development machine's 2 cores were shared with other jobs: compare CPU time, not wall time",
    }


def _timing(folder: Path) -> list[dict[str, Any]]:
    path = folder / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _record(folder: Path, decisions: int, wall: float, cpu: float) -> None:
    segments = [*_timing(folder), {"to_decisions": decisions, "wall_seconds": wall, "cpu_seconds": cpu}]
    (folder / TIMING_FILE).write_text(json.dumps(segments, indent=2) + "\n")


def trained(folder: Path) -> dict[str, Any]:
    """A finished run's ``summary.json`` with its ``timing.json`` totals (``wall_seconds``/``cpu_seconds``)."""
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    segments = _timing(folder)
    summary["timing"] = segments
    if any("resumed_at" in s for s in segments):  # the part before a stop was timed by nobody but the trainer
        summary["train_wall_seconds"], summary["train_cpu_seconds"] = summary["wall_seconds"], None
    else:
        summary["train_wall_seconds"] = sum(s["wall_seconds"] for s in segments) or summary["wall_seconds"]
        summary["train_cpu_seconds"] = sum(s["cpu_seconds"] for s in segments) if segments else None
    return summary


def _changed_settings(folder: Path, config: RunConfig) -> list[str]:
    """The settings (bookkeeping aside) in which the run in ``folder`` differs from ``config``."""
    return [name for name in RunConfig.from_file(folder / CONFIG_FILE).changes_from(config) if name not in BOOKKEEPING]


def train(config: RunConfig, folder: Path, *, retrain: bool = False) -> dict[str, Any]:
    """Train ``config`` into ``folder`` unless its model is there (trained with the same settings); its summary.

    A run that stopped half-way (a killed process, a session that ended) goes on from its checkpoint when
    its settings are the same; without a checkpoint it is trained again from the start.
    """
    if (folder / MODEL_FILE).is_file() and not retrain:
        changed = _changed_settings(folder, config)
        if changed:
            raise SystemExit(f"{folder} was trained with other settings ({', '.join(changed)}); pass --retrain.")
        return trained(folder)
    checkpoint = find_checkpoint(folder)[0] if (folder / CONFIG_FILE).is_file() and not retrain else None
    if checkpoint is not None and not _changed_settings(folder, config):
        done = int(read_checkpoint_state(checkpoint)["num_timesteps"])
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        flags: dict[str, dict[str, Any]] = {"env": {}, "agent": {}, "train": {}}
        if resume_run(folder, flags, verbose=0) != 0:
            raise SystemExit(f"resuming {folder} from its checkpoint stopped.")
        segment = {"to_decisions": config.train.total_decisions, "resumed_at": done}
        segment.update(wall_seconds=time.perf_counter() - start_wall, cpu_seconds=cpu_seconds() - start_cpu)
        (folder / TIMING_FILE).write_text(json.dumps([segment], indent=2) + "\n")
        return trained(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    code = train_run(config, folder, replace=folder.is_dir() and (folder / CONFIG_FILE).is_file())
    if code != 0:
        raise SystemExit(f"training {folder} stopped (exit code {code}).")
    (folder / TIMING_FILE).unlink(missing_ok=True)
    _record(folder, config.train.total_decisions, time.perf_counter() - start_wall, cpu_seconds() - start_cpu)
    return trained(folder)


def extend(folder: Path, decisions: int) -> dict[str, Any]:
    """Continue the run in ``folder`` (``mara train --resume``) to ``decisions``; its summary."""
    summary = trained(folder)
    if summary["decisions"] >= decisions:
        return summary
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    flags: dict[str, dict[str, Any]] = {"env": {}, "agent": {}, "train": {"total_decisions": decisions}}
    code = resume_run(folder, flags, verbose=0)
    if code != 0:
        raise SystemExit(f"extending {folder} to {decisions} decisions stopped (exit code {code}).")
    _record(folder, decisions, time.perf_counter() - start_wall, cpu_seconds() - start_cpu)
    return trained(folder)


def assignments(items: Sequence[str], into: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``["env.kl_coef=0.05", "train.teacher=args"]`` -> ``{"env": {"kl_coef": 0.05}, "train": {"teacher": "args"}}``.

    A value that reads as JSON (a number, ``true``, ``null``, a list) is that value, anything else a string.
    :raises SystemExit: an item that is not ``SECTION.KEY=VALUE``.
    """
    sections: dict[str, dict[str, Any]] = {} if into is None else into
    for item in items:
        key, equals, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (equals and dot and section and name):
            raise SystemExit(f"{item!r} is not a setting: write SECTION.KEY=VALUE, e.g. env.kl_coef=0.05.")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        sections.setdefault(section, {})[name] = parsed
    return sections


def prompts_of(part: str, num_prompts: int | None) -> list[str]:
    """The default run's prompts: its ``"train"`` part (for tuning) or its held-out ``"test"`` part (for reports)."""
    env = RunConfig.default().env
    prompts = held_out_prompts(
        env["prompts"], part=part, test_fraction=env["test_fraction"], split_seed=env["split_seed"]
    )
    return prompts if num_prompts is None else prompts[:num_prompts]


def compare_agents(
    agents: Mapping[str, str | Path],
    out: Path,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    best_of: int = 0,
    args: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One comparison of every agent (and best-of-N / ARGS) with the base LLM, decoded as ``mara evaluate`` does.

    :param env: the runs' environment settings (default: the default run's).
    """
    env = RunConfig.default().env if env is None else env
    return run_comparison(
        {name: str(path) for name, path in agents.items()},
        out,
        prompts=list(prompts),
        max_new_tokens=env["max_new_tokens"],
        seed=0,
        samples_per_prompt=samples_per_prompt,
        best_of=best_of,
        args=args,
        reward_model=env["reward_model"],
        cost_model=env["cost_model"],
        alpha_r=env["alpha_r"],
        alpha_c=env["alpha_c"],
        cost_scale=env.get("cost_scale", "linear"),
        batch_size=batch_size,
        progress=progress,
        meta=meta,
        # the LLM and decoding settings mara evaluate takes from a run
        **{key: env[key] for key in (*LLM_KEYS, *DECODING_KEYS) if key in env},
    )


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of per-seed figures."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size), "values": array.tolist()}


def scores(report: Mapping[str, Any], system: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(reward, cost, prompt index)`` of every row of ``report.json`` for ``system``, in row order."""
    rows = report["rows"]
    reward = np.array([r["systems"][system]["reward"] for r in rows], dtype=np.float64)
    cost = np.array([r["systems"][system]["cost"] for r in rows], dtype=np.float64)
    return reward, cost, np.array([r["index"] for r in rows])


def pooled_head_to_head(pairs: Sequence[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]]) -> dict[str, Any]:
    """Win/tie/lose of A against B over several runs' pairs pooled, with a bootstrap over prompts.

    :param pairs: per run, ``((reward_a, cost_a, prompt_index), (reward_b, cost_b, prompt_index))`` on the same
        prompts; a prompt's pairs from every run are resampled together (cluster bootstrap), so the interval
        counts the runs' shared prompts once.
    """
    outcomes, groups, reward_diff, cost_diff = [], [], [], []
    for (ra, ca, ia), (rb, cb, ib) in pairs:
        if not np.array_equal(ia, ib):
            raise ValueError("pooled_head_to_head: the two systems were not evaluated on the same prompts in order.")
        outcomes.append(compare(ra, ca, rb, cb))
        groups.append(ia)
        reward_diff.append((ra, rb))
        cost_diff.append((ca, cb))
    outcome = np.concatenate(outcomes)
    group = np.concatenate(groups)
    pref = preference(outcome, groups=group).to_dict()
    ra = np.concatenate([a for a, _ in reward_diff])
    rb = np.concatenate([b for _, b in reward_diff])
    ca = np.concatenate([a for a, _ in cost_diff])
    cb = np.concatenate([b for _, b in cost_diff])
    pref["reward_diff"] = mean_difference(ra, rb, groups=group).to_dict()
    pref["cost_diff"] = mean_difference(ca, cb, groups=group).to_dict()
    pref["pairs"] = int(outcome.size)
    return pref


def percent(value: float | None, signed: bool = True) -> str:
    """``0.344`` -> ``+34.4%``."""
    if value is None:
        return "-"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"
