"""The shaping section of ``benchmarks/gpu_suite.py``: what potential-based shaping costs with a real-sized score model.

MARA-v1's shaping scores every grown answer after every step. Beside the suite's largest LLM (the
Llama-3.1-8B shape) this section puts a causal score model of another shape (the Llama-3.2-1B shape: an
``AutoModelForSequenceClassification`` with random weights, the speed of a 1B reward model, not a trained
one) on the same device and dtype, and times the vector env at the largest N with shaping off and on,
in interleaved rounds, an agent accepting each candidate with probability 0.7. With shaping on the score
model scores incrementally (:mod:`mara_env.prefix_scoring`: the new token and the template's tail per grown
row, over each row's cached keys/values); the section records the tokens it ran beside those full
re-scoring would have run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_models import shape_config
from gpu_sections import Slice, synchronize

#: The random agent's accept probability in this section (the env section's).
ACCEPT_P = 0.7


def score_model_folder(shape: str, smollm2_config: Any, tokenizer: Any, dtype: torch.dtype, folder: Path) -> Path:
    """A random-weight causal score model (``LlamaForSequenceClassification``, one label) of ``shape``, saved with
    the tokenizer to ``folder`` (built on the CPU: the environment loads it where ``scorer_devices`` says)."""
    from transformers import AutoModelForSequenceClassification

    config = shape_config(shape, smollm2_config, tokenizer)
    config.num_labels = 1
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def shaping_section(
    replica: Any, scorer_shape: str, smollm2_config: Any, args: argparse.Namespace, budget: Slice, progress: Any
) -> dict[str, Any]:
    """Decisions/s of MARA-v1 at the largest N with shaping off and on (incremental scoring), interleaved; each
    mode's time per round is what the slice leaves after building the score model and the warm-up, at most
    ``--seconds``."""
    import gymnasium as gym

    import mara_env  # noqa: F401  (registers MARA-v1)

    device, n = replica.device, max(args.envs)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = score_model_folder(scorer_shape, smollm2_config, replica.tokenizer, dtype, Path(tmp) / "score-model")
        build_seconds = time.perf_counter() - start
        settings = dict(
            llm=[replica],
            prompts=args.prompt_source,
            max_new_tokens=args.max_new_tokens,
            chunk_size=args.chunk,
            reward_model=str(folder),
            cost_model=None,
            scorer_devices=str(device),
            scorer_dtype=args.dtype,
        )
        modes = ("none", "potential")
        envs = {mode: gym.make_vec("MARA-v1", num_envs=n, reward_shaping=mode, **settings) for mode in modes}
        potential = envs["potential"].unwrapped.core.shaping_potential
        rng = np.random.default_rng(0)
        for env in envs.values():
            env.reset(seed=0)
            for _ in range(2):  # warm-up: allocations, first prefills, kernel selection
                env.step((rng.random(n) < ACCEPT_P).astype(np.int64))
        synchronize(device)
        seconds = min(args.seconds, max(0.25, 0.9 * budget.remaining() / (len(envs) * args.rounds)))
        spent, steps, answer = dict.fromkeys(envs, 0.0), dict.fromkeys(envs, 0), dict.fromkeys(envs, 0.0)
        for rnd in range(args.rounds):
            if rnd > 0 and not budget.left():
                budget.skip(f"shaping rounds {rnd + 1}-{args.rounds}")
                break
            for mode, env in envs.items():
                began = time.perf_counter()
                while time.perf_counter() - began < seconds:
                    env.step((rng.random(n) < ACCEPT_P).astype(np.int64))
                    steps[mode] += 1
                    answer[mode] += float(np.mean([len(row.response) for row in env.unwrapped.core.decoder.rows]))
                synchronize(device)
                spent[mode] += time.perf_counter() - began
                progress.update(1)
        stats = potential.stats().get("reward", {})
        incremental = potential.incremental["reward"]
        for env in envs.values():
            env.close()
    rate = {mode: n * steps[mode] / max(spent[mode], 1e-9) for mode in envs}
    return dict(
        llm_parameters=sum(p.numel() for p in replica.model.parameters()),
        score_model=scorer_shape,
        score_model_build_seconds=build_seconds,
        num_envs=n,
        seconds_per_round=seconds,
        incremental=incremental,
        unshaped_decisions_per_s=rate["none"],
        shaped_decisions_per_s=rate["potential"],
        x_unshaped=rate["potential"] / max(rate["none"], 1e-9),
        mean_answer_tokens={mode: answer[mode] / max(steps[mode], 1) for mode in envs},
        score_tokens_run=stats.get("tokens_run"),
        score_tokens_full=stats.get("tokens_full"),
    )
