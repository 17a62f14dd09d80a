"""GPU suite (issues 11 and 25): environment throughput, aligned decode speed and learner speed in one short
device session: the release check on a GPU.

For each selected model (``--models``), built from its config with random weights (no weights travel):

1. **Environment throughput**: agent decisions/s of the authors' strategy (every candidate gets a
   batch-1 forward up front), of a lazy batch-1 strategy and of ``TokenAcceptRejectVectorEnv`` with
   N = 1, 8, 32 sub-environments (chunk ``"auto"``, the default), and at the largest N with captured
   forwards (``capture=True``: static shapes replayed as CUDA graphs; ``--capture``), measured side by side
   in interleaved rounds with ``benchmarks/env_throughput.py``'s runners (an agent accepting each
   candidate with probability 0.7; scoring off). Ratios to both baselines and captured / eager, the
   decoders' ``capture_stats``, LLM forwards per step, and the **candidate-set sizes** the rows took over
   the section's steps (mean, p50, p90, share of single-candidate sets).
2. **Aligned decode speed** (``benchmarks/gpu_decode.py``): answer tokens/s of plain ``model.generate``,
   eager and (CUDA, ``--compiled-plain`` models) with transformers' static cache and ``torch.compile``
   (``mode="reduce-overhead"``), against :class:`agents.MARAGenerator` with an always-accept agent and with
   a random agent accepting with probability 0.5 (a stand-in for a trained agent: rejections cost extra
   forwards and every decision builds an observation), each eager and captured, at batch 1 and 16.
3. **What shaping costs** (for ``--shaping-llm``, by default the last of ``--models``): MARA-v1 at the
   largest N with a causal score model of ``--shaping-scorer``'s shape (``llama-1b``: a 1B reward model
   beside the 8B-shape LLM, random weights, same device and dtype) as the reward, shaping off and on
   (incremental prefix scoring) in interleaved rounds (``benchmarks/gpu_shaping.py``).

Then, once for the machine, 4. **SAC learner speed**: gradient steps/s of DiscreteSAC
(``mara_preset("authors")``) beside SB3's SAC at batch 1024 with observation size H = 4096 and
H = each model's hidden size (``benchmarks/sac_update_speed.py``'s buffer set-up), in float32.

Beside each time, what the GPU pays for, counted after the timed rounds (``benchmarks/op_count.py``):
aten ops (kernel launches), LLM forwards and host syncs per env step and per answer token; and the
**GPU-busy share** (``torch.profiler``, CUDA activity: kernel time over wall time) of ``--profile-steps``
env steps at the largest N and decoding steps of the random agent, eager and captured
(``benchmarks/gpu_profile.py``; skipped, with the reason, off CUDA).

Bars, on a GPU (``gpu_report.py``): ``mara N=32`` >= 15x lazy batch-1 and >= 100x the authors' strategy in
decisions/s; always-accept decoding >= 0.95x and the random agent >= 0.6x plain ``generate`` at every batch
size; for the 8B shape, N=32 >= 1,500 decisions/s and aligned decoding (random agent) at batch 1 >= 100
tokens/s, beside the paper's 31.4 tokens/s. Where a system ran eager and captured, a bar takes the better
and names it. Results go to ``--out`` (``gpu_suite.json`` and ``gpu_suite.md``).

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

**Sizing** (about 7 minutes on an H200 with the default ``--budget-s 420``; estimated, not yet run on a
GPU). The budget is shared out among the sections in run order (``gpu_sections.Budget``): each gets its
weight's share of the time left over the sections still to run (``gpu_sections.WEIGHTS``: build 0.4, env 1,
decode 1 plus 1 where the compiled baseline compiles, shaping 1, SAC learners 0.6), so a section that
overruns (a compilation, a warm-up: these are not time-boxed) takes its overrun out of every later section
instead of starving the last, and a section is skipped only once the whole budget is spent. Within its
slice a section sizes its measurement: the env section's time per configuration and round is what the slice
leaves after the warm-ups, split over configurations and rounds (at most ``--seconds``); the decode section
gives each batch size an equal part (its warm-ups and first round always run); the learners split theirs
over the sizes H (at most ``--sac-seconds`` per learner). Whatever a slice cannot fit is listed under
Skipped, with the reason. With the three default models, 420 s gives each env and decode section ~43 s, the
8B's compiled baseline ~43 s more, shaping ~43 s, the learners ~26 s and each build ~17 s. A decode
step of these models in eager PyTorch is bound by kernel launches and Python, not FLOPs: a batch-16 step of the 8B is
2 x 8e9 x 16 = 0.26 TFLOP (under 1 ms at ~500 TFLOP/s bf16) and reads 16 GB of weights (3.4 ms at
4.8 TB/s), while a 30-layer forward costs ~15-25 ms of launches whatever the size: what capture and the
compiled baseline address.

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

**Files.** This script holds the command line and the run (``Suite``); beside it, ``gpu_packages.py`` (what
a bare machine needs), ``gpu_models.py`` (shapes, assets, random-weight builds, calibration),
``gpu_sections.py`` (the time plan, the env and learner sections), ``gpu_decode.py`` (the decode section),
``gpu_shaping.py`` (the shaping section), ``gpu_profile.py`` (GPU-busy share, candidate-set sizes, capture
statistics of generators) and ``gpu_report.py`` (bars and tables).

Usage::

    python benchmarks/gpu_suite.py --device cuda --out benchmarks/results/gpu_suite
    python benchmarks/gpu_suite.py --device cpu --smoke --models smollm2      # a few seconds per config
    python benchmarks/gpu_suite.py --device cpu --smoke --models tiny --tokenizer DIR   # the test's form
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from common import machine_info
from gpu_decode import RANDOM_AGENT_P, decode_section
from gpu_models import (
    MODEL_CHOICES,
    PROMPTS_FILE,
    REAL_SET_MEAN,
    REAL_SET_MEDIAN,
    build_model,
    calibrate,
    export_assets,
    load_assets,
    prompt_source,
)
from gpu_packages import check_packages, loaded_distributions, package_lines
from gpu_profile import SetSizes, capture_check
from gpu_report import bars, failures, markdown, paper_rows
from gpu_sections import WEIGHTS, Budget, Slice, env_section, env_settings, free_memory, sac_section
from gpu_shaping import ACCEPT_P, shaping_section

HERE = Path(__file__).resolve().parent
# A GPU machine for this suite has no internet: never wait on the model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_ASSETS = HERE / "gpu_assets"
DEFAULT_OUT = HERE / "results" / "gpu_suite"


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
    p.add_argument(
        "--seconds", type=float, default=5.0, help="most measured seconds per env configuration per round (the slice)"
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (env and decode sections)")
    p.add_argument(
        "--count-steps", type=int, default=4, help="env steps counted (aten ops, forwards, host syncs) after timing"
    )
    p.add_argument(
        "--capture",
        choices=("both", "off", "on"),
        default="both",
        help="captured forwards (CUDA graphs): both = captured rows beside the eager ones (largest N, aligned "
        "decoding), off = eager only, on = every MARA row captured",
    )
    p.add_argument(
        "--compiled-plain",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="models whose decode section also times plain generate with a static cache and torch.compile "
        "(CUDA only; default: the last of --models; none: no model)",
    )
    p.add_argument(
        "--profile-steps", type=int, default=4, help="env and decode steps profiled for the GPU-busy share (CUDA)"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="decode batch sizes")
    p.add_argument("--prompts-per-batch", type=int, default=1, help="decode prompts per run = this x batch size")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer limit (random models rarely emit EOS)")
    p.add_argument("--sac-hidden", type=int, nargs="+", default=[4096], help="learner observation sizes H")
    p.add_argument("--sac-batch", type=int, default=1024)
    p.add_argument("--sac-buffer", type=int, default=4096, help="random transitions in each replay buffer")
    p.add_argument("--sac-steps", type=int, default=5, help="gradient steps per timed train() call")
    p.add_argument("--sac-seconds", type=float, default=5.0, help="most measured seconds per learner and H")
    p.add_argument(
        "--shaping-scorer",
        choices=(*MODEL_CHOICES, "none"),
        default="llama-1b",
        help="shape of the causal score model of the shaping section (none: no section)",
    )
    p.add_argument(
        "--shaping-llm", choices=MODEL_CHOICES, default=None, help="the model beside it (default: the last of --models)"
    )
    p.add_argument("--calibration-prompts", type=int, default=8)
    p.add_argument(
        "--budget-s", type=float, default=420.0, help="the run's time, shared out among its sections (see Sizing)"
    )
    p.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="folder from --export-assets")
    p.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer folder replacing SmolLM2's")
    p.add_argument("--smoke", action="store_true", help="1 round, 1 s per config, N in {1, 4}, batch 1 and 4")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for gpu_suite.json and gpu_suite.md")
    p.add_argument("--list-packages", action="store_true", help="print the packages needed beyond torch/transformers")
    p.add_argument(
        "--export-assets", type=Path, default=None, metavar="DIR", help="write SmolLM2's config, tokenizer, prompts"
    )
    args = p.parse_args(argv)
    if args.shaping_llm is None:
        args.shaping_llm = args.models[-1]
    if args.compiled_plain is None:
        args.compiled_plain = [args.models[-1]]
    elif args.compiled_plain == ["none"]:
        args.compiled_plain = []
    bad = [m for m in args.compiled_plain if m not in MODEL_CHOICES]
    if bad:
        p.error(f"--compiled-plain: {bad} are not models ({', '.join(MODEL_CHOICES)}) or 'none'.")
    if args.smoke:
        args.shaping_scorer = "tiny" if args.shaping_scorer != "none" else "none"
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
    for flag in (
        "rounds",
        "prompts_per_batch",
        "max_new_tokens",
        "sac_batch",
        "sac_steps",
        "calibration_prompts",
        "profile_steps",
    ):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
    if args.sac_buffer < args.sac_batch:
        p.error(f"--sac-buffer ({args.sac_buffer}) must be at least --sac-batch ({args.sac_batch}).")
    return args


class Suite:
    """One run: the models one after another, then the learners; the report is rewritten after every model.

    Every section runs in its slice of ``--budget-s`` (:class:`gpu_sections.Budget`). A section that fails is
    recorded with its error and the run goes on, so that one device session gives every figure it can; a run
    stopped from outside leaves the report of the models done so far.
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

    def plan(self) -> list[tuple[str, float]]:
        """The sections in run order with their weights (``gpu_sections.WEIGHTS``)."""
        args, plan = self.args, []
        for name in args.models:
            compiled = self.device.type == "cuda" and name in args.compiled_plain
            decode = WEIGHTS["decode"] + (WEIGHTS["compiled"] if compiled else 0.0)
            plan += [(f"{name} build", WEIGHTS["build"]), (f"{name} env", WEIGHTS["env"]), (f"{name} decode", decode)]
            if name == args.shaping_llm and args.shaping_scorer != "none":
                plan.append((f"{name} shaping", WEIGHTS["shaping"]))
        return [*plan, ("sac", WEIGHTS["sac"])]

    def section(self, result: dict[str, Any], label: str, key: str, fn: Callable[[Slice], Any]) -> Any:
        """``fn(slice)`` in section ``label``'s slice, guarded; skipped (and said why) once the budget is spent."""
        if not self.budget.left():
            self.budget.drop(label)
            over = self.budget.overruns()
            why = f"the time budget of {self.args.budget_s:g} s spent" + (
                f"; over their slices: {', '.join(over)}" if over else ""
            )
            result.setdefault("skipped", []).append(f"{key} ({why})")
            return None
        piece = self.budget.slice(label)
        try:
            return self.guarded(result, key, lambda: fn(piece))
        finally:
            piece.close()
            result.setdefault("skipped", []).extend(piece.skipped)

    def run_model(self, name: str, progress: Any) -> dict[str, Any]:
        from mara_env import load_replicas
        from mara_env.candidates import CandidateConfig

        result: dict[str, Any] = dict(skipped=[])
        start = time.perf_counter()
        model = self.section(
            result,
            f"{name} build",
            "build",
            lambda _: build_model(name, self.smollm2_config, self.tokenizer, self.device, self.dtype),
        )
        progress.update(1)
        if model is None:
            for key in ("env", "decode", "shaping"):
                self.budget.drop(f"{name} {key}")
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
        sets = SetSizes()
        env = self.section(result, f"{name} env", "env", lambda s: env_section(replica, self.args, s, progress, sets))
        result["env"] = env or []
        result["candidate_sets"] = sets.summary(CandidateConfig().top_k)
        result["capture_check"] = self.guarded(result, "capture check", lambda: capture_check(replica, self.args))
        progress.set_postfix_str(f"{name}: decode")
        decode = self.section(
            result, f"{name} decode", "decode", lambda s: decode_section(replica, name, self.args, s, progress)
        )
        result["decode"], result["compiled_plain"] = decode or ([], None)
        if name == self.args.shaping_llm and self.args.shaping_scorer != "none":
            progress.set_postfix_str(f"{name}: shaping")
            result["shaping"] = self.section(
                result,
                f"{name} shaping",
                "shaping",
                lambda s: shaping_section(
                    replica, self.args.shaping_scorer, self.smollm2_config, self.args, s, progress
                ),
            )
        return result

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        args = self.args
        self.budget.plan(self.plan())
        # progress units of one model: its build, then per round each env configuration and each batch size
        per_model = 1 + args.rounds * (2 + len(env_settings(args)) + len(args.batch_sizes))
        print(
            f"gpu_suite: {', '.join(args.models)} on {self.device} ({args.dtype}); {args.budget_s:.0f} s shared out "
            f"among {len(self.budget.pending)} sections",
            flush=True,
        )
        with tqdm(total=len(args.models) * per_model + len(self.hiddens), desc="gpu suite", unit="step") as progress:
            for name in args.models:
                progress.set_postfix_str(f"{name}: build")
                done = progress.n
                self.models[name] = self.run_model(name, progress)
                progress.update(max(0, done + per_model - progress.n))  # rounds skipped by the budget
                free_memory(self.device)
                self.write()
            progress.set_postfix_str("SAC learners")
            progress.total = progress.n + len(self.hiddens)  # the models' hidden sizes joined the list
            holder: dict[str, Any] = {}
            sac = self.section(
                holder, "sac", "sac", lambda s: sac_section(self.hiddens, args, self.device, s, progress)
            )
            if sac is None:
                error, why = holder.get("errors", {}).get("sac"), "; ".join(holder.get("skipped", []))
                sac = [
                    dict(hidden=h, skipped="failed", error=error) if error else dict(hidden=h, skipped=why)
                    for h in self.hiddens
                ]
            self.sac = sac
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
            f"(the default), {args.rounds} interleaved round(s) of at most {args.seconds:g} s per configuration "
            "(what the section's slice leaves after the warm-ups: seconds_per_round in the JSON). Candidate sets: "
            "every set the vector envs' rows took over the section's steps (forced single-candidate sets included), "
            "at the answer positions the model generates; the calibration's are at prompt positions, where a "
            "random model can be far less certain, so the two can differ widely.",
            f"Decode section: random agent = accept with probability {RANDOM_AGENT_P} (a stand-in for a trained "
            f"agent), {args.prompts_per_batch} x batch prompts per run, {args.rounds} round(s). 'plain compiled': "
            "model.generate with cache_implementation='static' and compile_config=CompileConfig(fullgraph=True, "
            "mode='reduce-overhead', dynamic=False) (transformers compiles the decoding forward; the first call of "
            "each batch size, untimed, compiles); aten ops and forwards are not counted under torch.compile.",
            f"Capture (--capture {args.capture}): '... captured' rows run the LLM's forwards in static shapes, "
            "recorded and replayed as CUDA graphs on CUDA (eagerly on a CPU); x eager = captured / eager rate. "
            "capture_stats: graphs captured, forwards replayed and run eagerly in a bucket, the first failure; "
            "a generator builds a decoder per generate call, so each call records its graphs again. On a GPU the "
            "aten ops of captured rows are those launched from the host (a replay is one launch).",
            f"GPU busy: torch.profiler (CUDA activity only) over {args.profile_steps} env steps (largest N) and "
            f"{args.profile_steps} decoding steps of a continuous batch (random agent), after as many unprofiled "
            "ones: the union of the GPU's kernel, copy and memset intervals over the wall time (kernel sum: their "
            "summed durations); the profiler's own host cost makes it a lower bound.",
            f"Time: --budget-s {args.budget_s:g} is shared out among the sections in run order, each getting its "
            "weight's share of the time left (gpu_sections.WEIGHTS), so an overrun is taken out of all later "
            "sections; what a slice could not fit is listed under Skipped.",
            f"Shaping section: {args.shaping_llm} with a {args.shaping_scorer}-shape causal score model (random "
            f"weights, {args.dtype}, same device) as the reward, N={max(args.envs)}, an agent accepting with "
            f"probability {ACCEPT_P}, shaping off and on (incremental scoring) in interleaved rounds.",
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
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["cpu"],
                dtype=args.dtype,
                torch=torch.__version__,
                transformers=transformers_version,
                torch_threads=torch.get_num_threads(),
                machine=machine_info(),
                smoke=args.smoke,
                models=args.models,
                args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "prompt_source"},
                prompts="default" if self.prompt_source == "default" else str(args.assets / PROMPTS_FILE),
                distributions_loaded=loaded_distributions(),
                wall_seconds=self.budget.elapsed,
                time_plan=[piece.record() for piece in self.budget.slices],
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            ),
            models=self.models,
            sac=self.sac,
            bars=bars(self.models, max(args.envs)),
            paper=paper_rows(self.models),
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
