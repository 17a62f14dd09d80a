"""Plain decoding: the LLM alone, through ``model.generate``, batched and seeded per batch.

:func:`batched_generate` is the base system of every comparison and the draws of best-of-N
(:meth:`agents.generation.MARAGenerator.generate_raw`), and, with a :data:`Rescore` hook that replaces each
step's scores, reward-guided decoding (:mod:`agents.reward_guided`). It uses the decoding session of the
generator it is given: the same prompt format, length rule and candidate settings as aligned decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch as th
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from agents.generation.answers import Generation, GenerationStats, check_prompts
from mara_env.candidates import CandidateConfig, candidate_sets

__all__ = ["Rescore", "batched_generate"]


def _until_eos(ids: list[int], eos: frozenset[int]) -> list[int]:
    """Answer tokens up to and including the first EOS (``generate`` pads after it)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


#: A hook of :func:`batched_generate` that replaces one decoding step's scores:
#: ``rescore(prompts, sets, answers, done, scores)`` gets the batch's prompts, each row's candidates at
#: this step (built from the raw logits), the answer tokens so far, which rows have ended, and the raw
#: scores ``(rows, vocab)``; it returns the scores ``model.generate`` picks the next tokens from.
Rescore = Callable[[list[str], list[Any], list[list[int]], list[bool], th.Tensor], th.Tensor]


class _RawRecorder(LogitsProcessor):
    """Records, while ``model.generate`` decodes, each answer token's rank, set size and ``log q``.

    ``generate`` runs custom processors before its temperature/top-k/top-p warpers, so this one sees
    the raw logits of step ``t`` and forms the candidate sets itself (``sets``: a function of the raw
    scores returning per row an object with ``tokens``, ``probs`` and a length; default
    :func:`~mara_env.candidates.candidate_sets` under ``config``); the token chosen at step ``t`` is
    read at step ``t + 1`` (or in :meth:`finish`). Without ``rescore`` it leaves the scores unchanged;
    with it, ``generate`` chooses from the scores ``rescore`` returns (see :data:`Rescore`).
    """

    def __init__(
        self,
        config: CandidateConfig,
        batch: int,
        eos: frozenset[int],
        *,
        prompts: Sequence[str] = (),
        sets: Callable[[th.Tensor], list[Any]] | None = None,
        rescore: Rescore | None = None,
    ) -> None:
        self.config = config
        self.eos = eos
        self.prompts = list(prompts)
        self.make_sets = sets if sets is not None else (lambda scores: candidate_sets(scores.float(), config))
        self.rescore = rescore
        self.sets: list | None = None
        self.answers: list[list[int]] = [[] for _ in range(batch)]
        self.ranks: list[list[int]] = [[] for _ in range(batch)]
        self.sizes: list[list[int]] = [[] for _ in range(batch)]
        self.logq = [0.0] * batch
        self.done = [False] * batch

    def _record(self, tokens: th.Tensor) -> None:
        for i, cands in enumerate(self.sets):
            if self.done[i]:
                continue
            token = int(tokens[i])
            where = np.flatnonzero(cands.tokens == token)
            if where.size == 0:  # cannot happen with matching settings; kept honest if it does
                raise RuntimeError("model.generate sampled a token outside the candidate set.")
            k = int(where[0])
            self.answers[i].append(token)
            self.ranks[i].append(k)
            self.sizes[i].append(len(cands))
            self.logq[i] += float(np.log(cands.probs[k]))
            self.done[i] = token in self.eos

    def __call__(self, input_ids: th.LongTensor, scores: th.FloatTensor) -> th.FloatTensor:
        if self.sets is not None:
            self._record(input_ids[:, -1])
        self.sets = self.make_sets(scores)
        if self.rescore is not None:
            return self.rescore(self.prompts, self.sets, self.answers, self.done, scores)
        return scores

    def finish(self, new_tokens: th.Tensor) -> None:
        if self.sets is not None and new_tokens.shape[1] > 0:
            self._record(new_tokens[:, -1])


