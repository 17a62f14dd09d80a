"""MARA-v0 correctness on tiny models built in code: API checks, determinism, the decoding rules,
observations, rewards, batching and replicas."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, build_tiny_llm
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from transformers import TopKLogitsWarper, TopPLogitsWarper

import mara_env
from mara_env import TokenAcceptRejectEnv, TokenAcceptRejectVectorEnv
from mara_env.llm import PromptFormat


def run_episode(env, policy, seed=None, options=None):
    """Roll out one episode; return per-step (obs, response-before, candidate, reward) and the last info."""
    obs, info = env.reset(seed=seed, options=options)
    steps = []
    while True:
        response = list(env.unwrapped.row.response)
        action = policy(obs, info)
        steps.append((obs, response, info["token_id"], action))
        obs, reward, terminated, truncated, info = env.step(action)
        steps[-1] += (reward,)
        assert not truncated
        if terminated:
            return steps, info


def fresh_hidden(model, ids):
    with torch.no_grad():
        return model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()


def reference_candidates(model, ids, top_k, top_p, temperature=1.0):
    """q over the candidate set, computed independently with transformers' own logits warpers."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[:, -1].float() / temperature
    logits = TopKLogitsWarper(top_k)(None, logits)
    logits = TopPLogitsWarper(top_p)(None, logits)
    return torch.softmax(logits, -1)[0].numpy()


def always_accept(obs, info):
    return 1


def test_registered_and_checkers_pass(tiny_kwargs):
    env = gym.make("MARA-v0", **tiny_kwargs)
    assert isinstance(env.unwrapped, TokenAcceptRejectEnv)
    assert env.observation_space.shape == (32,) and env.action_space.n == 2
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=False)
    envs = gym.make_vec("MARA-v0", num_envs=3, **tiny_kwargs)
    assert isinstance(envs, TokenAcceptRejectVectorEnv)
    assert envs.observation_space.shape == (3, 32)


def test_seeded_rollouts_are_deterministic(tiny_kwargs):
    env = TokenAcceptRejectEnv(**tiny_kwargs)

    def policy(seed):
        rng = np.random.default_rng(seed)
        return lambda obs, info: int(rng.random() < 0.6)

    a, info_a = run_episode(env, policy(3), seed=11)
    b, info_b = run_episode(env, policy(3), seed=11)
    assert info_a["response"] == info_b["response"] and info_a["prompt"] == info_b["prompt"]
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa[0], sb[0])
        assert sa[1:] == sb[1:]
    # different seeds draw different prompts (8 prompts: 5 seeds cannot all agree by chance)
    prompts = set()
    for seed in range(5):
        env.reset(seed=seed)
        prompts.add(env.unwrapped.row.prompt)
    assert len(prompts) > 1


@pytest.mark.parametrize("chunk_size", [1, 3, "all", "adaptive"])
def test_always_accept_is_greedy_decoding_and_obs_match_fresh_forward(tiny_llm, tiny_kwargs, chunk_size):
    model, tok = tiny_llm
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "chunk_size": chunk_size, "max_new_tokens": 10})
    fmt = PromptFormat(tok)
    for prompt in TINY_PROMPTS[:3]:
        steps, _info = run_episode(env, always_accept, options={"prompt": prompt})
        prompt_ids = fmt.token_ids(prompt)[0]
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=10)
        greedy = out[0, len(prompt_ids) :].tolist()
        assert env.unwrapped.row.response == greedy
        for obs, response, candidate, _, _ in steps:
            np.testing.assert_allclose(obs, fresh_hidden(model, prompt_ids + response + [candidate]), atol=2e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, "all", "adaptive"])
def test_rejecting_agent_obs_match_fresh_forward(tiny_llm, tiny_kwargs, chunk_size):
    """Rejections walk down the set (across chunk borders); every observation is exact."""
    model, tok = tiny_llm
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "chunk_size": chunk_size})
    fmt = PromptFormat(tok)
    rng = np.random.default_rng(0)
    steps, info = run_episode(env, lambda o, i: int(rng.random() < 0.3), seed=5)
    prompt_ids = fmt.token_ids(info["prompt"])[0]
    ranks = [s[2] for s in steps]
    assert len(steps) > info["num_tokens"]  # there were rejections
    for obs, response, candidate, _, _ in steps:
        np.testing.assert_allclose(obs, fresh_hidden(model, prompt_ids + response + [candidate]), atol=2e-5)
    assert len(ranks) == info["num_decisions"]


