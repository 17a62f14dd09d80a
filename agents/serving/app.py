"""The FastAPI application of ``mara serve``: OpenAI's routes over a :class:`~agents.serving.service.CompletionService`.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream=true``: server-sent events in
OpenAI's chunk format, ending with ``data: [DONE]``), ``GET /v1/models`` and ``GET /health`` (with the
batcher's counters). With ``api_key`` set, every route wants ``Authorization: Bearer <api_key>``. Every
error, a malformed body included, is answered with OpenAI's error body and a 4xx status naming the field.
One request cannot stall the others (:mod:`agents.serving.limits`): bodies are bounded (413), prompts too
long for the context are refused before tokenising, templating and tokenising run on a worker thread
(``/health`` answers while they run) and an answer that outlives the request timeout is stopped (504).

Example::

    >>> app = create_app(service, api_key="secret")  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from agents.serving.limits import BodyLimit, RequestLimits, check_prompt_chars, longest_token_chars
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


def create_app(service: CompletionService, *, api_key: str | None = None, limits: RequestLimits | None = None) -> Any:
    """The FastAPI application serving ``service``; it closes the service's decoding thread on shutdown.

    :param service: the models and the decoding thread.
    :param api_key: a bearer token every route requires (``None``: no authentication; an empty key is refused).
    :param limits: body size, time per request (:class:`~agents.serving.limits.RequestLimits`; default: its defaults).
    """
    fastapi = _fastapi()
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    if api_key is not None and not api_key.strip():
        raise ValueError(
            "api_key is empty: give a non-empty key (every client then sends it), or none to serve without."
        )
    limits = limits or RequestLimits()
    tokenizer = service.session.tokenizer
    token_chars = longest_token_chars(tokenizer)
    # Templating and tokenising run here, one request at a time, never on the event loop
    prompts_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mara-prompts")

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        prompts_thread.shutdown(wait=False, cancel_futures=True)
        service.close()

    app = fastapi.FastAPI(title="mara serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limits=limits)
    if api_key is not None:  # added last: outermost, so an unauthenticated body is never read
        app.add_middleware(_BearerAuth, api_key=api_key)

    async def off_loop(work: Callable[[], Any], param: str) -> Any:
        """``work()`` on the prompts thread; what the tokenizer cannot read is the client's input, named."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(prompts_thread, work)
        except APIError:
            raise
        except Exception as exc:
            raise APIError(
                400,
                f"The {param} could not be formatted and tokenised: {type(exc).__name__}: {str(exc)[:200]}.",
                param=param,
            ) from exc

    @app.exception_handler(APIError)
    async def api_error(_request: Any, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})."
            return JSONResponse(error_body(message, code="invalid_json"), status_code=400)
        return JSONResponse(_validation_error(list(exc.errors())), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Any, exc: Exception) -> Any:  # a bug: said as JSON (and logged with its traceback)
        message = f"The server failed on this request ({type(exc).__name__}); see the server's log."
        return JSONResponse(error_body(message, type="server_error"), status_code=500)

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
        started = asyncio.get_running_loop().time()
        aligned = service.is_aligned(body.model)
        service.check_n(body.n)
        deterministic = service.deterministic(body)
        # The cheap bound first: a prompt too long for any tokenisation is refused before templating
        check_prompt_chars(sum(len(m.text) for m in body.messages), service.context, token_chars, "messages")

        def prepare() -> tuple[Any, int]:
            _check_encodable((m.text for m in body.messages), "messages")
            prompt = service.chat_prompt(body.messages)
            if body.max_completion_tokens is not None:
                return prompt, service.max_tokens(body.max_completion_tokens, prompt, "max_completion_tokens")
            return prompt, service.max_tokens(body.max_tokens, prompt)

        prompt, limit = await off_loop(prepare, "messages")
        return await _answer(body, request, [prompt], [limit], aligned, deterministic, started, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        started = asyncio.get_running_loop().time()
        aligned = service.is_aligned(body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        service.check_n(body.n, max(len(texts), 1))
        deterministic = service.deterministic(body)
        check_prompt_chars(max((len(t) for t in texts), default=0), service.context, token_chars, "prompt")

        def prepare() -> tuple[list[Any], list[int]]:
            _check_encodable(texts, "prompt")
            prompts = service.completion_prompts(body.prompt)
            return prompts, [service.max_tokens(body.max_tokens, p) for p in prompts]

        prompts, answer_limits = await off_loop(prepare, "prompt")
        return await _answer(body, request, prompts, answer_limits, aligned, deterministic, started, chat=False)

    async def _answer(
        body: Any,
        request: Any,
        prompts: list,
        answer_limits: list[int],
        aligned: bool,
        deterministic: bool,
        started: float,
        *,
        chat: bool,
    ) -> Any:
        stop = body.stop_texts
        jobs = service.jobs(
            prompts,
            answer_limits,
            body.n,
            body.seed,
            aligned=aligned,
            deterministic=deterministic,
            stream=body.stream,
            stop=stop,
        )
        service.submit(jobs)
        deadline = None if limits.timeout_s is None else started + limits.timeout_s
        rid, created = completion_id("chatcmpl" if chat else "cmpl")
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created}
        head["model"] = body.model
        prompt_tokens = sum(len(p.ids) for p in prompts)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _events(jobs, head, chat, prompt_tokens, include_usage, stop, deadline)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            answers = await asyncio.wait_for(service.results(jobs, request.is_disconnected, stop), _left(deadline))
        except asyncio.TimeoutError:  # service.results cancelled the jobs: their rows are free
            raise APIError(504, _timed_out(limits), type="server_error", code="timeout") from None
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
        jobs: list,
        head: dict[str, Any],
        chat: bool,
        prompt_tokens: int,
        include_usage: bool,
        stop: list[str],
        deadline: float | None,
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
        pieces = service.stream(jobs, stop)
        try:
            while True:
                try:
                    i, piece, g = await asyncio.wait_for(pieces.__anext__(), _left(deadline))
                except StopAsyncIteration:
                    break
                if piece:
                    yield sse(chunk(i, piece))
                if g is not None:
                    done.append(g)
                    yield sse(chunk(i, None, g))
        except asyncio.TimeoutError:  # the stream's jobs were cancelled with it
            yield sse(error_body(_timed_out(limits), type="server_error", code="timeout"))
        except RuntimeError as exc:  # the decoding failed: say so in the stream, as OpenAI does
            yield sse(error_body(str(exc), type="server_error"))
        finally:
            await pieces.aclose()
        if include_usage and len(done) == len(jobs):
            yield sse({**chunk_head, "choices": [], "usage": usage(prompt_tokens, done), "mara": _totals(done)})
        yield "data: [DONE]\n\n"

    return app


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` on the running loop's clock (``None``: no deadline)."""
    return None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0.0)


def _timed_out(limits: RequestLimits) -> str:
    return (
        f"The answer took longer than this server allows a request ({limits.timeout_s:g} s, mara serve "
        "--request-timeout); it was stopped. Ask for fewer tokens (max_tokens) or retry when the server is less busy."
    )


def _check_encodable(texts: Any, param: str) -> None:
    """Refuse text that is not Unicode a tokenizer can read (JSON can carry lone UTF-16 surrogates)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise APIError(
                400, f"{param} holds a lone surrogate ({exc.object[exc.start : exc.end]!r}): not text.", param=param
            ) from None


def _field(error: dict[str, Any]) -> str:
    """The field an error is about (``messages.0.content``): a union's branch names dropped from its location."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    return ".".join(p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool"))


def _validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's error body for pydantic's first complaint, naming the field (``messages.0.content``)."""
    first = errors[0] if errors else {}
    where = _field(first)
    # Of a union's complaints about one field, the branch of the value's own type says what is wrong
    same = [e for e in errors if _field(e) == where]
    first = next((e for e in same if not str(e.get("type", "")).endswith("_type")), first)
    kind, msg = first.get("type", ""), str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {where}."
    else:
        message = f"Invalid request: {where or 'body'}: {msg}"
        if "input" in first and where and kind != "value_error":
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
        message += "."
    return error_body(message, param=where or None, code="invalid_value" if kind != "extra_forbidden" else None)


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
