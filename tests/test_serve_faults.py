"""``mara serve`` against careless and hostile clients: every invalid field a named 4xx, bounded bodies and
prompts, per-request timeouts, ``stop`` sequences, an empty API key refused, and the API fuzzed from its
OpenAPI schema (schemathesis) without a single 5xx.

Servers run the test suite's tiny model (``tests/conftest.py``) on a loopback port, as in ``test_serve.py``.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import schemathesis
from conftest import TINY_PROMPTS
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from test_serve import ALIGNED, BASE, KEY, _llm, chat, running, still_serving

from agents.cli import main
from agents.generation import MARAGenerator
from agents.serving import CompletionService, create_app
from agents.serving.limits import RequestLimits

HEADERS = {"Authorization": f"Bearer {KEY}"}


def steady_agent(obs: np.ndarray) -> np.ndarray:
    return np.full(obs.shape[0], 0.8)


@pytest.fixture(scope="module")
def url():
    limits = RequestLimits(max_body_bytes=256 << 10, timeout_s=60, body_timeout_s=2)
    with running(steady_agent, limits=limits) as base_url:
        yield base_url


@pytest.fixture
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=30)


def post(url: str, body: dict | bytes, path: str = "/chat/completions", **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**HEADERS, "Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=30, **kw)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def base_chat(**fields) -> dict:
    return {"model": ALIGNED, "messages": [{"role": "user", "content": TINY_PROMPTS[0]}], "max_tokens": 4, **fields}


@pytest.mark.parametrize(
    "fields, param, says",
    [
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"seed": 1.5}, "seed", "valid integer"),
        ({"seed": "3"}, "seed", "valid integer"),
        ({"n": True}, "n", "valid integer"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"max_tokens": 2.0}, "max_tokens", "valid integer"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0.content", "content is null"),
        ({"messages": [{"role": "user", "content": "hi", "colour": 1}]}, "messages.0.colour", "Unrecognized"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role", "Input should be"),
        ({"frobnicate": True}, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
        ({"logprobs": True}, "logprobs", "logprobs is not available on this server"),
        ({"top_logprobs": 3}, "top_logprobs", "not available"),
        ({"tools": [{"type": "function"}]}, "tools", "runs no tools"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not available"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not available"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": ""}, "stop", "empty string"),
    ],
)
def test_every_invalid_field_is_a_named_400(url, fields, param, says):
    response = post(url, base_chat(**fields))
    error = error_of(response)
    assert response.status_code == 400 and error["param"] == param and says in error["message"], error


def test_completions_fields_and_accepted_openai_fields(url, client):
    for fields, param in (({"logprobs": 2}, "logprobs"), ({"echo": True}, "echo"), ({"best_of": 3}, "best_of")):
        body = {"model": ALIGNED, "prompt": "hello", "max_tokens": 3, **fields}
        response = post(url, body, "/completions")
        assert response.status_code == 400 and error_of(response)["param"] == param
    # fields OpenAI knows that do not change the answer pass; so do a reply sent back as the client returned it
    previous = {"role": "assistant", "content": "hi", "refusal": None, "tool_calls": None, "annotations": []}
    messages = [{"role": "user", "content": "hello"}, previous, {"role": "user", "content": "more"}]
    ok = post(url, base_chat(messages=messages, user="u1", metadata={"a": "b"}, logprobs=False, presence_penalty=0))
    assert ok.status_code == 200, ok.text
    still_serving(client)


def test_an_empty_api_key_is_refused_at_start(monkeypatch, capsys):
    gen = MARAGenerator(_llm(), steady_agent, devices=["cpu"], top_k=8)
    service = CompletionService(gen, aligned_name=ALIGNED, base_name=BASE)
    try:
        for key in ("", "  "):
            with pytest.raises(ValueError, match="api_key is empty"):
                create_app(service, api_key=key)
    finally:
        service.close()
    assert main(["serve", "--api-key", "", "--agent", "none.zip"]) == 2  # before anything is loaded
    assert "--api-key is empty" in capsys.readouterr().err
    monkeypatch.setenv("MARA_API_KEY", "")
    assert main(["serve", "--agent", "none.zip"]) == 2
    assert "$MARA_API_KEY is set but empty" in capsys.readouterr().err


def test_bodies_are_bounded_in_size_and_time(url, client):
    big = base_chat(messages=[{"role": "user", "content": "the " * 100_000}])  # 400 kB > the 256 kB limit
    response = post(url, big)
    assert response.status_code == 413 and "at most 262,144" in error_of(response)["message"]

    def chunks():  # no Content-Length: counted as it arrives, cut off past the limit
        for _ in range(100):
            yield b" " * 10_000

    response = httpx.post(url + "/chat/completions", content=chunks(), headers=HEADERS, timeout=30)
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"

    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:  # a client that stops sending
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": "
        )  # fmt: skip
        reply = b""
        while chunk := conn.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in reply

    # the largest allowed body: a prompt too long for the context is refused before tokenising
    long = base_chat(messages=[{"role": "user", "content": "the " * 60_000}])  # 240 kB
    response = post(url, long)
    error = error_of(response)
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "refused before tokenising" in error["message"] and error["param"] == "messages"
    # text a tokenizer cannot read (a lone surrogate, valid in JSON) is the client's error
    response = post(url, b'{"model": "tiny-mara", "messages": [{"role": "user", "content": "a \\ud800 b"}]}')
    assert response.status_code == 400 and "lone surrogate" in error_of(response)["message"]
    still_serving(client)


def test_a_request_past_its_timeout_is_stopped_and_its_row_freed():
    gate = threading.Event()

    def held(obs: np.ndarray) -> np.ndarray:
        gate.wait(timeout=20)
        return np.full(obs.shape[0], 0.8)

    with running(held, limits=RequestLimits(timeout_s=1.0)) as url:
        response = post(url, base_chat(max_tokens=30))
        error = error_of(response)
        assert response.status_code == 504 and error["code"] == "timeout" and "--request-timeout" in error["message"]
        lines = post(url, base_chat(max_tokens=30, stream=True)).text.splitlines()
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "timeout" and lines[-2] == "data: [DONE]"
        gate.set()
        health = url.removesuffix("/v1") + "/health"
        deadline = time.monotonic() + 10
        while httpx.get(health, headers=HEADERS).json()["active_rows"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(health, headers=HEADERS).json()["stats"]["cancelled"] == 2


def test_stop_sequences_end_the_answer_streamed_too(client):
    full = chat(client, TINY_PROMPTS[1], model=BASE, max_tokens=12, seed=4)
    words = full.choices[0].message.content.split()
    assert len(words) >= 4, words
    stop = words[2]
    expected = full.choices[0].message.content[: full.choices[0].message.content.find(stop)]
    cut = chat(client, TINY_PROMPTS[1], model=BASE, max_tokens=12, seed=4, stop=[stop, "zzz"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens  # decoding ended there
    pieces = []
    for chunk in chat(client, TINY_PROMPTS[1], model=BASE, max_tokens=12, seed=4, stop=stop, stream=True):
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or None
    assert "".join(pieces) == expected and finish == "stop" and all(stop not in p for p in pieces)
    done = client.completions.create(model=BASE, prompt=TINY_PROMPTS[1], max_tokens=12, seed=4, stop=stop)
    assert done.choices[0].text == expected


# ------------------------------------------------------------------------------------------------ fuzzing


def openapi_schema() -> dict:
    """The server's OpenAPI schema, with the strict bodies of protocol.py."""
    gen = MARAGenerator(_llm(), steady_agent, devices=["cpu"], top_k=8)
    service = CompletionService(gen, aligned_name=ALIGNED, base_name=BASE)
    try:
        spec = create_app(service).openapi()
    finally:
        service.close()
    # Most positive cases should reach decoding rather than stop at 404: name the served models
    for component in spec["components"]["schemas"].values():
        if "model" in component.get("properties", {}):
            component["properties"]["model"] = {"type": "string", "enum": [ALIGNED, BASE]}
    return spec


#: Examples per operation and mode: ~400 requests in all, ~30 s on the tiny model.
FUZZ_EXAMPLES = 50


def test_fuzzed_requests_never_get_a_5xx(url):
    """Every operation of the schema, with bodies that follow it (positive) and bodies that break it (negative)."""
    schema = schemathesis.openapi.from_dict(openapi_schema())
    base = url.removesuffix("/v1")
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(base_url=base, headers=HEADERS, timeout=60)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.body, response.status_code, response.text[:300])
                if response.status_code >= 400:
                    assert set(response.json()) == {"error"}, response.text[:300]

            try:
                check()
            except Unsatisfiable:  # a GET without parameters has nothing to break
                assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    print("fuzzed responses by status:", dict(sorted(statuses.items())))
    assert sum(statuses.values()) >= 100 and any(code == 200 for code in statuses), statuses
    assert any(400 <= code < 500 for code in statuses), statuses
