"""One evaluated system's answers, scores, costs and compute, and their summary as JSON (:class:`SystemResult`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.accepted_positions import accept_position_counts, as_ranks
from agents.evaluation.statistics import _as_scores
from agents.files import finite_or_none as _num
from agents.files import jsonable as _jsonable

__all__ = ["SystemResult"]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _mean_std(values: np.ndarray | None) -> tuple[float | None, float | None]:
    if values is None or values.size == 0:
        return None, None
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return _num(np.mean(values)), _num(std)


@dataclass
class SystemResult:
    """
    One evaluated system's answers on the evaluation prompts: ``samples_per_prompt`` answers per prompt.

    The per-answer fields hold ``len(prompts) * samples_per_prompt`` entries, prompt-major: sample
    ``j`` of prompt ``i`` is entry ``i * samples_per_prompt + j`` (:attr:`prompt_index` and
    :attr:`sample_index` give each entry's prompt and sample). Arrays are converted to numpy in
    ``__post_init__``, and every per-answer field must have one entry per answer.

    :param name: Name of the system in reports, e.g. ``"llm"`` or ``"llm+mara"``; unique in a report
    :param prompts: The evaluation prompts, in order, each once
    :param responses: The system's answers, prompt-major
    :param reward_score: Reward-model score per answer (higher is more helpful)
    :param cost_score: Cost-model score per answer (lower is safer)
    :param num_tokens: Answer tokens per answer
    :param kl: Per-answer estimate of the KL divergence to the reference LLM, in nats; ``None`` if not measured
    :param accepted_ranks: Per answer, the 0-based candidate rank chosen at each position; ``None`` for
        systems without candidate ranks
    :param llm_tokens: LLM tokens forwarded to produce all answers (the compute cost)
    :param wall_seconds: Wall-clock seconds spent generating all answers
    :param extra: Anything else worth keeping (settings, checkpoint path); must be JSON-convertible
    :param samples_per_prompt: Independent answers per prompt, ``S >= 1``
    :param scorer_calls: (prompt, answer) pairs the system itself scored to produce its answers
        (best-of-N's selection, reward-guided decoding); the evaluation's own scoring is not counted
    """

    name: str
    prompts: list[str]
    responses: list[str]
    reward_score: np.ndarray
    cost_score: np.ndarray
    num_tokens: np.ndarray
    kl: np.ndarray | None = None
    accepted_ranks: list[list[int]] | None = None
    llm_tokens: int = 0
    wall_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    samples_per_prompt: int = 1
    scorer_calls: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SystemResult.name must be a non-empty string; got {self.name!r}.")
        where = f"SystemResult {self.name!r}"
        s = self.samples_per_prompt
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"{where}: samples_per_prompt must be an integer >= 1 (answers per prompt); got {s!r}.")
        self.samples_per_prompt = int(s)
        self.prompts = [str(p) for p in self.prompts]
        self.responses = [str(r) for r in self.responses]
        n = len(self.prompts) * self.samples_per_prompt
        counted = f"{len(self.prompts)} prompts" + (
            f" x {self.samples_per_prompt} samples = {n} answers" if self.samples_per_prompt > 1 else ""
        )

        def check_length(field_name: str, length: int) -> None:
            if length != n:
                raise ValueError(
                    f"{where}: {field_name} has {length} entries but there are {counted}; give one "
                    f"{field_name} entry per answer, prompt-major (sample j of prompt i at i * samples_per_prompt + j)."
                )

        check_length("responses", len(self.responses))
        for field_name in ("reward_score", "cost_score", "num_tokens", "kl"):
            value = getattr(self, field_name)
            if value is None and field_name == "kl":
                continue
            array = _as_scores(value, f"{where}: {field_name}")
            check_length(field_name, len(array))
            if field_name == "num_tokens" and not np.all((array >= 0) & (array == np.round(array))):
                raise ValueError(f"{where}: num_tokens must hold non-negative whole token counts.")
            setattr(self, field_name, array.astype(np.int64) if field_name == "num_tokens" else array)
        if self.accepted_ranks is not None:
            self.accepted_ranks = [
                as_ranks(r, f"{where}: accepted_ranks[{i}]").tolist() for i, r in enumerate(self.accepted_ranks)
            ]
            check_length("accepted_ranks", len(self.accepted_ranks))
        self.llm_tokens = int(self.llm_tokens)
        self.wall_seconds = float(self.wall_seconds)
        self.scorer_calls = int(self.scorer_calls)
        if self.llm_tokens < 0 or self.scorer_calls < 0 or not self.wall_seconds >= 0.0:
            raise ValueError(f"{where}: llm_tokens, scorer_calls and wall_seconds must be >= 0.")
        self.extra = dict(self.extra)

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.prompts)

    @property
    def num_answers(self) -> int:
        """Number of answers: prompts x samples per prompt."""
        return len(self.prompts) * self.samples_per_prompt

    @property
    def prompt_index(self) -> np.ndarray:
        """The prompt of each answer (``0, 0, ..., 1, 1, ...``): the clusters of the bootstrap."""
        return np.repeat(np.arange(self.n), self.samples_per_prompt)

    @property
    def sample_index(self) -> np.ndarray:
        """The sample number ``j`` of each answer (``0, 1, ..., S - 1, 0, 1, ...``)."""
        return np.tile(np.arange(self.samples_per_prompt), self.n)

    def summary(self) -> dict[str, Any]:
        """
        Means and standard deviations (``ddof=1``) over answers, and compute cost.

        :return: ``name``, ``n`` (prompts), ``samples_per_prompt``, ``answers``, ``reward_mean``/``_std``,
            ``cost_mean``/``_std``, ``tokens_mean``/``_std``, ``kl_mean``/``_std`` (``None`` without KL),
            ``response_tokens`` (total), ``llm_tokens``, ``llm_tokens_per_response_token``, ``scorer_calls``,
            ``scorer_calls_per_answer``, ``scorer_calls_per_response_token``, ``wall_seconds``,
            ``tokens_per_second`` (response tokens per wall second), and ``accepted_first_fraction`` (share
            of answer tokens at rank 0, ``None`` without ranks). Ratios with a zero denominator are ``None``.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "n": self.n,
            "samples_per_prompt": self.samples_per_prompt,
            "answers": self.num_answers,
        }
        for key, values in (
            ("reward", self.reward_score),
            ("cost", self.cost_score),
            ("tokens", self.num_tokens.astype(np.float64)),
            ("kl", self.kl),
        ):
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
        response_tokens = int(self.num_tokens.sum())
        out["response_tokens"] = response_tokens
        out["llm_tokens"] = self.llm_tokens
        out["llm_tokens_per_response_token"] = (
            self.llm_tokens / response_tokens if response_tokens > 0 and self.llm_tokens > 0 else None
        )
        out["scorer_calls"] = self.scorer_calls
        out["scorer_calls_per_answer"] = self.scorer_calls / self.num_answers if self.num_answers else None
        out["scorer_calls_per_response_token"] = self.scorer_calls / response_tokens if response_tokens > 0 else None
        out["wall_seconds"] = self.wall_seconds
        out["tokens_per_second"] = response_tokens / self.wall_seconds if self.wall_seconds > 0 else None
        out["accepted_first_fraction"] = None
        if self.accepted_ranks is not None:
            counts = accept_position_counts(self.accepted_ranks)
            out["accepted_first_fraction"] = float(counts[0] / counts.sum()) if counts.sum() > 0 else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """
        JSON-safe form: system-level fields and one row per answer, prompt-major (``prompt``, ``sample``,
        ``response``, ``reward``, ``cost``, ``num_tokens``, and ``kl`` / ``accepted_ranks`` when the system
        has them). Non-finite numbers become ``None``. :meth:`from_dict` reverses it.
        """
        rows = []
        for r, (i, j) in enumerate(zip(self.prompt_index, self.sample_index)):
            row: dict[str, Any] = {
                "prompt": self.prompts[i],
                "sample": int(j),
                "response": self.responses[r],
                "reward": _num(self.reward_score[r]),
                "cost": _num(self.cost_score[r]),
                "num_tokens": int(self.num_tokens[r]),
            }
            if self.kl is not None:
                row["kl"] = _num(self.kl[r])
            if self.accepted_ranks is not None:
                row["accepted_ranks"] = list(self.accepted_ranks[r])
            rows.append(row)
        return {
            "name": self.name,
            "samples_per_prompt": self.samples_per_prompt,
            "llm_tokens": self.llm_tokens,
            "scorer_calls": self.scorer_calls,
            "wall_seconds": self.wall_seconds,
            "extra": _jsonable(self.extra),
            "rows": rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemResult:
        """
        Rebuild a :class:`SystemResult` from :meth:`to_dict` output (e.g. read back from JSON).

        :param data: The dict (``samples_per_prompt`` defaults to 1, for dicts written before it existed)
        :return: The result; ``None`` scores become NaN
        """
        rows = list(data["rows"])
        s = data.get("samples_per_prompt", 1)
        if isinstance(s, bool) or not isinstance(s, int) or s < 1 or len(rows) % s:
            raise ValueError(
                f"SystemResult.from_dict: {len(rows)} rows cannot be split into prompts of samples_per_prompt={s!r} "
                "answers each; the dict must come from SystemResult.to_dict()."
            )
        prompts = [rows[r]["prompt"] for r in range(0, len(rows), s)]
        for r, row in enumerate(rows):
            if row["prompt"] != prompts[r // s]:
                raise ValueError(
                    f"SystemResult.from_dict: row {r} belongs to prompt {r // s} ({_truncate(prompts[r // s], 60)!r}) "
                    f"but holds prompt {_truncate(row['prompt'], 60)!r}; rows must be prompt-major, "
                    f"{s} per prompt."
                )

        def column(key: str) -> np.ndarray:
            return np.array([math.nan if row[key] is None else row[key] for row in rows], dtype=np.float64)

        has_kl = bool(rows) and all("kl" in row for row in rows)
        has_ranks = bool(rows) and all("accepted_ranks" in row for row in rows)
        return cls(
            name=data["name"],
            prompts=prompts,
            responses=[row["response"] for row in rows],
            reward_score=column("reward"),
            cost_score=column("cost"),
            num_tokens=np.array([row["num_tokens"] for row in rows], dtype=np.int64),
            kl=column("kl") if has_kl else None,
            accepted_ranks=[list(row["accepted_ranks"]) for row in rows] if has_ranks else None,
            llm_tokens=data.get("llm_tokens", 0),
            wall_seconds=data.get("wall_seconds", 0.0),
            extra=dict(data.get("extra") or {}),
            samples_per_prompt=s,
            scorer_calls=data.get("scorer_calls", 0),
        )
