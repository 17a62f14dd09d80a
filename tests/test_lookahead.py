"""Work ahead of the agent's decisions (``lookahead``): forced tokens forwarded after a candidate in
scratch, and a set's last candidate, in forwards that run anyway. The episodes must be exactly those
of a decoder that waits, with fewer forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, build_tiny_llm

from mara_env import MARAConfig, TokenAcceptRejectVectorEnv
from mara_env.engine import ReplicaEngine
from mara_env.llm import LLMReplica, PromptFormat


def fresh_hidden(model, ids):
    with torch.no_grad():
        return model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()


@pytest.fixture(scope="module")
def peaked_llm():
    """A tiny model with peaked next-token distributions: many single-token candidate sets."""
    return build_tiny_llm(sharpness=60.0)


def test_tokens_that_follow_scratch_slots_see_them_as_committed(peaked_llm):
    model, tok = peaked_llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 2)
    prefixes = [[5, 9, 14, 3], [7, 2]]
    engine.run([0, 1], chain=prefixes)
    # row 0: three candidates in scratch slots 0-2; row 1: one candidate in slot 0
    engine.run([0, 1], tree=[[20, 21, 22], [30]])
    # candidate 21 (slot 1) followed by 40 in slot 3; candidate 30 (slot 0) followed by 41 in slot 1
    out = engine.run([0, 1], tree=[[40], [41]], offsets=[3, 1], follow=[[[1]], [[0]]])
    np.testing.assert_allclose(out.row(0)[0].numpy(), fresh_hidden(model, [5, 9, 14, 3, 21, 40]), atol=2e-5)
    np.testing.assert_allclose(out.row(1)[0].numpy(), fresh_hidden(model, [7, 2, 30, 41]), atol=2e-5)
    # a second token following both: position length + 2, sees the candidate and the first one
    out = engine.run([0], tree=[[42]], offsets=[4], follow=[[[1, 3]]])
    np.testing.assert_allclose(out.row(0)[0].numpy(), fresh_hidden(model, [5, 9, 14, 3, 21, 40, 42]), atol=2e-5)
    # committing the candidate, then the followers' slots (moved one place per commit), is the usual cache
    engine.commit(0, 1)
    engine.commit(0, 3 - 1)
    engine.commit(0, 4 - 2)
    engine.commit(1, 0)
    engine.commit(1, 1 - 1)
    assert engine.length == [7, 4]
    out = engine.run([0, 1], tree=[[50], [51]])
    np.testing.assert_allclose(out.row(0)[0].numpy(), fresh_hidden(model, [5, 9, 14, 3, 21, 40, 42, 50]), atol=2e-5)
    np.testing.assert_allclose(out.row(1)[0].numpy(), fresh_hidden(model, [7, 2, 30, 41, 51]), atol=2e-5)


def test_offsets_and_follow_are_for_tree_tokens_only(peaked_llm):
    model, tok = peaked_llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 1)
    with pytest.raises(ValueError, match="tree tokens after no chain only"):
        engine.run([0], chain=[[1, 2]], offsets=[1])


def rollout(model, tok, lookahead: bool, chunk_size, n: int = 6, steps: int = 120, both: bool = True):
    envs = TokenAcceptRejectVectorEnv(
        n,
        llm=(model, tok),
        prompts=TINY_PROMPTS,
        reward_model="zero",
        cost_model=None,
        max_new_tokens=16,
        top_p=0.5,
        chunk_size=chunk_size,
        lookahead=lookahead,
    )
    envs.core.decoder.ahead_both = both  # both branches (the accelerators' rule), or the CPU's
    fmt = PromptFormat(tok)
    obs, info = envs.reset(seed=3)
    rng = np.random.default_rng(0)
    trace, exact = [], []
    for _ in range(steps):
        for row in range(n):
            st = envs.core.decoder.rows[row]
            ids = fmt.token_ids(st.prompt)[0] + st.response + [st.candidate]
            exact.append(np.abs(obs[row] - fresh_hidden(model, ids)).max())
        actions = (rng.random(n) < 0.6).astype(np.int64)
        obs_next, rewards, terminated, _, info_next = envs.step(actions)
        trace.append((obs, info["token_id"], rewards, terminated))
        obs, info = obs_next, info_next
    decoder = envs.core.decoder
    responses = [list(r.response) for r in decoder.rows]
    stats = (decoder.num_forwards, decoder.ahead_forwarded, decoder.ahead_used)
    envs.close()
    return trace, responses, max(exact), stats


@pytest.mark.parametrize("chunk_size,both", [(1, True), (2, True), ("adaptive", True), (1, False)])
def test_lookahead_gives_the_same_episodes_with_fewer_forwards(peaked_llm, chunk_size, both):
    model, tok = peaked_llm
    ahead, ahead_responses, ahead_error, (ahead_forwards, forwarded, used) = rollout(
        model, tok, True, chunk_size, both=both
    )
    wait, wait_responses, _, (wait_forwards, none_forwarded, _) = rollout(model, tok, False, chunk_size)
    assert ahead_responses == wait_responses
    for (o1, t1, r1, d1), (o2, t2, r2, d2) in zip(ahead, wait):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_allclose(o1, o2, atol=2e-5)
        np.testing.assert_allclose(r1, r2, atol=1e-6)
    assert ahead_error < 2e-5  # every observation equals a fresh forward of prompt + response + candidate
    assert none_forwarded == 0 and forwarded > 0 and 0 < used <= forwarded
    assert ahead_forwards < wait_forwards, (ahead_forwards, wait_forwards)


def test_lookahead_setting_is_checked():
    with pytest.raises(ValueError, match="lookahead"):
        MARAConfig(lookahead="yes")
    assert MARAConfig().lookahead is True
