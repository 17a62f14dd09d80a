"""Every registered RL algorithm on one MARA task variant: learning curves, preference rate, speed.

Each algorithm of :data:`agents.registry.ALGORITHMS` (or those named with ``--algos``) trains on
the same task (``--variant``, see :mod:`mara_env.variants`) for the same number of environment
decisions, once per seed. One (algorithm, seed) pair:

1. builds ``VecMonitor(SB3VecEnv(gym.make_vec(env_id, num_envs=N, **variant)))`` (``--env-id``,
   default ``MARA-v1``) on the LLM
   replicas loaded once for the whole benchmark, and the algorithm with its MARA defaults
   (:func:`agents.registry.make_algorithm`); only schedules that would not fit the budget are
   shortened (see :func:`fit_to_budget`, recorded in ``results.json``);
2. trains, logging ``mara/*`` episode means to ``progress.csv`` (``agents.training.callbacks.MARALoggingCallback``)
   and, every ``eval_every`` decisions (and at 0 and at the end), decoding a fixed subset of the
   held-out prompts with :class:`agents.MARAGenerator` under the model being trained and scoring the
   answers with :class:`mara_env.scoring.TerminalReward`: the evaluation learning curves;
3. compares the trained agent with the base LLM on the held-out prompts
   (:func:`agents.evaluation.run_comparison`, no best-of-N): preference rate with a bootstrap 95%
   interval, mean reward and cost scores, mean KL to the reference, accepted-position distribution.

Training speed (decisions/s) counts training only: evaluation time is measured and taken out. A
pair's ``result.json`` is written (atomically) as soon as it finishes, and the summary files are
rewritten after every pair, so a crash loses at most the pair in progress; ``--resume`` skips the
pairs already done (after checking they were run with the same settings).

Budgets (``--budget``; every value can be overridden by its flag):

=======================  =====  ============  ============
setting                  quick  standard      full
=======================  =====  ============  ============
``--decisions``          96     6,000         200,000
``--seeds``              0      0 1           0 1 2 3 4
``--num-envs``           8      16            64
``--eval-every``         96     3,000         10,000
``--eval-prompts``       4      16            64
``--compare-prompts``    4      32            all held-out
``--max-new-tokens``     8      variant (48)  256
``--log-every``          32     500           2,000
=======================  =====  ============  ============

Evaluations run at 0 decisions, every ``--eval-every`` decisions below ``--decisions``, and at the end.

- ``quick``: a smoke test of the whole pipeline (CI-sized), not a measurement: 96 decisions are
  far too few to learn anything. Time on the 2-core development CPU: see ``benchmarks/README.md``.
- ``standard``: measured on MARA-v1 (2026-12-01, 2-core CPU, one torch thread per process): seed 0
  of all five took 64 min: 7-10 min per pair for the anchored agents (SAC, PPO, A2C: training
  2-4 min, three evaluations of 16 prompts and the comparison on 32 the rest), 16 and 22 min for
  DQN and QR-DQN, whose unanchored agents reject most candidates (KL 150-190 nats), and every
  rejection past the computed chunk is one more LLM forward while they decode. Both seeds take about
  two hours in one process; ``benchmarks/README.md`` has the measured table.
- ``full``: for a GPU (5 seeds x 200,000 decisions, every held-out prompt, 256-token answers).

Outputs, under ``--out`` (default ``benchmarks/results/algorithms/<budget>/``):

- ``results.json``: settings, budget, machine, date; per algorithm and seed every number and the
  evaluation curve; per algorithm the mean, standard deviation and values across seeds;
- ``results.md``: the summary table;
- ``learning_curves.png``: evaluation reward, cost and KL against decisions, one line per
  algorithm (mean over seeds, band of +- one standard deviation), the base LLM as a dashed line;
- ``runs/<algo>/seed<k>/``: ``result.json``, ``progress.csv`` and the comparison report
  (``comparison/report.md``, ``accept_positions.png``, ``scores.png``, ``training_curves.png``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/algorithms.py --budget quick
    python benchmarks/algorithms.py --budget standard --resume            # continue after an interruption
    python benchmarks/algorithms.py --variant kl1 --algos sac-discrete ppo --seeds 0 1 2 --decisions 20000
    python benchmarks/algorithms.py --budget standard --env-id MARA-v0      # the paper's observation, no shaping
    python benchmarks/algorithms.py --budget full --devices cuda:0 --llm HuggingFaceTB/SmolLM2-1.7B-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch as th
from algorithms_budget import BUDGETS, Budget, fit_to_budget
from algorithms_report import aggregate, markdown, plot_learning_curves, pm
from common import machine_info
from stable_baselines3.common.logger import configure
from tqdm.auto import tqdm

import mara_env
from agents.cli.common import DECODING_KEYS, LLM_KEYS
from agents.evaluation import held_out_prompts, run_comparison, summarize_generations
from agents.files import jsonable, write_json_atomic
from agents.generation import MARAGenerator
from agents.registry import ALGORITHMS, get_spec, resolve_kwargs
from agents.registry import make_algorithm as build_algorithm
from agents.training.callbacks import EvaluationCallback, MARALoggingCallback
from agents.training.environment import make_env
from agents.training.runner import learn
from mara_env import LLMReplica, MARAConfig, TerminalReward, load_replicas
from mara_env.prompts import held_out_part
from mara_env.variants import VARIANTS, variant_settings

RESULTS = Path(__file__).resolve().parent / "results" / "algorithms"

RESULT_FILE = "result.json"


# --------------------------------------------------------------------------------------------- the benchmark


def _name(value: Any) -> Any:
    """How :func:`_jsonable` writes what JSON has no type for: the LLM and devices by name, classes by name."""
    if isinstance(value, LLMReplica):
        return value.name
    if isinstance(value, (th.device, th.dtype, os.PathLike)):
        return str(value)
    return getattr(value, "__name__", None) or type(value).__name__


def _jsonable(value: Any) -> Any:
    """Plain JSON data: numbers (non-finite -> None), strings, lists, dicts; anything else by name."""
    return jsonable(value, default=_name)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a kill never leaves half a file."""
    write_json_atomic(path, data, default=_name)


