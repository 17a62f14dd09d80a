"""MARAGenerator: the environment's decoding rules at generation time, raw decoding, agent forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, build_tiny_llm, make_actor

from agents.accept import as_accept_function
from agents.authors_format import export_authors_actor
from agents.generation import ContinuousBatch, MARAGenerator
from agents.generation import generator as generator_module
from agents.loading import load_authors_actor
from mara_env import TokenAcceptRejectEnv
from mara_env.config import ChunkPlan
from mara_env.llm import PromptFormat

SETTINGS = dict(top_k=8, top_p=0.95, devices=["cpu"])


def always_accept(obs: np.ndarray) -> np.ndarray:
    return np.ones(obs.shape[0])


def sign_agent(obs: np.ndarray) -> np.ndarray:
    """A deterministic agent that depends on the observation (accepts when feature 0 is positive)."""
    return (obs[:, 0] > 0).astype(np.float64)


def greedy(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    ids = PromptFormat(tok).token_ids(prompt)[0]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_always_accept_is_greedy_decoding(tiny_llm, batch_size):
    model, tok = tiny_llm
    gen = MARAGenerator(tiny_llm, always_accept, batch_size=batch_size, deterministic=True, **SETTINGS)
    out = gen.generate(TINY_PROMPTS, max_new_tokens=10)
    assert [g.prompt for g in out] == TINY_PROMPTS
    for g in out:
        assert g.token_ids == greedy(model, tok, g.prompt, 10)
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)
        # deterministic always-accept: every token is rank 0, and KL(delta || q) = -log q(y)
        assert set(g.accepted_ranks) == {0}
        assert g.kl == pytest.approx(-g.ref_logprob, abs=1e-9)
    assert gen.last_stats.answer_tokens == sum(g.num_tokens for g in out)
    assert gen.last_stats.llm_tokens > gen.last_stats.answer_tokens


def test_generator_decides_exactly_like_the_environment(tiny_llm):
    """The same agent gives the same answer and decision count in MARA-v0 and in the generator."""
    gen = MARAGenerator(tiny_llm, sign_agent, batch_size=4, deterministic=True, **SETTINGS)
    out = gen.generate(TINY_PROMPTS[:5], max_new_tokens=12)
    env = TokenAcceptRejectEnv(
        tiny_llm, prompts=TINY_PROMPTS, reward_model="length", cost_model=None, max_new_tokens=12, **SETTINGS
    )
    rejected = 0
    for g in out:
        obs, info = env.reset(options={"prompt": g.prompt})
        done = False
        while not done:
            action = int(sign_agent(obs[None])[0])
            rejected += action == 0
            obs, _, done, _, info = env.step(action)
        assert info["response_ids"] == g.token_ids
        assert info["num_decisions"] == g.num_decisions
        assert info["ref_logprob"] == pytest.approx(g.ref_logprob, rel=1e-6)  # batched float32 forwards
    assert rejected > 0  # the agent did reject, so the rules beyond "accept" were compared


def test_waiting_rows_share_forwards_without_changing_answers(tiny_llm, monkeypatch):
    """Rows decide until each waits for a forward, then share one round (forced tokens, new chunks): fewer
    forwards than running every row to its next decision after each batch of decisions (the environments'
    lockstep), the same answers."""
    # top_k=2: every rejection forces the last candidate, which then needs a forward of its own
    # and rejections at independent times in each row (per-prompt seeds) put rows out of step.
    gen = MARAGenerator(tiny_llm, lambda obs: np.full(len(obs), 0.85), batch_size=8, **{**SETTINGS, "top_k": 2})
    fast = gen.generate(TINY_PROMPTS, max_new_tokens=12, seed=0)
    fast_forwards = gen.last_stats.llm_forwards

    class Lockstep(ContinuousBatch):
        def step(self):
            ready, ended = self.ready_rows, []
            if ready:
                self._decide(ready)
                ended += self._collect(ready)
            self.decoder.advance()
            return ended + self._collect(self.active_rows)

    monkeypatch.setattr(generator_module, "ContinuousBatch", Lockstep)
    slow = gen.generate(TINY_PROMPTS, max_new_tokens=12, seed=0)
    assert [g.token_ids for g in fast] == [g.token_ids for g in slow]
    assert [g.num_decisions for g in fast] == [g.num_decisions for g in slow]
    assert sum(1 for g in fast for r, s in zip(g.accepted_ranks, g.set_sizes) if r == s - 1) > 0  # forced
    assert fast_forwards < gen.last_stats.llm_forwards


@pytest.mark.parametrize("batch_size", [1, 4])
def test_chunk_rules_change_the_work_not_the_answers(tiny_llm, batch_size):
    """Fixed and adaptive chunks give the same answers and decisions; adaptive chunks learn that an
    agent taking the first candidate needs one candidate per forward."""
    out, tokens = {}, {}
    for chunk in (1, 3, "adaptive", ChunkPlan(4, 0.9, packed=False)):
        gen = MARAGenerator(tiny_llm, sign_agent, batch_size=batch_size, chunk_size=chunk, **SETTINGS)
        out[chunk] = gen.generate(TINY_PROMPTS, max_new_tokens=12, seed=0)
        tokens[chunk] = gen.last_stats.llm_tokens
    for chunk in (3, "adaptive", ChunkPlan(4, 0.9, packed=False)):  # packed and padded forwards alike
        assert [g.token_ids for g in out[chunk]] == [g.token_ids for g in out[1]]
        assert [g.num_decisions for g in out[chunk]] == [g.num_decisions for g in out[1]]
    assert tokens[3] > tokens[1]  # fixed chunks compute candidates nobody looks at
    first = MARAGenerator(tiny_llm, always_accept, batch_size=batch_size, chunk_size="adaptive", **SETTINGS)
    lazy = MARAGenerator(tiny_llm, always_accept, batch_size=batch_size, chunk_size=1, **SETTINGS)
    prompts = TINY_PROMPTS * 4
    first.generate(prompts, max_new_tokens=12, seed=0)  # learns where this agent takes
    lazy.generate(prompts, max_new_tokens=12, seed=0)
    first.generate(prompts, max_new_tokens=12, seed=1)
    lazy.generate(prompts, max_new_tokens=12, seed=1)
    assert first.last_stats.llm_tokens <= 1.1 * lazy.last_stats.llm_tokens


def test_reference_policy_has_zero_kl_and_seeds_are_per_prompt(tiny_llm):
    gen = MARAGenerator(tiny_llm, None, batch_size=4, **SETTINGS)
    a = gen.generate(TINY_PROMPTS, max_new_tokens=12, seed=3)
    b = gen.generate(TINY_PROMPTS, max_new_tokens=12, seed=3)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    # sampling q through accept/reject decisions with p_ref itself: log pi(a|s) = log p_ref(a|k)
    assert all(g.kl == pytest.approx(0.0, abs=1e-9) for g in a)
    assert any(r > 0 for g in a for r in g.accepted_ranks)  # not just greedy
    # answer i depends on (seed, i) only, not on batch composition
    one = MARAGenerator(tiny_llm, None, batch_size=1, **SETTINGS).generate(TINY_PROMPTS, max_new_tokens=12, seed=3)
    assert [g.token_ids for g in one] == [g.token_ids for g in a]
    c = gen.generate(TINY_PROMPTS, max_new_tokens=12, seed=4)
    assert [g.token_ids for g in c] != [g.token_ids for g in a]


def test_stochastic_agent_kl_estimate(tiny_llm):
    """KL_hat = sum log pi(a|s) - log p_ref(a|k), recomputed from the recorded decisions' probabilities."""
    calls: list[np.ndarray] = []

    def half(obs: np.ndarray) -> np.ndarray:
        calls.append(obs)
        return np.full(obs.shape[0], 0.5)

    # one candidate per forward, as the env computes them, so both sums are bit-for-bit the same
    # (adaptive chunks, "auto" for one prompt on CPU, agree to float precision only)
    gen = MARAGenerator(tiny_llm, half, batch_size=1, chunk_size=1, **SETTINGS)
    g = gen.generate(TINY_PROMPTS[:1], max_new_tokens=12, seed=0)[0]
    # pi = 1/2 for every decision, so KL_hat = -n ln 2 - sum log p_ref(a|k); the p_ref sum is the env's
    env = TokenAcceptRejectEnv(
        tiny_llm, prompts=TINY_PROMPTS, reward_model="length", cost_model=None, max_new_tokens=12, **SETTINGS
    )
    # replay the same decisions in the env: rank r at a position means r rejections then an accept
    env.reset(options={"prompt": g.prompt})
    ref_sum = 0.0
    for rank, size in zip(g.accepted_ranks, g.set_sizes):
        if size == 1:
            continue
        for step in range(rank + 1):
            if step == size - 1:
                break  # the last candidate is taken without a decision
            _, _, done, _, info = env.step(int(step == rank))
            ref_sum += info["ref_logp"]
    assert done
    assert g.num_decisions == sum(len(c) for c in calls)
    assert g.kl == pytest.approx(-g.num_decisions * np.log(2) - ref_sum, abs=1e-9)


