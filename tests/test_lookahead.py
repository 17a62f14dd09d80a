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


def test_tree_tokens_can_follow_tree_tokens_of_the_same_forward(peaked_llm):
    """A drafted chain in one forward: each token follows the ones before it, after a candidate or after a
    committed chain, and committing them in turn gives the usual cache."""
    model, tok = peaked_llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 3)
    prefixes = [[5, 9, 14, 3], [7, 2], [11, 12, 13]]
    engine.run([0, 1, 2], chain=prefixes)
    # row 0: candidates 20, 21 (slots 0, 1), then 40 after 21 (slot 2) and 42 after 21, 40 (slot 3);
    # row 1: chain token 8 committed, then 41 (slot 0) and 43 after it (slot 1);
    # row 2: a token after an earlier forward's slot and a token of this forward
    engine.run([2], tree=[[60]])
    out = engine.run(
        [0, 1, 2],
        chain=[[], [8], []],
        tree=[[20, 21, 40, 42], [41, 43], [61, 62]],
        offsets=[0, 0, 1],
        follow=[[[], [], [1], [1, 2]], [[], [0]], [[0], [0, 1]]],
    )
    expect = {
        (0, 0): [5, 9, 14, 3, 20],
        (0, 1): [5, 9, 14, 3, 21],
        (0, 2): [5, 9, 14, 3, 21, 40],
        (0, 3): [5, 9, 14, 3, 21, 40, 42],
        (1, 0): [7, 2, 8],
        (1, 1): [7, 2, 8, 41],
        (1, 2): [7, 2, 8, 41, 43],
        (2, 0): [11, 12, 13, 60, 61],
        (2, 1): [11, 12, 13, 60, 61, 62],
    }
    for (row, i), ids in expect.items():
        np.testing.assert_allclose(out.row(row)[i].numpy(), fresh_hidden(model, ids), atol=2e-5)
    engine.commit(0, 1)
    engine.commit(0, 2 - 1)
    engine.commit(0, 3 - 2)
    engine.commit(1, 0)
    engine.commit(1, 1 - 1)
    engine.commit(2, 0)
    engine.commit(2, 1 - 1)
    engine.commit(2, 2 - 2)
    assert engine.length == [7, 5, 6]
    out = engine.run([0, 1, 2], tree=[[50], [51], [52]])
    for row, ids in enumerate([[5, 9, 14, 3, 21, 40, 42, 50], [7, 2, 8, 41, 43, 51], [11, 12, 13, 60, 61, 62, 52]]):
        np.testing.assert_allclose(out.row(row)[0].numpy(), fresh_hidden(model, ids), atol=2e-5)


def test_offsets_are_for_tree_tokens_only_and_chains_follow_only_new_tokens(peaked_llm):
    model, tok = peaked_llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 1)
    with pytest.raises(ValueError, match="tree tokens after no chain only"):
        engine.run([0], chain=[[1, 2]], offsets=[1])
    engine.run([0], chain=[[1, 2]])
    with pytest.raises(ValueError, match="only its own new tree tokens"):
        engine.run([0], chain=[[3]], tree=[[4]], follow=[[[2]]])


def rollout(
    model,
    tok,
    lookahead: bool,
    chunk_size,
    n: int = 6,
    steps: int = 120,
    both: bool = True,
    draft_tokens: int = 4,
    capture: bool = False,
):
    """Seeded random decisions on the peaked model: the trace, final responses, the largest error of an observation
    against a fresh full forward, and ``(forwards, ahead forwarded, ahead used, guessed, engine 0's static
    forwards)`` (the last ``None`` without ``capture``, :mod:`mara_env.capture`)."""
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
        draft_tokens=draft_tokens,
        capture=capture,
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
    static = decoder.engines[0].static
    assert decoder.capture_stats == (
        None if static is None else {"captured": 0, "replayed": 0, "eager": static.eager, "failure": None}
    )
    stats = (decoder.num_forwards, decoder.ahead_forwarded, decoder.ahead_used, decoder.guessed, static)
    envs.close()
    return trace, responses, max(exact), stats


@pytest.mark.parametrize(
    "chunk_size,both,draft", [(1, True, 4), (2, True, 4), ("adaptive", True, 4), (1, False, 4), (1, True, 0)]
)
def test_lookahead_gives_the_same_episodes_with_fewer_forwards(peaked_llm, chunk_size, both, draft):
    model, tok = peaked_llm
    ahead, ahead_responses, ahead_error, (ahead_forwards, forwarded, used, guessed, _) = rollout(
        model, tok, True, chunk_size, both=both, draft_tokens=draft
    )
    wait, wait_responses, _, (wait_forwards, none_forwarded, _, none_guessed, _) = rollout(
        model, tok, False, chunk_size
    )
    assert ahead_responses == wait_responses
    for (o1, t1, r1, d1), (o2, t2, r2, d2) in zip(ahead, wait):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_allclose(o1, o2, atol=2e-5)
        np.testing.assert_allclose(r1, r2, atol=1e-6)
    assert ahead_error < 2e-5  # every observation equals a fresh forward of prompt + response + candidate
    assert none_forwarded == 0 and none_guessed == 0 and forwarded > 0 and 0 < used <= forwarded
    assert (guessed > 0) == (draft > 0 and both)  # guesses only with the accelerators' rule
    assert ahead_forwards < wait_forwards, (ahead_forwards, wait_forwards)


def test_right_guesses_save_forwards_and_change_nothing(peaked_llm):
    """Guessing on (the default) against off, on the same decisions: the same episodes, fewer forwards."""
    model, tok = peaked_llm
    guess, guess_responses, error, (guess_forwards, _, _, guessed, _) = rollout(model, tok, True, 1, draft_tokens=4)
    plain, plain_responses, _, (plain_forwards, _, _, _, _) = rollout(model, tok, True, 1, draft_tokens=0)
    assert guess_responses == plain_responses and error < 2e-5
    for (o1, t1, r1, _), (o2, t2, r2, _) in zip(guess, plain):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_allclose(o1, o2, atol=2e-5)
        np.testing.assert_allclose(r1, r2, atol=1e-6)
    assert guessed > 0 and guess_forwards < plain_forwards, (guess_forwards, plain_forwards)


def test_lookahead_setting_is_checked():
    with pytest.raises(ValueError, match="lookahead"):
        MARAConfig(lookahead="yes")
    assert MARAConfig().lookahead is True
    with pytest.raises(ValueError, match="draft_tokens must be an integer >= 0"):
        MARAConfig(draft_tokens=-1)
