"""
DiscreteSAC against Stable-Baselines3's DQN and PPO on CartPole-v1.

Every algorithm gets the same step budget and seeds. DQN and PPO use the RL Zoo's tuned CartPole-v1
hyperparameters; DiscreteSAC uses its class defaults (nothing tuned per environment here), so this
also checks the defaults. Each run is evaluated every ``--eval-freq`` environment steps on a separate
environment (deterministic actions, ``--eval-episodes`` episodes).

Outputs (under ``--out``): ``sac_classic_control.json`` (all curves, the summary and the 475 bar)
and ``sac_classic_control.png`` (learning curves: mean over seeds, min-max band).

Usage::

    nice -n 10 python benchmarks/sac_classic_control.py                # 3 seeds x 50k steps
    python benchmarks/sac_classic_control.py --quick                   # 1 seed x 10k steps, smoke run
    python benchmarks/sac_classic_control.py --algos DiscreteSAC --jobs 2
"""

import argparse
import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from common import machine_info
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule

from agents import DiscreteSAC

ENV_ID = "CartPole-v1"
THRESHOLD = 475.0

# RL Zoo hyperparams/dqn.yml and ppo.yml, CartPole-v1 entries (lin_x: linear decay from x to 0)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "DiscreteSAC": dict(cls=DiscreteSAC, n_envs=1, kwargs={}),
    "DQN": dict(
        cls=DQN,
        n_envs=1,
        kwargs=dict(
            learning_rate=2.3e-3,
            batch_size=64,
            buffer_size=100_000,
            learning_starts=1000,
            gamma=0.99,
            target_update_interval=10,
            train_freq=256,
            gradient_steps=128,
            exploration_fraction=0.16,
            exploration_final_eps=0.04,
            policy_kwargs=dict(net_arch=[256, 256]),
        ),
    ),
    "PPO": dict(
        cls=PPO,
        n_envs=8,
        kwargs=dict(
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate="lin_1e-3",
            clip_range="lin_0.2",
        ),
    ),
}


