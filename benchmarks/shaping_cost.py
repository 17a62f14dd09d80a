"""What potential-based shaping costs per environment step: incremental against full scoring, by answer length.

``reward_shaping="potential"`` scores the answer so far of every sub-environment whose answer grew in a
step. A causal score model scores it incrementally (:mod:`mara_env.prefix_scoring`: a few tokens per row,
over each row's cached keys/values); any other scorer re-scores the whole prefix. This benchmark steps
the MARA-v1 vector env (the embedded SmolLM2-135M-Instruct, an agent accepting 70% of candidates) with
a 135M causal score model (an ``AutoModelForSequenceClassification`` of SmolLM2's architecture with
random weights, built from its config: the speed of a 135M reward model, not a trained one) as the
reward, at each answer limit of ``--lengths``, in these modes:

- ``off``: no shaping (the score model still scores each finished answer);
- ``incremental``: shaping, the score model scoring incrementally;
- ``full``: shaping, the same model behind a plain callable, so every grown prefix is scored in full;
- ``off-<dtype>`` and ``incremental-<dtype>`` for each further ``--scorer-dtypes`` value: the score model
  in that dtype (``scorer_dtype``), unshaped and shaped; the second's ratio is against the first
  (``bfloat16`` halves the weights' traffic; on a CPU with ``avx512_bf16`` its matrix products run
  natively).

Every mode has its own environment, seeded alike and driven by its own copy of the same seeded agent, so
all of them walk the same episodes (shaping changes rewards, not the answers). The environments take
turns, in rounds of ``--round`` steps each, from the first step of the episodes on, until each has run
``--steps-per-token`` x the answer limit steps: each mode sees answers of every length the episodes go
through (restarts and finished answers' scoring included), and the machine's load is shared fairly.
``full``, the slowest, times one step in every ``--full-every``-th round and runs its other steps unshaped
and untimed (full scoring keeps nothing between steps), so it keeps pace with the others (its shaping
rewards are then wrong; its time is not). Ratios are per step, against the unshaped environment with the
same score model.

Usage::

    python benchmarks/shaping_cost.py --lengths 48 128 256 --num-envs 16
    python benchmarks/shaping_cost.py --lengths 128 --scorer-dtypes float32 bfloat16 --full-every 4

Writes ``benchmarks/results/shaping_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from common import machine_info

import mara_env
from mara_env.llm import load_replicas
from mara_env.scoring import make_scorer

RESULTS = Path(__file__).resolve().parent / "results" / "shaping_cost.json"


def model_scorer_folder(replica: Any, folder: Path) -> Path:
    """A random-weight ``AutoModelForSequenceClassification`` with the LLM's architecture, saved to ``folder``."""
    from transformers import AutoModelForSequenceClassification

    settings = replica.model.config.to_dict()
    settings.pop("quantization_config", None)  # the embedded model's GGUF origin; the copy is plain float32
    config = replica.model.config.__class__.from_dict(settings)
    config.num_labels = 1
    config.pad_token_id = replica.tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    replica.tokenizer.save_pretrained(folder)
    return folder