def test_stream_matches_generate(tiny_llm):
    gen = MARAGenerator(tiny_llm, sign_agent, deterministic=True, **SETTINGS)
    pieces = list(gen.stream(TINY_PROMPTS[2], max_new_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces) == gen.generate([TINY_PROMPTS[2]], max_new_tokens=12)[0].text


def test_generate_raw_samples_the_candidate_distribution(tiny_llm):
    model, tok = tiny_llm
    gen = MARAGenerator(tiny_llm, None, batch_size=3, **SETTINGS)
    raw = gen.generate_raw(TINY_PROMPTS, max_new_tokens=12, seed=0)
    again = gen.generate_raw(TINY_PROMPTS, max_new_tokens=12, seed=0)
    assert [g.token_ids for g in raw] == [g.token_ids for g in again]
    plain = gen.generate_raw(TINY_PROMPTS, max_new_tokens=12, seed=0, record_stats=False)
    assert [g.token_ids for g in plain] == [g.token_ids for g in raw]  # recording does not change sampling
    for g in raw:
        assert 1 <= g.num_tokens <= 12 and len(g.accepted_ranks) == len(g.set_sizes) == g.num_tokens
        assert all(0 <= r < n <= 8 for r, n in zip(g.accepted_ranks, g.set_sizes))
        assert g.ref_logprob <= 0 and g.kl == 0 and g.num_decisions == 0
        assert g.finish_reason == ("eos" if g.token_ids[-1] == tok.eos_token_id else "length")
    assert any(r > 0 for g in raw for r in g.accepted_ranks)
    # with a single candidate per position raw decoding is greedy decoding
    top1 = MARAGenerator(tiny_llm, None, top_k=8, top_p=1e-6, devices=["cpu"])
    top1 = top1.generate_raw(TINY_PROMPTS[:2], max_new_tokens=10)
    assert [g.token_ids for g in top1] == [greedy(model, tok, p, 10) for p in TINY_PROMPTS[:2]]


def test_agent_forms_actor_and_authors_file(tiny_llm, tmp_path):
    actor = make_actor(32)
    path = tmp_path / "actor.pt"
    export_authors_actor(actor, path)
    loaded = load_authors_actor(path)
    obs = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    np.testing.assert_allclose(as_accept_function(loaded, 32)[0](obs), as_accept_function(actor, 32)[0](obs), atol=1e-6)
    a = MARAGenerator(tiny_llm, actor, **SETTINGS).generate(TINY_PROMPTS[:3], max_new_tokens=8, seed=0)
    b = MARAGenerator(tiny_llm, str(path), **SETTINGS).generate(TINY_PROMPTS[:3], max_new_tokens=8, seed=0)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_agent_transfers_to_another_llm_of_the_same_hidden_size(tiny_llm):
    other = build_tiny_llm(seed=7, arch="gpt2")  # another architecture, hidden size 32 too
    out = MARAGenerator(other, make_actor(32), **SETTINGS).generate(TINY_PROMPTS[:2], max_new_tokens=8, seed=0)
    assert all(g.num_tokens > 0 for g in out)
    with pytest.raises(ValueError, match=r"hidden size 32.*same hidden size"):
        MARAGenerator(tiny_llm, make_actor(48), **SETTINGS)


def test_bad_agents_and_prompts(tiny_llm, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MARAGenerator(tiny_llm, str(tmp_path / "missing.pt"), **SETTINGS)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(ValueError, match="not an agent checkpoint"):
        MARAGenerator(tiny_llm, str(junk), **SETTINGS)
    with pytest.raises(TypeError, match="cannot use a int"):
        MARAGenerator(tiny_llm, 3, **SETTINGS)
    bad = MARAGenerator(tiny_llm, lambda obs: np.full(obs.shape[0], 2.0), **SETTINGS)
    with pytest.raises(ValueError, match=r"accept probabilities in \[0, 1\]"):
        bad.generate(TINY_PROMPTS[:1], max_new_tokens=4)
    gen = MARAGenerator(tiny_llm, always_accept, **SETTINGS)
    with pytest.raises(TypeError, match="list of strings"):
        gen.generate("one prompt")
    with pytest.raises(ValueError, match="prompts is empty"):
        gen.generate([])
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a non-empty string"):
        gen.generate(["fine", "  "])
    with pytest.raises(ValueError, match="batch_size"):
        MARAGenerator(tiny_llm, always_accept, batch_size=0, **SETTINGS)
