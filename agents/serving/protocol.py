"""The OpenAI-compatible wire format of ``mara serve``: request bodies, response objects and error bodies.

Requests are validated by pydantic models with OpenAI's field names; fields this server does not use
(``user``, ``logprobs``, ...) are accepted and ignored, as OpenAI-compatible servers do, so that clients
send their usual bodies unchanged. Responses are plain dictionaries in OpenAI's shapes
(``chat.completion``, ``chat.completion.chunk``, ``text_completion``, ``list``), each choice carrying
MARA's statistics in the extension field ``mara`` (:func:`mara_stats`), which OpenAI clients keep in
``model_extra`` and otherwise ignore. Errors are :class:`APIError`, sent as
``{"error": {"message", "type", "param", "code"}}`` with their HTTP status.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agents.answer_stats import answer_statistics
from agents.generation import Generation

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "completion_id",
    "error_body",
    "mara_stats",
    "usage",
]


class APIError(Exception):
    """An error answered to the client with ``status`` and an OpenAI-style error body.

    :param status: the HTTP status (400 bad request, 401 no or wrong API key, 404 unknown model, 503 busy).
    :param message: what was wrong and what to do, naming the value and the valid range.
    :param type: OpenAI's error type (``"invalid_request_error"``, ``"authentication_error"``, ...).
    :param param: the request field at fault, if one is.
    :param code: a machine-readable code (``"model_not_found"``, ``"invalid_api_key"``, ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    # Unknown fields are ignored: clients send OpenAI's full set of options
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    """A ``{"type": "text", "text": ...}`` part of a message's content."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One chat turn. ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by both endpoints (checked against the server's limits by the service)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` is OpenAI's newer name for ``max_tokens``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: each prompt is a user turn in the run's prompt format (as ``mara generate``)."""

    prompt: str | list[str]


def completion_id(prefix: str) -> tuple[str, int]:
    """A fresh response id (``chatcmpl-...`` or ``cmpl-...``) and the creation time."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())


def mara_stats(generation: Generation) -> dict[str, Any]:
    """The ``mara`` extension field of a choice: how the agent decoded the answer.

    The statistics of :func:`agents.answer_stats.answer_statistics`, under the names ``mara generate --json``
    uses: ``num_tokens``, ``num_decisions``, ``finish_reason``, ``kl_estimate`` (the single-sample estimate of
    ``KL(pi || q)`` in nats; 0 for the base model, which samples ``q``), ``ref_logprob`` (``log q(y | x)``),
    ``accept_position_counts``, ``mean_set_size``, ``prompt_truncated``.
    """
    return answer_statistics(generation)


def usage(prompt_tokens: int, generations: list[Generation]) -> dict[str, int]:
    """OpenAI's ``usage``: prompt tokens (each prompt once), answer tokens (an ending EOS included), total."""
    completion = sum(g.num_tokens for g in generations)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def finish_reason(generation: Generation) -> str:
    """OpenAI's reasons: ``"stop"`` (the model ended the answer) or ``"length"`` (the limit)."""
    return "stop" if generation.finish_reason == "eos" else "length"
