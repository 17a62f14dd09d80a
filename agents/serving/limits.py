"""What one request may cost ``mara serve``: its body's size, its prompt's characters, its time.

A server is only as available as its most expensive request allows. Before this module a 50 MB body was
read whole, then templated and tokenised inside the event loop: every other client, ``/health`` included,
waited minutes and memory grew by gigabytes. Now:

- :class:`BodyLimit` (ASGI middleware) reads a request body up to :attr:`RequestLimits.max_body_bytes`:
  a ``Content-Length`` above it is answered 413 before a byte is read, a body that grows past it
  (chunked) is cut off with 413, and a body that trickles in slower than :attr:`RequestLimits.body_timeout_s`
  gets 408;
- :func:`check_prompt_chars` refuses a prompt that cannot fit the model's context *before* it is
  templated and tokenised: a token spells at most :func:`longest_token_chars` characters, so a prompt of
  more than ``context * longest`` characters needs more tokens than the context holds;
- the routes (:mod:`agents.serving.app`) template and tokenise on a worker thread, never on the event
  loop, and give up on an answer after :attr:`RequestLimits.timeout_s` (504; the answer's rows are freed).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

from agents.serving.protocol import APIError, error_body

__all__ = ["BodyLimit", "RequestLimits", "check_prompt_chars", "longest_token_chars"]

#: A token spelling more characters than this counts as this many: a few vocabularies hold a token of
#: hundreds of repeated symbols, which would let through prompts far beyond any real context.
MAX_TOKEN_CHARS = 64


@dataclass(frozen=True)
class RequestLimits:
    """The server's limits per request (``mara serve --max-request-bytes``, ``--request-timeout``).

    :param max_body_bytes: the largest request body read; larger ones get 413.
    :param timeout_s: seconds an answer may take from its request's arrival; then 504 (``None``: no limit).
    :param body_timeout_s: seconds a client may take to send its body; then 408.
    """

    max_body_bytes: int = 4 << 20
    timeout_s: float | None = 600.0
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be an integer >= 1, got {self.max_body_bytes!r}.")
        for name in ("timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0 or not math.isfinite(value)):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}.")


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` spells (at most :data:`MAX_TOKEN_CHARS`).

    Byte-level vocabularies store a token as one character per byte and SentencePiece ones as the text with
    ``▁`` for a space: either way the stored string is at least as long as the text it decodes to.
    """
    vocab = tokenizer.get_vocab()
    longest = max((len(token) for token in vocab), default=1)
    return max(1, min(longest, MAX_TOKEN_CHARS))


def check_prompt_chars(chars: int, context: int | None, token_chars: int, param: str) -> None:
    """Refuse a prompt of ``chars`` characters that needs more tokens than ``context`` holds; nothing is tokenised.

    :raises APIError: 400, ``context_length_exceeded``.
    """
    if context is None:
        return
    limit = context * token_chars
    if chars > limit:
        raise APIError(
            400,
            f"The prompt holds {chars:,} characters; this model's {context}-token context fits at most {limit:,} "
            f"(a token spells at most {token_chars} characters), so it was refused before tokenising. Shorten "
            "the prompt.",
            param=param,
            code="context_length_exceeded",
        )


class BodyLimit:
    """ASGI middleware: a request body is read here, bounded in size and time, then handed on whole.

    :param app: the application.
    :param limits: the bounds.
    """

    def __init__(self, app: Any, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _reply(send, 400, "The Content-Length header is not a number.", "invalid_request")
            if size > limit:
                return await _reply(send, 413, _too_large(size, limit), "request_too_large")
        chunks: list[bytes] = []
        received = 0
        more = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        try:
            while more:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    return await _reply(send, 413, _too_large(received, limit, at_least=True), "request_too_large")
                chunks.append(chunk)
                more = message.get("more_body", False)
        except asyncio.TimeoutError:
            return await _reply(
                send,
                408,
                f"The request body did not arrive within {self.limits.body_timeout_s:g} s ({received:,} bytes came).",
                "request_timeout",
            )
        body = b"".join(chunks)
        chunks.clear()
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        return await self.app(scope, replay, send)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"The request body is {'more than ' if at_least else ''}{size:,} bytes; this server reads at most {limit:,} "
        "(mara serve --max-request-bytes). Send a shorter prompt."
    )


async def _reply(send: Any, status: int, message: str, code: str) -> None:
    kind = "invalid_request_error"
    body = json.dumps(error_body(message, type=kind, code=code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is not read
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
