"""What potential-based shaping costs per environment step, for the built-in scorers and for a model scorer.

``reward_shaping="potential"`` scores the committed prefix of every sub-environment whose answer grew
in a step (one batched call of the reward and of the cost scorer per step). This benchmark steps the
vector env (the embedded SmolLM2-135M-Instruct, 48-token answers, an agent that accepts with the
reference's own probability) with shaping off and on, in interleaved rounds after one untimed
warm-up of each, and reports decisions/s and milliseconds per step for:

- ``builtin``: the default scorers, VADER sentiment and alt-profanity-check toxicity;
- ``model``: a sequence-classification reward model of the embedded model's size (its architecture,
  built from its config with random weights: the speed of a 135M reward model, not a trained one)
  as reward, the built-in toxicity as cost.

Usage::

    python benchmarks/shaping_cost.py --seconds 20 --rounds 2

Writes ``benchmarks/results/shaping_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import mara_env
from mara_env.llm import load_replicas

RESULTS = Path(__file__).resolve().parent / "results" / "shaping_cost.json"


def model_scorer_folder(replica: Any, folder: Path) -> Path:
    """A random-weight ``AutoModelForSequenceClassification`` with the LLM's architecture, saved to ``folder``."""
    from transformers import AutoModelForSequenceClassification

    config = replica.model.config.__class__.from_dict(replica.model.config.to_dict())
    config.num_labels = 1
    config.pad_token_id = replica.tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    replica.tokenizer.save_pretrained(folder)
    return folder


def measure(envs: Any, seconds: float, rng: np.random.Generator) -> dict[str, float]:
    """Step with reference-probability actions for ``seconds``; decisions/s and ms per step."""
    _, info = envs.reset(seed=int(rng.integers(1 << 30)))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = (rng.random(envs.num_envs) < info["ref_accept_prob"]).astype(np.int64)
        _, _, _, _, info = envs.step(actions)
        steps += 1
    elapsed = time.perf_counter() - start
    return {"steps": steps, "seconds": elapsed, "decisions_per_second": steps * envs.num_envs / elapsed}


def main() -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    replicas = load_replicas(None)
    settings = dict(mara_env.variant_settings("default"), llm=replicas)
    with tempfile.TemporaryDirectory() as tmp:
        scorer = str(model_scorer_folder(replicas[0], Path(tmp) / "reward-model"))
        systems = {
            "off": dict(reward_shaping="none"),
            "builtin": dict(reward_shaping="potential"),
            "model off": dict(reward_shaping="none", reward_model=scorer),
            "model": dict(reward_shaping="potential", reward_model=scorer),
        }
        envs = {
            name: gym.make_vec("MARA-v1", num_envs=args.num_envs, **{**settings, **extra})
            for name, extra in systems.items()
        }
        rng = np.random.default_rng(0)
        for env in envs.values():  # untimed: first forwards, allocator and scorer warm-up
            measure(env, min(5.0, args.seconds), rng)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
        for round_ in range(args.rounds):
            for name, env in envs.items():
                runs[name].append(measure(env, args.seconds, rng))
                print(f"round {round_} {name}: {runs[name][-1]['decisions_per_second']:.1f} decisions/s", flush=True)
    rows = {}
    for name, items in runs.items():
        steps = sum(r["steps"] for r in items)
        seconds = sum(r["seconds"] for r in items)
        rows[name] = {"decisions_per_second": steps * args.num_envs / seconds, "ms_per_step": 1000 * seconds / steps}
    for on, off in (("builtin", "off"), ("model", "model off")):
        rows[on]["ms_added_per_step"] = rows[on]["ms_per_step"] - rows[off]["ms_per_step"]
        rows[on]["x_unshaped"] = rows[on]["decisions_per_second"] / rows[off]["decisions_per_second"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}",
        "num_envs": args.num_envs,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| scorers | shaping | decisions/s | ms per step | ms added by shaping | x unshaped |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        scorers = "model reward + toxicity" if name.startswith("model") else "sentiment + toxicity"
        added = f"{r['ms_added_per_step']:.0f}" if "ms_added_per_step" in r else ""
        ratio = f"{r['x_unshaped']:.2f}" if "x_unshaped" in r else ""
        shaping = "off" if name.endswith("off") else "potential"
        print(
            f"| {scorers} | {shaping} | {r['decisions_per_second']:.1f} | {r['ms_per_step']:.0f} | {added} | {ratio} |"
        )
    return result


if __name__ == "__main__":
    main()
