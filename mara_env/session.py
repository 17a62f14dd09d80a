"""One decoding session: the LLM side of MARA set up once, handing out decoders.

Everything that turns prompts into accept/reject decoding is decided here, once, for the environments
(:class:`~mara_env.core.MARACore`), aligned generation (``agents.generation``), continuous batching and
the server, and reward-guided decoding:

- the LLM replicas (:func:`~mara_env.llm.load_replicas`), their tokenizer and hidden size;
- the prompt format (chat template and system prompt) and the length rule that cuts long prompts
  (:class:`~mara_env.llm.PromptEncoder`);
- the candidate sets (:class:`~mara_env.candidates.CandidateConfig`);
- the chunk plan: how many candidates a forward computes per row, for the number of rows a decoder runs
  (:func:`~mara_env.config.resolve_chunking`), with one chunk rule per plan shared by every decoder, so
  what an adaptive rule learns about an agent carries over;
- the room kept after a prompt (the answer limit plus the largest chunk).

Example::

    >>> from mara_env.session import DecodingSession
    >>> session = DecodingSession(None, chunk_size=1)   # the embedded SmolLM2-135M-Instruct  # doctest: +SKIP
    >>> ids, cut = session.encode("Tell me a joke.", max_new_tokens=64)  # doctest: +SKIP
    >>> decoder = session.decoder(rows=4, max_new_tokens=64)  # doctest: +SKIP
    >>> decoder.start([0], ["Tell me a joke."], [ids])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mara_env.candidates import CandidateConfig
from mara_env.chunking import AdaptiveChunks, FixedChunks, make_chunk_rule
from mara_env.config import ChunkPlan, DecoderConfig, resolve_chunking
from mara_env.decoder import AcceptRejectDecoder
from mara_env.llm import LLMReplica, PromptEncoder, PromptFormat, default_max_prompt_tokens, load_replicas

__all__ = ["DecodingSession"]


class DecodingSession:
    """The LLM, prompt format, candidate rules and chunk plans of one use of MARA decoding.

    :param llm: the LLM in any form :func:`~mara_env.llm.load_replicas` takes (``None``: the embedded
        SmolLM2-135M-Instruct; a hub id or folder; ``(model, tokenizer)``; replicas of an earlier session).
    :param devices: devices for the replicas (rows are split across them).
    :param dtype: the LLM's dtype (``"auto"``: float32 on CPU, bfloat16 on CUDA).
    :param trust_remote_code: allow model repositories' own code.
    :param system_prompt: an optional system message for the chat template.
    :param candidates: how candidate sets are formed (top-k, top-p, temperature).
    :param chunk_size: candidates per forward (an integer, ``"all"``, ``"adaptive"``, ``"auto"`` or a
        :class:`~mara_env.config.ChunkPlan`; see :func:`~mara_env.config.resolve_chunking`).
    :param rows: the most rows a decoder of this session runs (generation: its batch size, whose plan can
        differ from one row's under ``"auto"``); ``None`` for environments, whose plan is the same at any N.
    :param max_prompt_tokens: the longest formatted prompt (``None``: the context minus the answer room).
    :param prompt_overflow: ``"truncate"`` (cut the user text from the left, with a warning) or ``"error"``.
    :param cache_prompts: keep each prompt's ids (a fixed prompt set, as in training).
    :param capture: the decoders' forwards in static shapes, replayed as CUDA graphs on CUDA devices
        (:mod:`mara_env.capture`).
    """

    def __init__(
        self,
        llm: Any = None,
        *,
        devices: Any = None,
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        candidates: CandidateConfig | None = None,
        chunk_size: int | str | ChunkPlan = "auto",
        rows: int | None = None,
        max_prompt_tokens: int | None = None,
        prompt_overflow: str = "truncate",
        cache_prompts: bool = False,
        capture: bool = False,
    ) -> None:
        self.replicas: list[LLMReplica] = load_replicas(
            llm, devices=devices, dtype=dtype, trust_remote_code=trust_remote_code
        )
        first = self.replicas[0]
        self.tokenizer = first.tokenizer
        self.hidden_size = first.hidden_size
        self.device = first.device
        self.eos_token_ids = first.eos_token_ids
        self.candidates = candidates if candidates is not None else CandidateConfig()
        self.prompt_format = PromptFormat(first.tokenizer, system_prompt)
        self.prompt_encoder = PromptEncoder(self.prompt_format, prompt_overflow, cache=cache_prompts)
        self.max_prompt_tokens = max_prompt_tokens
        self._chunk_setting = chunk_size
        self.rows = rows
        self.capture = capture
        #: the chunk plan of a full decoder (:meth:`chunk_plan` for other row counts)
        self.chunking = self.chunk_plan(rows)
        # one rule per plan: what an adaptive rule learns about the agent carries over between decoders
        self._chunk_rules: dict[ChunkPlan, FixedChunks | AdaptiveChunks] = {}

    # ----------------------------------------------------------------------------------- rules

    def chunk_plan(self, rows: int | None = None) -> ChunkPlan:
        """The chunk plan of a decoder of ``rows`` rows (``None``: an environment's)."""
        return resolve_chunking(self._chunk_setting, self.device, self.candidates.top_k, rows=rows)

    @property
    def largest_chunk(self) -> int:
        """The largest chunk any decoder of this session computes: the room kept after a prompt."""
        if self.rows is None:
            return self.chunking.size
        return max(self.chunking.size, self.chunk_plan(1).size)

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        """The longest formatted prompt that leaves room for ``max_new_tokens`` and one chunk (``None``: no limit)."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        return default_max_prompt_tokens(self.replicas[0].model, max_new_tokens, self.largest_chunk)

    @property
    def context(self) -> int | None:
        """The model's context in tokens (``None`` when its config states none)."""
        return default_max_prompt_tokens(self.replicas[0].model, 0, 0)

    # ----------------------------------------------------------------------------------- text

    def encode(self, prompt: str, max_new_tokens: int) -> tuple[list[int], bool]:
        """The prompt's input ids under the session's length rule, and whether its user text was cut."""
        return self.prompt_encoder.encode(prompt, self.prompt_limit(max_new_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text of token ids (special tokens removed)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ----------------------------------------------------------------------------------- decoders

    def decoder(
        self,
        rows: int,
        max_new_tokens: int,
        *,
        environment: bool = False,
        lookahead: bool = False,
        draft_tokens: int = 4,
    ) -> AcceptRejectDecoder:
        """A decoder of ``rows`` rows under this session's rules.

        :param rows: sequences decoded at once.
        :param max_new_tokens: the answer limit.
        :param environment: the environments' chunk plan (the same at any number of rows) instead of the
            plan for ``rows`` generation rows.
        :param lookahead: work ahead of the decisions in rounds that run anyway (environments).
        :param draft_tokens: with ``lookahead``, the longest chain of guessed tokens forwarded ahead
            (:mod:`mara_env.drafting`).
        """
        plan = self.chunk_plan(None if environment else rows)
        config = DecoderConfig(
            candidates=self.candidates,
            max_new_tokens=max_new_tokens,
            chunk_size=plan.size,
            chunk_coverage=plan.coverage,
            packed=plan.packed,
            lookahead=lookahead,
            draft_tokens=draft_tokens,
            capture=self.capture,
        )
        rule = self._chunk_rules.setdefault(plan, make_chunk_rule(plan.size, plan.coverage))
        return AcceptRejectDecoder(self.replicas, rows, config, chunk_rule=rule)

    def __repr__(self) -> str:
        devices = ", ".join(str(r.device) for r in self.replicas)
        return f"DecodingSession({self.replicas[0].name!r}, devices=[{devices}], chunking={self.chunking})"
