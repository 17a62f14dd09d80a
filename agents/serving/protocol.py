"""The OpenAI-compatible wire format of ``mara serve``: request bodies, response objects and error bodies.

Requests are validated by pydantic models with OpenAI's field names and types, strictly (``n: true`` is
not 1, ``seed: -1`` and ``seed: 1.5`` are errors, a message's ``content`` may not be null); a field OpenAI
does not know is refused as OpenAI refuses it. Fields of OpenAI's that do not change an answer (``user``,
``metadata``, ...) are accepted and ignored; those this server cannot honour (``logprobs``, ``tools``,
penalties, ...) are refused with 400 when they ask for anything. ``stop`` is implemented (streamed too).
Responses are plain dictionaries in OpenAI's shapes
(``chat.completion``, ``chat.completion.chunk``, ``text_completion``, ``list``), each choice carrying
MARA's statistics in the extension field ``mara`` (:func:`mara_stats`), which OpenAI clients keep in
``model_extra`` and otherwise ignore. Errors are :class:`APIError`, sent as
``{"error": {"message", "type", "param", "code"}}`` with their HTTP status.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

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


#: Limits of list fields: far above any real request, low enough that validating one stays cheap.
MAX_MESSAGES = 4096
MAX_STOP = 4  # as OpenAI


class _Request(BaseModel):
    # A field OpenAI does not know is an error, as OpenAI answers it ("Unrecognized request argument");
    # fields OpenAI knows are declared below, and those this server cannot honour are refused when set
    model_config = ConfigDict(extra="forbid")


def _unset(name: str, value: Any, what: str, default: Any = None) -> Any:
    """Refuse a field this server cannot honour when it asks for more than its default."""
    if value is not None and value != default and value not in ([], {}, False):
        raise ValueError(f"{name} is not available on this server: {what}. Omit it")
    return value


class TextPart(_Request):
    """A ``{"type": "text", "text": ...}`` part of a message's content."""

    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Request):
    """One chat turn. ``developer`` is OpenAI's newer name for ``system``. ``content`` is required (no tools here)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | Annotated[list[TextPart], Field(max_length=MAX_MESSAGES)]
    name: StrictStr | None = None
    # Fields of an assistant message as OpenAI returns it, accepted empty so that a reply can be sent back
    refusal: StrictStr | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    annotations: list[Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("content is null: every message needs its text, as a string or a list of text parts")
        return value

    @field_validator("tool_calls", "function_call", "audio")
    @classmethod
    def _no_tools(cls, value: Any, info: Any) -> Any:
        return _unset(info.field_name, value, "this server runs no tools or audio")

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: StrictBool = False


class _Sampling(_Request):
    """Fields shared by both endpoints (checked against the server's limits by the service)."""

    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    # numpy seeds streams from non-negative integers
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = (
        None
    )
    # Accepted and ignored, as by other OpenAI-compatible servers: they do not change the answer
    user: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    store: StrictBool | None = None
    service_tier: StrictStr | None = None
    # Known to OpenAI, not available here: refused when they ask for anything
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: Any, info: Any) -> Any:
        return _unset(info.field_name, value, "the agent decides on the LLM's own candidate sets", default=0)

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: Any) -> Any:
        return _unset("logit_bias", value, "the agent decides on the LLM's own candidate sets")

    @field_validator("stop")
    @classmethod
    def _stop_texts(cls, value: Any) -> Any:
        if value == "":
            raise ValueError("stop is an empty string; send the text that ends an answer, or omit stop")
        return value

    @property
    def stop_texts(self) -> list[str]:
        """The stop sequences as a list (empty: none)."""
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` is OpenAI's newer name for ``max_tokens``."""

    messages: Annotated[list[ChatMessage], Field(max_length=MAX_MESSAGES)]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    parallel_tool_calls: StrictBool | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: StrictStr | None = None

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any, info: Any) -> Any:
        return _unset(info.field_name, value, "log-probabilities of the aligned model's tokens are not computed")

    @field_validator("tools", "tool_choice", "functions", "function_call", "audio", "prediction")
    @classmethod
    def _no_tools(cls, value: Any, info: Any) -> Any:
        return _unset(info.field_name, value, "this server runs no tools, audio or predicted outputs")

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value is not None and value != {"type": "text"}:
            raise ValueError('response_format is not available on this server beyond {"type": "text"}. Omit it')
        return value

    @field_validator("modalities")
    @classmethod
    def _text_modality(cls, value: Any) -> Any:
        if value is not None and set(value) - {"text"}:
            raise ValueError('modalities other than ["text"] are not available on this server. Omit it')
        return value


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: each prompt is a user turn in the run's prompt format (as ``mara generate``)."""

    prompt: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_MESSAGES)]
    logprobs: StrictInt | None = None
    echo: StrictBool | None = None
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        return _unset("logprobs", value, "log-probabilities of the aligned model's tokens are not computed")

    @field_validator("echo", "suffix")
    @classmethod
    def _no_echo(cls, value: Any, info: Any) -> Any:
        return _unset(info.field_name, value, "answers are the completion alone")

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: Any) -> Any:
        return _unset("best_of", value, "answers are not ranked on the server (use n)", default=1)


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
    """OpenAI's reasons: ``"stop"`` (the model ended the answer, or a stop sequence did) or ``"length"`` (the limit)."""
    return "stop" if generation.finish_reason in ("eos", "stop") else "length"