@th.no_grad()
def batched_generate(
    generator: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    seed: int | None = None,
    sampling: dict[str, Any] | None = None,
    sets: Callable[[th.Tensor], list[Any]] | None = None,
    rescore: Rescore | None = None,
    record_stats: bool = True,
    progress: bool = False,
    desc: str = "raw",
) -> tuple[list[Generation], GenerationStats]:
    """Answers from ``model.generate`` with the generator's prompt format: ``batch_size`` prompts at a time,
    left-padded, on the first replica. :meth:`MARAGenerator.generate_raw` and reward-guided decoding
    (:mod:`agents.reward_guided`) are this loop.

    :param generator: a :class:`~agents.generation.MARAGenerator`: its decoding session supplies the LLM, the
        prompt format and length limit and the candidate settings; its ``batch_size`` the batches.
    :param prompts: user prompts.
    :param max_new_tokens: answer-length limit.
    :param seed: seeds torch's generator before each batch (``seed + batch index``).
    :param sampling: ``model.generate``'s decoding keywords (default: sampling with the generator's
        temperature, top-k and top-p).
    :param sets: builds each row's candidates from a step's raw logits, for the recorded ranks, set sizes
        and ``log q`` (default: the generator's candidate sets).
    :param rescore: replaces every step's scores (:data:`Rescore`); the answers' ``kl`` is then NaN
        (not measured), otherwise 0 (the answers are samples of ``q`` itself).
    :param record_stats: record ranks, set sizes and ``log q`` (``False``: ``model.generate`` untouched;
        needs ``rescore=None``).
    :param progress: show a progress bar over batches.
    :param desc: the progress bar's label.
    :returns: the answers, in the order of ``prompts``, and the call's totals.
    """
    if rescore is not None and not record_stats:
        raise ValueError("batched_generate: rescore needs record_stats=True (the recorder runs the hook).")
    prompts = check_prompts(prompts)
    session = generator.session
    replica = session.replicas[0]
    model, device = replica.model, replica.device
    config = session.candidates
    if sampling is None:
        sampling = dict(do_sample=True, top_k=config.top_k, top_p=config.top_p, temperature=config.temperature)
    pad = session.tokenizer.pad_token_id
    if pad is None:
        pad = next(iter(replica.eos_token_ids))
    start = time.perf_counter()
    results: list[Generation] = []
    llm_tokens = forwards = 0
    limit = session.prompt_limit(max_new_tokens)
    batches = range(0, len(prompts), generator.batch_size)
    for b, lo in enumerate(tqdm(batches, desc=desc, disable=not progress, unit="batch")):
        chunk = prompts[lo : lo + generator.batch_size]
        encoded = [session.prompt_encoder.encode(p, limit) for p in chunk]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = th.full((len(chunk), width), pad, dtype=th.long)
        attention = th.zeros((len(chunk), width), dtype=th.long)
        for i, (ids, _) in enumerate(encoded):
            input_ids[i, width - len(ids) :] = th.tensor(ids)
            attention[i, width - len(ids) :] = 1
        recorder = _RawRecorder(config, len(chunk), replica.eos_token_ids, prompts=chunk, sets=sets, rescore=rescore)
        if seed is not None:
            th.manual_seed(seed + b)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=sorted(replica.eos_token_ids),
            logits_processor=LogitsProcessorList([recorder] if record_stats else []),
            **sampling,
        )
        new = out[:, width:].cpu()
        if record_stats:
            recorder.finish(new)
        else:
            recorder.answers = [_until_eos(row.tolist(), replica.eos_token_ids) for row in new]
            recorder.logq = [float("nan")] * len(chunk)
        steps = new.shape[1]
        llm_tokens += len(chunk) * (width + steps - 1)
        forwards += steps
        for i, (prompt, (_, truncated)) in enumerate(zip(chunk, encoded)):
            ids = recorder.answers[i]
            results.append(
                Generation(
                    prompt=prompt,
                    text=session.decode(ids),
                    token_ids=ids,
                    finish_reason="eos" if ids and ids[-1] in replica.eos_token_ids else "length",
                    num_decisions=0,
                    accepted_ranks=recorder.ranks[i],
                    set_sizes=recorder.sizes[i],
                    ref_logprob=recorder.logq[i],
                    kl=0.0 if rescore is None else float("nan"),
                    prompt_truncated=truncated,
                )
            )
    stats = GenerationStats(
        llm_tokens=llm_tokens,
        llm_forwards=forwards,
        answer_tokens=sum(g.num_tokens for g in results),
        wall_seconds=time.perf_counter() - start,
    )
    return results, stats
