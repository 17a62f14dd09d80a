"""Every setting of the MARA environment, in one validated place.

Both :class:`~mara_env.env.TokenAcceptRejectEnv` and
:class:`~mara_env.vector_env.TokenAcceptRejectVectorEnv` take these as keyword arguments, so
``gym.make("MARA-v0", top_k=40)`` and ``gym.make_vec("MARA-v0", num_envs=8, top_k=40)`` mean the same.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np
import torch

from mara_env.candidates import CandidateConfig
from mara_env.chunking import make_chunk_rule
from mara_env.contract import REWARD_SHAPINGS
from mara_env.hints import did_you_mean
from mara_env.llm import check_devices, check_dtype
from mara_env.observation import ObservationLayout
from mara_env.prompts import check_test_fraction
from mara_env.score_models import split_scorer_devices
from mara_env.scoring import check_cost_scale

#: What ``chunk_size="auto"`` means per device type, for generation one sequence at a time and for
#: everything else (batched generation, environments of any size): a fixed
#: number of candidates per forward, or ``"adaptive"`` (:data:`ADAPTIVE_CHUNKS`). On CPU a one-row
#: forward's cost is mostly fixed (reading the weights), so computing the candidates the agent will
#: probably look at in one forward pays; with many rows the cost grows with the tokens, so only the
#: candidate under decision is computed (``benchmarks/decode_speed.py``, trained agent, 2 cores:
#: adaptive 0.56x plain at batch 1 against 0.28x for one candidate, but 0.23x against 0.33x at batch
#: 16; ``benchmarks/env_throughput.py``). Accelerators have spare width, so adaptive chunks cost
#: almost nothing and save the forwards that rejections past the chunk need (to be measured by
#: ``benchmarks/gpu_suite.py``).
AUTO_CHUNK_SIZE: dict[str, tuple[int | str, int | str]] = {
    "cpu": ("adaptive", 1),
    "cuda": ("adaptive", "adaptive"),
    "mps": ("adaptive", "adaptive"),
    "xpu": ("adaptive", "adaptive"),
}

#: ``chunk_size="adaptive"`` per device type: (largest chunk, coverage), where coverage is the
#: probability that a row's chunk holds the candidate the agent takes (:mod:`mara_env.chunking`).
#: CPU: tuned on training prompts at batch 1 (coverage 0.5 / 0.65 / 0.8 / 0.9 / 0.97: 0.49x / 0.56x /
#: 0.60x / 0.64x / 0.67x plain).
ADAPTIVE_CHUNKS: dict[str, tuple[int, float]] = {
    "cpu": (16, 0.97),
    "cuda": (16, 0.95),
    "mps": (8, 0.9),
    "xpu": (16, 0.95),
}


@dataclass(frozen=True)
class DecoderConfig:
    """Rules shared by training and generation.

    :param candidates: how candidate sets are formed.
    :param max_new_tokens: response-length limit (the paper's 512).
    :param chunk_size: candidates whose hidden states are computed per forward (``>= 1``); with
        ``chunk_coverage``, the largest chunk.
    :param chunk_coverage: ``None``: every chunk has ``chunk_size`` candidates; a probability in (0, 1]:
        each row's chunk is sized to hold the candidate the agent takes with that probability
        (:class:`mara_env.chunking.AdaptiveChunks`).
    :param packed: run a forward whose rows have different token counts without padding
        (:meth:`ReplicaEngine.run` with ``packed=True``) instead of padding every row to the widest.
    :param lookahead: in forwards that run anyway, forward the forced token after each candidate under
        decision (and a set's last candidate) ahead of the decision (module docstring); it pays where
        every call must leave all rows READY (environments). Packed forwards do no work ahead.
    :param draft_tokens: with ``lookahead``, the longest chain of guessed tokens (:mod:`mara_env.drafting`)
        a row forwards ahead in one forward; ``0`` guesses nothing.
    :param capture: run forwards in static shapes, replayed as CUDA graphs on CUDA devices
        (:mod:`mara_env.capture`); elsewhere the static shapes run eagerly (no gain: for tests).
    """

    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    max_new_tokens: int = 512
    chunk_size: int = 1
    chunk_coverage: float | None = None
    packed: bool = False
    lookahead: bool = False
    draft_tokens: int = 4
    capture: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(
                f"chunk_size must be an integer >= 1 (or 'auto'/'all' in the env), got {self.chunk_size!r}."
            )
        if self.chunk_coverage is not None:
            make_chunk_rule(self.chunk_size, self.chunk_coverage)  # checks the coverage
        if isinstance(self.draft_tokens, bool) or not isinstance(self.draft_tokens, int) or self.draft_tokens < 0:
            raise ValueError(
                f"draft_tokens must be an integer >= 0 (0 guesses nothing, 4 by default), got {self.draft_tokens!r}."
            )


class ChunkPlan(NamedTuple):
    """How many candidates a forward computes per row.

    :param size: candidates per forward; with ``coverage``, the largest chunk.
    :param coverage: ``None`` (fixed ``size``) or the adaptive rule's target probability that the chunk
        holds the candidate the agent takes.
    :param packed: forwards whose rows have different chunk sizes run without padding (pays where a
        padded token costs as much as a real one: CPUs).
    """

    size: int
    coverage: float | None = None
    packed: bool = False


def setting_help(cls: type) -> dict[str, str]:
    """Each dataclass field's help text (its ``metadata["help"]``), by field name: what ``--help`` shows.

    >>> setting_help(MARAConfig)["top_p"]
    'nucleus mass in (0, 1] (paper: 0.95).'
    """
    return {f.name: f.metadata["help"] for f in fields(cls) if "help" in f.metadata}


def chunk_size_problem(chunk_size: Any) -> str | None:
    """What a ``chunk_size`` setting should have been; ``None`` if it is valid."""
    if chunk_size in ("auto", "all", "adaptive") or (
        isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1
    ):
        return None
    return f"chunk_size must be an integer >= 1, 'all', 'adaptive' or 'auto', got {chunk_size!r}."


def resolve_chunking(
    chunk_size: int | str | ChunkPlan, device: torch.device, set_cap: int, rows: int | None = None
) -> ChunkPlan:
    """The chunk plan on ``device``: an integer is fixed, ``"all"`` is the set-size cap ``top_k``,
    ``"adaptive"`` sizes each row's chunk (:data:`ADAPTIVE_CHUNKS`), ``"auto"`` is the device's
    default (:data:`AUTO_CHUNK_SIZE`); a :class:`ChunkPlan` is taken as it is (e.g.
    ``ChunkPlan(8, coverage=0.9)`` for another coverage).

    :param chunk_size: an integer >= 1, ``"all"``, ``"adaptive"``, ``"auto"`` or a :class:`ChunkPlan`.
    :param device: the LLM's device.
    :param set_cap: the candidate-set size cap (``top_k``).
    :param rows: sequences a generation decoder runs at once (``"auto"`` differs for one and for several);
        ``None`` for an environment, where every sub-environment needs one new token per step whatever
        N is (measured: adaptive chunks gain nothing at N=1 on CPU) and a fixed rule keeps seeded
        rollouts bitwise reproducible.
    :raises ValueError: another value.

    >>> import torch
    >>> resolve_chunking("all", torch.device("cpu"), 50), resolve_chunking("adaptive", torch.device("cpu"), 50)
    (ChunkPlan(size=50, coverage=None, packed=False), ChunkPlan(size=16, coverage=0.97, packed=True))
    >>> cpu = torch.device("cpu")
    >>> resolve_chunking("auto", cpu, 50, rows=1).coverage, resolve_chunking("auto", cpu, 50)
    (0.97, ChunkPlan(size=1, coverage=None, packed=False))
    """
    if isinstance(chunk_size, ChunkPlan):
        DecoderConfig(chunk_size=chunk_size.size, chunk_coverage=chunk_size.coverage)  # checks both
        return chunk_size
    problem = chunk_size_problem(chunk_size)
    if problem is not None:
        raise ValueError(problem)
    if chunk_size == "auto":
        one, several = AUTO_CHUNK_SIZE.get(device.type, ("adaptive", "adaptive"))
        chunk_size = one if rows == 1 else several
    if chunk_size == "all":
        return ChunkPlan(set_cap)
    if chunk_size == "adaptive":
        size, coverage = ADAPTIVE_CHUNKS.get(device.type, (16, 0.95))
        return ChunkPlan(min(size, set_cap), coverage, packed=device.type == "cpu")
    return ChunkPlan(int(chunk_size))


def resolve_chunk_size(chunk_size: int | str, device: torch.device, set_cap: int, rows: int | None = None) -> int:
    """The largest chunk on ``device`` (:func:`resolve_chunking`'s ``size``).

    >>> import torch
    >>> resolve_chunk_size(3, torch.device("cpu"), 50), resolve_chunk_size("all", torch.device("cpu"), 50)
    (3, 50)
    """
    return resolve_chunking(chunk_size, device, set_cap, rows).size


def type_problem(annotation: str, value: Any) -> str | None:
    """What ``value`` should have been for a field annotated ``annotation``; ``None`` if it fits.

    :param annotation: the annotation as text, e.g. ``"int"`` or ``"str | None"`` (``Any`` fits everything).
    :param value: the given value; NumPy scalars count as numbers, ``True``/``False`` never do.
    """
    allowed = {part.strip() for part in annotation.split("|")}
    if "Any" in allowed:
        return None
    checks = {
        "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)),
        "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)),
        "bool": lambda v: isinstance(v, (bool, np.bool_)),
        "str": lambda v: isinstance(v, str),
        "None": lambda v: v is None,
    }
    if any(checks[name](value) for name in allowed if name in checks):
        return None
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "None": "none"}
    order = list(words)
    return " or ".join(
        words.get(name, name) for name in sorted(allowed, key=lambda n: order.index(n) if n in order else 9)
    )


@dataclass
class MARAConfig:
    """Settings of the token accept/reject environment.

    Each field's help text is beside it, in ``dataclasses.fields(MARAConfig)[i].metadata["help"]``
    (:func:`setting_help`), where ``mara train --help`` reads it. The groups: the LLM (``llm`` ..
    ``system_prompt``), candidate sets and episodes (``top_k`` .. ``prompt_overflow``), rewards
    (``kl_coef`` .. ``shaping_gamma``), prompts (``prompts`` .. ``split_seed``), observations and
    speed (``observation`` .. ``info_response``).
    """

    llm: Any = field(
        default=None,
        metadata={
            "help": (
                "the reference LLM: None (embedded SmolLM2-135M-Instruct), a hub id or local folder, (model, "
                "tokenizer), a list of such pairs (one replica each), or a list of device names (the embedded model "
                "on each). See mara_env.llm.load_replicas."
            )
        },
    )
    devices: Any = field(
        default=None,
        metadata={
            "help": (
                "devices for the replicas (one replica per entry; repeat a name for several replicas on one device). "
                "None: the model's own device, else CUDA if present, else CPU."
            )
        },
    )
    dtype: Any = field(
        default="auto",
        metadata={"help": '"auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16", "float16".'},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow model repositories' own code (off by default)."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "optional system message for the chat template."})
    top_k: int = field(
        default=50, metadata={"help": "candidates considered per position (paper: 50; the authors' code: 40)."}
    )
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass in (0, 1] (paper: 0.95)."})
    temperature: float = field(default=1.0, metadata={"help": "applied to logits before the top-k/top-p cuts."})
    max_new_tokens: int = field(
        default=512, metadata={"help": "response-length limit; reaching it ends the episode (paper: 512)."}
    )
    max_prompt_tokens: int | None = field(
        default=None,
        metadata={"help": "longest formatted prompt; None: the model's context minus max_new_tokens and one chunk."},
    )
    prompt_overflow: str = field(
        default="truncate",
        metadata={
            "help": (
                'what to do with a longer prompt: "truncate" (cut the user text from the left, with a warning once '
                'per prompt) or "error".'
            )
        },
    )
    kl_coef: float = field(
        default=0.1, metadata={"help": "lambda, the weight of the per-decision reference log-probability reward."}
    )
    reward_model: Any = field(
        default="sentiment",
        metadata={
            "help": (
                'R: "sentiment", "toxicity", "length", "zero", a path or id of a reward model (sequence classifier or'
                " beaver score model), or a callable (prompts, responses) -> scores."
            )
        },
    )
    cost_model: Any = field(
        default="toxicity", metadata={"help": 'C, same forms (default "toxicity"); None for no cost.'}
    )
    alpha_r: float = field(default=1.0, metadata={"help": "weight of R."})
    alpha_c: float = field(default=1.0, metadata={"help": "weight of C."})
    cost_scale: str = field(
        default="linear",
        metadata={
            "help": (
                '"linear" (the paper\'s alpha_r R - alpha_c C) or "logit": C enters the reward as its log-odds '
                "log(C / (1 - C)), for a cost that is a probability (toxicity), so that halving a small cost counts "
                "as much as halving a large one. Training reward only: reported scores stay C."
            )
        },
    )
    scorer_devices: Any = field(
        default=None,
        metadata={
            "help": (
                "devices of reward/cost models given by name or path: None (the first LLM replica's), one device for "
                "both, or [reward device, cost device]; e.g. an 8B LLM on cuda:0 and the score models on cuda:1."
            )
        },
    )
    scorer_dtype: Any = field(
        default="auto",
        metadata={
            "help": (
                '"auto" (bfloat16 on CUDA, float32 elsewhere), "float32", "bfloat16", "float16", or None (each '
                "checkpoint's own): the dtype of reward/cost models given by name or path."
            )
        },
    )
    reward_shaping: str = field(
        default="none",
        metadata={
            "help": (
                '"none" or "potential": dense credit that leaves the optimal policy unchanged (Ng, Harada and '
                "Russell, 1999). After every decision the committed prefix y_<=t is scored, Phi(s) = alpha_r R(x, "
                "y_<=t) - alpha_c g(C(x, y_<=t)) (Phi = 0 at the terminal state), and the decision's reward gains "
                "shaping_gamma * Phi(s') - Phi(s). Costs one batched call of each scorer per step (on the rows whose "
                "prefix grew); causal score models (beaver score models, decoder-only sequence classifiers) score "
                "incrementally, about one token per row, others re-score the whole prefix (mara_env.prefix_scoring)."
            )
        },
    )
    shaping_gamma: float = field(
        default=0.99,
        metadata={
            "help": (
                "the discount of the shaping term, in (0, 1]; use the agent's gamma for exact policy invariance of "
                "the discounted objective (1.0: an episode's shaping terms add up to -Phi(s_0), a constant per prompt"
                " start)."
            )
        },
    )
    shaping_interval: int = field(
        default=1,
        metadata={
            "help": (
                "with potential shaping, score the prefix every k committed tokens (Phi of t tokens is that of the "
                "first t - t % k, still a potential, so the optimum is kept): divides the cost of scorers that "
                "re-score whole prefixes by about k."
            )
        },
    )
    prompts: Any = field(
        default="default",
        metadata={
            "help": (
                "a list of strings, a file (txt, jsonl, json, csv, parquet), a Hugging Face dataset id (column:"
                " prompt_column), a datasets.Dataset or DatasetDict, or a built-in name (see"
                " mara_env.prompts.BUILTIN_PROMPT_SETS)."
            )
        },
    )
    prompt_column: str | None = field(
        default=None, metadata={"help": "column/field holding the prompt (files and datasets)."}
    )
    dataset_split: str = field(default="train", metadata={"help": "split of a Hugging Face dataset."})
    prompt_split: str = field(
        default="train",
        metadata={"help": 'which part of the deterministic train/test split to draw from: "train", "test" or "all".'},
    )
    test_fraction: float = field(default=0.2, metadata={"help": "share of prompts held out as the test part."})
    split_seed: int = field(
        default=0, metadata={"help": "seed of the train/test split (independent of episode seeds)."}
    )
    observation: str = field(
        default="hidden",
        metadata={
            "help": (
                '"hidden" (the candidate\'s hidden state, the paper\'s) or "hidden+ref" (followed by the reference\'s '
                "features of the decision: log q_k, log p_ref(accept|k), log p_ref(reject|k), rank, set size, "
                'remaining mass, set entropy, position; see mara_env.observation). MARA-v1 defaults to "hidden+ref".'
            )
        },
    )
    chunk_size: int | str = field(
        default="auto",
        metadata={
            "help": (
                'candidates whose hidden states are computed per forward: an integer >= 1 (1 = lazy), "all" (the '
                'whole set at once), "adaptive" (per row, sized to hold the candidate the agent will take, see '
                'mara_env.chunking), or "auto" (per device, see AUTO_CHUNK_SIZE).'
            )
        },
    )
    lookahead: bool = field(
        default=True,
        metadata={
            "help": (
                "in forwards that run anyway, forward the forced token after each candidate under decision ahead "
                "of the decision, so that an accept followed by a forced token needs no extra round of forwards "
                "(mara_env.decoder); the same episodes either way."
            )
        },
    )
    draft_tokens: int = field(
        default=4,
        metadata={
            "help": (
                "with lookahead, the longest chain of guessed tokens (n-grams seen before, mara_env.drafting) a "
                "row forwards ahead in one forward, checked by the next output-head call: a forced chain then "
                "costs one round instead of one per token when the guesses are right; 0 guesses nothing. The "
                "same episodes either way. Used on accelerators only (on a CPU each guessed token costs its "
                "compute)."
            )
        },
    )
    capture: bool = field(
        default=False,
        metadata={
            "help": (
                "record the LLM's forwards as CUDA graphs and replay them (mara_env.capture): static shapes, a few "
                "buckets per run, eager where capture fails. Off by default: not yet measured to win. On a CPU the "
                "static shapes run eagerly (slower; for tests). The same episodes either way."
            )
        },
    )
    obs_dtype: str = field(
        default="float32", metadata={"help": '"float32" or "float16" (halves replay-buffer memory).'}
    )
    info_response: bool = field(
        default=False, metadata={"help": "put the response text so far in every step's info (costs a decode per step)."}
    )

    def __post_init__(self) -> None:
        # Every setting is checked here, where it is given, rather than where it is first used
        for f in fields(self):
            value = getattr(self, f.name)
            expected = type_problem(str(f.type), value)
            if expected is not None:
                raise ValueError(f"{f.name} must be {expected}, got {value!r} ({type(value).__name__}).")
        self.candidates = CandidateConfig(top_k=self.top_k, top_p=self.top_p, temperature=self.temperature)
        # validates max_new_tokens and draft_tokens
        DecoderConfig(candidates=self.candidates, max_new_tokens=self.max_new_tokens, draft_tokens=self.draft_tokens)
        check_devices(self.devices)
        check_dtype(self.dtype)
        split_scorer_devices(self.scorer_devices)
        try:
            check_dtype(self.scorer_dtype)
        except ValueError as error:
            raise ValueError(f"scorer_{error}") from None
        check_test_fraction(self.test_fraction)
        for name in ("alpha_r", "alpha_c"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}.")
        if not (isinstance(self.kl_coef, (int, float)) and math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {self.kl_coef!r} (paper: 0.1).")
        if self.prompt_overflow not in ("truncate", "error"):
            raise ValueError(f"prompt_overflow must be 'truncate' or 'error', got {self.prompt_overflow!r}.")
        if self.prompt_split not in ("train", "test", "all"):
            raise ValueError(f"prompt_split must be 'train', 'test' or 'all', got {self.prompt_split!r}.")
        ObservationLayout(self.observation, 1)  # validates the name
        check_cost_scale(self.cost_scale, self.cost_model)
        if self.reward_shaping not in REWARD_SHAPINGS:
            hint = did_you_mean(self.reward_shaping, REWARD_SHAPINGS)
            raise ValueError(
                f"reward_shaping must be 'none' or 'potential' (prefix-score potential shaping), "
                f"got {self.reward_shaping!r}.{hint}"
            )
        gamma = self.shaping_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma <= 1.0:
            raise ValueError(
                f"shaping_gamma must be a number in (0, 1], got {gamma!r}; use the agent's discount (e.g. 0.99)."
            )
        if self.shaping_interval < 1:
            raise ValueError(
                f"shaping_interval must be an integer >= 1, got {self.shaping_interval!r}; 1 scores after every "
                "committed token."
            )
        if self.obs_dtype not in ("float32", "float16"):
            raise ValueError(f"obs_dtype must be 'float32' or 'float16', got {self.obs_dtype!r}.")
        if chunk_size_problem(self.chunk_size) is not None:
            raise ValueError(chunk_size_problem(self.chunk_size))
        if self.max_prompt_tokens is not None and (
            not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 1
        ):
            raise ValueError(f"max_prompt_tokens must be None or an integer >= 1, got {self.max_prompt_tokens!r}.")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> MARAConfig:
        """Build a config, naming unknown keyword arguments and the closest valid one."""
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                hint = did_you_mean(key, names, f" Valid arguments: {', '.join(names)}.")
                raise TypeError(f"MARA got an unknown argument {key!r}.{hint}")
        return cls(**kwargs)

    @property
    def np_obs_dtype(self) -> np.dtype:
        return np.dtype(self.obs_dtype)
