"""Chunk rules: fixed sizes, and adaptive sizes that cover the candidate the agent takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mara_env import MARAConfig
from mara_env.chunking import AdaptiveChunks, FixedChunks
from mara_env.config import ChunkPlan, DecoderConfig, resolve_chunking


def random_sets(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Sorted candidate-set probabilities of 2..20 candidates, peaked like an LLM's."""
    sets = []
    for _ in range(n):
        size = int(rng.integers(2, 21))
        p = np.sort(rng.dirichlet(np.full(size, 0.3)))[::-1]
        sets.append(p / p.sum())
    return sets


def test_fixed_chunks_stop_at_the_end_of_the_set():
    rule = FixedChunks(3)
    probs = np.full(5, 0.2)
    assert [rule.size(probs, i) for i in range(5)] == [3, 3, 3, 2, 1]


def test_adaptive_chunks_reach_their_coverage_for_the_reference_agent():
    """An agent taking candidate k with probability q_k (top-k/top-p sampling): the chunk from the
    first candidate holds the taken one in at least ``coverage`` of the sets, not far above it."""
    rng = np.random.default_rng(0)
    for coverage in (0.5, 0.8, 0.95):
        rule = AdaptiveChunks(coverage=coverage, max_size=50)
        covered = sizes = 0
        sets = random_sets(rng, 3000)
        for probs in sets:
            k = int(rng.choice(len(probs), p=probs))
            c = rule.size(probs, 0)
            covered += k < c
            sizes += c
            rule.record(probs, k)
        rate = covered / len(sets)
        assert coverage - 0.03 <= rate <= coverage + 0.12, (coverage, rate)
        assert sizes / len(sets) < np.mean([len(p) for p in sets])  # smaller than computing every candidate


def test_adaptive_chunks_follow_the_agent():
    """An agent that always takes the first candidate gets chunks of one; one that walks to the
    bottom of the set gets the whole rest of the set."""
    rng = np.random.default_rng(1)
    sets = random_sets(rng, 200)
    first = AdaptiveChunks(coverage=0.9, max_size=50)
    last = AdaptiveChunks(coverage=0.9, max_size=50)
    for probs in sets:
        first.record(probs, 0)
        last.record(probs, len(probs) - 1)
    probs = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    assert first.size(probs, 0) == 1
    assert last.size(probs, 0) == 5
    # conditioned on the rejections so far: a row already at candidate 2 needs the rest of the set
    assert last.size(probs, 2) == 3


def test_adaptive_chunks_respect_the_cap_and_the_end_of_the_set():
    probs = np.array([0.5, 0.2, 0.1, 0.1, 0.1])
    # uniform F: one candidate covers 0.5, two 0.7, three 0.8, four 0.9
    assert AdaptiveChunks(coverage=0.85, max_size=8).size(probs, 0) == 4
    assert AdaptiveChunks(coverage=0.85, max_size=2).size(probs, 0) == 2
    assert AdaptiveChunks(coverage=0.85, max_size=8).size(probs, 4) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"coverage": 0.0, "max_size": 4}, r"coverage must be in \(0, 1\], got 0.0"),
        ({"coverage": 1.5, "max_size": 4}, r"coverage must be in \(0, 1\], got 1.5"),
        ({"coverage": 0.9, "max_size": 0}, r"largest chunk must be an integer >= 1, got 0"),
    ],
)
def test_adaptive_chunks_reject_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveChunks(**kwargs)


def test_decoder_config_checks_the_coverage():
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\], got -0.5"):
        DecoderConfig(chunk_size=4, chunk_coverage=-0.5)


def test_chunk_settings_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_chunking(3, cpu, 50) == ChunkPlan(3)
    assert resolve_chunking("all", cpu, 20) == ChunkPlan(20)
    plan = resolve_chunking("adaptive", cuda, 50)
    assert plan.coverage is not None and 1 <= plan.size <= 50
    assert resolve_chunking("adaptive", cpu, 4).size <= 4  # never beyond the set-size cap
    assert resolve_chunking(ChunkPlan(4, 0.5), cpu, 50) == ChunkPlan(4, 0.5)
    # on CPU "auto" is adaptive for one row and one candidate at a time for a batch
    assert resolve_chunking("auto", cpu, 50, rows=1).coverage is not None
    assert resolve_chunking("auto", cpu, 50, rows=16) == ChunkPlan(1)
    assert resolve_chunking("auto", cpu, 50) == ChunkPlan(1)  # an environment, even of one sub-environment
    assert resolve_chunking("adaptive", cpu, 50).packed and not resolve_chunking("adaptive", cuda, 50).packed
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\], got 2"):
        resolve_chunking(ChunkPlan(4, 2), cpu, 50)
    MARAConfig(chunk_size="adaptive")  # accepted
    with pytest.raises(ValueError, match=r"chunk_size must be an integer >= 1, 'all', 'adaptive' or 'auto'"):
        MARAConfig(chunk_size="adaptiv")


def test_packed_forward_equals_the_padded_one():
    """Rows of different widths in one sequence: the same hidden states and the same cache afterwards."""
    from conftest import build_tiny_llm

    from mara_env import LLMReplica
    from mara_env.engine import ReplicaEngine

    model, tok = build_tiny_llm()
    replica = LLMReplica(model=model, tokenizer=tok, name="tiny")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(model.config.vocab_size, size=n).tolist() for n in (5, 9, 3, 7)]
    padded, packed = ReplicaEngine(replica, 4), ReplicaEngine(replica, 4)
    a = padded.run([0, 1, 2, 3], chain=prompts)
    b = packed.run([0, 1, 2, 3], chain=prompts, packed=True)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(b.row(i)[: len(p)], a.row(i)[: len(p)], atol=1e-5, rtol=1e-5)
    steps = [
        ([0, 1, 2, 3], [[], [], [], [9]], [[3, 4, 5], [6], [7, 8], [10, 11, 12]], [(1, 0), (3, 2)]),
        ([1, 3], [[2], []], [[3], [4]], [(1, 0), (3, 0)]),  # a tree after a chain: slot 0 after it
        ([0, 1, 2, 3], [[], [], [], []], [[5], [6, 7], [8], [9]], []),
    ]
    for rows, chain, tree, commits in steps:
        a = padded.run(rows, chain, tree)
        b = packed.run(rows, chain, tree, packed=True)
        for i in range(len(rows)):
            n = len(chain[i]) + len(tree[i])
            torch.testing.assert_close(b.row(i)[:n], a.row(i)[:n], atol=1e-5, rtol=1e-5)
        for row, slot in commits:
            padded.commit(row, slot)
            packed.commit(row, slot)
    assert packed.length == padded.length


def test_generator_picks_the_plan_for_the_rows_of_each_call(tiny_llm):
    """On CPU, ``"auto"`` is adaptive for a one-prompt call and one candidate per forward for a batch."""
    from agents.generation import MARAGenerator

    gen = MARAGenerator(tiny_llm, None, batch_size=4, top_k=8, devices=["cpu"])
    assert gen.session.decoder(1, 8).config.chunk_coverage is not None
    four = gen.session.decoder(4, 8).config
    assert four.chunk_size == 1 and four.chunk_coverage is None
    assert gen.session.largest_chunk == 8  # the adaptive plan for one row, capped by top_k
