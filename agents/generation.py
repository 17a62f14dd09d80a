"""
Aligned generation: an LLM's answers decoded under a trained accept/reject agent.

:class:`MARAGenerator` runs the same decoder as the ``MARA-v1`` / ``MARA-v0`` environments
(:class:`mara_env.AcceptRejectDecoder`) and builds the agent's observation the same way
(:func:`mara_env.observe`, the layout read from the agent's input size), with the same prompt format
(:class:`mara_env.PromptFormat`), the same candidate sets and the same forced last candidate, so an
agent decides at generation time exactly as it did in training. Many prompts are decoded at once:
each of ``batch_size`` rows takes the next prompt as soon as its answer ends.

At each decision the agent gives ``p = pi(accept | s)`` for the candidate's hidden state ``s``. The
generator samples ``a ~ Bernoulli(p)`` (or takes ``p >= 0.5`` with ``deterministic=True``) and
keeps a single-sample estimate of the answer's KL divergence from the reference ``q`` (the LLM's
distribution renormalised over the candidate set)::

    KL_hat(y) = sum over decisions t of  log pi(a_t | s_t) - log p_ref(a_t | k_t)

whose expectation over answers is ``KL(pi || q)`` (the chain rule over binary decisions; see the
environment's docstring).

:func:`batched_generate` is the LLM alone (``model.generate`` with the same sampling settings, batched
and seeded per batch): the base system of every comparison and the draws of best-of-N.

Example::

    >>> from agents import MARAGenerator
    >>> gen = MARAGenerator(llm=None, agent="runs/mara-default/model.zip", top_k=50, top_p=0.95)  # doctest: +SKIP
    >>> out = gen.generate(["How do I pick a lock?"], max_new_tokens=64, seed=0)  # doctest: +SKIP
    >>> out[0].text, out[0].num_decisions, out[0].accept_position_counts()  # doctest: +SKIP
    >>> raw = gen.generate_raw(["How do I pick a lock?"], max_new_tokens=64, seed=0)  # doctest: +SKIP
    >>> for piece in gen.stream("Tell me a story", max_new_tokens=64):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)

(Not run by the test suite: it needs a trained agent and the embedded model's weights.)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from agents.accept import AcceptFunction, as_accept_function, kl_increment
from agents.evaluation.statistics import ACCEPT_POSITION_BINS, accept_position_counts
from mara_env import (
    AcceptRejectDecoder,
    CandidateConfig,
    ChunkPlan,
    DecoderConfig,
    LLMReplica,
    ObservationLayout,
    Phase,
    PromptEncoder,
    PromptFormat,
    candidate_sets,
    default_max_prompt_tokens,
    load_replicas,
    make_chunk_rule,
    observe,
    resolve_chunking,
)

__all__ = [
    "ContinuousBatch",
    "Generation",
    "GenerationStats",
    "MARAGenerator",
    "Rescore",
    "RowRequest",
    "batched_generate",
]


@dataclass
class Generation:
    """One answer and how it was decoded.

    :param prompt: the user prompt.
    :param text: the answer (special tokens removed).
    :param token_ids: the answer's token ids (an ending EOS included).
    :param finish_reason: ``"eos"`` or ``"length"``.
    :param num_decisions: the agent's decisions (0 for raw decoding).
    :param accepted_ranks: 0-based rank in its candidate set of every answer token.
    :param set_sizes: candidate-set size at every answer position.
    :param ref_logprob: ``log q(y | x)``, the answer's log-probability under the reference's
        candidate-set distribution (the env's ``info["ref_logprob"]``).
    :param kl: single-sample estimate of ``KL(pi || q)`` for this answer, in nats (0 for raw decoding,
        which samples ``q`` itself).
    :param prompt_truncated: whether the prompt was cut to fit the context.
    """

    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str
    num_decisions: int
    accepted_ranks: list[int]
    set_sizes: list[int]
    ref_logprob: float
    kl: float
    prompt_truncated: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def accept_position_counts(self, max_rank: int = ACCEPT_POSITION_BINS) -> np.ndarray:
        """How many answer tokens were the 1st, 2nd, ... candidate: :func:`agents.evaluation.accept_position_counts`
        of this answer, the definition of every report.

        Every answer token counts, a token forced from a single-candidate set too (as rank 0: it was the
        first candidate); the last bin pools ranks ``>= max_rank - 1``.
        """
        return accept_position_counts([self.accepted_ranks], max_rank=max_rank)


@dataclass
class GenerationStats:
    """Totals of one :meth:`MARAGenerator.generate` or :meth:`~MARAGenerator.generate_raw` call.

    :param llm_tokens: tokens run through the LLM (prompts, candidates, forced tokens; padding too for
        raw decoding), the compute cost.
    :param llm_forwards: batched LLM forwards.
    :param answer_tokens: answer tokens produced.
    :param wall_seconds: wall-clock time of the call.
    """

    llm_tokens: int = 0
    llm_forwards: int = 0
    answer_tokens: int = 0
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.answer_tokens / self.wall_seconds if self.wall_seconds > 0 else float("nan")


# --------------------------------------------------------------------------------------------- generator


class MARAGenerator:
    """Answers from an LLM under an accept/reject agent, with the environment's exact decoding rules.

    :param llm: the LLM, in any form ``MARA-v0`` accepts (``None``: the embedded SmolLM2-135M-Instruct,
        a hub id or folder, ``(model, tokenizer)``, a list of replicas or devices).
    :param agent: the agent (see :func:`agents.accept.as_accept_function`). ``None`` decodes with the reference's own
        accept probabilities ``p_ref(accept | k)``, which samples the candidate-set distribution ``q``
        exactly: raw decoding through the accept/reject machinery.
    :param devices: devices for the LLM replicas (rows are split across them).
    :param dtype: LLM dtype (``"auto"``: float32 on CPU, bfloat16 on CUDA).
    :param trust_remote_code: allow model repositories' own code.
    :param system_prompt: optional system message, as in the environment.
    :param top_k: candidate-set size cap (must match the agent's training environment).
    :param top_p: nucleus mass.
    :param temperature: applied before the cuts.
    :param chunk_size: candidates per forward (an int, ``"all"``, ``"adaptive"``, ``"auto"`` or a
        :class:`mara_env.ChunkPlan`; see :func:`mara_env.resolve_chunking`).
    :param max_prompt_tokens: longest formatted prompt (``None``: context minus answer room).
    :param prompt_overflow: ``"truncate"`` (cut the user text from the left, with a warning) or ``"error"``.
    :param batch_size: prompts decoded at once.
    :param deterministic: accept when ``pi(accept | s) >= 0.5`` instead of sampling.
    :param observation: what the agent observes, as in the environment (``"hidden"``: MARA-v0,
        ``"hidden+ref"``: MARA-v1), or ``"auto"``: read off the agent's input size.
    """

    def __init__(
        self,
        llm: Any = None,
        agent: Any = None,
        *,
        devices: Any = None,
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        top_k: int = 50,
        top_p: float = 0.95,
        temperature: float = 1.0,
        chunk_size: int | str | ChunkPlan = "auto",
        max_prompt_tokens: int | None = None,
        prompt_overflow: str = "truncate",
        batch_size: int = 16,
        deterministic: bool = False,
        observation: str = "auto",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        self.candidates = CandidateConfig(top_k=top_k, top_p=top_p, temperature=temperature)
        self.replicas: list[LLMReplica] = load_replicas(
            llm, devices=devices, dtype=dtype, trust_remote_code=trust_remote_code
        )
        first = self.replicas[0]
        self.tokenizer = first.tokenizer
        self.hidden_size = first.hidden_size
        self.prompt_format = PromptFormat(first.tokenizer, system_prompt)
        # open-ended prompts: no cache of their ids
        self.prompt_encoder = PromptEncoder(self.prompt_format, prompt_overflow)
        self._chunk_setting = chunk_size
        #: the chunk plan of a full batch (a call with fewer prompts may use another: "auto" on CPU
        #: differs for one row and for several)
        self.chunking = resolve_chunking(chunk_size, first.device, top_k, rows=batch_size)
        #: the largest chunk any call may compute: the room kept after a prompt
        self.largest_chunk = max(self.chunking.size, self._chunk_plan(1).size)
        # one rule per plan for every call: what an adaptive rule learns about the agent carries over
        self._chunk_rules: dict[ChunkPlan, Any] = {}
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_overflow = prompt_overflow
        self.batch_size = batch_size
        self.deterministic = deterministic
        self.agent = agent
        self._accept: AcceptFunction | None = None
        self.layout = ObservationLayout("hidden" if observation == "auto" else observation, self.hidden_size)
        if agent is not None:
            self._accept, self.layout = as_accept_function(
                agent, self.hidden_size, device=first.device, observation=observation
            )
        self.last_stats = GenerationStats()

    # ----------------------------------------------------------------------------------- aligned

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 512,
        seed: int | None = None,
        *,
        deterministic: bool | None = None,
        progress: bool = False,
    ) -> list[Generation]:
        """Aligned answers to ``prompts``, in their order.

        :param prompts: user prompts (plain text; the chat template is applied here).
        :param max_new_tokens: answer-length limit.
        :param seed: seeds the agent's decisions; prompt ``i`` uses its own stream ``(seed, i)``, so an
            answer does not depend on which other prompts share its batch.
        :param deterministic: override the generator's setting for this call.
        :param progress: show a progress bar over prompts.
        """
        prompts = self._check_prompts(prompts)
        det = self.deterministic if deterministic is None else deterministic
        start = time.perf_counter()
        decoder = self._decoder(min(self.batch_size, len(prompts)), max_new_tokens)
        results: list[Generation | None] = [None] * len(prompts)
        try:
            self._run(decoder, prompts, seed, det, results, progress)
        finally:
            decoder.close()
        self.last_stats = GenerationStats(
            llm_tokens=sum(e.num_tokens for e in decoder.engines),
            llm_forwards=sum(e.num_forwards for e in decoder.engines),
            answer_tokens=sum(g.num_tokens for g in results),
            wall_seconds=time.perf_counter() - start,
        )
        return results

    def stream(
        self, prompt: str, max_new_tokens: int = 512, seed: int | None = None, *, deterministic: bool | None = None
    ) -> Iterator[str]:
        """Yield the aligned answer to one prompt piece by piece as tokens are accepted."""
        prompts = self._check_prompts([prompt])
        det = self.deterministic if deterministic is None else deterministic
        decoder = self._decoder(1, max_new_tokens)
        shown = ""
        try:
            for _ in self._steps(decoder, prompts, seed, det, [None], None):
                text = self._decode(decoder.rows[0].response)
                # Yield only text that is complete: a token may end inside a multi-byte character.
                if len(text) > len(shown) and text.startswith(shown) and not text.endswith("\ufffd"):
                    yield text[len(shown) :]
                    shown = text
        finally:
            decoder.close()
        final = self._decode(decoder.rows[0].response)
        if final.startswith(shown) and len(final) > len(shown):
            yield final[len(shown) :]

    # ----------------------------------------------------------------------------------- raw

    def generate_raw(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 512,
        seed: int | None = None,
        *,
        progress: bool = False,
        record_stats: bool = True,
    ) -> list[Generation]:
        """The LLM's own answers: ``model.generate`` sampling with the same prompt format, temperature,
        top-k and top-p, on the first replica, ``batch_size`` prompts at a time (left-padded; the
        loop is :func:`batched_generate`, which reward-guided decoding shares).

        Answer statistics (ranks, set sizes, ``log q``) are recorded on the fly from the logits;
        ``kl`` is 0 because the answer is sampled from ``q`` itself.

        :param seed: seeds torch's generator before each batch (``seed + batch index``).
        :param record_stats: record ranks, set sizes and ``log q`` (``False`` runs ``model.generate`` untouched,
            leaving those fields empty / NaN: the plain-speed baseline of ``benchmarks/decode_speed.py``).
        """
        results, self.last_stats = batched_generate(
            self, prompts, max_new_tokens, seed=seed, record_stats=record_stats, progress=progress
        )
        return results

    # ----------------------------------------------------------------------------------- continuous

    def continuous_batch(self, num_rows: int | None = None, max_new_tokens: int = 512) -> ContinuousBatch:
        """An empty :class:`ContinuousBatch` of ``num_rows`` rows (default ``batch_size``) that answers join
        and leave between decision steps; :meth:`ContinuousBatch.close` it when done.

        :param max_new_tokens: the longest answer a row may ask for (each :class:`RowRequest` may ask less).
        """
        rows = self.batch_size if num_rows is None else num_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"num_rows must be an integer >= 1, got {num_rows!r}.")
        return ContinuousBatch(self, self._decoder(rows, max_new_tokens))

    # ----------------------------------------------------------------------------------- internals

    def _check_prompts(self, prompts: Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings; wrap a single prompt as [prompt] (or use stream()).")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; give at least one prompt.")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompts[{i}] must be a non-empty string, got {p!r}.")
        return prompts

    def _chunk_plan(self, rows: int) -> ChunkPlan:
        return resolve_chunking(self._chunk_setting, self.replicas[0].device, self.candidates.top_k, rows=rows)

    def _decoder(self, rows: int, max_new_tokens: int) -> AcceptRejectDecoder:
        plan = self._chunk_plan(rows)
        config = DecoderConfig(
            candidates=self.candidates,
            max_new_tokens=max_new_tokens,
            chunk_size=plan.size,
            chunk_coverage=plan.coverage,
            packed=plan.packed,
        )
        rule = self._chunk_rules.setdefault(plan, make_chunk_rule(plan.size, plan.coverage))
        return AcceptRejectDecoder(self.replicas, rows, config, lockstep=False, chunk_rule=rule)

    def _prompt_limit(self, max_new_tokens: int) -> int | None:
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        return default_max_prompt_tokens(self.replicas[0].model, max_new_tokens, self.largest_chunk)

    def _prompt_ids(self, prompt: str, limit: int | None) -> tuple[list[int], bool]:
        return self.prompt_encoder.encode(prompt, limit)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _run(
        self,
        decoder: AcceptRejectDecoder,
        prompts: list[str],
        seed: int | None,
        deterministic: bool,
        results: list[Generation | None],
        progress: bool,
    ) -> None:
        bar = tqdm(total=len(prompts), desc="aligned", unit="prompt", disable=not progress)
        for _ in self._steps(decoder, prompts, seed, deterministic, results, bar):
            pass
        bar.close()

    def _steps(
        self,
        decoder: AcceptRejectDecoder,
        prompts: list[str],
        seed: int | None,
        deterministic: bool,
        results: list[Generation | None],
        bar: Any,
    ) -> Iterator[None]:
        """Decode all ``prompts`` over the decoder's rows, yielding after every batch of decisions.

        A :class:`ContinuousBatch` over ``decoder``: each row takes the next prompt as soon as its answer ends.
        """
        limit = self._prompt_limit(decoder.config.max_new_tokens)
        batch = ContinuousBatch(self, decoder)
        queue = deque(range(len(prompts)))
        owner: dict[int, int] = {}  # row -> prompt index

        def begin(rows: list[int]) -> None:
            while rows:
                rows = rows[: len(queue)]  # rows beyond the remaining prompts stay idle
                if not rows:
                    return
                idx = [queue.popleft() for _ in rows]
                requests = []
                for i in idx:
                    ids, cut = self._prompt_ids(prompts[i], limit)
                    rng = np.random.default_rng(None if seed is None else [seed, i])
                    requests.append(RowRequest(prompts[i], ids, rng, deterministic, prompt_truncated=cut))
                owner.update(zip(rows, idx))
                # Answers forced all the way (every set a single token) end without a decision.
                rows = finish(batch.start(rows, requests))

        def finish(ended: list[tuple[int, Generation]]) -> list[int]:
            for row, generation in ended:
                results[owner.pop(row)] = generation
                if bar is not None:
                    bar.update(1)
            return [row for row, _ in ended]

        begin(list(range(decoder.num_rows)))
        while batch.active_rows:
            begin(finish(batch.step()))
            yield

    def _accept_probs(self, decoder: AcceptRejectDecoder, rows: list[int]) -> np.ndarray:
        if self._accept is None:
            return _reference_accept_probs(decoder, rows)
        obs = observe(decoder, rows, self.layout, np.dtype(np.float32))
        p = np.asarray(self._accept(obs), dtype=np.float64).reshape(-1)
        if p.shape != (len(rows),):
            raise ValueError(f"the agent returned {p.shape} values for {len(rows)} observations.")
        return p


def _reference_accept_probs(decoder: AcceptRejectDecoder, rows: list[int]) -> np.ndarray:
    """``p_ref(accept | k)`` of each row's candidate under decision: sampling with it draws ``q`` exactly."""
    return np.array([np.exp(decoder.rows[r].cands.log_accept[decoder.rows[r].index]) for r in rows])


@dataclass
class RowRequest:
    """One answer to decode on a row of a :class:`ContinuousBatch`.

    :param prompt: the prompt's text (kept in the :class:`Generation`).
    :param prompt_ids: the formatted prompt's token ids (see :class:`mara_env.PromptEncoder`).
    :param rng: the row's own random stream for the decisions (one per answer, so an answer does not
        depend on which others share the batch).
    :param deterministic: decide without sampling: the agent accepts when ``pi(accept | s) >= 0.5``; a
        reference row (``aligned=False``) accepts every first candidate, which is greedy decoding.
    :param aligned: decide with the generator's agent (``False``: with the reference's ``p_ref(accept | k)``,
        i.e. plain sampling of the LLM's candidate-set distribution ``q``).
    :param max_new_tokens: this answer's length limit (``None``: the decoder's).
    :param prompt_truncated: whether the prompt was cut to fit the context (reported in the result).
    """

    prompt: str
    prompt_ids: list[int]
    rng: np.random.Generator
    deterministic: bool = False
    aligned: bool = True
    max_new_tokens: int | None = None
    prompt_truncated: bool = False


@dataclass
class _Active:
    request: RowRequest
    kl: float = 0.0  # running sum of log pi(a|s) - log p_ref(a|k)


class ContinuousBatch:
    """A running decoder batch that answers join and leave between steps: continuous batching.

    Each of the decoder's rows holds one answer. :meth:`start` puts new answers on free rows (one batched
    prefill), :meth:`step` runs one batch of decisions over every row waiting for one and returns the
    answers that ended, whose rows are free at once; :meth:`cancel` drops an answer mid-way (its row is
    skipped from the next step on). Rows decide with the generator's agent, or with the reference's own
    accept probabilities (``RowRequest.aligned=False``: the base LLM's sampling through the same
    machinery), both in one step. :meth:`MARAGenerator.generate` is this loop over a list of prompts;
    ``mara serve`` feeds it from concurrent HTTP requests.

    :param generator: supplies the LLM replicas, the agent, the observation layout and the decoding rules.
    :param decoder: a decoder built without lockstep (:meth:`MARAGenerator.continuous_batch` makes one).

    Example::

        >>> batch = gen.continuous_batch(num_rows=4, max_new_tokens=64)  # doctest: +SKIP
        >>> ids, _ = gen.prompt_encoder.encode("Tell me a joke", None)  # doctest: +SKIP
        >>> batch.start([0], [RowRequest("Tell me a joke", ids, np.random.default_rng(0))])  # doctest: +SKIP
        >>> while batch.active_rows:  # doctest: +SKIP
        ...     for row, answer in batch.step():
        ...         print(answer.text)
    """

    def __init__(self, generator: MARAGenerator, decoder: AcceptRejectDecoder) -> None:
        self.generator = generator
        self.decoder = decoder
        self._active: dict[int, _Active] = {}  # row -> its answer, in start order
        #: decision steps run, and decisions taken over all of them (their ratio: rows per step)
        self.num_steps = 0
        self.num_decisions = 0

    @property
    def num_rows(self) -> int:
        return self.decoder.num_rows

    @property
    def active_rows(self) -> list[int]:
        """Rows holding an answer, in the order they started."""
        return list(self._active)

    @property
    def free_rows(self) -> list[int]:
        """Rows a new answer can start on."""
        return [r for r in range(self.decoder.num_rows) if r not in self._active]

    def response(self, row: int) -> list[int]:
        """The answer's token ids so far on an active ``row`` (within its length limit)."""
        return self.decoder.rows[row].response[: self._limit(row)]

    def start(self, rows: Sequence[int], requests: Sequence[RowRequest]) -> list[tuple[int, Generation]]:
        """Begin ``requests`` on free ``rows`` (one batched prefill) and advance each to its first decision.

        :return: the answers that ended already (every candidate set a single token), as ``(row, answer)``.
        """
        rows = list(rows)
        if len(rows) != len(requests):
            raise ValueError(f"start: {len(rows)} rows for {len(requests)} requests.")
        busy = [r for r in rows if r in self._active or not 0 <= r < self.num_rows]
        if busy:
            raise ValueError(f"start: rows {busy} are not free (free rows: {self.free_rows}).")
        if not rows:
            return []
        self.decoder.start(rows, [q.prompt for q in requests], [q.prompt_ids for q in requests])
        for row, request in zip(rows, requests):
            self._active[row] = _Active(request)
        return self._collect(rows)

    def step(self) -> list[tuple[int, Generation]]:
        """One batch of decisions over every active row waiting for one, then the forwards they need.

        When no row waits for a decision (all wait for a forward), the decoder only advances them.

        :return: the answers that ended in this step, as ``(row, answer)``; their rows are free.
        """
        decoder, gen = self.decoder, self.generator
        ready = [r for r in self._active if decoder.rows[r].phase is Phase.READY]
        if not ready:
            decoder.decide([], [])
            return self._collect(list(self._active))
        requests = [self._active[r].request for r in ready]
        p_accept = np.empty(len(ready))
        agent = [i for i, q in enumerate(requests) if q.aligned and gen._accept is not None]
        ref = [i for i, q in enumerate(requests) if not (q.aligned and gen._accept is not None)]
        if agent:
            p_accept[agent] = gen._accept_probs(decoder, [ready[i] for i in agent])
        if ref:
            p_accept[ref] = _reference_accept_probs(decoder, [ready[i] for i in ref])
        det = np.array([q.deterministic for q in requests])
        # a deterministic reference row accepts every first candidate (greedy); a sampled row draws its own u
        greedy = det & np.array([not q.aligned for q in requests])
        u = np.array([np.nan if q.deterministic else q.rng.random() for q in requests])
        actions = np.where(det, np.where(greedy, 1, p_accept >= 0.5), u < p_accept).astype(np.int64)
        # a deterministic decision has probability 1 under the policy that took it
        p_taken = np.where(det, actions.astype(np.float64), p_accept)
        logp_ref = decoder.decide(ready, actions)
        for row, term in zip(ready, kl_increment(p_taken, actions, logp_ref)):
            self._active[row].kl += float(term)
        self.num_steps += 1
        self.num_decisions += len(ready)
        # waiting rows advanced in the same call may have ended too (a forced EOS)
        return self._collect(list(self._active))

    def cancel(self, row: int) -> None:
        """Drop the answer on ``row`` (a client that went away); the row is free and no longer decoded."""
        if self._active.pop(row, None) is not None:
            self._release(row)

    def close(self) -> None:
        self.decoder.close()

    # ----------------------------------------------------------------------------------- internals

    def _limit(self, row: int) -> int:
        own = self._active[row].request.max_new_tokens
        return self.decoder.config.max_new_tokens if own is None else min(own, self.decoder.config.max_new_tokens)

    def _release(self, row: int) -> None:
        # A DONE row takes part in no forward; the next start() on it resets it and its KV cache.
        st = self.decoder.rows[row]
        st.phase = Phase.DONE
        st.chunk_hidden = st.last_hidden = st.cands = None
        st.pending = None

    def _collect(self, rows: list[int]) -> list[tuple[int, Generation]]:
        """Finish the answers on ``rows`` that ended: an EOS, the decoder's limit or their own."""
        ended = []
        for row in rows:
            st = self.decoder.rows[row]
            limit = self._limit(row)
            if st.phase is Phase.DONE or len(st.response) >= limit:
                ended.append((row, self._finish(row, limit)))
        return ended

    def _finish(self, row: int, limit: int) -> Generation:
        st = self.decoder.rows[row]
        active = self._active.pop(row)
        # Tokens past a row's own limit can only be forced ones (single-candidate sets, log q = 0), taken in
        # the same advance as the token that reached it; they are dropped.
        over = len(st.response) > limit or (st.phase is not Phase.DONE and len(st.response) >= limit)
        ids = list(st.response[:limit])
        generation = Generation(
            prompt=st.prompt,
            text=self.generator._decode(ids),
            token_ids=ids,
            finish_reason="length" if over else (st.finish_reason or "length"),
            num_decisions=st.num_decisions,
            accepted_ranks=list(st.accepted_ranks[:limit]),
            set_sizes=list(st.set_sizes[:limit]),
            ref_logprob=st.ref_logprob,
            kl=active.kl,
            prompt_truncated=active.request.prompt_truncated,
        )
        if st.phase is not Phase.DONE:
            self._release(row)
        return generation


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
    generator: MARAGenerator,
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

    :param generator: supplies the LLM, the prompt format and length limit, the candidate settings and
        ``batch_size``.
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
    prompts = generator._check_prompts(prompts)
    replica = generator.replicas[0]
    model, device = replica.model, replica.device
    config = generator.candidates
    if sampling is None:
        sampling = dict(do_sample=True, top_k=config.top_k, top_p=config.top_p, temperature=config.temperature)
    pad = generator.tokenizer.pad_token_id
    if pad is None:
        pad = next(iter(replica.eos_token_ids))
    start = time.perf_counter()
    results: list[Generation] = []
    llm_tokens = forwards = 0
    limit = generator._prompt_limit(max_new_tokens)
    batches = range(0, len(prompts), generator.batch_size)
    for b, lo in enumerate(tqdm(batches, desc=desc, disable=not progress, unit="batch")):
        chunk = prompts[lo : lo + generator.batch_size]
        encoded = [generator._prompt_ids(p, limit) for p in chunk]
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
                    text=generator._decode(ids),
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
