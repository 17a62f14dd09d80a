"""The FastAPI application of ``mara serve``: OpenAI's routes over a :class:`~agents.serving.service.CompletionService`.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream=true``: server-sent events in
OpenAI's chunk format, ending with ``data: [DONE]``), ``GET /v1/models`` and ``GET /health`` (with the
batcher's counters). With ``api_key`` set, every route wants ``Authorization: Bearer <api_key>``. Every
error, a malformed body included, is answered with OpenAI's error body and status.

Example::

    >>> app = create_app(service, api_key="secret")  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from agents.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    completion_id,
    error_body,
    finish_reason,
    mara_stats,
    usage,
)
from agents.serving.service import CompletionService

__all__ = ["create_app"]


def _fastapi() -> Any:
    try:
        import fastapi
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "mara serve needs FastAPI and uvicorn: pip install 'mara-rl[serve]' (fastapi, uvicorn)."
        ) from exc
    return fastapi


def create_app(service: CompletionService, *, api_key: str | None = None) -> Any:
    """The FastAPI application serving ``service``; it closes the service's decoding thread on shutdown.

    :param service: the models and the decoding thread.
    :param api_key: a bearer token every route requires (``None``: no authentication).
    """
    fastapi = _fastapi()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        service.close()

    app = fastapi.FastAPI(title="mara serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if api_key is not None:
        app.add_middleware(_BearerAuth, api_key=api_key)

    @app.exception_handler(APIError)
    async def api_error(_request: Any, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})."
            return JSONResponse(error_body(message, code="invalid_json"), status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"Invalid request: {where or 'body'}: {first.get('msg', 'invalid value')}"
        if "input" in first and where:
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
        return JSONResponse(error_body(message + ".", param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, exc: HTTPException) -> Any:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type=kind), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher = service.batcher
        return {
            "status": "ok",
            "models": service.model_names,
            "active_rows": batcher.active,
            "queued": batcher.queued,
            "max_batch": batcher.max_batch,
            "queue_size": batcher.queue_size,
            "stats": asdict(batcher.stats),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {
                "id": service.aligned_name,
                "object": "model",
                "created": 0,
                "owned_by": "mara",
                "root": service.base_name,
            },
            {"id": service.base_name, "object": "model", "created": 0, "owned_by": "mara", "root": service.base_name},
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        aligned = service.is_aligned(body.model)
        prompt = service.chat_prompt(body.messages)
        if body.max_completion_tokens is not None:
            limit = service.max_tokens(body.max_completion_tokens, prompt, "max_completion_tokens")
        else:
            limit = service.max_tokens(body.max_tokens, prompt)
        return await _answer(body, request, [prompt], [limit], aligned, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        aligned = service.is_aligned(body.model)
        prompts = service.completion_prompts(body.prompt)
        limits = [service.max_tokens(body.max_tokens, p) for p in prompts]
        return await _answer(body, request, prompts, limits, aligned, chat=False)

    async def _answer(body: Any, request: Any, prompts: list, limits: list[int], aligned: bool, *, chat: bool) -> Any:
        service.check_n(body.n, len(prompts))
        deterministic = service.deterministic(body)
        jobs = service.jobs(
            prompts, limits, body.n, body.seed, aligned=aligned, deterministic=deterministic, stream=body.stream
        )
        service.submit(jobs)
        rid, created = completion_id("chatcmpl" if chat else "cmpl")
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created}
        head["model"] = body.model
        prompt_tokens = sum(len(p.ids) for p in prompts)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _events(jobs, head, chat, prompt_tokens, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        answers = await service.results(jobs, request.is_disconnected)
        if answers is None:  # the client went away; nobody reads this
            return JSONResponse(error_body("client disconnected"), status_code=499)
        choices = []
        for i, g in enumerate(answers):
            choice: dict[str, Any] = {"index": i, "finish_reason": finish_reason(g), "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": g.text}
            else:
                choice["text"] = g.text
            choice["mara"] = mara_stats(g)
            choices.append(choice)
        return {**head, "choices": choices, "usage": usage(prompt_tokens, answers), "mara": _totals(answers)}

    async def _events(
        jobs: list, head: dict[str, Any], chat: bool, prompt_tokens: int, include_usage: bool
    ) -> AsyncIterator[str]:
        chunk_head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def sse(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        def chunk(i: int, text: str | None, g: Any = None, first: bool = False) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": i, "finish_reason": None if g is None else finish_reason(g)}
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text:
                    delta["content"] = text
                choice["delta"] = delta
            else:
                choice["text"] = text or ""
            choice["logprobs"] = None
            if g is not None:
                choice["mara"] = mara_stats(g)
            return {**chunk_head, "choices": [choice]}

        done: list[Any] = []
        if chat:  # OpenAI's first chunk of each choice names the role
            for i in range(len(jobs)):
                yield sse(chunk(i, "", first=True))
        try:
            async for i, piece, g in service.stream(jobs):
                if piece:
                    yield sse(chunk(i, piece))
                if g is not None:
                    done.append(g)
                    yield sse(chunk(i, None, g))
        except RuntimeError as exc:  # the decoding failed: say so in the stream, as OpenAI does
            yield sse(error_body(str(exc), type="server_error"))
        if include_usage and len(done) == len(jobs):
            yield sse({**chunk_head, "choices": [], "usage": usage(prompt_tokens, done), "mara": _totals(done)})
        yield "data: [DONE]\n\n"

    return app


class _BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <api_key>``, else 401.

    A plain ASGI layer rather than ``@app.middleware``: that one wraps the connection, and a handler behind it
    no longer sees its client disconnect.
    """

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        what = "No API key was given" if not given else "The API key is wrong"
        message = f"{what}: send the server's --api-key as 'Authorization: Bearer <key>'."
        body = json.dumps(error_body(message, type="authentication_error", code="invalid_api_key")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _totals(answers: list) -> dict[str, Any]:
    """The ``mara`` field of a whole response: tokens, decisions and position counts summed, KL estimates
    averaged over choices (names as :func:`~agents.answer_stats.answer_statistics`)."""
    stats = [mara_stats(g) for g in answers]
    width = max(len(s["accept_position_counts"]) for s in stats)
    counts = [
        sum(s["accept_position_counts"][k] for s in stats if k < len(s["accept_position_counts"])) for k in range(width)
    ]
    return {
        "num_tokens": sum(s["num_tokens"] for s in stats),
        "num_decisions": sum(s["num_decisions"] for s in stats),
        "accept_position_counts": counts,
        "kl_estimate": sum(s["kl_estimate"] for s in stats) / len(stats),
    }
