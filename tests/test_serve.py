"""``mara serve``: the OpenAI-compatible server on a loopback port, talked to with the real ``openai`` client.

The server runs uvicorn in a background thread over the tiny model and a tiny actor; every test checks it
still answers afterwards.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from conftest import TINY_PROMPTS, build_tiny_llm, make_actor

from agents.answer_stats import ANSWER_STATISTICS
from agents.cli import build_parser
from agents.generation import MARAGenerator, RowRequest
from agents.serving import CompletionService, create_app
from agents.serving.limits import RequestLimits
from mara_env.llm import PromptFormat

SETTINGS = dict(top_k=8, top_p=0.95, devices=["cpu"])
KEY = "test-key"
ALIGNED, BASE = "tiny-mara", "tiny-base"
_llm = functools.cache(build_tiny_llm)  # one tiny LLM for every server of this file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(
    agent, *, max_batch: int = 8, queue_size: int = 16, max_tokens: int = 12, limits: RequestLimits | None = None
) -> Iterator[str]:
    """A server on a free loopback port; yields its base URL (``.../v1``)."""
    gen = MARAGenerator(_llm(), agent, batch_size=max_batch, **SETTINGS)
    service = CompletionService(
        gen, aligned_name=ALIGNED, base_name=BASE, max_tokens=max_tokens, max_batch=max_batch, queue_size=queue_size
    )
    port = free_port()
    app = create_app(service, api_key=KEY, limits=limits)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(make_actor(32)) as base_url:
        yield base_url


@pytest.fixture
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=30)


def health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()


def still_serving(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model=ALIGNED, messages=[{"role": "user", "content": "hello"}], max_tokens=3)
    assert out.choices[0].finish_reason in ("stop", "length")


def chat(client, prompt: str, **kwargs):
    return client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kwargs)


def test_chat_completion_stats_and_usage(client, url):
    out = chat(client, TINY_PROMPTS[0], model=ALIGNED, max_tokens=10, seed=3)
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.model == ALIGNED and out.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    stats = choice.model_extra["mara"]
    # usage: the prompt in the run's chat format, and every answer token (an ending EOS included)
    prompt_ids = PromptFormat(_llm()[1]).token_ids(TINY_PROMPTS[0])[0]
    assert out.usage.prompt_tokens == len(prompt_ids)
    assert out.usage.completion_tokens == sum(stats["accept_position_counts"]) <= 10
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert stats["num_decisions"] >= 1 and np.isfinite(stats["kl_estimate"])
    # the same seed gives the same answer; the aligned model is the agent's, decoded like MARAGenerator
    again = chat(client, TINY_PROMPTS[0], model=ALIGNED, max_tokens=10, seed=3)
    assert again.choices[0].message.content == choice.message.content
    offline = MARAGenerator(_llm(), make_actor(32), **SETTINGS).continuous_batch(1, 10)
    offline.start([0], [RowRequest("p", prompt_ids, np.random.default_rng([3, 0]))])
    answer = None
    while answer is None:
        ended = offline.step()
        answer = ended[0][1] if ended else None
    assert choice.message.content == answer.text
    assert stats["num_decisions"] == answer.num_decisions
    assert stats["num_tokens"] == out.usage.completion_tokens and list(stats) == list(ANSWER_STATISTICS)


def test_stream_concatenates_to_the_answer(client):
    plain = chat(client, TINY_PROMPTS[1], model=ALIGNED, max_tokens=12, seed=5)
    pieces, finish, extra = [], None, None
    stream = chat(client, TINY_PROMPTS[1], model=ALIGNED, max_tokens=12, seed=5, stream=True)
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            if c.finish_reason is not None:
                finish, extra = c.finish_reason, c.model_extra["mara"]
    assert len([p for p in pieces if p]) >= 2  # really streamed, not one piece at the end
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert extra == plain.choices[0].model_extra["mara"]


def test_models_and_the_base_model(client):
    assert [m.id for m in client.models.list().data] == [ALIGNED, BASE]
    base = chat(client, TINY_PROMPTS[2], model=BASE, max_tokens=10, seed=1)
    stats = base.choices[0].model_extra["mara"]
    # the base LLM samples q itself: every decision has log pi = log p_ref, so the KL estimate is 0
    assert stats["kl_estimate"] == pytest.approx(0.0, abs=1e-9)
    assert base.usage.completion_tokens >= 1
    # greedy (temperature 0) base decoding takes every first candidate
    greedy = chat(client, TINY_PROMPTS[2], model=BASE, max_tokens=10, temperature=0)
    hist = greedy.choices[0].model_extra["mara"]["accept_position_counts"]
    assert hist[0] == greedy.usage.completion_tokens and sum(hist[1:]) == 0


def test_n_choices_and_completions(client):
    out = chat(client, TINY_PROMPTS[3], model=ALIGNED, max_tokens=8, n=3, seed=2)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.completion_tokens == sum(sum(c.model_extra["mara"]["accept_position_counts"]) for c in out.choices)
    # choice j draws from its own stream (seed, j): different choices, reproducible
    again = chat(client, TINY_PROMPTS[3], model=ALIGNED, max_tokens=8, n=3, seed=2)
    assert [c.message.content for c in again.choices] == [c.message.content for c in out.choices]
    done = client.completions.create(model=ALIGNED, prompt=TINY_PROMPTS[3], max_tokens=8, seed=2)
    assert done.object == "text_completion" and done.choices[0].text == out.choices[0].message.content
    parts = list(client.completions.create(model=ALIGNED, prompt=TINY_PROMPTS[3], max_tokens=8, seed=2, stream=True))
    assert "".join(c.choices[0].text for c in parts if c.choices) == done.choices[0].text


def _status_and_error(response: httpx.Response) -> tuple[int, dict]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return response.status_code, body["error"]


def test_bad_input_gets_openai_errors_and_the_server_keeps_serving(client, url):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    post = lambda body, **kw: httpx.post(f"{url}/chat/completions", content=body, headers=kw.get("h", headers))  # noqa: E731
    status, error = _status_and_error(post(b'{"model": "tiny-mara", "messages": [}'))
    assert status == 400 and "not valid JSON" in error["message"]
    still_serving(client)

    with pytest.raises(openai.NotFoundError) as exc:
        chat(client, "hi", model="gpt-4o")
    assert exc.value.status_code == 404 and exc.value.body["code"] == "model_not_found"
    assert ALIGNED in exc.value.body["message"] and BASE in exc.value.body["message"]
    still_serving(client)

    for bad in (0, -3):
        with pytest.raises(openai.BadRequestError) as exc:
            chat(client, "hi", model=ALIGNED, max_tokens=bad)
        assert exc.value.body["param"] == "max_tokens" and ">= 1" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, "hi", model=ALIGNED, max_tokens=100_000)
    message = exc.value.body["message"]
    # the tiny model's context is 512 positions; the limit is named
    assert "512-token context" in message and "at most" in message
    limit = int(message.rsplit("at most ", 1)[1].rstrip("."))
    assert chat(client, "hi", model=ALIGNED, max_tokens=limit, seed=0).usage.completion_tokens <= limit
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, "hi", model=ALIGNED, max_tokens=limit + 1)
    still_serving(client)

    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=ALIGNED, messages=[])
    assert exc.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, "hi", model=ALIGNED, temperature=0.7)
    assert exc.value.body["param"] == "temperature" and "1.0" in exc.value.body["message"]
    status, error = _status_and_error(post(b'{"model": "tiny-mara", "messages": [{"role": "pirate"}]}'))
    assert status == 400 and "messages.0.role" in error["message"]
    still_serving(client)

    for auth in (None, "Bearer wrong", "Basic test-key"):
        h = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
        status, error = _status_and_error(post(b'{"model": "tiny-mara", "messages": []}', h=h))
        assert status == 401 and error["code"] == "invalid_api_key"
        status, _ = _status_and_error(httpx.get(f"{url}/models", headers=h))
        assert status == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    still_serving(client)


def test_concurrent_requests_share_decoder_steps(client, url):
    before = health(url)["stats"]
    results: list = [None] * 6

    def ask(i: int) -> None:
        results[i] = chat(client, TINY_PROMPTS[i], model=ALIGNED if i % 2 else BASE, max_tokens=12, seed=i)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(url)["stats"]
    assert all(r is not None for r in results)
    # answers of different requests (aligned and base together) took decisions in the same steps
    assert after["shared_steps"] > before["shared_steps"] and after["max_rows_per_step"] >= 2
    # and batching did not change them: each equals its answer alone
    for i in (0, 1):
        alone = chat(client, TINY_PROMPTS[i], model=ALIGNED if i % 2 else BASE, max_tokens=12, seed=i)
        assert alone.choices[0].message.content == results[i].choices[0].message.content
    assert health(url)["active_rows"] == 0


def test_full_queue_is_503_and_a_gone_client_frees_its_row():
    gate = threading.Event()

    def held_agent(obs: np.ndarray) -> np.ndarray:
        gate.wait(timeout=30)  # holds the decoding thread until the test lets go
        return np.full(obs.shape[0], 0.5)

    with running(held_agent, max_batch=1, queue_size=1, max_tokens=40) as url:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=30)
        first = chat(client, TINY_PROMPTS[0], model=ALIGNED, max_tokens=40, seed=0, stream=True)
        waiting: list = []
        second = threading.Thread(
            target=lambda: waiting.append(chat(client, TINY_PROMPTS[1], model=ALIGNED, max_tokens=5, seed=0))
        )
        second.start()
        deadline = time.monotonic() + 10
        while not (health(url)["active_rows"] == 1 and health(url)["queued"] == 1):
            assert time.monotonic() < deadline, health(url)
            time.sleep(0.02)
        with pytest.raises(openai.InternalServerError) as exc:
            chat(client, TINY_PROMPTS[2], model=ALIGNED, max_tokens=5)
        assert exc.value.status_code == 503 and exc.value.body["code"] == "server_busy"
        first.close()  # the streaming client goes away: its row is freed for the waiting request
        gate.set()
        second.join(timeout=20)
        assert waiting and waiting[0].choices[0].finish_reason in ("stop", "length")
        stats = health(url)["stats"]
        assert stats["cancelled"] == 1 and stats["rejected"] == 1 and health(url)["active_rows"] == 0
        still_serving(client)

        # a non-streaming client that gives up is noticed too: its answer is dropped, not decoded to the end
        gate.clear()
        body = {"model": ALIGNED, "messages": [{"role": "user", "content": TINY_PROMPTS[3]}], "max_tokens": 40}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=1.0)
        time.sleep(0.6)  # the handler checks every 0.25 s that its client is still there
        gate.set()
        deadline = time.monotonic() + 10
        while health(url)["active_rows"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health(url)["stats"]["cancelled"] == 2
        still_serving(client)


def test_serve_command_line():
    args = build_parser("serve").parse_args(["serve", "--agent", "a.zip", "--llm", "x", "--max-batch", "4"])
    assert (args.host, args.port, args.max_batch, args.queue_size, args.api_key) == ("127.0.0.1", 8000, 4, 64, None)
