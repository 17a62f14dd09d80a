"""Learning from ARGS, ablated: SAC alone vs teacher data vs teacher data + behaviour cloning, on training prompts.

Three arms of the default run (:data:`agents.training.run_config.DEFAULT_RUN`), the same number of
decisions and the same tuning seeds:

- ``sac``: the default recipe, the agent's own experience only;
- ``teacher``: ``train.teacher="args"``: ARGS's answers to training prompts replayed through the
  environment into the replay buffer (:mod:`agents.teacher`); the replayed decisions count in the budget;
- ``teacher+bc``: the same, plus the fading behaviour-cloning term on the actor (``train.teacher_bc``).

Every model is decoded on the same *training* prompts (these runs choose the default: held-out prompts
are for the report only) in one comparison with the base LLM and best-of-2; per arm the mean and
standard deviation over seeds of the preference rate against the base and of the head-to-head rate
against best-of-2, KL, training wall and CPU time and the teacher's scorer calls. The arm with the
highest mean preference against the base wins.

Usage::

    python benchmarks/teacher_ablation.py                       # 3 arms x seeds 100 101 102, 30k decisions
    python benchmarks/teacher_ablation.py --arms sac teacher --seeds 100 --train-only
    python benchmarks/teacher_ablation.py --sac-runs benchmarks/results/scaling/runs   # reuse scaling's 30k runs
    python benchmarks/teacher_ablation.py --arms teacher+bc --merge earlier/teacher_ablation.json  # add an arm

This is one preset of ``benchmarks/recipe_arms.py`` (arms of the default recipe compared on training
prompts): the arms, the merge (``--merge`` adds arms to an earlier result without decoding its agents again,
and refuses unless the base LLM and best-of-2 answered as they did then), the table and the plot are its.

Outputs under ``--out`` (default ``benchmarks/results/teacher_ablation/``): ``teacher_ablation.json``,
``teacher_ablation.md``, ``teacher_ablation.png``, ``report/`` (the comparison); run folders in ``runs/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipe_arms import run_arms  # benchmarks/recipe_arms.py, beside this script

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_ablation"

#: arm -> the train settings it changes
ARMS: dict[str, dict[str, Any]] = {
    "sac": {"teacher": None},
    "teacher": {"teacher": "args", "teacher_bc": 0.0},
    "teacher+bc": {"teacher": "args"},
}


def arm_settings(arm: str, bc: float, prompts: int) -> dict[str, dict[str, Any]]:
    """The settings an arm changes in the default run, as ``recipe_arms`` takes them."""
    train: dict[str, Any] = dict(ARMS[arm])
    if arm == "teacher+bc":
        train["teacher_bc"] = bc
    if train["teacher"] is not None:
        train["teacher_prompts"] = prompts
    return {"train": train}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102], help="training seeds (tuning seeds)")
    p.add_argument("--decisions", type=int, default=30_000, help="decisions per run, teacher's included")
    p.add_argument("--bc", type=float, default=1.0, help="teacher_bc of the teacher+bc arm")
    p.add_argument("--teacher-prompts", type=int, default=64, help="training prompts ARGS answers")
    p.add_argument("--sac-runs", type=Path, help="take the sac arm from these scaling runs (seed<S>/d<decisions>)")
    p.add_argument("--num-prompts", type=int, default=96, help="training prompts of the comparison")
    p.add_argument("--samples-per-prompt", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--merge", type=Path, help="an earlier teacher_ablation.json whose arms this run adds to")
    args = p.parse_args(argv)
    folders = {}
    if args.sac_runs is not None and "sac" in args.arms:
        folders = {("sac", seed): args.sac_runs / f"seed{seed}" / f"d{args.decisions}" for seed in args.seeds}
    return run_arms(
        {arm: arm_settings(arm, args.bc, args.teacher_prompts) for arm in args.arms},
        seeds=args.seeds,
        decisions=args.decisions,
        out=args.out,
        name="teacher_ablation",
        folders=folders,
        num_prompts=args.num_prompts,
        samples_per_prompt=args.samples_per_prompt,
        threads=args.threads,
        train_only=args.train_only,
        merge=args.merge,
        extra_meta={"bc": args.bc, "teacher_prompts": args.teacher_prompts},
    )


if __name__ == "__main__":
    main()