def resolve_schedules(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn the Zoo's ``"lin_<x>"`` strings into SB3 linear schedules."""
    resolved = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("lin_"):
            value = LinearSchedule(float(value.removeprefix("lin_")), 0.0, 1.0)
        resolved[key] = value
    return resolved


def describe(kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly hyperparameters, as written in the Zoo."""
    return {key: value if isinstance(value, int | float | str) else repr(value) for key, value in kwargs.items()}


class EvaluationCurve(BaseCallback):
    """
    Evaluate the policy every ``eval_freq`` environment steps on its own environment.

    There is no evaluation before training: an untrained network's greedy policy can balance the pole
    by chance, which says nothing about the algorithm.

    :param eval_env: Environment used only for evaluation
    :param eval_freq: Environment steps between evaluations (counted over all training envs)
    :param n_eval_episodes: Episodes per evaluation
    """

    def __init__(self, eval_env: gym.Env, eval_freq: int, n_eval_episodes: int):
        super().__init__()
        self.eval_env = eval_env
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.timesteps: list[int] = []
        self.means: list[float] = []
        self.stds: list[float] = []
        self._next = eval_freq

    def evaluate(self) -> None:
        mean, std = evaluate_policy(self.model, self.eval_env, self.n_eval_episodes, deterministic=True)
        self.timesteps.append(int(self.num_timesteps))
        self.means.append(float(mean))
        self.stds.append(float(std))

    def _on_step(self) -> bool:
        # With n envs the counter moves n at a time: evaluate once each threshold is crossed
        if self.num_timesteps >= self._next:
            self.evaluate()
            self._next = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq
        return True


def run_one(algo: str, seed: int, steps: int, eval_freq: int, eval_episodes: int, threads: int) -> dict[str, Any]:
    """Train one algorithm with one seed and return its evaluation curve."""
    th.set_num_threads(threads)
    spec = ALGORITHMS[algo]
    env = make_vec_env(ENV_ID, n_envs=spec["n_envs"], seed=seed)
    eval_env = Monitor(gym.make(ENV_ID))
    eval_env.reset(seed=seed + 10_000)
    model: BaseAlgorithm = spec["cls"]("MlpPolicy", env, seed=seed, device="cpu", **resolve_schedules(spec["kwargs"]))
    curve = EvaluationCurve(eval_env, eval_freq, eval_episodes)

    start = time.perf_counter()
    model.learn(steps, callback=curve)
    wall_time = time.perf_counter() - start
    if curve.timesteps[-1] < model.num_timesteps:
        curve.evaluate()  # the final policy

    reached = [t for t, mean in zip(curve.timesteps, curve.means, strict=True) if mean >= THRESHOLD]
    result = dict(
        algo=algo,
        seed=seed,
        timesteps=curve.timesteps,
        mean_returns=curve.means,
        std_returns=curve.stds,
        final_return=curve.means[-1],
        best_return=max(curve.means),
        first_step_at_threshold=reached[0] if reached else None,
        wall_time_s=round(wall_time, 1),
    )
    print(
        f"{algo:<12} seed {seed}: final {result['final_return']:6.1f}  best {result['best_return']:6.1f}  "
        f"first >= {THRESHOLD:g} at {result['first_step_at_threshold']}  ({wall_time / 60:.1f} min)",
        flush=True,
    )
    return result


def summarise(runs: list[dict[str, Any]], algos: list[str]) -> dict[str, Any]:
    summary = {}
    for algo in algos:
        mine = [run for run in runs if run["algo"] == algo]
        finals = [run["final_return"] for run in mine]
        summary[algo] = dict(
            final_mean=float(np.mean(finals)),
            final_std=float(np.std(finals)),
            best_mean=float(np.mean([run["best_return"] for run in mine])),
            seeds_reaching_threshold=sum(run["first_step_at_threshold"] is not None for run in mine),
            seeds_final_at_threshold=sum(run["final_return"] >= THRESHOLD for run in mine),
            n_seeds=len(mine),
        )
    return summary


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any], steps: int) -> None:
    header = f"| Algorithm | Seed | Final eval return | Best eval return | First step with eval >= {THRESHOLD:g} |"
    print("\n" + header)
    print("|---|---|---|---|---|")
    for run in runs:
        first = run["first_step_at_threshold"]
        print(
            f"| {run['algo']} | {run['seed']} | {run['final_return']:.1f} +- {run['std_returns'][-1]:.1f} "
            f"| {run['best_return']:.1f} | {first if first is not None else 'not reached'} |"
        )
    print(f"\n| Algorithm | Final return (mean +- std, seeds) | Seeds >= {THRESHOLD:g} within {steps} steps |")
    print("|---|---|---|")
    for algo, stats in summary.items():
        print(
            f"| {algo} | {stats['final_mean']:.1f} +- {stats['final_std']:.1f} "
            f"| {stats['seeds_reaching_threshold']}/{stats['n_seeds']} |"
        )


def plot(runs: list[dict[str, Any]], algos: list[str], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo in algos:
        mine = [run for run in runs if run["algo"] == algo]
        # Evaluation points differ slightly between runs (vector envs step n at a time): use a common grid
        grid = np.linspace(max(run["timesteps"][0] for run in mine), steps, 100)
        curves = np.array([np.interp(grid, run["timesteps"], run["mean_returns"]) for run in mine])
        (line,) = ax.plot(grid, curves.mean(axis=0), label=f"{algo} ({len(mine)} seeds)")
        ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.axhline(THRESHOLD, color="grey", linestyle="--", linewidth=1, label=f"{THRESHOLD:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (deterministic)")
    ax.set_title(f"{ENV_ID}: mean over seeds, band = min-max")
    ax.set_ylim(0, 520)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000, help="environment steps per run (default 50000)")
    parser.add_argument("--eval-freq", type=int, default=2500, help="environment steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0, 10k steps, 5 episodes")
    args = parser.parse_args()

    name = "sac_classic_control"
    if args.quick:
        args.seeds, args.steps, args.eval_episodes, name = [0], 10_000, 5, "sac_classic_control_quick"
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = [
        (algo, seed, args.steps, args.eval_freq, args.eval_episodes, args.threads)
        for algo in args.algos
        for seed in args.seeds
    ]
    start = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = pool.starmap(run_one, jobs)
    else:
        runs = [run_one(*job) for job in jobs]

    summary = summarise(runs, args.algos)
    print_table(runs, summary, args.steps)
    sac = summary.get("DiscreteSAC")
    bar = None
    if sac is not None:
        needed = math.ceil(2 * sac["n_seeds"] / 3)
        bar = dict(
            description=f"DiscreteSAC (class defaults) reaches a mean evaluation return >= {THRESHOLD:g} "
            f"within {args.steps} steps on at least {needed} of {sac['n_seeds']} seeds",
            seeds_reaching=sac["seeds_reaching_threshold"],
            passed=sac["seeds_reaching_threshold"] >= needed,
        )
        verdict = "PASSED" if bar["passed"] else "FAILED"
        print(f"\nBar: {bar['description']}: {verdict} ({bar['seeds_reaching']} of {sac['n_seeds']} seeds)")

    results = dict(
        env=ENV_ID,
        steps=args.steps,
        seeds=args.seeds,
        eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes,
        threshold=THRESHOLD,
        hyperparameters={
            algo: dict(n_envs=ALGORITHMS[algo]["n_envs"], **describe(ALGORITHMS[algo]["kwargs"])) for algo in args.algos
        },
        runs=runs,
        summary=summary,
        bar=bar,
        machine=machine_info(threads=args.threads),
        total_wall_time_s=round(time.perf_counter() - start, 1),
    )
    json_path = args.out / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=2))
    plot(runs, args.algos, args.out / f"{name}.png", args.steps)
    print(f"\nWrote {json_path} and {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
