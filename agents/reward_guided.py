"""
Reward-guided decoding: ARGS (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided Search"), a
decoding-time alignment baseline that needs no training.

At every answer position the LLM's next-token distribution ``pi(. | x, y_<t)`` proposes its ``k``
most likely tokens; each candidate ``v`` is scored by the reward of the answer so far extended by
``v``, and greedy ARGS appends the candidate with the highest::

    s(v) = log pi(v | x, y_<t) + w * r(x, y_<t v),        r = alpha_r * R - alpha_c * C

where ``r`` is the terminal reward of :class:`mara_env.scoring.TerminalReward` (the one the
environment and best-of-N use) applied to the partial answer's text. Sequence scorers were not made
for partial text; scoring prefixes with them is ARGS's own approximation. With ``sample=True`` the
token is drawn from ``softmax(s)`` over the ``k`` candidates instead (ARGS's stochastic variant).
With ``w = 0`` greedy ARGS is greedy decoding of the LLM, whatever ``k``.

``log pi`` is taken at the generator's temperature. Within the ``k`` candidates it differs from
``log q`` (``pi`` renormalised over them, which is what is computed) by one constant per row, so the
argmax and the softmax of ``s`` are the same with either.

ARGS runs inside the same ``model.generate`` loop as the base LLM's answers
(:func:`agents.generation.batched_generate`: the prompt format, the left-padded batches of
``batch_size`` prompts, the recorded ranks), as a hook that replaces each step's scores: the
candidate sets are the exact top-k (:func:`top_k_sets`), the hook scores every candidate prefix of
the rows still running in one scorer batch and leaves only the chosen token (greedy) or the ``k``
candidates' ``s`` (sampling). The answers are :class:`~agents.generation.Generation` objects whose
``accepted_ranks`` are ranks among the ``k`` candidates (0: the LLM's most likely token), whose
``set_sizes`` are ``k`` and whose ``ref_logprob`` is ``log q(y | x)`` over those top-k sets;
``kl`` is NaN (not measured).

**Compute.** One LLM forward per answer token, as plain decoding (the scorer, not the LLM, sees the
candidates), plus ``k`` scorer calls (``(prompt, partial answer)`` pairs scored) per answer token,
the ending EOS included. :attr:`ARGSGenerator.last_stats` counts both (``extra["scorer_calls"]``).
When scores cannot change the choice (``w = 0`` or ``k = 1``) nothing is scored and no call is counted.

Example::

    >>> from agents import MARAGenerator
    >>> from agents.reward_guided import ARGSGenerator
    >>> from mara_env.scoring import TerminalReward
    >>> terminal = TerminalReward("sentiment", "toxicity")  # doctest: +SKIP
    >>> args = ARGSGenerator(MARAGenerator(llm=None), terminal, weight=5.0, k=10)  # doctest: +SKIP
    >>> answers = args.generate(["How do I pick a lock?"], max_new_tokens=48)  # doctest: +SKIP
    >>> answers[0].text, args.last_stats.extra["scorer_calls"]   # 10 calls per answer token  # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th

from agents.generation import Generation, GenerationStats, MARAGenerator, batched_generate
from mara_env.scoring import TerminalReward

__all__ = ["ARGSGenerator", "TopK", "args_name", "top_k_sets"]


def args_name(weight: float, k: int, sample: bool = False) -> str:
    """The system name of an ARGS setting in reports, e.g. ``args-w5-k10`` (``args-w5-k10-sample`` when sampling)."""
    return f"args-w{weight:g}-k{k}" + ("-sample" if sample else "")


@dataclass(frozen=True)
class TopK:
    """The ``k`` most likely next tokens of one row, most likely first.

    :param tokens: token ids, shape ``(k,)``.
    :param probs: ``q``, the LLM's probabilities renormalised over the ``k`` tokens.
    :param logq: ``log q``.
    """

    tokens: np.ndarray
    probs: np.ndarray
    logq: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def top_k_sets(logits: th.Tensor, k: int, temperature: float = 1.0) -> list[TopK]:
    """The exact top-k of each row of ``logits`` ``(rows, vocab)`` at ``temperature``, most likely first.

    Every row keeps ``min(k, vocab)`` tokens. (MARA's ``candidate_sets`` with ``top_p=1.0`` keeps the
    same tokens, but refuses ``k = 1``, which leaves an accept/reject agent no decision and is plain
    greedy decoding for ARGS.)
    """
    logp = th.log_softmax(logits.float() / temperature, dim=-1)
    top_logp, top_idx = th.topk(logp, min(k, logp.shape[-1]), dim=-1, sorted=True)
    top_logp, top_idx = top_logp.double().cpu().numpy(), top_idx.cpu().numpy()
    # log q = log pi - log sum_{v in top-k} pi(v)
    logq = top_logp - np.logaddexp.reduce(top_logp, axis=-1, keepdims=True)
    return [TopK(top_idx[i].astype(np.int64), np.exp(logq[i]), logq[i]) for i in range(top_idx.shape[0])]


class _Guide:
    """The :data:`agents.generation.Rescore` hook of one ARGS call: scores candidates, counts scorer calls."""

    def __init__(self, reward: TerminalReward, weight: float, sample: bool, tokenizer: Any, scoring: bool) -> None:
        self.reward = reward
        self.weight = weight
        self.sample = sample
        self.tokenizer = tokenizer
        self.scoring = scoring
        self.calls = 0

    def _terminal(self, prompts: list[str], texts: list[str]) -> np.ndarray:
        parts = []
        for scorer in (self.reward.reward_scorer, self.reward.cost_scorer):
            try:
                parts.append(scorer(prompts, texts))
            except Exception as error:
                raise ValueError(
                    f"ARGS: the {scorer!r} failed on partial answers ({len(texts)} candidate prefixes, the first "
                    f"{texts[0][:60]!r}): {type(error).__name__}: {str(error).rstrip('.')}. ARGS scores every "
                    "candidate prefix of an unfinished answer, possibly empty; use a scorer that takes partial answers."
                ) from error
        return self.reward.combine(parts[0], parts[1])  # alpha_r * R - alpha_c * g(C), the terminal reward

    def __call__(
        self, prompts: list[str], sets: list[TopK], answers: list[list[int]], done: list[bool], scores: th.Tensor
    ) -> th.Tensor:
        out = th.full_like(scores, -math.inf)
        active = [i for i in range(len(sets)) if not done[i]]
        for i in range(len(sets)):
            if done[i]:  # an ended row: generate pads it whatever it picks
                out[i] = scores[i]
        if not active:
            return out
        if self.scoring:
            pair_prompts = [prompts[i] for i in active for _ in range(len(sets[i]))]
            prefixes = [answers[i] + [int(v)] for i in active for v in sets[i].tokens]
            texts = self.tokenizer.batch_decode(prefixes, skip_special_tokens=True)
            rewards = self._terminal(pair_prompts, texts)
            self.calls += len(texts)
        offset = 0
        for i in active:
            cands = sets[i]
            n = len(cands)
            s = cands.logq.copy()
            if self.scoring:
                # s(v) = log q(v) + w * r(x, y_<t v)
                s = s + self.weight * rewards[offset : offset + n]
                offset += n
            tokens = th.as_tensor(cands.tokens, device=scores.device)
            if self.sample:
                out[i, tokens] = th.as_tensor(s, dtype=out.dtype, device=scores.device)
            else:
                out[i, int(cands.tokens[int(np.argmax(s))])] = 0.0  # ties: the most likely candidate
        return out


class ARGSGenerator:
    """ARGS answers: reward-guided decoding over the top-k candidates of a generator's LLM.

    :param generator: the LLM, prompt format, temperature, prompt limits and ``batch_size`` (its agent,
        top-k and top-p are not used).
    :param reward: the terminal reward ``alpha_r * R - alpha_c * C`` applied to partial answers.
    :param weight: ``w``, the reward's weight against ``log pi`` (>= 0; 0 is greedy decoding).
    :param k: candidates per position (>= 1), the LLM's ``k`` most likely tokens.
    :param sample: draw from ``softmax(s)`` over the candidates instead of taking the best.
    """

    def __init__(
        self,
        generator: MARAGenerator,
        reward: TerminalReward,
        *,
        weight: float = 1.0,
        k: int = 10,
        sample: bool = False,
    ) -> None:
        if not isinstance(generator, MARAGenerator):
            raise TypeError(f"generator must be a MARAGenerator (it supplies the LLM), got {type(generator).__name__}.")
        if not isinstance(reward, TerminalReward):
            raise TypeError(
                f"reward must be a mara_env.scoring.TerminalReward, e.g. TerminalReward('sentiment', 'toxicity'); got "
                f"{type(reward).__name__}."
            )
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"ARGS weight must be a finite number >= 0 (0: greedy decoding; ARGS's paper uses 1-2), got {weight!r}."
            )
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(
                f"ARGS k must be an integer >= 1 (candidates per position; the ARGS paper uses 10), got {k!r}."
            )
        if not isinstance(sample, bool):
            raise ValueError(f"ARGS sample must be True or False, got {sample!r}.")
        self.generator = generator
        self.reward = reward
        self.weight = float(weight)
        self.k = int(k)
        self.sample = sample
        self.name = args_name(self.weight, self.k, sample)
        self.last_stats = GenerationStats()

    @property
    def deterministic(self) -> bool:
        """Greedy ARGS gives the same answer to a prompt whatever the seed."""
        return not self.sample

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 512, seed: int | None = None, *, progress: bool = False
    ) -> list[Generation]:
        """ARGS answers to ``prompts``, in their order.

        :param prompts: user prompts (plain text; the chat template is applied here).
        :param max_new_tokens: answer-length limit.
        :param seed: with ``sample=True``, seeds torch's generator before each batch (``seed + batch index``).
        :param progress: show a progress bar over batches.
        """
        guide = _Guide(
            self.reward,
            self.weight,
            self.sample,
            self.generator.session.tokenizer,
            scoring=self.weight > 0 and self.k > 1,
        )
        # Sampling draws from softmax of the hook's scores as they are: no temperature, top-k or top-p warper.
        sampling = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if self.sample else dict(do_sample=False)
        temperature = self.generator.session.candidates.temperature
        results, stats = batched_generate(
            self.generator,
            prompts,
            max_new_tokens,
            seed=seed,
            sampling=sampling,
            sets=lambda scores: top_k_sets(scores, self.k, temperature),
            rescore=guide,
            progress=progress,
            desc=self.name,
        )
        stats.extra["scorer_calls"] = guide.calls
        self.last_stats = stats
        return results

    def __repr__(self) -> str:
        return f"ARGSGenerator(weight={self.weight:g}, k={self.k}, sample={self.sample}, reward={self.reward!r})"