@dataclass
class _Context:
    """What every pair of one benchmark shares."""

    env_id: str
    settings: dict[str, Any]
    config: MARAConfig
    budget: Budget
    replicas: list[LLMReplica]
    terminal: TerminalReward
    eval_prompts: list[str]
    compare_prompts: list[str]
    decoding: dict[str, Any]
    max_new_tokens: int
    hyperparameters: dict[str, dict[str, Any]]
    device: str
    progress: bool

    def env_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.settings.items() if k not in LLM_KEYS}
        return {**kwargs, "llm": self.replicas, "max_new_tokens": self.max_new_tokens}

    def resolved_settings(self) -> dict[str, Any]:
        """Every environment setting as used (the version's defaults filled in), the LLM by name."""
        values = {f.name: getattr(self.config, f.name) for f in fields(MARAConfig)}
        return {**values, "llm": self.replicas[0].name, "max_new_tokens": self.max_new_tokens}

    def evaluate(self, agent: Any, seed: int, prompts: list[str] | None = None) -> dict[str, Any]:
        """Decode ``prompts`` (default: the curve's) under ``agent`` (``None``: the LLM alone) and summarise."""
        gen = MARAGenerator(self.replicas, agent, batch_size=self.budget.num_envs, **self.decoding)
        answers = gen.generate(self.eval_prompts if prompts is None else prompts, self.max_new_tokens, seed=seed)
        return summarize_generations(answers, self.terminal)

    def fingerprint(self, algo: str) -> dict[str, Any]:
        """Everything that must match for a saved pair to be reused by ``--resume``."""
        budget = {k: v for k, v in asdict(self.budget).items() if k != "seeds"}
        return _jsonable(
            {
                "settings": self.resolved_settings(),
                "budget": budget,
                "hyperparameters": self.hyperparameters.get(algo, {}),
                "eval_prompts": self.eval_prompts,
                "compare_prompts": self.compare_prompts,
            }
        )