def measure_length(replicas: list[Any], scorer: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every mode on its own environment, the environments taking turns, with answers of up to ``length`` tokens."""
    base = mara_env.variant_settings("default") | dict(
        llm=replicas, chunk_size=1, max_new_tokens=length, cost_model=None
    )
    full_model = make_scorer(scorer, role="reward", device="cpu")
    settings: dict[str, dict[str, Any]] = {
        "off": dict(reward_model=scorer, reward_shaping="none"),
        "incremental": dict(reward_model=scorer, reward_shaping="potential"),
        # the same model, but behind a callable: it cannot score incrementally
        "full": dict(reward_model=lambda p, r: full_model(p, r), reward_shaping="potential"),
    }
    for dtype in args.scorer_dtypes[1:]:  # each against the unshaped environment with the same score model
        settings[f"off-{dtype}"] = dict(reward_model=scorer, reward_shaping="none", scorer_dtype=dtype)
        settings[f"incremental-{dtype}"] = dict(reward_model=scorer, reward_shaping="potential", scorer_dtype=dtype)
    envs = {mode: gym.make_vec("MARA-v1", num_envs=args.num_envs, **(base | extra)) for mode, extra in settings.items()}
    modes = list(envs)
    incremental = [mode for mode in modes if mode.startswith("incremental")]
    for mode in incremental:
        assert envs[mode].unwrapped.core.shaping_potential.incremental["reward"], "must score incrementally"
    # one seeded agent per mode, drawing the same decisions: every environment walks the same episodes
    rngs = {mode: np.random.default_rng(0) for mode in modes}

    def step(mode: str) -> None:
        envs[mode].step((rngs[mode].random(args.num_envs) < 0.7).astype(np.int64))

    for mode in modes:
        envs[mode].reset(seed=0)
        step(mode)  # untimed: first forwards and prompt prefills
    spent = dict.fromkeys(modes, 0.0)
    steps = dict.fromkeys(modes, 0)
    answer = dict.fromkeys(modes, 0.0)  # answer tokens so far, summed over rows and timed steps
    total = int(args.steps_per_token * length)
    rounds = 0
    while steps["off"] < total:
        rounds += 1
        for mode in modes:
            timed = args.round
            if mode == "full":
                # the slowest: one timed step in every full_every-th round; its other steps run unshaped and
                # untimed (full scoring keeps nothing between steps), so it keeps pace with the other modes
                core = envs[mode].unwrapped.core
                timed = 0 if (rounds - 1) % args.full_every else 1
                core.shaping = False
                for _ in range(args.round - timed):
                    step(mode)
                core.shaping = True
            for _ in range(timed):
                start = time.perf_counter()
                step(mode)
                spent[mode] += time.perf_counter() - start
                steps[mode] += 1
                answer[mode] += sum(len(row.response) for row in envs[mode].unwrapped.core.decoder.rows)
        print(f"T={length}: {steps['off']}/{total} steps per mode", flush=True)
    stats = {mode: envs[mode].unwrapped.core.shaping_potential.stats()["reward"] for mode in incremental}
    for env in envs.values():
        env.close()
    rows: dict[str, Any] = {}
    for mode in modes:
        ms = 1000 * spent[mode] / steps[mode]
        rows[mode] = {
            "steps": steps[mode],
            "ms_per_step": ms,
            "decisions_per_second": args.num_envs * steps[mode] / spent[mode],
            "mean_answer_tokens": answer[mode] / (steps[mode] * args.num_envs),
        }
    for mode in modes:
        if mode.startswith("off"):
            continue
        unshaped = rows["off" + mode.removeprefix("incremental")] if mode.startswith("incremental-") else rows["off"]
        rows[mode]["x_unshaped"] = rows[mode]["decisions_per_second"] / unshaped["decisions_per_second"]
        rows[mode]["ms_added_per_step"] = rows[mode]["ms_per_step"] - unshaped["ms_per_step"]
    for mode, counts in stats.items():
        rows[mode]["score_tokens_run"] = counts["tokens_run"]
        rows[mode]["score_tokens_full"] = counts["tokens_full"]
    return rows


def main() -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[48, 128, 256], help="answer limits (max_new_tokens)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--round", type=int, default=3, help="timed steps per mode per round (full: 1)")
    p.add_argument("--steps-per-token", type=float, default=1.0, help="steps in all, per token of the answer limit")
    p.add_argument("--full-every", type=int, default=1, help="full scoring's step in every n-th round only (slow)")
    p.add_argument(
        "--scorer-dtypes",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16", "float16"],
        help="the score model's dtypes: the first is the environment's, each further one adds an incremental mode",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.scorer_dtypes[0] != "float32" or len(set(args.scorer_dtypes)) != len(args.scorer_dtypes):
        p.error(f"--scorer-dtypes must start with float32 and name each dtype once, got {args.scorer_dtypes}")

    replicas = load_replicas(None)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(replicas),
        "threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "num_envs": args.num_envs,
        "round": args.round,
        "steps_per_token": args.steps_per_token,
        "full_every": args.full_every,
        "scorer_dtypes": args.scorer_dtypes,
        "lengths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        scorer = str(model_scorer_folder(replicas[0], Path(tmp) / "reward-model"))
        for length in args.lengths:
            result["lengths"][str(length)] = measure_length(replicas, scorer, length, args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # each length as it finishes
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| answer limit | scoring | mean answer so far | decisions/s | ms per step | ms added | x unshaped |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for length, rows in result["lengths"].items():
        for mode, r in rows.items():
            added = f"{r['ms_added_per_step']:.0f}" if "ms_added_per_step" in r else ""
            ratio = f"{r['x_unshaped']:.2f}" if "x_unshaped" in r else ""
            print(
                f"| {length} | {mode} | {r['mean_answer_tokens']:.0f} | {r['decisions_per_second']:.2f} | "
                f"{r['ms_per_step']:.0f} | {added} | {ratio} |"
            )
    return result


if __name__ == "__main__":
    main()
