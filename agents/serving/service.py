"""What the server does with a request: the model it names, its prompt ids, its limits, its answers.

:class:`CompletionService` sits between the HTTP routes (:mod:`agents.serving.app`) and the decoding
thread (:class:`~agents.serving.batcher.ContinuousBatcher`). It serves two model names over one LLM: the
aligned model (decisions by the agent) and the base LLM (decisions by the reference's own
``p_ref(accept | k)``, which samples the LLM's candidate-set distribution ``q``: plain top-k/top-p
sampling), both in the same running batch. Every check names the value, the valid range and the fix, and
raises :class:`~agents.serving.protocol.APIError` with the status OpenAI uses.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from agents.generation import Generation, MARAGenerator, RowRequest
from agents.serving.batcher import ContinuousBatcher, Job, QueueFull
from agents.serving.protocol import APIError, ChatMessage, _Sampling

__all__ = ["CompletionService", "Prompt", "cut_at_stop", "held_back", "stop_index"]

#: Seconds between checks that a waiting (non-streaming) client is still connected.
DISCONNECT_POLL_S = 0.25


@dataclass
class Prompt:
    """One formatted prompt: its text (for the record) and its token ids."""

    text: str
    ids: list[int]


class CompletionService:
    """Requests to answers, for the aligned model and the base LLM.

    :param generator: the LLM, the agent and the decoding rules (the agent's training settings).
    :param aligned_name: the aligned model's name in ``/v1/models`` and in requests.
    :param base_name: the base LLM's name (plain sampling of the same LLM).
    :param max_tokens: the answer limit of a request that gives none (clipped to the context).
    :param max_batch: rows decoded at once.
    :param queue_size: answers that may wait for a row before requests are refused with 503.
    """

    def __init__(
        self,
        generator: MARAGenerator,
        *,
        aligned_name: str,
        base_name: str,
        max_tokens: int = 512,
        max_batch: int = 16,
        queue_size: int = 64,
    ) -> None:
        if aligned_name == base_name:
            raise ValueError(f"the aligned and base model names must differ, both are {aligned_name!r}.")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}.")
        self.generator = generator
        self.aligned_name = aligned_name
        self.base_name = base_name
        self.default_max_tokens = max_tokens
        self.session = generator.session
        self.context = self.session.context
        self.chunk_size = self.session.largest_chunk  # the room kept after the prompt
        self.batcher = ContinuousBatcher(
            generator, max_batch, queue_size, self.context if self.context is not None else 1 << 20
        )

    @property
    def model_names(self) -> list[str]:
        return [self.aligned_name, self.base_name]

    def close(self) -> None:
        self.batcher.close()

    # ----------------------------------------------------------------------------------- checks

    def is_aligned(self, model: str) -> bool:
        """Whether ``model`` names the aligned model (``False``: the base LLM)."""
        if model == self.aligned_name:
            return True
        if model == self.base_name:
            return False
        raise APIError(
            404,
            f"The model {model!r} does not exist on this server; it serves {self.aligned_name!r} (aligned) "
            f"and {self.base_name!r} (the base LLM). See GET /v1/models.",
            param="model",
            code="model_not_found",
        )

    def chat_prompt(self, messages: list[ChatMessage]) -> Prompt:
        """The chat's prompt ids in the run's prompt format (its chat template and system prompt)."""
        if not messages:
            raise APIError(400, "messages is empty; send at least one message, e.g. a user turn.", param="messages")
        fmt = self.session.prompt_format
        turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
        if fmt.system_prompt is not None and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": fmt.system_prompt})
        if not fmt.uses_chat_template:  # the plain template of one user text
            text = "\n\n".join(t["content"] for t in turns)
            return self._encode_user(text, "messages")
        tok = self.session.tokenizer
        text = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        # chat templates carry their own special tokens, as PromptFormat encodes them
        return Prompt(text, list(tok(text, add_special_tokens=False)["input_ids"]))

    def completion_prompts(self, prompt: str | list[str]) -> list[Prompt]:
        """Each prompt as a user turn in the run's prompt format, as ``mara generate`` formats it."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise APIError(400, "prompt is an empty list; send a string or a list of strings.", param="prompt")
        return [self._encode_user(p, "prompt") for p in prompts]

    def _encode_user(self, text: str, param: str) -> Prompt:
        if not text.strip():
            raise APIError(400, f"{param} holds no text; send a non-empty prompt.", param=param)
        fmt = self.session.prompt_format
        ids, _ = fmt.token_ids(text)
        return Prompt(fmt.text(text), ids)

    def max_tokens(self, requested: int | None, prompt: Prompt, param: str = "max_tokens") -> int:
        """The answer limit: ``requested`` checked against the context, or the server's default fitted to it.

        Room for the answer: ``context - prompt tokens - chunk_size`` (one candidate chunk is computed past
        the last token).
        """
        room = None if self.context is None else self.context - len(prompt.ids) - self.chunk_size
        if room is not None and room < 1:
            raise APIError(
                400,
                f"The prompt takes {len(prompt.ids)} tokens of the model's {self.context}-token context, which "
                f"leaves no room for an answer ({self.chunk_size} tokens are kept for one candidate chunk). "
                "Shorten the prompt.",
                param="messages" if param != "prompt" else "prompt",
                code="context_length_exceeded",
            )
        if requested is None:
            return self.default_max_tokens if room is None else min(self.default_max_tokens, room)
        if isinstance(requested, bool) or requested < 1:
            raise APIError(400, f"{param} must be an integer >= 1, got {requested}.", param=param)
        if room is not None and requested > room:
            raise APIError(
                400,
                f"{param}={requested} is beyond the context: the prompt takes {len(prompt.ids)} tokens of the "
                f"model's {self.context}-token context and {self.chunk_size} are kept for one candidate chunk, "
                f"so {param} can be at most {room}.",
                param=param,
                code="context_length_exceeded",
            )
        return requested

    def deterministic(self, body: _Sampling) -> bool:
        """Whether decisions are deterministic: ``temperature=0`` asks for it (or the generator's ``deterministic``).

        The candidate sets are the agent's training settings; other ``temperature`` or ``top_p`` values would
        change them (and the reference probabilities the agent sees), so they are refused.
        """
        config = self.session.candidates
        for name, value, own in (
            ("temperature", body.temperature, config.temperature),
            ("top_p", body.top_p, config.top_p),
        ):
            if value is None or math.isclose(value, own, rel_tol=1e-6) or (name == "temperature" and value == 0):
                continue
            raise APIError(
                400,
                f"{name}={value} is not available: the agent was trained on candidate sets with temperature "
                f"{config.temperature} and top_p {config.top_p}, and its decisions hold only there. Omit {name} "
                f"or send {own}"
                + (" (or temperature=0 for deterministic decisions)." if name == "temperature" else "."),
                param=name,
            )
        return self.generator.deterministic or body.temperature == 0

    def check_n(self, n: int, prompts: int = 1) -> None:
        limit = self.batcher.max_batch + self.batcher.queue_size
        if isinstance(n, bool) or n < 1:
            raise APIError(400, f"n must be an integer >= 1, got {n}.", param="n")
        if n * prompts > limit:
            raise APIError(
                400,
                f"n={n} asks for {n * prompts} answers, more than this server holds at once ({limit}: --max-batch "
                f"{self.batcher.max_batch} + --queue-size {self.batcher.queue_size}); lower n.",
                param="n",
            )

    # ----------------------------------------------------------------------------------- decoding

    def jobs(
        self,
        prompts: list[Prompt],
        limits: list[int],
        n: int,
        seed: int | None,
        *,
        aligned: bool,
        deterministic: bool,
        stream: bool,
        stop: Sequence[str] = (),
    ) -> list[Job]:
        """One job per answer: prompt ``p``'s choice ``j`` draws from its own stream ``(seed, p * n + j)``.

        :param stop: texts that end an answer where they first appear (OpenAI's ``stop``; not in the answer).
        """
        loop = asyncio.get_running_loop()
        decode, stops = self.session.decode, list(stop)
        test = (lambda ids: stop_index(decode(ids), stops) is not None) if stops else None
        jobs = []
        for p, (prompt, limit) in enumerate(zip(prompts, limits)):
            for j in range(n):
                rng = np.random.default_rng(None if seed is None else [seed, p * n + j])
                request = RowRequest(prompt.text, prompt.ids, rng, deterministic, aligned, max_new_tokens=limit)
                jobs.append(Job(request, loop, stream=stream, stop=test))
        return jobs

    def submit(self, jobs: list[Job]) -> None:
        try:
            self.batcher.submit(jobs)
        except QueueFull:
            raise APIError(
                503,
                f"The server is busy: all {self.batcher.max_batch} rows are decoding and the waiting queue "
                f"({self.batcher.queue_size}) is full. Retry later.",
                type="server_error",
                code="server_busy",
            ) from None

    async def results(
        self, jobs: list[Job], disconnected: Callable[[], Awaitable[bool]], stop: Sequence[str] = ()
    ) -> list[Generation] | None:
        """Wait for every job's answer (cut at its first ``stop`` text); ``None`` (and the jobs cancelled) if the
        client goes away first."""
        out: list[Generation] = []
        try:
            for job in jobs:
                while True:
                    try:
                        kind, value = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
                    except asyncio.TimeoutError:
                        if await disconnected():
                            return None
                        continue
                    if kind == "done":
                        out.append(cut_at_stop(value, stop))
                        break
                    if kind == "error":
                        raise APIError(500, value, type="server_error")
            return out
        finally:
            if len(out) < len(jobs):
                for job in jobs:
                    self.batcher.cancel(job)

    async def stream(
        self, jobs: list[Job], stop: Sequence[str] = ()
    ) -> AsyncIterator[tuple[int, str, Generation | None]]:
        """``(choice index, new text, answer when it has ended)`` as the answers grow, in the order events come.

        Only complete text is sent (a token may end inside a multi-byte character), and no text that may be the
        start of a ``stop`` text, so the pieces of a choice concatenate to its final text. Leaving the iteration
        early (a client that went away) cancels the jobs.
        """
        merged: asyncio.Queue = asyncio.Queue()
        shown = [""] * len(jobs)

        async def forward(i: int, job: Job) -> None:
            while True:
                event = await job.events.get()
                await merged.put((i, event))
                if event[0] != "tokens":
                    return

        tasks = [asyncio.create_task(forward(i, job)) for i, job in enumerate(jobs)]
        remaining = len(jobs)
        try:
            while remaining:
                i, (kind, value) = await merged.get()
                if kind == "error":
                    raise RuntimeError(value)
                if kind == "tokens":
                    text = self.session.decode(value)
                    if stop:  # what may still turn out to be a stop text waits for the next tokens
                        found = stop_index(text, stop)
                        text = text[:found] if found is not None else text[: len(text) - held_back(text, stop)]
                    if len(text) > len(shown[i]) and text.startswith(shown[i]) and not text.endswith("\ufffd"):
                        piece, shown[i] = text[len(shown[i]) :], text
                        yield i, piece, None
                    continue
                remaining -= 1
                value = cut_at_stop(value, stop)
                final = value.text
                piece = final[len(shown[i]) :] if final.startswith(shown[i]) else ""
                yield i, piece, value
        finally:
            for task in tasks:
                task.cancel()
            if remaining:
                for job in jobs:
                    self.batcher.cancel(job)


# --------------------------------------------------------------------------------------------- stop sequences


def stop_index(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of ``stops`` begins in ``text`` (``None``: none occurs)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop text (not streamed yet)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def cut_at_stop(generation: Generation, stops: Sequence[str]) -> Generation:
    """The answer up to its first stop text, which ended it (``finish_reason="stop"``); unchanged without one.

    The token counts stay those decoded: the stop text's tokens were generated, as OpenAI counts them.
    """
    found = stop_index(generation.text, stops) if stops else None
    if found is None:
        return generation
    return replace(generation, text=generation.text[:found], finish_reason="stop")
