"""``mara evaluate``: the base LLM, a trained agent, best-of-N and optionally ARGS on held-out prompts; a report folder.

Examples::

    mara evaluate                                   # the default run, its held-out prompts
    mara evaluate --run runs/my-run --num-prompts 100 --best-of 4
    mara evaluate --run runs/sac --agent ppo=runs/ppo/model.zip   # a second agent in the same report
    mara evaluate --samples-per-prompt 4            # 4 answers per prompt and system, paired sample by sample
    mara evaluate --args-weight 5 --args-k 10       # add reward-guided decoding (ARGS) as a system

Writes ``<run>/eval/`` (or ``--out``): ``report.md``, ``report.json``, ``accept_positions.png``,
``scores.png`` and ``training_curves.png``. Prints, per system against the base LLM, the preference
rate and the mean reward and cost differences with their 95% prompt-bootstrap intervals.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path
from typing import Any

from agents.cli.common import (
    DEFAULT_RUN_DIR,
    add_decoding_arguments,
    check_agent_path,
    generator_settings,
    local_agent_path,
    run_agent,
    run_env_settings,
)
from agents.cli.flags import with_default
from mara_env.scoring import COST_SCALES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        default=DEFAULT_RUN_DIR,
        help=with_default("training run folder", None, shown=f"{DEFAULT_RUN_DIR} under the current directory"),
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=with_default(
            "another agent to compare (repeatable); PATH alone replaces the run's own agent; PATH as for "
            "mara generate --agent (hf:ID for the Hub)",
            None,
            shown="the run's agent only",
        ),
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help=with_default("report folder", None, shown="<run>/eval"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument(
        "--prompts",
        metavar="YAML",
        help=with_default("evaluation prompt set (a name, file or dataset id)", None, shown="the run's prompts"),
    )
    parser.add_argument(
        "--prompt-split",
        choices=["test", "all"],
        default="test",
        help=with_default("part of the prompts to use", "test"),
    )
    parser.add_argument(
        "--num-prompts",
        type=int,
        metavar="INT",
        help=with_default("evaluate on the first N prompts", None, shown="all"),
    )
    parser.add_argument(
        "--best-of",
        metavar="INT|TEXT",
        default="auto",
        help=with_default(
            "N of the best-of-N system: an integer, 'auto' (the agent's LLM compute) or 0 (none)", "auto"
        ),
    )
    parser.add_argument(
        "--samples-per-prompt",
        default="1",
        metavar="INT",
        help=with_default(
            "independent answers per prompt and system, >= 1; sample j of each system is compared with sample j of "
            "the base LLM",
            1,
        ),
    )
    run = "the run's"
    parser.add_argument("--reward-model", metavar="TEXT", help=with_default("R", None, shown=run))
    parser.add_argument("--cost-model", metavar="TEXT", help=with_default("C ('none' for no cost)", None, shown=run))
    parser.add_argument("--alpha-r", type=float, metavar="FLOAT", help=with_default("weight of R", None, shown=run))
    parser.add_argument("--alpha-c", type=float, metavar="FLOAT", help=with_default("weight of C", None, shown=run))
    parser.add_argument(
        "--cost-scale",
        choices=COST_SCALES,
        help=with_default("how C enters the reward that best-of-N and ARGS select by", None, shown=run),
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = parser.add_argument_group("ARGS, reward-guided decoding (a system only when one of these flags is given)")
    g.add_argument("--args-weight", type=float, metavar="FLOAT", help=with_default("reward weight w, >= 0", 1.0))
    g.add_argument(
        "--args-k", type=int, metavar="INT", help=with_default("candidates per position, the LLM's top K", 10)
    )
    g.add_argument(
        "--args-sample", action="store_true", help="sample from softmax(log p + w r) over the K instead of the best"
    )
    # 64 rows per batch: aligned decoding of 64 held-out prompts took 106 s against 158 s with 16 (2-core CPU)
    add_decoding_arguments(parser, batch_size=64)


def _samples_per_prompt(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"--samples-per-prompt must be an integer >= 1 (independent answers per prompt and system), got {text!r}."
        )
    return value


def _args_setting(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ARGS setting the flags ask for, or ``None`` when no ARGS flag is given."""
    if args.args_weight is None and args.args_k is None and not args.args_sample:
        return None
    from agents.evaluation.pipeline import ARGS_DEFAULTS

    weight = ARGS_DEFAULTS["weight"] if args.args_weight is None else args.args_weight
    k = ARGS_DEFAULTS["k"] if args.args_k is None else args.args_k
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"--args-weight must be a finite number >= 0 (0: greedy decoding), got {weight}.")
    if k < 1:
        raise ValueError(f"--args-k must be an integer >= 1 (candidates per position; ARGS uses 10), got {k}.")
    return {"weight": weight, "k": k, "sample": args.args_sample}


