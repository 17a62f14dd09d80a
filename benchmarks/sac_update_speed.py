"""
Learner speed: gradient steps per second of DiscreteSAC beside Stable-Baselines3's (continuous) SAC.

Both learners get the MARA paper's layer sizes (observation H -> 1024 -> 256 -> head) for the actor and
each of two critics, the same batch size and a replay buffer filled with random transitions, so only
``train()`` is timed: sampling, forward and backward passes, optimiser steps and target updates.
DiscreteSAC runs with ``mara_preset()`` (input LayerNorm, grad-norm clipping 0.5); a second DiscreteSAC
entry uses PyTorch's plain per-tensor Adam (``fused=False, foreach=False``, as SB3's SAC) to separate
the optimiser's share of the speed-up from the algorithm's. The learners alternate repeat by repeat
(in rotating order), so background load on the machine affects them alike.

Writes ``sac_update_speed.json`` under ``--out``.

Usage::

    python benchmarks/sac_update_speed.py              # H=4096, batch 1024
    python benchmarks/sac_update_speed.py --quick      # H=512, batch 256, smoke run
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from common import machine_info
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from agents import DiscreteSAC, mara_preset


class HiddenStateEnv(gym.Env):
    """Never stepped: it only gives the learners their spaces (H-dim observations, 2 actions or 1-D Box)."""

    def __init__(self, hidden: int, continuous: bool):
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(hidden,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32) if continuous else spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, dtype=np.float32), 0.0, False, False, {}


def fill_buffer(model: OffPolicyAlgorithm, rng: np.random.Generator) -> None:
    """Fill the whole replay buffer with random transitions."""
    buffer = model.replay_buffer
    assert buffer is not None
    size = buffer.buffer_size
    buffer.observations[:] = rng.standard_normal(buffer.observations.shape, dtype=np.float32)
    buffer.next_observations[:] = rng.standard_normal(buffer.next_observations.shape, dtype=np.float32)
    if isinstance(model.action_space, spaces.Discrete):
        buffer.actions[:] = rng.integers(0, model.action_space.n, size=buffer.actions.shape)
    else:
        buffer.actions[:] = rng.uniform(-1, 1, size=buffer.actions.shape)
    buffer.rewards[:] = rng.standard_normal(buffer.rewards.shape, dtype=np.float32)
    buffer.dones[:] = rng.random(buffer.dones.shape) < 0.01
    buffer.pos, buffer.full = 0, True
    assert size == len(buffer.observations)


def make_learners(
    hidden: int, batch_size: int, buffer_size: int, device: str | th.device = "cpu"
) -> dict[str, DiscreteSAC | SAC]:
    preset = mara_preset("authors", batch_size=batch_size, buffer_size=buffer_size, learning_starts=0)
    plain_adam = mara_preset(
        "authors",
        batch_size=batch_size,
        buffer_size=buffer_size,
        learning_starts=0,
        policy_kwargs=dict(optimizer_kwargs=dict(fused=False, foreach=False)),
    )
    sac_kwargs = dict(
        batch_size=batch_size,
        buffer_size=buffer_size,
        learning_starts=0,
        policy_kwargs=dict(net_arch=[1024, 256]),
    )
    return {
        "DiscreteSAC": DiscreteSAC("MlpPolicy", HiddenStateEnv(hidden, False), device=device, seed=0, **preset),
        "DiscreteSAC (plain Adam)": DiscreteSAC(
            "MlpPolicy", HiddenStateEnv(hidden, False), device=device, seed=0, **plain_adam
        ),
        "SB3 SAC": SAC("MlpPolicy", HiddenStateEnv(hidden, True), device=device, seed=0, **sac_kwargs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096, help="observation size H (LLM hidden size)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--buffer-size", type=int, default=4096, help="random transitions in each buffer")
    parser.add_argument("--repeats", type=int, default=5, help="timed train() calls per learner")
    parser.add_argument("--steps", type=int, default=3, help="gradient steps per timed call")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="smoke run: H=512, batch 256, 3 repeats")
    args = parser.parse_args()

    name = "sac_update_speed"
    if args.quick:
        args.hidden, args.batch_size, args.repeats, name = 512, 256, 3, "sac_update_speed_quick"
    th.set_num_threads(args.threads)
    th.manual_seed(0)
    np.random.seed(0)
    rng = np.random.default_rng(0)

    learners = make_learners(args.hidden, args.batch_size, args.buffer_size)
    for model in learners.values():
        fill_buffer(model, rng)
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.train(gradient_steps=1, batch_size=args.batch_size)  # warm-up: allocations, optimiser state

    times: dict[str, list[float]] = {label: [] for label in learners}
    labels = list(learners)
    for repeat in range(args.repeats):
        order = labels[repeat % len(labels) :] + labels[: repeat % len(labels)]
        for label in order:
            start = time.perf_counter()
            learners[label].train(gradient_steps=args.steps, batch_size=args.batch_size)
            times[label].append(time.perf_counter() - start)
        print(
            f"repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{k} {times[k][-1] / args.steps:.3f} s/step" for k in labels),
            flush=True,
        )

    steps_per_s = {label: args.steps / statistics.median(values) for label, values in times.items()}
    ratio = steps_per_s["DiscreteSAC"] / steps_per_s["SB3 SAC"]
    ratio_plain = steps_per_s["DiscreteSAC (plain Adam)"] / steps_per_s["SB3 SAC"]
    parameters = {
        label: sum(p.numel() for p in [*model.actor.parameters(), *model.critic.parameters()])
        for label, model in learners.items()
    }

    print(
        f"\nH={args.hidden}, batch {args.batch_size}, {args.threads} torch threads, "
        f"median of {args.repeats} calls x {args.steps} steps"
    )
    print("| Learner | Gradient steps / s | Trainable parameters |")
    print("|---|---|---|")
    for label in labels:
        print(f"| {label} | {steps_per_s[label]:.3f} | {parameters[label]:,} |")
    verdict = "PASSED" if ratio >= 0.9 else "FAILED"
    print(f"\nRatio DiscreteSAC / SB3 SAC: {ratio:.2f} (plain Adam: {ratio_plain:.2f}); bar >= 0.9: {verdict}")

    results: dict[str, Any] = dict(
        hidden=args.hidden,
        batch_size=args.batch_size,
        network="[H] -> LayerNorm (DiscreteSAC only) -> 1024 -> 256 -> head, actor and 2 critics",
        steps_per_call=args.steps,
        repeats=args.repeats,
        seconds_per_call=times,
        gradient_steps_per_s=steps_per_s,
        trainable_parameters=parameters,
        ratio=ratio,
        ratio_plain_adam=ratio_plain,
        bar=dict(description="DiscreteSAC no slower than SB3 SAC (ratio >= 0.9)", passed=ratio >= 0.9),
        machine=machine_info(threads=args.threads),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