def test_kl_rewards_sum_to_reference_log_likelihood(tiny_llm, tiny_kwargs):
    """sum_t kl_coef * log p_ref(a_t | k_t) == kl_coef * sum_i log q(y_i | x, y_<i) (design notes, sec. 2)."""
    model, tok = tiny_llm
    kl_coef = 0.3
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "kl_coef": kl_coef, "reward_model": "zero"})
    rng = np.random.default_rng(1)
    steps, info = run_episode(env, lambda o, i: int(rng.random() < 0.5), seed=2)
    total = sum(s[4] for s in steps)
    prompt_ids = PromptFormat(tok).token_ids(info["prompt"])[0]
    response = env.unwrapped.row.response
    expected = 0.0
    for i, token in enumerate(response):
        q = reference_candidates(model, prompt_ids + response[:i], top_k=8, top_p=0.95)
        assert q[token] > 0, "a response token outside the candidate set"
        expected += np.log(q[token])
    assert info["ref_logprob"] == pytest.approx(expected, abs=1e-4)
    assert total == pytest.approx(kl_coef * expected, abs=1e-4)
    assert info["terminal_reward"] == 0.0


def test_reference_accept_agent_reproduces_top_k_top_p_sampling(tiny_llm, tiny_kwargs):
    """Accepting with p_ref(accept | k) samples the first token from q: a chi-square test over 3000 draws."""
    from scipy.stats import chisquare

    model, tok = tiny_llm
    prompt = TINY_PROMPTS[0]
    n_envs = 100
    envs = TokenAcceptRejectVectorEnv(
        n_envs, **{**tiny_kwargs, "prompts": [prompt], "max_new_tokens": 1, "top_k": 6, "top_p": 0.9}
    )
    rng = np.random.default_rng(0)
    _, info = envs.reset(seed=0)
    firsts: list[int] = []
    while len(firsts) < 3000:
        actions = (rng.random(n_envs) < info["ref_accept_prob"]).astype(np.int64)
        _, _, terminated, _, info = envs.step(actions)
        for i in np.flatnonzero(terminated):
            firsts.append(info["final_info"]["response_ids"][i][0])
    q = reference_candidates(model, PromptFormat(tok).token_ids(prompt)[0], top_k=6, top_p=0.9)
    support = np.flatnonzero(q > 0)
    assert len(support) >= 3, "the test needs a non-trivial candidate set"
    counts = np.array([firsts.count(t) for t in support])
    assert counts.sum() == len(firsts)  # nothing outside the candidate set
    qs = q[support].astype(np.float64)
    expected = qs / qs.sum() * len(firsts)
    _, p_value = chisquare(counts, expected)
    assert p_value > 1e-3, (counts, expected)


@pytest.mark.parametrize("chunk_size", [2, "adaptive"])
def test_vector_env_matches_single_envs(tiny_kwargs, chunk_size):
    n = 4
    policy_rngs = [np.random.default_rng(100 + i) for i in range(n)]
    envs = TokenAcceptRejectVectorEnv(n, **{**tiny_kwargs, "chunk_size": chunk_size})
    obs, info = envs.reset(seed=7)
    vec_trace: list[list] = [[] for _ in range(n)]
    finished = [False] * n
    while not all(finished):
        actions = np.array([int(policy_rngs[i].random() < 0.6) for i in range(n)])
        for i in range(n):
            if not finished[i]:
                vec_trace[i].append((obs[i].copy(), info["token_id"][i], actions[i]))
        obs, rewards, terminated, _truncated, info = envs.step(actions)
        for i in range(n):
            if not finished[i]:
                vec_trace[i][-1] += (rewards[i],)
                if terminated[i]:
                    finished[i] = True
                    vec_trace[i].append(info["final_info"]["response"][i])

    single = TokenAcceptRejectEnv(**{**tiny_kwargs, "chunk_size": 1})
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        steps, last = run_episode(single, lambda o, inf, rng=rng: int(rng.random() < 0.6), seed=7 + i)
        assert vec_trace[i][-1] == last["response"]
        assert len(vec_trace[i]) - 1 == len(steps)
        for (vo, vt, va, vr), (so, _, st, sa, sr) in zip(vec_trace[i][:-1], steps):
            np.testing.assert_allclose(vo, so, atol=2e-5)
            assert (vt, va) == (st, sa)
            assert vr == pytest.approx(sr, abs=1e-5)


