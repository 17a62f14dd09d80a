"""Reward models behind :func:`mara_env.scoring.make_scorer`: loading, text format, and how each reads its score.

Two kinds: a safe-rlhf *score model* (a backbone loaded with ``AutoModel`` and a linear ``score_head``
read at the last token) and an ``AutoModelForSequenceClassification``. Both run as a
:class:`ModelScoreFn`, which formats pairs as text and scores them in batches. When the model's backbone
is causal (decoder-only), :attr:`ModelScoreFn.causal` says how its score is read from the last-layer
hidden states, so that :mod:`mara_env.prefix_scoring` can score growing answers incrementally.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mara_env.llm import parse_dtype, resolve_device

if TYPE_CHECKING:
    from collections.abc import Sequence

PLAIN_TEMPLATE = "User: {prompt}\n\nAssistant: {response}"
"""Text given to a sequence-classification reward model whose tokenizer has no chat template."""

BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}{eos}"
"""Text given to a safe-rlhf score model. safe-rlhf trains its score models on
``prompt + answer + eos_token``, so the tokenizer's end-of-sequence token is appended."""

# Checkpoint layouts searched for the score head: (single file, shard index).
_CHECKPOINTS = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
_HEAD_PREFIX = "score_head."


def load_reward_model(
    model_id: str,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    kind: str,
    label: int | str | None,
    template: str | None,
    batch_size: int,
    max_length: int | None,
    trust_remote_code: bool,
) -> ModelScoreFn:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load the reward model {model_id!r}: {error}. Give a folder with config.json and "
            "tokenizer files, or a hub id that is reachable or already in the Hugging Face cache."
        ) from error
    head = None
    if kind == "auto":
        architectures = config.architectures or []
        if any(a.endswith("ForScore") for a in architectures) or hasattr(config, "score_dim"):
            kind = "beaver"
        elif any(a.endswith("ForSequenceClassification") for a in architectures):
            kind = "sequence_classification"
        else:
            head = _score_head_state(model_id)
            kind = "beaver" if head else "sequence_classification"
    if tokenizer.pad_token is None:  # padding is needed for batches; the attention mask hides it
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    device = resolve_device(device)
    load_kwargs = {
        # None: the checkpoint's own dtype (transformers' "auto"); "auto": bfloat16 on CUDA, float32 elsewhere
        "dtype": "auto" if dtype is None else parse_dtype(dtype, device),
        "trust_remote_code": trust_remote_code,
    }
    # straight onto the device, without a full copy in CPU memory first (transformers needs accelerate for
    # that; without it the model is loaded on the CPU and moved)
    placed = importlib.util.find_spec("accelerate") is not None
    if placed:
        load_kwargs["device_map"] = device
    limits = [max_length, tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
    # Tokenizers without a known limit report a huge model_max_length; ignore such values.
    limit = min((x for x in limits if isinstance(x, int) and 0 < x < 1_000_000), default=None)

    if kind == "beaver":
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        head = head or _score_head_state(model_id)
        if not head:
            raise ValueError(
                f"{model_id!r} has no score_head weights (looked for score_head.* in "
                "model.safetensors[.index.json] and pytorch_model.bin[.index.json]); it is not a score model."
            )
        # The backbone ignores the score_head weights on purpose: silence the load report that lists
        # them as unexpected, and check the keys that matter (missing backbone weights) here instead.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            backbone, info = AutoModel.from_pretrained(model_id, output_loading_info=True, **load_kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        backbone = backbone if placed else backbone.to(device)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])[:5]
            raise ValueError(f"{model_id!r}: the checkpoint lacks the backbone weights {missing}.")
        forward, causal = _end_score(backbone.eval(), head, label, device)
        text = template or BEAVER_TEMPLATE
        loaded = backbone.dtype
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(model_id, **load_kwargs)
        model = model if placed else model.to(device)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        forward, causal = _classifier_score(model.eval(), label)
        text = template or (None if tokenizer.chat_template else PLAIN_TEMPLATE)
        loaded = model.dtype
    return ModelScoreFn(
        forward, tokenizer, text, batch_size=batch_size, max_length=limit, device=device, dtype=loaded, causal=causal
    )


def check_template(template: str) -> None:
    try:
        filled = template.format(prompt="\0p", response="\0r", eos="")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"template must be a format string using only {{prompt}}, {{response}} and {{eos}}: {error!r}."
        ) from error
    if "\0r" not in filled:
        raise ValueError("template must contain {response}.")


