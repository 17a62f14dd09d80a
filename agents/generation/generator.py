"""Aligned generation: an LLM's answers decoded under a trained accept/reject agent.

:class:`MARAGenerator` decodes on a :class:`mara_env.session.DecodingSession`, the LLM set-up the environments
use: the same decoder (:class:`mara_env.decoder.AcceptRejectDecoder`), prompt format, candidate sets and forced
last candidate, and the agent's observation built the same way (:func:`mara_env.observation.observe`, the layout read
from the agent's input size), so an agent decides at generation time exactly as it did in training.
Many prompts are decoded at once (a :class:`~agents.generation.ContinuousBatch`): each of ``batch_size``
rows takes the next prompt as soon as its answer ends.

At each decision the agent gives ``p = pi(accept | s)`` for the candidate's hidden state ``s``. The
generator samples ``a ~ Bernoulli(p)`` (or takes ``p >= 0.5`` with ``deterministic=True``) and
keeps a single-sample estimate of the answer's KL divergence from the reference ``q`` (the LLM's
distribution renormalised over the candidate set)::

    KL_hat(y) = sum over decisions t of  log pi(a_t | s_t) - log p_ref(a_t | k_t)

whose expectation over answers is ``KL(pi || q)`` (the chain rule over binary decisions; see the
environment's docstring).

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
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.accept import AcceptFunction, as_accept_function
from agents.generation.answers import Generation, GenerationStats, check_prompts
from agents.generation.continuous import ContinuousBatch, RowRequest
from agents.generation.plain import batched_generate
from mara_env.candidates import CandidateConfig
from mara_env.config import ChunkPlan
from mara_env.decoder import AcceptRejectDecoder
from mara_env.llm import LLMReplica, PromptFormat
from mara_env.observation import ObservationLayout, observe
from mara_env.session import DecodingSession

__all__ = ["MARAGenerator"]


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
        :class:`mara_env.config.ChunkPlan`; see :func:`mara_env.config.resolve_chunking`).
    :param max_prompt_tokens: longest formatted prompt (``None``: context minus answer room).
    :param prompt_overflow: ``"truncate"`` (cut the user text from the left, with a warning) or ``"error"``.
    :param batch_size: prompts decoded at once.
    :param deterministic: accept when ``pi(accept | s) >= 0.5`` instead of sampling.
    :param observation: what the agent observes, as in the environment (``"hidden"``: MARA-v0,
        ``"hidden+ref"``: MARA-v1), or ``"auto"``: read off the agent's input size.
    :param capture: record the LLM's forwards as CUDA graphs on CUDA devices (:mod:`mara_env.capture`).
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
        capture: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        #: the LLM set-up: replicas, prompt format and length rule, candidate sets, chunk plans
        self.session = DecodingSession(
            llm,
            devices=devices,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            system_prompt=system_prompt,
            candidates=CandidateConfig(top_k=top_k, top_p=top_p, temperature=temperature),
            chunk_size=chunk_size,
            rows=batch_size,
            max_prompt_tokens=max_prompt_tokens,
            prompt_overflow=prompt_overflow,
            capture=capture,
        )
        self.batch_size = batch_size
        self.deterministic = deterministic
        self.agent = agent
        self._accept: AcceptFunction | None = None
        hidden = self.session.hidden_size
        self.layout = ObservationLayout("hidden" if observation == "auto" else observation, hidden)
        if agent is not None:
            self._accept, self.layout = as_accept_function(
                agent, hidden, device=self.session.device, observation=observation
            )
        self.last_stats = GenerationStats()

    # the session's set-up, under the names MARAGenerator has always had
    @property
    def replicas(self) -> list[LLMReplica]:
        return self.session.replicas

    @property
    def tokenizer(self) -> Any:
        return self.session.tokenizer

    @property
    def prompt_format(self) -> PromptFormat:
        return self.session.prompt_format

    @property
    def candidates(self) -> CandidateConfig:
        return self.session.candidates

    @property
    def hidden_size(self) -> int:
        return self.session.hidden_size

    @property
    def has_agent(self) -> bool:
        """Whether an agent decides (``False``: the reference's own accept probabilities)."""
        return self._accept is not None

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
        prompts = check_prompts(prompts)
        det = self.deterministic if deterministic is None else deterministic
        start = time.perf_counter()
        decoder = self.session.decoder(min(self.batch_size, len(prompts)), max_new_tokens)
        results: list[Generation | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc="aligned", unit="prompt", disable=not progress)
        try:
            for _ in self._steps(decoder, prompts, seed, det, results, bar):
                pass
        finally:
            bar.close()
            decoder.close()
        self.last_stats = GenerationStats(
            llm_tokens=decoder.num_tokens,
            llm_forwards=decoder.num_forwards,
            answer_tokens=sum(g.num_tokens for g in results),
            wall_seconds=time.perf_counter() - start,
            extra={"host_syncs": decoder.num_syncs},
        )
        return results

    def stream(
        self, prompt: str, max_new_tokens: int = 512, seed: int | None = None, *, deterministic: bool | None = None
    ) -> Iterator[str]:
        """Yield the aligned answer to one prompt piece by piece as tokens are accepted."""
        prompts = check_prompts([prompt])
        det = self.deterministic if deterministic is None else deterministic
        decoder = self.session.decoder(1, max_new_tokens)
        shown = ""
        try:
            for _ in self._steps(decoder, prompts, seed, det, [None], None):
                text = self.session.decode(decoder.rows[0].response)
                # Yield only text that is complete: a token may end inside a multi-byte character.
                if len(text) > len(shown) and text.startswith(shown) and not text.endswith("\ufffd"):
                    yield text[len(shown) :]
                    shown = text
        finally:
            decoder.close()
        final = self.session.decode(decoder.rows[0].response)
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
        loop is :func:`~agents.generation.batched_generate`, which reward-guided decoding shares).

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
        """An empty :class:`~agents.generation.ContinuousBatch` of ``num_rows`` rows (default ``batch_size``)
        that answers join and leave between steps; close it when done.

        :param max_new_tokens: the longest answer a row may ask for (each :class:`RowRequest` may ask less).
        """
        rows = self.batch_size if num_rows is None else num_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"num_rows must be an integer >= 1, got {num_rows!r}.")
        return ContinuousBatch(self, self.session.decoder(rows, max_new_tokens))

    def accept_probs(self, decoder: AcceptRejectDecoder, rows: list[int]) -> np.ndarray:
        """``pi(accept | s)`` of the agent for the READY ``rows`` of ``decoder`` (the reference's without one)."""
        if self._accept is None:
            return decoder.reference_accept_probs(rows)
        obs = observe(decoder, rows, self.layout, np.dtype(np.float32))
        p = np.asarray(self._accept(obs), dtype=np.float64).reshape(-1)
        if p.shape != (len(rows),):
            raise ValueError(f"the agent returned {p.shape} values for {len(rows)} observations.")
        return p

    # ----------------------------------------------------------------------------------- internals

    def _steps(
        self,
        decoder: AcceptRejectDecoder,
        prompts: list[str],
        seed: int | None,
        deterministic: bool,
        results: list[Generation | None],
        bar: Any,
    ) -> Iterator[None]:
        """Decode all ``prompts`` over the decoder's rows, yielding after every step.

        A :class:`~agents.generation.ContinuousBatch` over ``decoder``: each row takes the next prompt as soon
        as its answer ends.
        """
        max_new_tokens = decoder.config.max_new_tokens
        batch = ContinuousBatch(self, decoder)
        queue = deque(range(len(prompts)))
        owner: dict[int, int] = {}  # row -> prompt index

        def begin(rows: list[int]) -> None:
            rows = rows[: len(queue)]  # rows beyond the remaining prompts stay idle
            idx = [queue.popleft() for _ in rows]
            requests = []
            for i in idx:
                ids, cut = self.session.encode(prompts[i], max_new_tokens)
                rng = np.random.default_rng(None if seed is None else [seed, i])
                requests.append(RowRequest(prompts[i], ids, rng, deterministic, prompt_truncated=cut))
            owner.update(zip(rows, idx))
            batch.start(rows, requests)

        begin(list(range(decoder.num_rows)))
        while batch.active_rows:
            ended = batch.step()
            for row, generation in ended:
                results[owner.pop(row)] = generation
                if bar is not None:
                    bar.update(1)
            begin([row for row, _ in ended])
            yield

    def __repr__(self) -> str:
        agent = "reference" if self._accept is None else type(self.agent).__name__
        return f"MARAGenerator({self.session!r}, agent={agent}, batch_size={self.batch_size})"