def test_two_cpu_replicas_match_one(tiny_llm, tiny_kwargs):
    n = 4
    one = TokenAcceptRejectVectorEnv(n, **tiny_kwargs)
    two = TokenAcceptRejectVectorEnv(n, **{**tiny_kwargs, "devices": ["cpu", "cpu"]})
    assert len(two.core.replicas) == 2 and two.core.replicas[1].model is not two.core.replicas[0].model
    model, tok = tiny_llm
    fmt = PromptFormat(tok)
    o1, _ = one.reset(seed=3)
    o2, _ = two.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        np.testing.assert_allclose(o1, o2, atol=2e-5)
        # replica observations are exact too
        for row in range(n):
            st = two.core.decoder.rows[row]
            ids = fmt.token_ids(st.prompt)[0] + st.response + [st.candidate]
            np.testing.assert_allclose(o2[row], fresh_hidden(model, ids), atol=2e-5)
        actions = (rng.random(n) < 0.5).astype(np.int64)
        o1, r1, t1, _, _ = one.step(actions)
        o2, r2, t2, _, _ = two.step(actions)
        np.testing.assert_allclose(r1, r2, atol=1e-5)
        np.testing.assert_array_equal(t1, t2)


def test_gpt2_architecture_observations(tiny_kwargs):
    """Absolute-position models (GPT-2) work through the same explicit position ids."""
    model, tok = build_tiny_llm(arch="gpt2")
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": (model, tok), "chunk_size": 2})
    rng = np.random.default_rng(0)
    steps, info = run_episode(env, lambda o, i: int(rng.random() < 0.5), seed=0)
    prompt_ids = PromptFormat(tok).token_ids(info["prompt"])[0]
    for obs, response, candidate, _, _ in steps:
        np.testing.assert_allclose(obs, fresh_hidden(model, prompt_ids + response + [candidate]), atol=2e-5)


def test_forced_tokens_and_info(tiny_kwargs):
    """Single-candidate sets and last candidates are taken without a decision; info says why it ended."""
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "top_p": 0.25})
    _steps, info = run_episode(env, lambda o, i: 0, seed=0)  # always reject: every token is the last candidate
    row = env.unwrapped.row
    assert info["num_tokens"] == len(row.response) == 12 and info["finish_reason"] == "length"
    # each position asked set_size - 1 decisions; single-candidate positions asked none
    assert info["num_decisions"] == sum(s - 1 for s in row.set_sizes)
    assert row.accepted_ranks == [s - 1 for s in row.set_sizes]
    assert 1 in row.set_sizes, "top_p=0.25 should give some single-candidate sets with this model"
    for key in ("prompt", "response", "reward_score", "cost_score", "ref_logprob", "kl_reward"):
        assert key in info


def test_eos_ends_episode(tiny_kwargs):
    """Declare the 3rd greedy token to be EOS: the always-accept episode must end right there."""
    model, tok = build_tiny_llm()
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": (model, tok), "prompts": [TINY_PROMPTS[0]]})
    run_episode(env, always_accept, seed=0)
    greedy = env.unwrapped.row.response
    eos = greedy[2]
    first_at = greedy.index(eos)
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    model.generation_config.eos_token_id = eos
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": (model, tok), "prompts": [TINY_PROMPTS[0]]})
    _steps, info = run_episode(env, always_accept, seed=0)
    assert info["finish_reason"] == "eos"
    assert env.unwrapped.row.response == greedy[: first_at + 1]
    assert info["num_tokens"] == first_at + 1