def _score_head_state(model_id: str) -> dict[str, torch.Tensor]:
    """Read the ``score_head.*`` tensors of a checkpoint, without loading the rest of it."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def locate(filename: str) -> str | None:
        return cached_file(model_id, filename, _raise_exceptions_for_missing_entries=False)

    for single, index in _CHECKPOINTS:
        index_path = locate(index)
        if index_path is not None:
            weight_map = json.loads(Path(index_path).read_text())["weight_map"]
            shards = sorted({file for key, file in weight_map.items() if key.startswith(_HEAD_PREFIX)})
        else:
            shards = [single]
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            path = locate(shard)
            if path is None:
                continue
            if path.endswith(".safetensors"):
                with safe_open(path, framework="pt") as file:
                    names = [k for k in file.keys() if k.startswith(_HEAD_PREFIX)]  # noqa: SIM118 (no __iter__)
                    state |= {k: file.get_tensor(k) for k in names}
            else:
                weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                state |= {k: v for k, v in weights.items() if k.startswith(_HEAD_PREFIX)}
        if state:
            return state
    return {}


_Forward = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""``forward(input_ids, attention_mask)`` returning one score per row."""


@dataclass(frozen=True)
class CausalScore:
    """How a score model with a causal (decoder-only) backbone reads its score from hidden states.

    A causal backbone's hidden state at a token depends only on the tokens up to it, so the score of a
    longer text can reuse the keys/values of its shared prefix (:mod:`mara_env.prefix_scoring`).

    :param backbone: the transformer whose ``base_model`` gives the last-layer hidden states (after the
        final norm), as a causal LM's does.
    :param head: final hidden states ``(n, hidden)`` -> one score each (float32).
    :param skip_id: the score is read at the last token whose id is not this one (a sequence
        classifier's rule: its pad id); ``None``: at the last token.
    """

    backbone: Any
    head: Callable[[torch.Tensor], torch.Tensor]
    skip_id: int | None = None


