"""MARA-v1 on tiny models: the reference features in the observation, potential-based shaping, policies
anchored to the reference (DiscreteSAC, PPO), the policy warm-up, and the errors around them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS
from scipy import stats
from stable_baselines3.common.vec_env import VecMonitor

import mara_env
from agents import DiscreteSAC, export_authors_actor
from agents.accept import accept_probabilities
from agents.generation import MARAGenerator
from agents.loading import load_algorithm
from agents.reference_anchor import AnchoredActorCriticPolicy
from agents.registry import make_algorithm
from agents.training.run_config import RunConfig
from mara_env.observation import LOG_FLOOR, REFERENCE_FEATURES, ObservationLayout
from mara_env.sb3 import SB3VecEnv


def rollout(env, policy, seed):
    """One episode: per step (obs, info before the step, action, reward, info after the step)."""
    obs, info = env.reset(seed=seed)
    steps = []
    while True:
        action = policy(obs, info)
        next_obs, reward, terminated, _, next_info = env.step(action)
        steps.append((obs, info, action, reward, next_info))
        obs, info = next_obs, next_info
        if terminated:
            return steps


def test_v1_defaults_and_v0_unchanged(tiny_kwargs):
    v1 = gym.make("MARA-v1", **tiny_kwargs)
    v0 = gym.make("MARA-v0", **tiny_kwargs)
    assert v1.unwrapped.config.observation == "hidden+ref" and v1.unwrapped.config.reward_shaping == "potential"
    assert v0.unwrapped.config.observation == "hidden" and v0.unwrapped.config.reward_shaping == "none"
    assert v0.observation_space.shape == (32,)
    assert v1.observation_space.shape == (32 + len(REFERENCE_FEATURES),)
    # Same seed, same actions: the hidden part of v1's observations is v0's observation.
    obs0, _ = v0.reset(seed=3)
    obs1, _ = v1.reset(seed=3)
    for _ in range(4):
        np.testing.assert_array_equal(obs1[:32], obs0)
        obs0, _, done0, _, _ = v0.step(0)
        obs1, _, done1, _, _ = v1.step(0)
        assert done0 == done1
        if done0:
            break
    # Every setting can still be given to either id
    assert gym.make("MARA-v1", **tiny_kwargs, observation="hidden").observation_space.shape == (32,)


def test_reference_features_match_an_independent_computation(tiny_kwargs):
    env = gym.make("MARA-v1", **tiny_kwargs, reward_shaping="none")
    layout = env.unwrapped.observation_layout
    assert layout.features == tuple(REFERENCE_FEATURES)
    assert layout.reference_logits == (layout.index("log_reject"), layout.index("log_accept"))
    checked = 0
    for seed in range(3):
        for obs, info, *_ in rollout(env, lambda o, i: int(i["candidate_rank"] >= 1), seed):
            k, n = info["candidate_rank"], info["set_size"]
            p_accept = info["ref_accept_prob"]
            f = {name: obs[layout.index(name)] for name in REFERENCE_FEATURES}
            assert f["log_q"] == pytest.approx(np.log(info["ref_prob"]), abs=1e-5)
            assert f["log_accept"] == pytest.approx(np.log(p_accept), abs=1e-5)
            assert f["log_reject"] == pytest.approx(np.log1p(-p_accept), abs=1e-4)
            assert np.isfinite(obs).all() and f["log_reject"] >= LOG_FLOOR
            assert (f["rank"], f["set_size"], f["position"]) == (k, n, info["position"])
            # T_k = q_k / p_ref(accept | k)
            assert f["remaining_mass"] == pytest.approx(info["ref_prob"] / p_accept, rel=1e-5)
            assert 0 <= f["set_entropy"] <= np.log(n) + 1e-6
            checked += 1
    assert checked > 5


def test_set_entropy_and_mass_from_the_candidate_set():
    from mara_env.candidates import CandidateConfig, candidate_sets
    from mara_env.observation import reference_features

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.5, -1.0, -8.0]])
    (cands,) = candidate_sets(logits, CandidateConfig(top_k=5, top_p=1.0))
    q = cands.probs
    for k in range(len(cands) - 1):
        f = dict(zip(REFERENCE_FEATURES, reference_features(q, cands.log_accept, cands.log_reject, k, 7)))
        assert f["remaining_mass"] == pytest.approx(q[k:].sum())
        assert f["set_entropy"] == pytest.approx(-(q * np.log(q)).sum())
        assert f["log_reject"] == pytest.approx(np.log(q[k + 1 :].sum() / q[k:].sum()))
        assert f["position"] == 7


def test_layout_errors():
    hidden = ObservationLayout("hidden", 16)
    with pytest.raises(KeyError, match="observation='hidden\\+ref'"):
        hidden.index("log_accept")
    with pytest.raises(KeyError, match="Did you mean 'log_accept'"):
        ObservationLayout("hidden+ref", 16).index("log_acept")
    with pytest.raises(ValueError, match="Did you mean 'hidden\\+ref'"):
        ObservationLayout("hidden+rf", 16)
    with pytest.raises(ValueError, match="fits no MARA observation"):
        ObservationLayout.for_size(20, 16)
    assert ObservationLayout.for_size(24, 16).mode == "hidden+ref"


def test_shaped_rewards_add_up_to_the_return_minus_the_start_potential(tiny_kwargs):
    env = gym.make("MARA-v1", **tiny_kwargs, shaping_gamma=1.0)
    plain = gym.make("MARA-v0", **tiny_kwargs)
    policy = lambda obs, info: int(info["candidate_rank"] >= 1)  # noqa: E731
    for seed in range(3):
        steps = rollout(env, policy, seed)
        unshaped = rollout(plain, policy, seed)
        assert len(steps) == len(unshaped)
        phi0 = steps[0][1]["potential"]
        total = sum(s[3] for s in steps)
        assert total == pytest.approx(sum(s[3] for s in unshaped) - phi0, abs=1e-9)
        assert sum(s[4]["shaping_reward"] for s in steps) == pytest.approx(-phi0, abs=1e-9)


def test_potential_is_the_score_of_the_committed_prefix(tiny_kwargs):
    env = gym.make("MARA-v1", **tiny_kwargs)
    core = env.unwrapped.core
    _obs, info = env.reset(seed=1)
    done, seen = False, set()
    while not done:
        # "length" scores the number of words: Phi(s) = alpha_r * words of the prefix
        assert info["potential"] == float(len(core.decode(env.unwrapped.row.response).split()))
        seen.add(info["potential"])
        _, _, done, _, info = env.step(1)
    assert len(seen) > 1


def test_shaping_on_a_reject_is_the_discounted_potential(tiny_kwargs):
    env = gym.make("MARA-v1", **tiny_kwargs, shaping_gamma=0.9)
    _, info = env.reset(seed=0)
    for _ in range(30):
        before = info.get("potential")
        position = info["position"]
        rank = info["candidate_rank"]
        _obs, reward, done, _, info = env.step(0)
        if done:
            break
        if info["position"] == position and info["candidate_rank"] == rank + 1:  # nothing was committed
            assert info["shaping_reward"] == pytest.approx((0.9 - 1.0) * before)
            assert info["potential"] == before
    # On the terminal step Phi(s') = 0: the shaping term is -Phi(s)
    while not done:
        before = info["potential"]
        _, reward, done, _, info = env.step(1)
    assert info["shaping_reward"] == pytest.approx(-before)
    assert reward == pytest.approx(info["kl_reward"] + info["terminal_reward"] - before)


def test_shaping_scorer_that_fails_on_partial_answers_is_named(tiny_kwargs):
    def picky(prompts, responses):
        if any(not r for r in responses):
            raise ValueError("empty answer")
        return [1.0] * len(responses)

    kwargs = {**tiny_kwargs, "reward_model": picky}
    with pytest.raises(RuntimeError, match=r"partial answers.*picky.*reward_shaping='none'"):
        gym.make("MARA-v1", **kwargs).reset(seed=0)
    gym.make("MARA-v1", **kwargs, reward_shaping="none").reset(seed=0)  # fine without shaping


def test_bad_settings(tiny_kwargs):
    with pytest.raises(ValueError, match="Did you mean 'potential'"):
        gym.make("MARA-v1", **{**tiny_kwargs, "reward_shaping": "potentail"})
    with pytest.raises(ValueError, match=r"shaping_gamma must be a number in \(0, 1\]"):
        gym.make("MARA-v1", **tiny_kwargs, shaping_gamma=0.0)
    with pytest.raises(ValueError, match="observation must be 'hidden'"):
        gym.make("MARA-v1", **{**tiny_kwargs, "observation": "ref"})


def test_vector_env_matches_single_envs_with_features_and_shaping(tiny_kwargs):
    envs = gym.make_vec("MARA-v1", num_envs=3, **tiny_kwargs)
    singles = [gym.make("MARA-v1", **tiny_kwargs) for _ in range(3)]
    obs, _ = envs.reset(seed=5)
    single_obs = [env.reset(seed=5 + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    for _ in range(25):
        np.testing.assert_allclose(obs, np.stack(single_obs), atol=1e-5)
        actions = rng.integers(0, 2, 3)
        obs, rewards, dones, _, _ = envs.step(actions)
        single = [env.step(int(a)) for env, a in zip(singles, actions)]
        np.testing.assert_allclose(rewards, [s[1] for s in single], atol=1e-6)
        for i, s in enumerate(single):
            single_obs[i] = singles[i].reset()[0] if s[2] else s[0]
            if s[2]:
                # the vector env's autoreset drew its next prompt from its own generator; follow it
                singles[i].unwrapped.core.rngs[0] = envs.unwrapped.core.rngs[i]
        if dones.any():
            break


def _venv(tiny_kwargs, env_id="MARA-v1", n=4, **extra):
    return VecMonitor(SB3VecEnv(gym.make_vec(env_id, num_envs=n, **tiny_kwargs, **extra)))


@pytest.mark.parametrize("algo", ["sac-discrete", "ppo", "a2c"])
def test_untrained_anchored_agent_is_the_reference(tiny_kwargs, algo):
    venv = _venv(tiny_kwargs)
    model = make_algorithm(algo, venv, seed=0)
    layout = venv.get_attr("observation_layout")[0]
    obs = venv.reset()
    for _ in range(5):
        p = accept_probabilities(model, obs)
        np.testing.assert_allclose(p, np.exp(obs[:, layout.index("log_accept")]), atol=1e-6)
        obs, *_ = venv.step(np.ones(4, dtype=np.int64))
    if algo != "sac-discrete":
        assert isinstance(model.policy, AnchoredActorCriticPolicy)
    # On MARA-v0 the same defaults give plain policies
    plain = make_algorithm(algo, _venv(tiny_kwargs, "MARA-v0"), seed=0)
    assert not isinstance(plain.policy, AnchoredActorCriticPolicy)
    assert getattr(getattr(plain.policy, "actor", None), "reference", None) is None


def test_untrained_anchored_agent_samples_the_reference_distribution(tiny_llm):
    """First-token distribution of aligned decoding under an untrained anchored DiscreteSAC: chi-square vs q."""
    kwargs = dict(llm=tiny_llm, prompts=TINY_PROMPTS, prompt_split="all", reward_model="length", cost_model=None)
    venv = _venv({**kwargs, "max_new_tokens": 4, "top_k": 8, "devices": ["cpu"]})
    model = make_algorithm("sac-discrete", venv, seed=0)
    gen = MARAGenerator(tiny_llm, model, top_k=8, top_p=0.95, batch_size=64)
    assert gen.layout.mode == "hidden+ref"
    prompt = TINY_PROMPTS[0]
    draws = 1500
    answers = gen.generate([prompt] * draws, max_new_tokens=1, seed=0)
    assert all(a.kl == pytest.approx(0.0, abs=1e-6) for a in answers)  # pi = p_ref at every decision
    ref = MARAGenerator(tiny_llm, None, top_k=8, top_p=0.95)
    ids, _ = ref.prompt_format.token_ids(prompt)
    with torch.no_grad():
        logits = tiny_llm[0](input_ids=torch.tensor([ids])).logits[:, -1]
    from mara_env.candidates import CandidateConfig, candidate_sets

    (cands,) = candidate_sets(logits, CandidateConfig(top_k=8, top_p=0.95))
    counts = np.array([sum(a.token_ids[0] == t for a in answers) for t in cands.tokens])
    assert counts.sum() == draws
    _, p_value = stats.chisquare(counts, cands.probs * draws)
    assert p_value > 1e-3


def test_anchored_sac_warms_up_on_its_policy_and_logs_zero_kl(tiny_kwargs, tmp_path):
    venv = _venv(tiny_kwargs)
    model = make_algorithm("sac-discrete", venv, seed=0, learning_starts=10_000, batch_size=16)
    assert not model.uniform_warmup
    # Push the untrained policy to "always accept": the warm-up's actions must follow it
    with torch.no_grad():
        model.actor.action_logits.bias.copy_(torch.tensor([-30.0, 30.0]))
    model.learn(120)
    actions = model.replay_buffer.actions[: model.replay_buffer.pos].reshape(-1)
    assert actions.size >= 100 and (actions == 1).all()
    # Uniform warm-up, the SB3 default, when asked for
    uniform = make_algorithm("sac-discrete", venv, seed=0, learning_starts=10_000, warmup="uniform")
    with torch.no_grad():
        uniform.actor.action_logits.bias.copy_(torch.tensor([-30.0, 30.0]))
    uniform.learn(120)
    share = (uniform.replay_buffer.actions[: uniform.replay_buffer.pos] == 1).mean()
    assert 0.3 < share < 0.7


def test_logged_kl_is_zero_while_the_anchored_agent_is_untrained(tiny_kwargs, tmp_path):
    from agents.training.callbacks import KL_COLUMN, MARALoggingCallback
    from agents.training.logs import make_logger

    venv = _venv(tiny_kwargs, n=4)
    model = make_algorithm("sac-discrete", venv, seed=0, learning_starts=10_000)
    model.set_logger(make_logger(tmp_path, 0))
    callback = MARALoggingCallback(log_every=40)
    model.learn(200, callback=callback, log_interval=None)
    assert callback.last_means[KL_COLUMN] == pytest.approx(0.0, abs=1e-6)


def test_anchored_agents_train_save_and_load(tiny_kwargs, tmp_path):
    venv = _venv(tiny_kwargs)
    for algo, extra in (("sac-discrete", dict(learning_starts=32, batch_size=16)), ("ppo", dict(n_steps=16))):
        model = make_algorithm(algo, venv, seed=0, **extra)
        model.learn(96)
        model.save(tmp_path / f"{algo}.zip")
        loaded = load_algorithm(tmp_path / f"{algo}.zip")
        obs = venv.reset()
        np.testing.assert_allclose(accept_probabilities(loaded, obs), accept_probabilities(model, obs), atol=1e-6)
        answers = MARAGenerator(tiny_kwargs["llm"], tmp_path / f"{algo}.zip", top_k=8).generate(
            TINY_PROMPTS[:2], max_new_tokens=4, seed=0
        )
        assert all(a.num_tokens > 0 for a in answers)


def test_critic_with_the_known_immediate_term(tiny_kwargs):
    venv = _venv(tiny_kwargs)
    model = make_algorithm(
        "sac-discrete", venv, seed=0, policy_kwargs=dict(critic_reference_scale="kl_coef"), learning_starts=8
    )
    critic = model.critic
    assert critic.reference_scale == pytest.approx(0.1)
    obs = torch.as_tensor(venv.reset())
    layout = venv.get_attr("observation_layout")[0]
    ref = obs[:, list(layout.reference_logits)]
    features = critic.extract_features(obs, critic.features_extractor)
    for q, net in zip(critic(obs), critic.q_networks):
        torch.testing.assert_close(q, 0.1 * ref + net(features))
    model.learn(64)


def test_anchoring_errors(tiny_kwargs, tmp_path):
    v0 = _venv(tiny_kwargs, "MARA-v0")
    with pytest.raises(ValueError, match="observation='hidden\\+ref'"):
        make_algorithm("sac-discrete", v0, policy_kwargs=dict(reference_logits="observation"))
    with pytest.raises(ValueError, match="critic_reference_scale needs"):
        make_algorithm("sac-discrete", v0, policy_kwargs=dict(critic_reference_scale=0.1))
    with pytest.raises(ValueError, match="dqn has no policy anchored"):
        make_algorithm("dqn", _venv(tiny_kwargs), policy_kwargs=dict(reference_logits="observation"))
    with pytest.raises(ValueError, match="0 <= index < 32"):
        DiscreteSAC("MlpPolicy", v0, policy_kwargs=dict(reference_logits=[40, 41]))
    # Valid indices of an observation without reference features: caught on the first batch
    wrong = DiscreteSAC("MlpPolicy", v0, policy_kwargs=dict(reference_logits=[3, 4]))
    with pytest.raises(ValueError, match=r"not the log-probabilities.*observation='hidden\+ref'"):
        wrong.learn(8)
    # The authors' layout: no anchored actors, no MARA-v1 observations
    anchored = make_algorithm("sac-discrete", _venv(tiny_kwargs), seed=0)
    with pytest.raises(ValueError, match="no reference anchor"):
        export_authors_actor(anchored)
    plain = make_algorithm("sac-discrete", v0, seed=0)
    path = tmp_path / "actor.pt"
    export_authors_actor(plain, path)
    from agents import import_authors_actor

    v1_plain = make_algorithm("sac-discrete", _venv(tiny_kwargs), seed=0, policy_kwargs=dict(reference_logits=None))
    with pytest.raises(ValueError, match="MARA-v1's observation"):
        import_authors_actor(v1_plain, path)
    with pytest.raises(ValueError, match=r"authors' layout.*read hidden states only.*observation='hidden'"):
        MARAGenerator(tiny_kwargs["llm"], path, top_k=8, observation="hidden+ref")
    assert MARAGenerator(tiny_kwargs["llm"], path, top_k=8).layout.mode == "hidden"  # auto


def test_run_config_versions():
    default = RunConfig.default()
    assert default.env_id == "MARA-v1" and default.env["observation"] == "hidden+ref"
    v0 = RunConfig.from_sections({"env": {"env_id": "MARA-v0"}})
    assert v0.env["observation"] == "hidden" and v0.env["reward_shaping"] == "none"
    assert "env_id" not in v0.env_kwargs and v0.env_kwargs["top_k"] == default.env["top_k"]
    # A setting given beside the version wins
    mixed = RunConfig.from_sections({"env": {"env_id": "MARA-v0", "reward_shaping": "potential"}})
    assert mixed.env["reward_shaping"] == "potential" and mixed.env["observation"] == "hidden"
    # Switching back restores the version's defaults
    back = RunConfig.from_sections({"env": {"env_id": "MARA-v1"}}, base=v0)
    assert back.env["observation"] == "hidden+ref"
    with pytest.raises(ValueError, match="Did you mean 'MARA-v1'"):
        RunConfig.from_sections({"env": {"env_id": "MARA-V1"}})


def test_registered_versions():
    assert set(mara_env.VERSIONS) == {"MARA-v0", "MARA-v1"}
    assert gym.spec("MARA-v1").kwargs == mara_env.MARA_V1


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_on_policy_discount_follows_the_shaping(tiny_kwargs, algo):
    # Potential shaping keeps the optimum only under the shaping's own discount
    assert make_algorithm(algo, _venv(tiny_kwargs), seed=0).gamma == pytest.approx(0.99)
    assert make_algorithm(algo, _venv(tiny_kwargs, shaping_gamma=0.9), seed=0).gamma == pytest.approx(0.9)
    # No shaping: the undiscounted return of a finite episode
    assert make_algorithm(algo, _venv(tiny_kwargs, reward_shaping="none"), seed=0).gamma == 1.0
    assert make_algorithm(algo, _venv(tiny_kwargs, "MARA-v0"), seed=0).gamma == 1.0
    with pytest.warns(UserWarning, match=r"shaping_gamma=0\.99.*Set gamma=0\.99"):
        model = make_algorithm(algo, _venv(tiny_kwargs), seed=0, gamma=1.0)
    assert model.gamma == 1.0  # the user's value is kept


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_on_policy_entropy_bonus_is_the_kl_coefficient(tiny_kwargs, algo):
    # With the env's kl_coef * log p_ref reward, an entropy bonus of kl_coef makes the objective
    # E[R] - kl_coef * KL(pi || p_ref); without one the policy would collapse to deterministic decisions.
    assert make_algorithm(algo, _venv(tiny_kwargs, kl_coef=0.3), seed=0).ent_coef == pytest.approx(0.3)
    assert make_algorithm(algo, _venv(tiny_kwargs, kl_coef=0.0), seed=0).ent_coef == 0.0
    assert make_algorithm(algo, gym.make("CartPole-v1"), seed=0).ent_coef == 0.0  # not a MARA env
    assert make_algorithm(algo, _venv(tiny_kwargs), seed=0, ent_coef=0.01).ent_coef == 0.01


def test_sac_default_discount_matches_the_default_shaping(tiny_kwargs, recwarn):
    model = make_algorithm("sac-discrete", _venv(tiny_kwargs), seed=0)
    assert model.gamma == pytest.approx(gym.spec("MARA-v1").kwargs["shaping_gamma"])
    assert not [w for w in recwarn if "shaping_gamma" in str(w.message)]