def test_float16_observations(tiny_kwargs):
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "obs_dtype": "float16"})
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float16 and env.observation_space.dtype == np.float16
    assert env.observation_space.contains(obs)


def test_info_response_and_render(tiny_kwargs):
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "info_response": True}, render_mode="ansi")
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, _, info = env.step(1)
        if term:
            break
        assert info["response"] == env.unwrapped.core.decode(env.unwrapped.row.response)
    assert env.render().startswith("USER: ")


def test_terminal_reward_uses_alpha_weights(tiny_kwargs):
    calls = []

    def reward(prompts, responses):
        calls.append(len(prompts))
        return [2.0] * len(prompts)

    def cost(prompts, responses):
        return [0.5] * len(prompts)

    env = TokenAcceptRejectEnv(
        **{
            **tiny_kwargs,
            "reward_model": reward,
            "cost_model": cost,
            "alpha_r": 3.0,
            "alpha_c": 4.0,
            "kl_coef": 0.0,
        }
    )
    steps, info = run_episode(env, always_accept, seed=0)
    assert info["terminal_reward"] == pytest.approx(3.0 * 2.0 - 4.0 * 0.5)
    assert steps[-1][4] == pytest.approx(4.0) and all(s[4] == 0.0 for s in steps[:-1])
    # the vector env scores episodes that finish together in one call
    calls.clear()
    envs = TokenAcceptRejectVectorEnv(
        4, **{**tiny_kwargs, "reward_model": reward, "cost_model": cost, "prompts": [TINY_PROMPTS[0]]}
    )
    envs.reset(seed=0)
    _, _, terminated, _, _ = envs.step(np.ones(4, dtype=np.int64))
    while not terminated.any():
        _, _, terminated, _, _ = envs.step(np.ones(4, dtype=np.int64))
    assert terminated.all() and calls == [4]  # same prompt, greedy: all four end at once


def test_terminal_reward_with_a_logit_cost(tiny_kwargs):
    env = TokenAcceptRejectEnv(
        **{
            **tiny_kwargs,
            "reward_model": lambda p, r: [2.0] * len(p),
            "cost_model": lambda p, r: [0.2] * len(p),
            "alpha_c": 4.0,
            "cost_scale": "logit",
            "kl_coef": 0.0,
        }
    )
    steps, info = run_episode(env, always_accept, seed=0)
    assert info["terminal_reward"] == pytest.approx(2.0 - 4.0 * np.log(0.2 / 0.8))
    assert info["cost_score"] == pytest.approx(0.2)  # the score itself, not its log-odds
    assert steps[-1][4] == pytest.approx(info["terminal_reward"])


def test_sb3_adapter_trains_and_reports_terminal_observation(tiny_kwargs):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    from mara_env.sb3 import SB3VecEnv

    venv = SB3VecEnv(TokenAcceptRejectVectorEnv(3, **tiny_kwargs))
    obs = venv.reset()
    assert obs.shape == (3, 32)
    seen_terminal = False
    for _ in range(60):
        obs, rewards, dones, infos = venv.step(np.ones(3, dtype=np.int64))
        assert rewards.dtype == np.float32 and len(infos) == 3
        for done, info in zip(dones, infos):
            if done:
                seen_terminal = True
                assert info["terminal_observation"].shape == (32,)
                assert info["TimeLimit.truncated"] is False
                assert "reward_score" in info
    assert seen_terminal
    monitored = VecMonitor(SB3VecEnv(TokenAcceptRejectVectorEnv(2, **tiny_kwargs)))
    model = PPO("MlpPolicy", monitored, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(128)
    assert len(model.ep_info_buffer) > 0


def test_gym_make_imports_module_by_prefix(tiny_kwargs):
    env = gym.make("mara_env:MARA-v0", **tiny_kwargs)
    assert env.spec.id == "MARA-v0"
    assert mara_env.__version__