def _is_decoder_only(config: Any) -> bool:
    """Whether ``config``'s model type has a causal-LM class (decoder-only or causal-capable).

    Encoders whose type also has a causal-LM head (BERT's) are caught by the causality probe of
    :mod:`mara_env.prefix_scoring`, which runs the backbone before trusting it.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False)


def _end_score(
    backbone: Any, head: dict[str, torch.Tensor], label: int | str | None, device: torch.device
) -> tuple[_Forward, CausalScore | None]:
    """A safe-rlhf score model: ``score_head`` applied to the hidden state of the last non-padding token."""

    weight = head["score_head.weight"].float().to(device)
    bias = head["score_head.bias"].float().to(device) if "score_head.bias" in head else None
    column = _pick_label(weight.shape[0], label, {}, "score dimensions")

    def read(hidden: torch.Tensor) -> torch.Tensor:
        scores = hidden.float() @ weight.T
        return (scores if bias is None else scores + bias)[:, column]

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # The last position whose mask is 1 (safe-rlhf's `end_scores`), whichever side is padded.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        end = (positions * attention_mask).argmax(dim=-1)
        return read(hidden[torch.arange(hidden.shape[0], device=hidden.device), end])

    return forward, CausalScore(backbone, read) if _is_decoder_only(backbone.config) else None


def _classifier_score(model: Any, label: int | str | None) -> tuple[_Forward, CausalScore | None]:
    """An ``AutoModelForSequenceClassification``: its only logit, or the probability of one class."""

    config = model.config
    column = _pick_label(config.num_labels, label, config.label2id)
    multi_label = config.problem_type == "multi_label_classification"

    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if config.num_labels == 1:
            return logits[:, 0]
        return (logits.sigmoid() if multi_label else logits.softmax(dim=-1))[:, column]

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pick(model(input_ids=input_ids, attention_mask=attention_mask).logits)

    # Decoder-only classifiers (transformers' generic one) put a linear `score` on the last hidden states and
    # read it at the last token that is not the pad id; other heads (encoders' poolers) are not incremental.
    score = getattr(model, "score", None)
    if not (isinstance(score, torch.nn.Linear) and _is_decoder_only(config)):
        return forward, None
    return forward, CausalScore(model, lambda hidden: pick(score(hidden)), skip_id=config.pad_token_id)


def _pick_label(count: int, label: int | str | None, names: dict[str, int], what: str = "labels") -> int:
    if count == 1 and label in (None, 0):
        return 0
    if isinstance(label, str) and label in names:
        return names[label]
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < count:
        return label
    choices = f" ({', '.join(f'{i}={n!r}' for n, i in sorted(names.items(), key=lambda x: x[1]))})" if names else ""
    raise ValueError(
        f"The model has {count} {what}{choices}; pass label= with the index"
        f"{' or name' if names else ''} of the one to score (got {label!r})."
    )


def split_scorer_devices(devices: Any) -> tuple[Any, Any]:
    """``(reward device, cost device)`` from a ``scorer_devices`` setting: ``None``, one device for both, or
    a list of one or two devices.

    :raises ValueError: another form, naming the forms that work.
    """
    one = (str, torch.device)
    if devices is None or isinstance(devices, one):
        return devices, devices
    if isinstance(devices, (list, tuple)) and 1 <= len(devices) <= 2 and all(isinstance(d, one) for d in devices):
        return devices[0], devices[-1]
    raise ValueError(
        "scorer_devices must be None (the first LLM replica's device), one device for both scorers ('cuda:1'), "
        f"or [reward device, cost device] (['cuda:1', 'cuda:2']); got {devices!r}."
    )


class ModelScoreFn:
    """Formats pairs as text, tokenizes them in batches and runs a score model without gradients."""

    def __init__(
        self,
        forward: _Forward,
        tokenizer: Any,
        template: str | None,
        *,
        batch_size: int,
        max_length: int | None,
        device: torch.device,
        dtype: torch.dtype | None = None,
        causal: CausalScore | None = None,
    ):
        self.forward = forward
        self.tokenizer = tokenizer
        self.template = template  # None: the tokenizer's chat template
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype  # as loaded
        #: How the score is read from a causal backbone; ``None``: the model can only score whole texts.
        self.causal = causal

    def format(self, prompt: str, response: str) -> str:
        """The text the model reads for one pair."""
        if self.template is None:
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(turns, tokenize=False)
        return self.template.format(prompt=prompt, response=response, eos=self.tokenizer.eos_token or "")

    def tokenize(self, texts: Sequence[str], **kwargs: Any) -> Any:
        """Token ids of ``texts`` as the model reads them (truncated to the model's length)."""
        return self.tokenizer(
            list(texts),
            truncation=self.max_length is not None,
            max_length=self.max_length,
            # A chat template writes its own special tokens; plain templates need the tokenizer's.
            add_special_tokens=self.template is not None,
            **kwargs,
        )

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        import torch

        texts = [self.format(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenize(texts[start : start + self.batch_size], padding=True, return_tensors="pt")
                batch = batch.to(self.device)
                scores.append(self.forward(batch["input_ids"], batch["attention_mask"]).float().cpu())
        return torch.cat(scores).numpy()
