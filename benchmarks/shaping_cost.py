"""What potential-based shaping costs per environment step: incremental against full scoring, by answer length.

``reward_shaping="potential"`` scores the answer so far of every sub-environment whose answer grew in a
step. A causal score model scores it incrementally (:mod:`mara_env.prefix_scoring`: a few tokens per row,
over each row's cached keys/values); any other scorer re-scores the whole prefix. This benchmark steps
the MARA-v1 vector env (the embedded SmolLM2-135M-Instruct, an agent accepting 70% of candidates) with
a 135M causal score model (an ``AutoModelForSequenceClassification`` of SmolLM2's architecture with
random weights, built from its config: the speed of a 135M reward model, not a trained one) as the
reward, at each answer limit of ``--lengths``, three ways:

- ``off``: no shaping (the score model still scores each finished answer);
- ``incremental``: shaping, the score model scoring incrementally;
- ``full``: shaping, the same model behind a plain callable, so every grown prefix is scored in full;
- ``incremental-<dtype>`` for each further ``--scorer-dtypes`` value: incremental shaping with the score
  model in that dtype (``bfloat16`` halves its weights' traffic; on a CPU with ``avx512_bf16`` its
  matrix products run natively). The environment's own scorer, and so every other mode, is float32.

The three take turns on **one** environment, in rounds (``--round`` steps each; ``full`` one step, being
the slowest, in every ``--full-every``-th round), from the first step of the episodes on, for
``--steps-per-token`` x the answer limit steps in all: each mode sees answers of every length the
episodes go through, and the machine's load is shared fairly. The mode is switched by swapping the
core's shaping potential (the shaping rewards of the first step after a switch are then wrong, the time
is not); the first incremental step after a switch, which catches up with the tokens committed
meanwhile, is run untimed.

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
from mara_env.prefix_scoring import ShapingPotential
from mara_env.scoring import TerminalReward, make_scorer

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
    """The three modes taking turns on one environment with answers of up to ``length`` tokens."""
    settings = mara_env.variant_settings("default") | dict(
        llm=replicas, chunk_size=1, max_new_tokens=length, reward_model=scorer, cost_model=None
    )
    envs = gym.make_vec("MARA-v1", num_envs=args.num_envs, **settings, reward_shaping="potential")
    core = envs.unwrapped.core
    full_model = make_scorer(scorer, role="reward", device="cpu")
    potentials = {
        "off": None,
        "incremental": core.shaping_potential,
        # the same model, but behind a callable: it cannot score incrementally
        "full": ShapingPotential(TerminalReward(lambda p, r: full_model(p, r), None), args.num_envs),
    }
    for dtype in args.scorer_dtypes[1:]:
        terminal = TerminalReward(scorer, None, device="cpu", dtype=dtype)
        potentials[f"incremental-{dtype}"] = ShapingPotential(terminal, args.num_envs)
    modes = list(potentials)
    incremental = [mode for mode in modes if mode.startswith("incremental")]
    for mode in incremental:
        assert potentials[mode].incremental["reward"], "the score model must score incrementally"
    rng = np.random.default_rng(0)

    def step() -> None:
        envs.step((rng.random(args.num_envs) < 0.7).astype(np.int64))

    envs.reset(seed=0)
    step()  # untimed: first forwards and prompt prefills
    spent = dict.fromkeys(modes, 0.0)
    steps = dict.fromkeys(modes, 0)
    answer = dict.fromkeys(modes, 0.0)  # answer tokens so far, summed over rows and timed steps
    total = int(args.steps_per_token * length)
    done = rounds = 0
    while done < total:
        rounds += 1
        for mode in modes:
            if mode == "full" and (rounds - 1) % args.full_every:
                continue
            core.shaping = potentials[mode] is not None
            core.shaping_potential = potentials[mode]
            if mode in incremental:
                step()  # untimed: catches up with the tokens committed in the other modes' steps
                done += 1
            for _ in range(1 if mode == "full" else args.round):
                start = time.perf_counter()
                step()
                spent[mode] += time.perf_counter() - start
                steps[mode] += 1
                answer[mode] += sum(len(row.response) for row in core.decoder.rows)
                done += 1
        print(f"T={length}: {done}/{total} steps", flush=True)
    stats = {mode: potentials[mode].stats()["reward"] for mode in incremental}
    envs.close()
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
        if mode == "off":
            continue
        rows[mode]["x_unshaped"] = rows[mode]["decisions_per_second"] / rows["off"]["decisions_per_second"]
        rows[mode]["ms_added_per_step"] = rows[mode]["ms_per_step"] - rows["off"]["ms_per_step"]
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
