"""Prompts prefilled ahead of their rows (``ReplicaEngine.prefill``/``adopt``, ``AcceptRejectDecoder.prepare``):
a row that starts on a prefilled prompt needs no prefill forward of its own, and everything it then computes
equals a forward of the prompt as the row's chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, build_tiny_llm

import mara_env.engine as engine_module
from mara_env import TokenAcceptRejectVectorEnv
from mara_env.config import DecoderConfig
from mara_env.decoder import AcceptRejectDecoder
from mara_env.engine import ReplicaEngine
from mara_env.llm import LLMReplica
from mara_env.row_state import Phase


@pytest.fixture(scope="module")
def llm():
    return build_tiny_llm()


def fresh_hidden(model, ids):
    with torch.no_grad():
        return model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()


@pytest.mark.parametrize("packed", [True, False])
def test_adopted_prompts_continue_like_prompts_run_as_chains(llm, packed, monkeypatch):
    """Packed (a CPU's layout) and padded prefills give each prompt's last hidden state and a cache on which the
    next tokens see exactly their prompt."""
    if not packed:
        monkeypatch.setattr(engine_module, "PACKED_PREFILL_TOKENS", 0)
    model, tok = llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 3)
    prompts = [[5, 9, 14, 3], [7, 2], [11, 12, 13, 4, 6, 8, 10]]
    ready = engine.prefill(prompts)
    assert engine.num_forwards == 1 and engine.num_tokens == sum(map(len, prompts))
    assert len(ready.where) == 3 and (ready.keys.shape[1] == 1) == packed
    for i, ids in enumerate(prompts):
        tensor, index = ready.last_hidden(i)
        np.testing.assert_allclose(tensor[index].numpy(), fresh_hidden(model, ids), atol=2e-5)
    # rows take prompts 2 and 0 (not in order); row 1 runs its own prompt as a chain beside them
    engine.adopt([0, 2], [(ready, 2), (ready, 0)])
    engine.run([1], chain=[[7, 2]])
    assert engine.length == [7, 2, 4]
    out = engine.run([0, 1, 2], tree=[[20, 21], [30], [40]])
    np.testing.assert_allclose(out.row(0)[1].numpy(), fresh_hidden(model, [*prompts[2], 21]), atol=2e-5)
    np.testing.assert_allclose(out.row(1)[0].numpy(), fresh_hidden(model, [7, 2, 30]), atol=2e-5)
    np.testing.assert_allclose(out.row(2)[0].numpy(), fresh_hidden(model, [*prompts[0], 40]), atol=2e-5)


def test_truncated_rows_continue_like_their_kept_prefix(llm):
    """A row rolled back with ``truncate`` (and a commit past the cut dropped) computes what a fresh forward of its
    kept tokens and the new ones gives; a cut past what the row holds is refused."""
    model, tok = llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 2)
    engine.run([0, 1], chain=[[5, 9, 14, 3], [7, 2, 8]])
    engine.run([0, 1], tree=[[20, 21], [30]])
    engine.commit(0, 1)  # row 0 keeps its tree token 21 as token 5 (the copy waits for the next forward)
    engine.truncate([0, 1], [2, 3])
    assert engine.length == [2, 3]
    out = engine.run([0, 1], chain=[[40, 41], [42]])
    np.testing.assert_allclose(out.row(0)[1].numpy(), fresh_hidden(model, [5, 9, 40, 41]), atol=2e-5)
    np.testing.assert_allclose(out.row(1)[0].numpy(), fresh_hidden(model, [7, 2, 8, 42]), atol=2e-5)
    with pytest.raises(ValueError, match="holds 4 tokens, cannot keep 6"):
        engine.truncate([1], [6])


def test_prefill_refuses_empty_prompts(llm):
    model, tok = llm
    engine = ReplicaEngine(LLMReplica(model, tok, torch.device("cpu")), 1)
    with pytest.raises(ValueError, match="at least one token"):
        engine.prefill([[1, 2], []])
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.prefill([])


def test_a_row_starting_on_its_prepared_prompt_runs_no_prefill_forward(llm):
    """A prefill forward that runs anyway also prefills the prepared prompts of rows past half their answer
    limit; those rows later start with no prefill forward, the others still need one."""
    model, tok = llm
    decoder = AcceptRejectDecoder([LLMReplica(model, tok, torch.device("cpu"))], 3, DecoderConfig(max_new_tokens=8))
    decoder.start([0, 1, 2], ["a", "b", "c"], [[5, 9, 14, 3], [7, 2], [11, 12, 13]])
    decoder.prepare([0, 1, 2], [[8, 8, 3], [4, 5], [6]])  # rows starting now: not prefilled with their prompts
    decoder.advance()
    assert decoder.num_forwards == 2  # the prefill, then the first candidates
    while len(decoder.rows[0].response) < 4:  # row 0 past half its limit of 8; row 2 stays at 0 tokens
        decoder.decide([0], [1])
        decoder.advance()
    assert decoder.rows[0].phase is Phase.READY and decoder.rows[2].response == []
    decoder.start([1], ["b2"], [[9, 1, 2]])  # not its prepared prompt: a prefill forward, which runs row 0's
    decoder.prepare([1], [[3, 3]])
    before = decoder.num_forwards
    decoder.run_round()
    assert decoder.num_forwards == before + 2 and decoder.rows[1].phase is Phase.READY
    for row, ids, forwards in ((0, [8, 8, 3], 1), (2, [6], 2)):  # row 0's prompt is prefilled, row 2's is not
        decoder.start([row], ["again"], [ids])
        before = decoder.num_forwards
        decoder.run_round()
        assert decoder.num_forwards == before + forwards
        st = decoder.rows[row]
        assert st.phase is Phase.READY and st.response == []
        np.testing.assert_allclose(
            decoder.observations([row], np.float32)[0], fresh_hidden(model, [*ids, st.candidate]), atol=2e-5
        )
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        decoder.prepare([0], [[]])
    decoder.close()


def run_env(llm, lookahead: bool, steps: int = 90, reseed_at: int | None = None):
    envs = TokenAcceptRejectVectorEnv(
        4,
        llm=llm,
        prompts=TINY_PROMPTS,
        reward_model="zero",
        cost_model=None,
        max_new_tokens=6,
        lookahead=lookahead,
    )
    obs, info = envs.reset(seed=11)
    rng = np.random.default_rng(0)
    prompts, observations = [], [obs]
    for t in range(steps):
        if t == reseed_at:
            obs, info = envs.reset(seed=11)
            rng = np.random.default_rng(0)  # the same decisions as a fresh run
            observations.append(obs)
        obs, _, terminated, truncated, info = envs.step((rng.random(4) < 0.7).astype(np.int64))
        observations.append(obs)
        for row in np.flatnonzero(terminated | truncated):
            prompts.append((t, int(row), info["final_info"]["prompt"][row]))
    forwards = envs.core.decoder.num_forwards
    envs.close()
    return prompts, np.stack(observations), forwards


def test_the_env_draws_the_same_prompts_and_episodes_with_prompts_prefilled_ahead(llm):
    ahead_prompts, ahead_obs, ahead_forwards = run_env(llm, lookahead=True)
    plain_prompts, plain_obs, plain_forwards = run_env(llm, lookahead=False)
    assert len(ahead_prompts) > 20  # many restarts
    assert ahead_prompts == plain_prompts
    np.testing.assert_allclose(ahead_obs, plain_obs, atol=2e-5)
    assert ahead_forwards < plain_forwards


def test_reseeding_forgets_the_prompts_drawn_ahead(llm):
    """reset(seed=s) mid-run starts the same episodes as a fresh env's reset(seed=s): the next prompts drawn
    ahead from the old generators are dropped."""
    _, fresh_obs, _ = run_env(llm, lookahead=True, steps=30)
    _, reseeded_obs, _ = run_env(llm, lookahead=True, steps=60, reseed_at=30)
    np.testing.assert_allclose(reseeded_obs[31:], fresh_obs, atol=2e-5)
