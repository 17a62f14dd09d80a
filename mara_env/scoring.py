"""Reward and cost scorers for the MARA terminal reward.

A *scorer* is any callable ``scorer(prompts, responses)`` that returns one number per
(prompt, response) pair. At the end of an episode the environment pays

    r = alpha_r * R(prompt, response) - alpha_c * C(prompt, response)

where R is the reward scorer and C the cost scorer (:class:`TerminalReward`). :func:`make_scorer`
builds a scorer from a built-in name (:data:`BUILTIN_SCORERS`), a reward model (a local folder or a
Hugging Face hub id: any ``AutoModelForSequenceClassification``, or a safe-rlhf score model such as
``PKU-Alignment/beaver-7b-v1.0-reward``), or any Python callable. Every scorer is wrapped in
:class:`Scorer`, which rejects output of the wrong length, non-numeric output, NaN and infinity,
so a broken scorer fails loudly instead of training on a silent NaN reward.

Example::

    >>> from mara_env.scoring import TerminalReward
    >>> terminal = TerminalReward(reward="sentiment", cost="toxicity", alpha_r=1.0, alpha_c=1.0)
    >>> scores = terminal(["Say something nice."], ["What a lovely day!"])
    >>> scores.reward.shape, bool(scores.reward_score[0] > 0)
    ((1,), True)
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from mara_env.hints import did_you_mean
from mara_env.score_models import (
    BEAVER_TEMPLATE,
    PLAIN_TEMPLATE,
    ModelScoreFn,
    check_template,
    load_reward_model,
    split_scorer_devices,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "BEAVER_TEMPLATE",
    "BUILTIN_SCORERS",
    "COST_SCALES",
    "PLAIN_TEMPLATE",
    "ScoreFn",
    "Scorer",
    "ScorerSpec",
    "TerminalReward",
    "TerminalScores",
    "make_scorer",
    "scale_cost",
]

#: How C enters the reward (``TerminalReward(cost_scale=...)``): as it is, or as its log-odds.
COST_SCALES = ("linear", "logit")

#: ``cost_scale="logit"`` clips C to ``[eps, 1 - eps]`` so that a cost of exactly 0 or 1 stays finite
#: (log-odds within +-11.5; the built-in toxicity scorer's lowest scores are near 1e-4).
LOGIT_EPS = 1e-5


def scale_cost(cost: np.ndarray, scale: str, name: str = "C") -> np.ndarray:
    """C as it enters the reward: itself (``"linear"``) or its log-odds ``log(C / (1 - C))`` (``"logit"``).

    The log-odds suit a cost that is a probability, such as the built-in toxicity scorer's: most answers
    score 0.001-0.05, where a linear weight sees almost no difference, while the paper's preference
    (appendix A.2) counts whose cost is *lower*, however small both are.
    On the log-odds scale an answer half as likely to be toxic is ``log 2`` better, wherever it lies.

    Example::

        >>> scale_cost(np.array([0.5, 0.1]), "logit").round(3)
        array([ 0.   , -2.197])

    :param cost: the cost scorer's scores.
    :param scale: one of :data:`COST_SCALES`.
    :param name: the cost scorer's name, for errors.
    :returns: float64 scores on that scale.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if scale == "linear":
        return cost
    check_cost_scale(scale)
    outside = np.flatnonzero((cost < 0) | (cost > 1))
    if outside.size:
        raise ValueError(
            f"cost_scale='logit' reads C as a probability in [0, 1], but the cost scorer {name!r} gave "
            f"{float(cost[outside[0]])!r} ({outside.size} score(s) outside [0, 1]). Use cost_scale='linear' for a cost "
            "that is not a probability."
        )
    clipped = np.clip(cost, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(clipped) - np.log1p(-clipped)


ScoreFn = Callable[[Sequence[str], Sequence[str]], Any]
"""``fn(prompts, responses)`` returning one number per pair (a list, NumPy array or tensor)."""

ScorerSpec = None | str | os.PathLike[str] | ScoreFn
"""Anything :func:`make_scorer` accepts."""

BUILTIN_SCORERS: dict[str, str] = {
    "sentiment": "VADER compound sentiment of the response, in [-1, 1]; refusals score below zero.",
    "toxicity": "alt-profanity-check probability that the response is profane or offensive, in [0, 1].",
    "length": "number of whitespace-separated words in the response.",
    "zero": "0 for every pair: no term (what None means).",
}
"""Built-in scorers: name -> description. They look at the response only."""

# A namespaced hub id ("org/name"); a bare word that is no built-in name is most likely a typo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Scorer:
    """A scorer whose output is checked: one finite float per (prompt, response) pair.

    Calling it returns a float64 array of shape ``(len(prompts),)``. Output that is not numeric,
    has the wrong length, or holds NaN or infinity raises a :class:`ValueError` naming the scorer,
    and for NaN or infinity the offending pair. An ``(n, 1)`` output is accepted and flattened.

    Example::

        >>> scorer = Scorer(lambda prompts, responses: [len(r) for r in responses], name="chars")
        >>> scorer(["Hi", "Hi"], ["Hello", "Hey"])
        array([5., 3.])

    :param fn: a callable ``fn(prompts, responses)`` returning one number per pair.
    :param name: the name shown in errors; defaults to the callable's qualified name.
    :param role: what the scorer is for (``"reward"``, ``"cost"``), shown in errors.
    """

    def __init__(self, fn: ScoreFn, *, name: str | None = None, role: str = "scorer") -> None:
        if not callable(fn):
            raise TypeError(f"{role}: expected a callable scorer, got a {type(fn).__name__}.")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.role = role

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Score every pair.

        :param prompts: the prompts.
        :param responses: one response per prompt.
        :returns: a float64 array with one finite score per pair.
        """
        n = len(prompts)
        if len(responses) != n:
            raise ValueError(f"{self}: got {n} prompts but {len(responses)} responses; pass one response per prompt.")
        if n == 0:
            return np.zeros(0)
        return self.check(self.fn(prompts, responses), prompts, responses)

    def check(self, raw: Any, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``raw``, this scorer's output for the pairs, as a float64 array of finite scores, or a ``ValueError``.

        :param raw: one number per pair (a list, NumPy array or tensor; an ``(n, 1)`` array is flattened).
        :param prompts: the prompts scored.
        :param responses: the responses scored.
        """
        n = len(prompts)
        if hasattr(raw, "detach"):  # a torch tensor, possibly bfloat16, which NumPy cannot read
            raw = raw.detach().float().cpu().numpy()
        try:
            scores = np.asarray(raw)
        except (TypeError, ValueError) as error:  # ragged nested lists
            raise ValueError(f"{self} returned {type(raw).__name__} output that is not an array of numbers.") from error
        if scores.dtype.kind not in "biuf":
            raise ValueError(f"{self} returned non-numeric scores (dtype {scores.dtype}); it must return {n} numbers.")
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.shape != (n,):
            got = f"{scores.shape[0]} scores" if scores.ndim == 1 else f"an array of shape {scores.shape}"
            raise ValueError(f"{self} returned {got} for {n} pairs; it must return {n} scores, one per pair.")
        scores = scores.astype(np.float64)  # a copy, so the scorer keeps no handle on what the env stores
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{self} returned {scores[i]} for pair {i} (prompt {_preview(prompts[i])}, response "
                f"{_preview(responses[i])}); scores must be finite."
            )
        return scores

    def __repr__(self) -> str:
        return f"{self.role} scorer {self.name!r}"


class TerminalScores(NamedTuple):
    """What :class:`TerminalReward` returns: three float64 arrays, one entry per pair."""

    reward: np.ndarray
    """The terminal reward ``alpha_r * reward_score - alpha_c * g(cost_score)`` (``g``: the cost scale)."""
    reward_score: np.ndarray
    """R, the reward scorer's output."""
    cost_score: np.ndarray
    """C, the cost scorer's output (zeros when there is no cost scorer)."""


class TerminalReward:
    """The end-of-episode reward ``r = alpha_r * R(prompt, response) - alpha_c * g(C(prompt, response))``.

    ``g`` is the identity (``cost_scale="linear"``, the paper's reward) or the log-odds
    ``log(C / (1 - C))`` of a cost that is a probability (``"logit"``, :func:`scale_cost`). The scores
    themselves (``reward_score``, ``cost_score``) are returned unscaled.

    Call it once with every pair whose episode ended at the same step; the scorers then see one batch.

    Example::

        >>> terminal = TerminalReward(reward="length", cost=None, alpha_r=0.5)
        >>> terminal(["Q1", "Q2"], ["one two three", "one"]).reward
        array([1.5, 0.5])

    :param reward: the reward scorer R, anything :func:`make_scorer` accepts.
    :param cost: the cost scorer C; ``None`` for no cost term.
    :param alpha_r: the weight of R.
    :param alpha_c: the weight of C.
    :param cost_scale: how C enters the reward, one of :data:`COST_SCALES`.
    :param device: the device of reward models given by name or path (see :func:`make_scorer`), or
        ``[reward device, cost device]``.
    :param dtype: their dtype: ``"auto"`` (bfloat16 on CUDA, float32 elsewhere), a name such as
        ``"bfloat16"``, a ``torch.dtype``, or ``None`` (each checkpoint's own).
    """

    def __init__(
        self,
        reward: ScorerSpec,
        cost: ScorerSpec = None,
        *,
        alpha_r: float = 1.0,
        alpha_c: float = 1.0,
        cost_scale: str = "linear",
        device: str | torch.device | Sequence[str | torch.device] | None = None,
        dtype: str | torch.dtype | None = "auto",
    ) -> None:
        for name, value in (("alpha_r", alpha_r), ("alpha_c", alpha_c)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        check_cost_scale(cost_scale, cost)
        self.alpha_r = float(alpha_r)
        self.alpha_c = float(alpha_c)
        self.cost_scale = cost_scale
        reward_device, cost_device = split_scorer_devices(device)
        self.reward_scorer = make_scorer(reward, role="reward", device=reward_device, dtype=dtype)
        self.cost_scorer = make_scorer(cost, role="cost", device=cost_device, dtype=dtype)

    @property
    def placement(self) -> dict[str, dict[str, str]]:
        """Where each model scorer runs, by role: ``{"reward": {"device": "cuda:1", "dtype": "bfloat16"}}``
        (built-in scorers and callables run where they are and are left out)."""
        found = {}
        for scorer in (self.reward_scorer, self.cost_scorer):
            if isinstance(scorer.fn, ModelScoreFn):
                found[scorer.role] = {"device": str(scorer.fn.device), "dtype": str(scorer.fn.dtype).split(".")[-1]}
        return found

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> TerminalScores:
        """Score a batch of finished episodes.

        :param prompts: the episodes' prompts.
        :param responses: the episodes' responses, one per prompt.
        :returns: the terminal reward and the two scores behind it.
        """
        for name, texts in (("prompts", prompts), ("responses", responses)):
            if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
                raise ValueError(f"TerminalReward: {name} must be a sequence of strings.")
        reward_score = self.reward_scorer(prompts, responses)
        cost_score = self.cost_scorer(prompts, responses)
        return TerminalScores(self.combine(reward_score, cost_score), reward_score, cost_score)

    def combine(self, reward_score: np.ndarray, cost_score: np.ndarray) -> np.ndarray:
        """``alpha_r * R - alpha_c * g(C)`` of scores already computed (e.g. of partial answers); ``g`` is
        :func:`scale_cost` with this reward's cost scale."""
        cost_term = scale_cost(cost_score, self.cost_scale, self.cost_scorer.name)
        return self.alpha_r * np.asarray(reward_score, dtype=np.float64) - self.alpha_c * cost_term

    def __repr__(self) -> str:
        scale = "" if self.cost_scale == "linear" else f", cost_scale={self.cost_scale!r}"
        return (
            f"TerminalReward(reward={self.reward_scorer.name!r}, cost={self.cost_scorer.name!r}, "
            f"alpha_r={self.alpha_r}, alpha_c={self.alpha_c}{scale})"
        )


def check_cost_scale(cost_scale: Any, cost: Any = "given") -> None:
    """Refuse an unknown cost scale, and ``"logit"`` without a cost scorer (log-odds of nothing)."""
    if cost_scale not in COST_SCALES:
        hint = did_you_mean(str(cost_scale), COST_SCALES)
        raise ValueError(
            f"cost_scale must be 'linear' (C as it is) or 'logit' (its log-odds, for a probability such as "
            f"toxicity), got {cost_scale!r}.{hint}"
        )
    if cost_scale == "logit" and cost is None:
        raise ValueError("cost_scale='logit' needs a cost model (cost_model is None): set one, or keep 'linear'.")


def make_scorer(
    spec: ScorerSpec | Scorer,
    *,
    role: str = "scorer",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kind: Literal["auto", "sequence_classification", "beaver"] = "auto",
    label: int | str | None = None,
    template: str | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> Scorer:
    """Build a checked :class:`Scorer` from a name, a reward model or a callable.

    ``spec`` may be:

    * ``None`` or ``"zero"``: zeros, i.e. no term;
    * a built-in name, one of :data:`BUILTIN_SCORERS`;
    * a local folder or a Hugging Face hub id (``"org/name"``) of a reward model:

      - a safe-rlhf *score model* (``kind="beaver"``; detected when ``config.json`` names a
        ``...ForScore`` architecture or has ``score_dim``, or the weights hold ``score_head.*``),
        e.g. ``PKU-Alignment/beaver-7b-v1.0-reward`` or ``-cost``: the backbone is loaded with
        ``AutoModel``, the linear ``score_head`` is read from the checkpoint, and the score is taken
        at the last non-padding token. Text: :data:`BEAVER_TEMPLATE`;
      - otherwise an ``AutoModelForSequenceClassification`` (``kind="sequence_classification"``).
        With one label the score is its logit; with several it is the probability of class
        ``label`` (softmax, or sigmoid for ``multi_label_classification`` models). Text: the
        tokenizer's chat template (a user turn and an assistant turn) when it has one, else
        :data:`PLAIN_TEMPLATE`;

    * any other callable ``fn(prompts, responses)``, whose output is then checked;
    * a :class:`Scorer`, returned as it is.

    Models run in batches of ``batch_size`` under ``torch.no_grad``, with inputs truncated (on the
    tokenizer's truncation side, usually the right) to the smallest of ``max_length``, the
    tokenizer's ``model_max_length`` and the model's ``max_position_embeddings``.

    Example::

        >>> sentiment = make_scorer("sentiment", role="reward")
        >>> refusal, help_ = sentiment(["Q", "Q"], ["Sorry, I can't help.", "Sure, happy to help!"])
        >>> bool(refusal < 0 < help_)
        True

    :param spec: what to score with, as above.
    :param role: what the scorer is for (``"reward"``, ``"cost"``), shown in errors.
    :param device: the device for models; default CUDA when available, else CPU.
    :param dtype: the dtype for models: ``None`` (the default) the checkpoint's own, ``"auto"`` bfloat16 on
        CUDA and float32 elsewhere, or a name (``"float32"``, ``"bfloat16"``, ``"float16"``) or ``torch.dtype``.
    :param kind: the kind of reward model; ``"auto"`` detects it as above.
    :param label: the class (index or name) scored by a model with several labels or score dimensions.
    :param template: a format string with ``{prompt}``, ``{response}`` and optionally ``{eos}`` (the
        tokenizer's end-of-sequence token) that replaces the default text format of a model.
    :param batch_size: pairs per model forward pass.
    :param max_length: the longest input, in tokens, given to a model.
    :param trust_remote_code: passed to transformers; leave it off unless you trust the model's code.
    :returns: the scorer.
    :raises ValueError: for an unknown name, an unusable model or a bad option.
    :raises FileNotFoundError: for a path that does not exist.
    """
    if isinstance(spec, Scorer):
        return spec
    if spec is None:
        spec = "zero"
    if isinstance(spec, str) and spec.strip().lower() in _BUILTIN_FACTORIES:
        name = spec.strip().lower()
        return Scorer(_BUILTIN_FACTORIES[name](), name=name, role=role)
    if callable(spec):
        return Scorer(spec, role=role)
    if not isinstance(spec, str | os.PathLike):
        raise ValueError(
            f"{role}: expected None, a built-in scorer name ({', '.join(BUILTIN_SCORERS)}), a reward model "
            f"folder or hub id, or a callable; got a {type(spec).__name__}."
        )
    # Check the options before anything is downloaded.
    if kind not in ("auto", "sequence_classification", "beaver"):
        raise ValueError(f"kind must be 'auto', 'sequence_classification' or 'beaver', got {kind!r}.")
    if template is not None:
        check_template(template)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    model_id = _model_location(spec, role)
    fn = load_reward_model(
        model_id,
        device=device,
        dtype=dtype,
        kind=kind,
        label=label,
        template=template,
        batch_size=batch_size,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
    )
    return Scorer(fn, name=model_id, role=role)


# --------------------------------------------------------------------------- built-in scorers


def _sentiment() -> ScoreFn:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as error:
        raise ModuleNotFoundError("The 'sentiment' scorer needs vaderSentiment: pip install vaderSentiment") from error
    analyzer = SentimentIntensityAnalyzer()

    def sentiment(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [analyzer.polarity_scores(response)["compound"] for response in responses]

    return sentiment


def _toxicity() -> ScoreFn:
    try:
        from profanity_check import predict_prob
    except ImportError as error:
        raise ModuleNotFoundError(
            "The 'toxicity' scorer needs alt-profanity-check: pip install alt-profanity-check"
        ) from error

    def toxicity(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return predict_prob(list(responses))

    return toxicity


def _length() -> ScoreFn:
    def length(prompts: Sequence[str], responses: Sequence[str]) -> list[int]:
        return [len(response.split()) for response in responses]

    return length


def _zero() -> ScoreFn:
    def zero(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.zeros(len(responses))

    return zero


_BUILTIN_FACTORIES: dict[str, Callable[[], ScoreFn]] = {
    "sentiment": _sentiment,
    "toxicity": _toxicity,
    "length": _length,
    "zero": _zero,
}


# --------------------------------------------------------------------------- reward models


def _model_location(spec: str | os.PathLike[str], role: str) -> str:
    """A local folder or a hub id; a typo of a built-in name fails here, before any download."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"{role}={text!r} is a file; give the folder that holds config.json and the weights.")
    if isinstance(spec, str) and _HUB_ID.match(text):
        return text
    if isinstance(spec, str) and "/" not in text and os.sep not in text:
        hint = did_you_mean(text.lower(), BUILTIN_SCORERS)
        raise ValueError(
            f"{role}={text!r} is not a built-in scorer ({', '.join(BUILTIN_SCORERS)}), a model folder "
            f"or a hub id ('org/name').{hint}"
        )
    raise FileNotFoundError(f"{role}={text!r}: no such model folder. Check the path.")


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")