def run_pair(algo: str, seed: int, ctx: _Context, folder: Path) -> dict[str, Any]:
    """Train, evaluate and compare one (algorithm, seed); write ``folder/result.json`` and return it."""
    if folder.exists():
        shutil.rmtree(folder)  # a pair that crashed half-way starts over
    folder.mkdir(parents=True)
    started = time.perf_counter()
    budget = ctx.budget
    fitted = fit_to_budget(algo, budget.decisions, budget.num_envs)
    overrides = {**fitted, **ctx.hyperparameters.get(algo, {})}
    venv = make_env(ctx.env_id, budget.num_envs, **ctx.env_kwargs())
    try:
        model = build_algorithm(algo, venv, seed=seed, device=ctx.device, **overrides)
        model.set_logger(configure(str(folder), ["csv"]))
        bar = tqdm(
            total=budget.decisions, desc=f"{algo} seed {seed}", unit="dec", leave=False, disable=not ctx.progress
        )
        evaluation = EvaluationCallback(lambda m: ctx.evaluate(m, seed), budget.eval_every, budget.decisions, bar)
        log_callback = MARALoggingCallback(budget.log_every)
        learn_start = time.perf_counter()
        learn(model, budget.decisions, log_callback, [evaluation])
        learn_seconds = time.perf_counter() - learn_start
        bar.close()
    finally:
        venv.close()
    train_seconds = max(learn_seconds - evaluation.seconds, 1e-9)
    decisions = int(model.num_timesteps)

    compare_start = time.perf_counter()
    progress_csv = folder / "progress.csv"
    report = run_comparison(
        {algo: model},
        folder / "comparison",
        llm=ctx.replicas,
        prompts=ctx.compare_prompts,
        max_new_tokens=ctx.max_new_tokens,
        seed=seed,
        best_of=0,
        reward_model=ctx.config.reward_model,
        cost_model=ctx.config.cost_model,
        alpha_r=ctx.config.alpha_r,
        alpha_c=ctx.config.alpha_c,
        scorer_devices=ctx.config.scorer_devices,
        scorer_dtype=ctx.config.scorer_dtype,
        training_log=progress_csv if _has_rows(progress_csv) else None,
        meta={"algorithm": algo, "seed": seed, "decisions": decisions},
        progress=False,
        batch_size=budget.num_envs,
        **ctx.decoding,
    )
    compare_seconds = time.perf_counter() - compare_start
    pref, agent, base = report["comparisons"][algo], report["systems"][algo], report["systems"]["base"]
    # Without a cost model the comparison ranks on reward alone by showing cost -R; there is no cost to report.
    has_cost = ctx.config.cost_model is not None
    result = {
        "algo": algo,
        "seed": seed,
        "decisions": decisions,
        "preference_rate": pref["rate"],
        "preference_ci_low": pref["ci_low"],
        "preference_ci_high": pref["ci_high"],
        "wins": pref["wins"],
        "ties": pref["ties"],
        "losses": pref["losses"],
        "compare_prompts": pref["n"],
        "reward": agent["reward_mean"],
        "cost": agent["cost_mean"] if has_cost else None,
        "kl": agent["kl_mean"],
        "accept_first": agent["accepted_first_fraction"],
        "tokens": agent["tokens_mean"],
        "base_reward": base["reward_mean"],
        "base_cost": base["cost_mean"] if has_cost else None,
        "base_accept_first": base["accepted_first_fraction"],
        # from the last evaluation of the curve (the comparison report draws it for its prompts)
        "accept_positions": evaluation.points[-1]["accept_positions"],
        "decisions_per_s": decisions / train_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": evaluation.seconds,
        "compare_seconds": compare_seconds,
        "wall_seconds": time.perf_counter() - started,
        "curve": evaluation.points,
        "hyperparameters": resolve_kwargs(algo, **overrides),
        # what make_algorithm resolved from the env ("kl_coef", "shaping_gamma" above)
        "resolved": {
            key: float(value)
            for key in ("gamma", "ent_coef")
            if isinstance(value := getattr(model, key, None), (int, float)) and not isinstance(value, bool)
        },
        "budget_overrides": fitted,
        "training_log_last": dict(log_callback.last_means),
        "fingerprint": ctx.fingerprint(algo),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _write_json(folder / RESULT_FILE, result)
    return _jsonable(result)


def _has_rows(csv: Path) -> bool:
    """Whether an SB3 ``progress.csv`` exists and holds a header and at least one row."""
    if not csv.is_file():
        return False
    with csv.open(encoding="utf-8") as file:
        return sum(1 for _ in zip(range(2), file)) == 2


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _load_finished(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result of a pair, if it finished; a result saved with other settings is an error."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("fingerprint") != fingerprint:
        differ = _differences(saved.get("fingerprint") or {}, fingerprint)
        raise ValueError(
            f"--resume: {path} was run with other settings ({', '.join(differ)} differ). "
            "Use the same settings, another --out, or --overwrite to start over."
        )
    return saved


#: Per-run numbers aggregated across seeds (mean, std, values).
def run_benchmark(
    settings: Mapping[str, Any],
    algos: Sequence[str],
    budget: Budget,
    out: str | Path,
    *,
    llm: Any = None,
    env_id: str = "MARA-v1",
    variant: str = "custom",
    hyperparameters: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every algorithm on one task for every seed of the budget; write the results.

    :param settings: keyword arguments of the task, e.g. :func:`mara_env.variant_settings`
        (``prompt_split="train"`` keeps the held-out part for evaluation).
    :param algos: registry names, in the order of the table.
    :param budget: decisions, seeds, evaluation sizes (:data:`BUDGETS` or your own).
    :param out: output folder.
    :param llm: the LLM in any form the environment accepts; replaces ``settings["llm"]``. It is loaded
        once and shared by every environment, evaluation and comparison.
    :param env_id: the task version (:data:`mara_env.VERSIONS`), whose defaults apply where ``settings`` is silent.
    :param variant: the variant's id, for the report.
    :param hyperparameters: algorithm -> hyperparameter overrides (after :func:`fit_to_budget`).
    :param device: torch device of the agents.
    :param resume: reuse pairs that already finished in ``out`` (their settings must match).
    :param overwrite: delete finished pairs of ``out`` and run them again.
    :param progress: show progress bars.
    :return: the contents of ``results.json``.
    :raises FileExistsError: ``out`` holds finished pairs and neither ``resume`` nor ``overwrite`` is set.
    """
    algos = list(dict.fromkeys(algos))
    for algo in algos:
        get_spec(algo)  # unknown names fail before anything is loaded
    hyperparameters = {k: dict(v) for k, v in (hyperparameters or {}).items()}
    for algo, overrides in hyperparameters.items():
        if algo not in algos:
            raise ValueError(f"hyperparameters given for {algo!r}, which is not benchmarked ({', '.join(algos)}).")
        resolve_kwargs(algo, **overrides)  # checks the names and types
    if env_id not in mara_env.VERSIONS:
        raise ValueError(f"env_id must be one of {', '.join(mara_env.VERSIONS)}, got {env_id!r}.")
    settings = {**mara_env.VERSIONS[env_id], **settings}
    if llm is not None:
        settings["llm"] = llm
    config = MARAConfig.from_kwargs(settings)  # every name and value checked before the LLM loads
    out = Path(out)
    runs_dir = out / "runs"
    finished = [p for p in runs_dir.glob(f"*/seed*/{RESULT_FILE}")] if runs_dir.is_dir() else []
    if finished and not (resume or overwrite):
        raise FileExistsError(
            f"{out} already holds {len(finished)} finished run(s); pass --resume to keep them and run the rest, "
            "--overwrite to run everything again, or --out for another folder."
        )
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other.")
    if overwrite and runs_dir.is_dir():
        shutil.rmtree(runs_dir)

    replicas = load_replicas(
        config.llm, devices=config.devices, dtype=config.dtype, trust_remote_code=config.trust_remote_code
    )
    part = held_out_part(config.prompt_split)
    split = dict(
        part=part,
        test_fraction=config.test_fraction,
        split_seed=config.split_seed,
        prompt_column=config.prompt_column,
        dataset_split=config.dataset_split,
    )
    ctx = _Context(
        env_id=env_id,
        settings=settings,
        config=config,
        budget=budget,
        replicas=replicas,
        terminal=TerminalReward(
            config.reward_model,
            config.cost_model,
            alpha_r=config.alpha_r,
            alpha_c=config.alpha_c,
            device=config.scorer_devices if config.scorer_devices is not None else replicas[0].device,
            dtype=config.scorer_dtype,
        ),
        eval_prompts=held_out_prompts(config.prompts, num_prompts=budget.eval_prompts, **split),
        compare_prompts=held_out_prompts(config.prompts, num_prompts=budget.compare_prompts, **split),
        decoding={k: getattr(config, k) for k in DECODING_KEYS},
        max_new_tokens=budget.max_new_tokens or config.max_new_tokens,
        hyperparameters=hyperparameters,
        device=device,
        progress=progress,
    )
    # seed-major: an interrupted run still has every algorithm on the first seeds
    pairs = [(algo, seed) for seed in budget.seeds for algo in algos]
    # Settings of finished pairs are checked before anything slow runs.
    reused = {}
    if resume:
        reused = {(a, s): _load_finished(runs_dir / a / f"seed{s}", ctx.fingerprint(a)) for a, s in pairs}
    # The LLM alone on the curve's prompts: the level every learning curve is drawn against.
    base_eval = ctx.evaluate(None, budget.seeds[0])
    changes = {k: replicas[0].name if k == "llm" else v for k, v in _changes(variant, settings).items()}
    if variant in VARIANTS and ctx.max_new_tokens != VARIANTS[variant]["max_new_tokens"]:
        changes["max_new_tokens"] = ctx.max_new_tokens  # a budget's response limit

    meta = {
        "benchmark": "algorithms",
        "task": f"{env_id} / {variant}",
        "env_id": env_id,
        "variant": variant,
        "variant_changes": changes,
        "settings": ctx.resolved_settings(),
        "budget": asdict(budget),
        "algos": algos,
        "held_out_part": part,
        "eval_prompts": len(ctx.eval_prompts),
        "compare_prompts": len(ctx.compare_prompts),
        "hyperparameter_overrides": hyperparameters,
        "logging_callback": MARALoggingCallback is not None,
        "machine": machine_info(replicas),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    runs: dict[str, dict[int, dict[str, Any]]] = {algo: {} for algo in algos}
    resumed: list[str] = []
    with tqdm(pairs, desc="algorithms x seeds", unit="run", disable=not progress) as bar:
        for algo, seed in bar:
            folder = runs_dir / algo / f"seed{seed}"
            saved = reused.get((algo, seed))
            if saved is not None:
                runs[algo][seed] = saved
                resumed.append(f"{algo}/seed{seed}")
                continue
            bar.set_postfix_str(f"{algo} seed {seed}")
            result = run_pair(algo, seed, ctx, folder)
            runs[algo][seed] = result
            tqdm.write(
                f"{algo} seed {seed}: preference {result['preference_rate']:+.3f} "
                f"[{result['preference_ci_low']:+.3f}, {result['preference_ci_high']:+.3f}], "
                f"reward {pm({'mean': result['reward'], 'n': 1})}, cost {pm({'mean': result['cost'], 'n': 1})}, "
                f"{result['decisions_per_s']:.1f} decisions/s, {result['wall_seconds']:.0f} s"
            )
            _write_summary(out, meta, base_eval, runs, resumed)
    return _write_summary(out, meta, base_eval, runs, resumed)


def _changes(variant: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Task settings that differ from the named variant's (empty for an unmodified variant)."""
    if variant not in VARIANTS:
        return {}
    reference = VARIANTS[variant]
    return {k: v for k, v in settings.items() if k in reference and reference[k] != v}


def _write_summary(
    out: Path,
    meta: dict[str, Any],
    base_eval: dict[str, Any],
    runs: dict[str, dict[int, dict[str, Any]]],
    resumed: list[str],
) -> dict[str, Any]:
    """(Re)write ``results.json``, ``results.md`` and ``learning_curves.png`` from the finished pairs."""
    out.mkdir(parents=True, exist_ok=True)
    done = {algo: dict(sorted(by_seed.items())) for algo, by_seed in runs.items() if by_seed}
    results = _jsonable(
        {
            "meta": {**meta, "resumed_runs": resumed},
            "base_eval": base_eval,
            "summary": aggregate(done),
            "runs": {algo: {str(seed): r for seed, r in by_seed.items()} for algo, by_seed in done.items()},
            "files": ["results.json", "results.md", "learning_curves.png"],
        }
    )
    plot_learning_curves(done, base_eval, out / "learning_curves.png", title=meta["task"])
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    _write_json(out / "results.json", results)
    return results


# --------------------------------------------------------------------------------------------- reporting


# --------------------------------------------------------------------------------------------- command line


def _key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    from agents.training.run_config import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE.")
        out[key.strip()] = parse_value(value)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=list(BUDGETS), default="quick", help="preset (default: quick)")
    p.add_argument(
        "--env-id", default="MARA-v1", choices=list(mara_env.VERSIONS), help="task version (default MARA-v1)"
    )
    p.add_argument("--variant", default="default", help=f"task variant: {', '.join(VARIANTS)} (default: default)")
    p.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS), metavar="ALGO")
    g = p.add_argument_group("budget (default: the preset's value)")
    g.add_argument("--seeds", nargs="+", type=int)
    g.add_argument("--decisions", type=int, help="training decisions per (algorithm, seed)")
    g.add_argument("--num-envs", type=int)
    g.add_argument("--eval-every", type=int, help="decisions between evaluations")
    g.add_argument("--eval-prompts", type=int, help="held-out prompts per evaluation")
    g.add_argument("--compare-prompts", help="held-out prompts of the final comparison: a number or 'all'")
    g.add_argument("--max-new-tokens", help="response limit: a number or 'variant'")
    g.add_argument("--log-every", type=int, help="decisions between progress.csv rows")
    e = p.add_argument_group("LLM, environment and agents")
    e.add_argument("--llm", help="hub id, folder or .gguf (default: the variant's, the embedded SmolLM2)")
    e.add_argument("--devices", nargs="+", help="LLM replicas' devices, e.g. cuda:0 cuda:1")
    e.add_argument("--dtype", help="LLM dtype: auto, float32, bfloat16, float16")
    e.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="other environment setting")
    e.add_argument("--hp", action="append", default=[], metavar="ALGO.KEY=VALUE", help="hyperparameter override")
    e.add_argument("--device", default="auto", help="torch device of the agents (default auto)")
    e.add_argument("--threads", type=int, help="torch threads (default: torch's choice; OMP_NUM_THREADS)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="output folder (default benchmarks/results/algorithms/<budget>)")
    o.add_argument("--resume", action="store_true", help="keep finished (algorithm, seed) runs, run the rest")
    o.add_argument("--overwrite", action="store_true", help="delete finished runs in --out and start over")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The preset of ``--budget`` with every budget flag that was given applied."""
    changes: dict[str, Any] = {}
    for f in fields(Budget):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name == "seeds":
            value = tuple(value)
        elif f.name == "compare_prompts":
            value = None if str(value).lower() == "all" else int(value)
        elif f.name == "max_new_tokens":
            value = None if str(value).lower() == "variant" else int(value)
        changes[f.name] = value
    return replace(BUDGETS[args.budget], **changes)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        th.set_num_threads(args.threads)
    settings = variant_settings(args.variant)
    settings.update(_key_values(args.env, "--env"))
    for key in ("llm", "devices", "dtype"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    hyperparameters: dict[str, dict[str, Any]] = {}
    for key, value in _key_values(args.hp, "--hp").items():
        algo, sep, name = key.partition(".")
        if not sep:
            raise SystemExit(f"--hp {key}=...: expected ALGO.KEY=VALUE, e.g. ppo.n_steps=64.")
        hyperparameters.setdefault(algo, {})[name] = value
    out = args.out or RESULTS / args.budget
    results = run_benchmark(
        settings,
        args.algos,
        budget_from_args(args),
        out,
        env_id=args.env_id,
        variant=args.variant,
        hyperparameters=hyperparameters,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print()
    print(markdown(results))
    print(f"written to {out}/results.json, results.md and learning_curves.png")
    return results


if __name__ == "__main__":
    main()
