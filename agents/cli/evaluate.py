"""``mara evaluate``: the base LLM, a trained agent and best-of-N on held-out prompts; a report folder.

Examples::

    mara evaluate                                   # the default run, its held-out prompts
    mara evaluate --run runs/my-run --num-prompts 100 --best-of 4
    mara evaluate --run runs/sac --agent ppo=runs/ppo/model.zip   # a second agent in the same report

Writes ``<run>/eval/`` (or ``--out``): ``report.md``, ``report.json``, ``accept_positions.png``,
``scores.png`` and ``training_curves.png``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from agents.cli.common import DEFAULT_RUN_DIR, add_decoding_arguments, generator_settings, run_agent, run_env_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", type=Path, default=DEFAULT_RUN_DIR, help=f"training run folder (default {DEFAULT_RUN_DIR})"
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another agent to compare (repeatable); PATH alone replaces the run's own agent",
    )
    parser.add_argument("--out", type=Path, help="report folder (default: <run>/eval)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--prompts", help="evaluation prompt set (default: the held-out part of the run's prompts)")
    parser.add_argument("--prompt-split", choices=["test", "all"], default="test", help="part of --prompts to use")
    parser.add_argument("--num-prompts", type=int, help="evaluate on the first N held-out prompts")
    parser.add_argument("--best-of", default="auto", help="N of the best-of-N system: an integer, 'auto' or 0 (none)")
    parser.add_argument("--reward-model", help="R (default: the run's)")
    parser.add_argument("--cost-model", help="C (default: the run's; 'none' for no cost)")
    parser.add_argument("--alpha-r", type=float)
    parser.add_argument("--alpha-c", type=float)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_decoding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from agents.comparison import held_out_prompts, run_comparison

    env = run_env_settings(args.run)
    agents: dict[str, str] = {}
    replaced = False
    for item in args.agent:
        name, sep, path = item.partition("=")
        if not sep:
            name, path, replaced = "mara", item, True
        if not Path(path).is_file():
            raise FileNotFoundError(f"--agent {item}: '{path}' does not exist.")
        agents[name] = path
    if not replaced:
        agents = {"mara": str(run_agent(args.run)), **agents}

    out = args.out if args.out is not None else args.run / "eval"
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise FileExistsError(f"report folder {out} already exists; pass --overwrite to replace it or --out DIR.")
        shutil.rmtree(out)

    if args.prompts is not None:
        prompts = held_out_prompts(
            args.prompts, part=args.prompt_split, test_fraction=env["test_fraction"], split_seed=env["split_seed"]
        )
    else:
        if env.get("prompt_split") == "all":
            raise ValueError(
                f"{args.run} trained on every prompt (prompt_split='all'), so none is held out; pass --prompts "
                "with an evaluation set."
            )
        prompts = held_out_prompts(
            env["prompts"],
            test_fraction=env["test_fraction"],
            split_seed=env["split_seed"],
            prompt_column=env.get("prompt_column"),
            dataset_split=env.get("dataset_split", "train"),
        )
    if args.num_prompts is not None:
        if args.num_prompts < 1:
            raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}.")
        prompts = prompts[: args.num_prompts]
    best_of: int | str = args.best_of
    if best_of != "auto":
        if not str(best_of).isdigit():
            raise ValueError(f"--best-of must be an integer >= 0 or 'auto', got {best_of!r}.")
        best_of = int(best_of)
    cost = env.get("cost_model") if args.cost_model is None else args.cost_model
    if isinstance(cost, str) and cost.lower() == "none":
        cost = None
    settings, max_new = generator_settings(env, args)
    training_log = args.run / "progress.csv"
    report = run_comparison(
        agents,
        out,
        prompts=prompts,
        max_new_tokens=max_new,
        seed=args.seed,
        best_of=best_of,
        reward_model=env.get("reward_model") if args.reward_model is None else args.reward_model,
        cost_model=cost,
        alpha_r=env.get("alpha_r", 1.0) if args.alpha_r is None else args.alpha_r,
        alpha_c=env.get("alpha_c", 1.0) if args.alpha_c is None else args.alpha_c,
        scorer_device=env.get("scorer_device"),
        deterministic=args.deterministic,
        training_log=training_log if training_log.is_file() else None,
        progress=not args.no_progress,
        meta={"run": str(args.run), "prompts": str(args.prompts or env["prompts"])},
        **settings,
    )
    print(f"\n{len(prompts)} held-out prompts; each system against the base LLM (paper appendix A.2):")
    for name, pref in report["comparisons"].items():
        print(
            f"  {name:>12}: preference rate {pref['rate']:+.3f}  95% CI [{pref['ci_low']:+.3f}, {pref['ci_high']:+.3f}]"
            f"  (W {pref['wins']} / T {pref['ties']} / L {pref['losses']})"
        )
    print(f"report: {out / 'report.md'}")
    return 0
