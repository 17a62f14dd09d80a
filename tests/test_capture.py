"""Static-shape forwards (``capture``, :mod:`mara_env.capture`): on a CPU the buckets run eagerly, on the same
buffers and in the same shapes that a CUDA device records as graphs. Episodes, observations and answers must
be those of the eager layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, build_tiny_llm
from test_lookahead import rollout

from agents.generation import MARAGenerator
from mara_env import MARAConfig
from mara_env.capture import MAX_CAPTURED_WIDTH, bucket_width
from mara_env.engine import ReplicaEngine
from mara_env.llm import LLMReplica


@pytest.fixture(scope="module")
def peaked_llm():
    """Peaked next-token distributions: forced tokens, work ahead and guesses all happen."""
    return build_tiny_llm(sharpness=60.0)


@pytest.mark.parametrize("chunk_size,both", [(1, True), ("adaptive", True), (1, False), (3, False)])
def test_captured_shapes_give_the_eager_episodes(peaked_llm, chunk_size, both):
    model, tok = peaked_llm
    # test_lookahead's rollout: seeded decisions, every observation also checked against a fresh full forward
    got, got_responses, got_error, (got_forwards, *_, static) = rollout(
        model, tok, True, chunk_size, both=both, capture=True
    )
    want, want_responses, _, (want_forwards, *_, none) = rollout(model, tok, True, chunk_size, both=both)
    assert none is None and static is not None
    assert got_responses == want_responses and got_forwards == want_forwards and got_error < 3e-5
    for (o1, t1, r1, d1), (o2, t2, r2, d2) in zip(got, want):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_allclose(o1, o2, atol=3e-5)
        np.testing.assert_allclose(r1, r2, atol=1e-5)
    # every rows-layout forward ran in a bucket (none captured on a CPU), in a few shapes
    assert static.eager > 0 and static.captured == 0 and static.replayed == 0 and static.failure is None
    assert len(static._buckets) <= 4


def test_rows_outside_a_forward_keep_their_scratch(peaked_llm):
    """A captured forward writes every cache row's last slots: rows that do not take part must keep what they may
    still read (their prefix and their scratch), wherever it lies."""
    model, tok = peaked_llm
    fresh = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 3)
    static = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 3, capture=True)
    # row 0: 56 committed tokens and 8 candidates in scratch fill the cache's first capacity (64 slots)
    long = [5 + i % 30 for i in range(56)]
    for engine in (fresh, static):
        engine.run([0, 1, 2], chain=[long, [7, 2], [11, 12, 13]])
        engine.run([0, 1, 2], tree=[list(range(20, 28)), [30], [40, 41]])
        engine.run([1], tree=[[31, 32]], offsets=[1])  # row 0 idle; its scratch must survive
        engine.run([2], tree=[[42]], offsets=[2], follow=[[[1]]])
    outs = []
    for engine in (fresh, static):
        # row 0 reads its slot 7 (candidate 27) now, after forwards it took no part in
        outs.append(engine.run([0, 2], tree=[[50], [51]], offsets=[8, 3], follow=[[[7]], [[1, 2]]]))
    for i in range(2):
        np.testing.assert_allclose(outs[1].row(i)[0].numpy(), outs[0].row(i)[0].numpy(), atol=2e-5)
    assert static.static.eager == 5 and bucket_width(3) == 4 and MAX_CAPTURED_WIDTH >= 16
    assert static._capacity > 64  # the storage grew rather than let a forward write over row 0's scratch


def test_generation_with_capture_gives_the_same_answers(tiny_llm):
    texts = {}
    for capture in (False, True):
        gen = MARAGenerator(tiny_llm, None, top_k=8, chunk_size=2, batch_size=3, capture=capture)
        torch.manual_seed(0)
        texts[capture] = [g.text for g in gen.generate(TINY_PROMPTS[:5], max_new_tokens=10, seed=0)]
        assert (gen.session.capture, gen.session.decoder(2, 4).engines[0].static is not None) == (capture, capture)
    assert texts[True] == texts[False]


def test_capture_setting_is_checked():
    assert MARAConfig().capture is False
    with pytest.raises(ValueError, match="capture"):
        MARAConfig(capture="yes")
    with pytest.raises(ValueError, match="at least one new token"):
        bucket_width(0)


def test_a_bucket_step_is_one_graph(tiny_llm):
    """What a CUDA graph records must not sync with the host or branch on tensor values: the bucket's step traces
    as a single graph (``torch.compile(fullgraph=True)``, which refuses both), and the traced step computes the same
    hidden states."""
    model, tok = tiny_llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 3, capture=True)
    engine.run([0, 1, 2], chain=[[5, 9, 14, 3], [7, 2], [11, 12, 13]])
    engine.run([0, 1, 2], tree=[[20, 21], [30], [40]])
    (bucket,) = [b for (_, width, _), b in engine.static._buckets.items() if width == 2]
    eager = bucket.hidden.clone()
    torch._dynamo.reset()
    traced = torch.compile(lambda: bucket.step(engine.static.call), fullgraph=True, backend="eager")
    with torch.no_grad():
        traced()
    torch.testing.assert_close(bucket.hidden, eager, atol=1e-5, rtol=0)


def test_a_failed_capture_falls_back_to_eager_with_one_warning(tiny_llm, monkeypatch):
    """The CUDA path of a bucket's first forward, on a CPU: the side-stream warm-up runs, recording the graph
    fails (as it does for a model whose forward syncs with the host), the engine warns once, records the
    failure and runs every forward eagerly in the same shapes, and the answers are those of eager decoding."""
    import contextlib

    import mara_env.capture as capture

    class Stream:  # what _capture uses of a CUDA stream
        def __init__(self, *args, **kwargs) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    def graph(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    init = capture.StaticForwards.__init__

    def on_cuda(self, *args, **kwargs) -> None:  # as if the device were CUDA
        init(self, *args, **kwargs)
        self.graphs = True

    monkeypatch.setattr(capture.StaticForwards, "__init__", on_cuda)
    eager = MARAGenerator(tiny_llm, None, top_k=8, chunk_size=2, batch_size=3)
    torch.manual_seed(0)
    want = [g.text for g in eager.generate(TINY_PROMPTS[:5], max_new_tokens=10, seed=0)]
    gen = MARAGenerator(tiny_llm, None, top_k=8, chunk_size=2, batch_size=3, capture=True)
    decoder = gen.session.decoder(3, 10)
    static = decoder.engines[0].static
    with pytest.warns(RuntimeWarning, match="recording this model's forward as a CUDA graph failed") as caught:
        decoder.engines[0].run([0, 1, 2], chain=[[5, 9], [7, 2], [11, 12]])
        decoder.engines[0].run([0, 1, 2], tree=[[20, 21], [30], [40]])
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert static.graphs is False and "operation not permitted" in static.failure
    assert static.captured == 0 and static.replayed == 0 and static.eager >= 2
    assert decoder.capture_stats["failure"] == static.failure
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed"):
        got = [g.text for g in gen.generate(TINY_PROMPTS[:5], max_new_tokens=10, seed=0)]
    assert got == want