def run(args: argparse.Namespace) -> int:
    from agents.evaluation.pipeline import held_out_prompts, run_comparison

    samples = _samples_per_prompt(args.samples_per_prompt)
    args_setting = _args_setting(args)
    env = run_env_settings(args.run)
    agents: dict[str, str] = {}
    replaced = False
    for item in args.agent:
        name, sep, path = item.partition("=")
        if not sep:
            name, path, replaced = "mara", item, True
        path = local_agent_path(path)
        check_agent_path(path, f"--agent {item}:")
        agents[name] = path
    if not replaced:
        agents = {"mara": str(run_agent(args.run)), **agents}

    out = args.out if args.out is not None else args.run / "eval"
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"report folder {out} already exists; pass --overwrite to replace it or --out DIR.")
    # Written beside and swapped in at the end: an evaluation that fails leaves the earlier report
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

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
        staging,
        prompts=prompts,
        max_new_tokens=max_new,
        seed=args.seed,
        best_of=best_of,
        samples_per_prompt=samples,
        args=args_setting,
        reward_model=env.get("reward_model") if args.reward_model is None else args.reward_model,
        cost_model=cost,
        alpha_r=env.get("alpha_r", 1.0) if args.alpha_r is None else args.alpha_r,
        alpha_c=env.get("alpha_c", 1.0) if args.alpha_c is None else args.alpha_c,
        cost_scale=env.get("cost_scale", "linear") if args.cost_scale is None else args.cost_scale,
        scorer_devices=env.get("scorer_devices"),
        scorer_dtype=env.get("scorer_dtype", "auto"),
        deterministic=args.deterministic,
        training_log=training_log if training_log.is_file() else None,
        progress=not args.no_progress,
        meta={"run": str(args.run), "prompts": str(args.prompts or env["prompts"])},
        **settings,
    )
    _swap_in(staging, out)
    pairs = f" x {samples} samples = {len(prompts) * samples} pairs" if samples > 1 else ""
    print(f"\n{len(prompts)} held-out prompts{pairs}; each system against the base LLM (paper appendix A.2):")
    for name, pref in report["comparisons"].items():
        reward, cost = pref["reward_diff"], pref["cost_diff"]
        print(
            f"  {name:>12}: preference rate {pref['rate']:+.3f}  95% CI [{pref['ci_low']:+.3f}, {pref['ci_high']:+.3f}]"
            f"  (W {pref['wins']} / T {pref['ties']} / L {pref['losses']})"
            f"  reward diff {reward['mean']:+.3f} [{reward['ci_low']:+.3f}, {reward['ci_high']:+.3f}]"
            f"  cost diff {cost['mean']:+.3f} [{cost['ci_low']:+.3f}, {cost['ci_high']:+.3f}]"
        )
    if report["spread"]:
        rate = report["spread"]["rate"]
        print(
            f"  {len(agents)} agents: preference rate mean {rate['mean']:+.3f} ± {rate['std']:.3f} (std over agents, "
            "e.g. training seeds)"
        )
    elif len(agents) == 1:
        print("  (one agent is one training run; pass several with --agent NAME=PATH for their mean and spread)")
    for name, s in report["systems"].items():
        per_token = s["llm_tokens_per_response_token"]
        shown = "-" if per_token is None else f"{per_token:.2f}"
        calls = s["scorer_calls_per_answer"]
        print(f"  {name:>12}: {shown} LLM tokens per answer token, {calls:.1f} scorer calls per answer")
    print(f"report: {out / 'report.md'}")
    return 0


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished report folder ``staging`` at ``out``; an earlier report there goes only now."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
