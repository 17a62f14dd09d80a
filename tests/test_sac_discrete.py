"""Tests of agents.DiscreteSAC: losses, learning, SB3 conventions, persistence, buffers and error handling."""

import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from agents import DiscreteSAC, NonFiniteLossError, mara_preset
from agents.sac_discrete.sac_discrete import DEFAULT_TARGET_ENTROPY_FRACTION, resolve_target_entropy

# Small networks keep every test to a few seconds on a CPU
SMALL = dict(net_arch=[32, 32])


class CueEnv(gym.Env):
    """
    Contextual bandit: the observation is a one-hot cue and the action it names earns reward 1.

    Seeded through ``reset(seed=...)`` only, so runs are reproducible. An episode lasts ``ep_length``
    steps (a truncation), so the best return is ``ep_length`` and a uniform policy earns a
    ``1 / n_actions`` fraction of it.
    """

    def __init__(self, n_actions: int = 3, dtype: type = np.float32, ep_length: int = 20):
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_actions,), dtype=dtype)
        self.action_space = spaces.Discrete(n_actions)
        self.ep_length = ep_length

    def _observation(self) -> np.ndarray:
        observation = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)
        observation[self._cue] = 1
        return observation

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._cue = int(self.np_random.integers(self.action_space.n))
        return self._observation(), {}

    def step(self, action):
        reward = float(int(action) == self._cue)
        self._t += 1
        self._cue = int(self.np_random.integers(self.action_space.n))
        return self._observation(), reward, False, self._t >= self.ep_length, {}


def small_model(env=None, **kwargs) -> DiscreteSAC:
    settings = dict(
        learning_starts=100,
        batch_size=64,
        learning_rate=1e-3,
        gamma=0.9,
        buffer_size=10_000,
        policy_kwargs=SMALL,
        seed=0,
        device="cpu",
    )
    settings.update(kwargs)
    return DiscreteSAC("MlpPolicy", env if env is not None else CueEnv(), **settings)


def policy_tensors(model: DiscreteSAC) -> dict[str, th.Tensor]:
    tensors = {f"policy.{k}": v.clone() for k, v in model.policy.state_dict().items()}
    if model.log_ent_coef is not None:
        tensors["log_ent_coef"] = model.log_ent_coef.detach().clone()
    return tensors


def assert_same_tensors(left: dict[str, th.Tensor], right: dict[str, th.Tensor]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert th.equal(left[key], right[key]), key


# --- losses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [1, 3])
def test_losses_match_an_independent_computation(n_steps: int):
    """The logged losses equal a per-sample, per-action evaluation of the discrete SAC formulas."""
    model = small_model(n_steps=n_steps, learning_starts=50)
    model.learn(150)
    batch_size = 16
    np.random.seed(123)
    batch = model.replay_buffer.sample(batch_size)

    alpha = float(model.log_ent_coef.detach().exp())
    log_alpha = float(model.log_ent_coef.detach())
    gamma = batch.discounts if batch.discounts is not None else th.full((batch_size, 1), model.gamma)
    with th.no_grad():
        pi = th.softmax(model.actor.logits(batch.observations), dim=1)
        next_pi = th.softmax(model.actor.logits(batch.next_observations), dim=1)
        q1, q2 = model.critic(batch.observations)
        next_q1, next_q2 = model.critic_target(batch.next_observations)

    critic_loss = actor_loss = alpha_loss = 0.0
    for i in range(batch_size):
        next_v = sum(
            next_pi[i, b] * (min(next_q1[i, b], next_q2[i, b]) - alpha * math.log(next_pi[i, b]))
            for b in range(pi.shape[1])
        )
        y = batch.rewards[i, 0] + gamma[i, 0] * (1 - batch.dones[i, 0]) * next_v
        a = int(batch.actions[i, 0])
        critic_loss += 0.5 * ((q1[i, a] - y) ** 2 + (q2[i, a] - y) ** 2) / batch_size
        actor_loss += (
            sum(pi[i, b] * (alpha * math.log(pi[i, b]) - min(q1[i, b], q2[i, b])) for b in range(pi.shape[1]))
            / batch_size
        )
        entropy = -sum(pi[i, b] * math.log(pi[i, b]) for b in range(pi.shape[1]))
        alpha_loss += log_alpha * (entropy - model.target_entropy) / batch_size

    np.random.seed(123)
    model.train(gradient_steps=1, batch_size=batch_size)
    logged = model.logger.name_to_value
    assert logged["train/critic_loss"] == pytest.approx(float(critic_loss), rel=1e-4)
    assert logged["train/actor_loss"] == pytest.approx(float(actor_loss), rel=1e-4)
    assert logged["train/ent_coef_loss"] == pytest.approx(float(alpha_loss), rel=1e-4, abs=1e-7)
    assert logged["train/ent_coef"] == pytest.approx(alpha, rel=1e-6)


def test_target_entropy_settings():
    ln3 = math.log(3)
    assert resolve_target_entropy("auto", 3) == pytest.approx(DEFAULT_TARGET_ENTROPY_FRACTION * ln3)
    assert resolve_target_entropy("auto_0.6", 2) == pytest.approx(0.6 * math.log(2))
    assert resolve_target_entropy(0.1, 2) == 0.1
    # The paper's "2" cannot be reached by a two-action policy (at most ln 2 nats)
    with pytest.raises(ValueError, match="cannot be reached"):
        resolve_target_entropy(2.0, 2)
    with pytest.raises(ValueError, match="auto_<fraction>"):
        resolve_target_entropy("auto_1.5", 2)
    with pytest.raises(ValueError, match="auto_<fraction>"):
        resolve_target_entropy("high", 2)
    model = small_model(target_entropy="auto_0.25")
    assert model.target_entropy == pytest.approx(0.25 * ln3)


def test_entropy_coefficient_settings():
    assert float(small_model(ent_coef="auto_0.05").log_ent_coef.detach().exp()) == pytest.approx(0.05)
    fixed = small_model(ent_coef=0.2)
    assert fixed.ent_coef_optimizer is None and float(fixed.ent_coef_tensor) == pytest.approx(0.2)
    fixed.learn(150)
    assert fixed.logger.name_to_value["train/ent_coef"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="ent_coef"):
        small_model(ent_coef="auto_-1")


def test_target_networks_follow_tau_and_interval():
    frozen = small_model(tau=0.0)
    before = {k: v.clone() for k, v in frozen.critic_target.state_dict().items()}
    frozen.learn(150)
    assert_same_tensors(before, frozen.critic_target.state_dict())

    copied = small_model(tau=1.0, target_update_interval=1)
    copied.learn(150)
    assert_same_tensors(copied.critic.state_dict(), copied.critic_target.state_dict())
    assert not any(p.requires_grad for p in copied.critic_target.parameters())


# --- learning ------------------------------------------------------------------------------------


def test_learns_contextual_bandit_to_near_optimal():
    env = CueEnv()
    model = small_model(env)
    model.learn(800)
    mean_return, _ = evaluate_policy(model, Monitor(CueEnv()), n_eval_episodes=10, deterministic=True)
    assert mean_return >= 0.9 * env.ep_length  # random play earns a third of it


def test_vec_env_of_several_envs():
    vec_env = make_vec_env(CueEnv, n_envs=4, seed=0)
    model = small_model(vec_env, gradient_steps=2)
    model.learn(1600)
    assert model.replay_buffer.n_envs == 4
    mean_return, _ = evaluate_policy(model, vec_env, n_eval_episodes=8, deterministic=True)
    assert mean_return >= 0.9 * 20


def test_sb3_conventions_on_cartpole():
    model = DiscreteSAC("MlpPolicy", "CartPole-v1", seed=0)
    model.learn(1000)
    mean_return, std_return = evaluate_policy(model, model.get_env(), n_eval_episodes=3)
    assert np.isfinite(mean_return) and np.isfinite(std_return)


def test_predict_deterministic_and_stochastic():
    model = small_model(ent_coef=1.0)
    observation = np.eye(3, dtype=np.float32)
    action, state = model.predict(observation, deterministic=True)
    assert state is None and action.shape == (3,)
    with th.no_grad():
        probs, _ = model.actor.action_probs(th.as_tensor(observation))
    np.testing.assert_array_equal(action, probs.argmax(dim=1).numpy())
    # A fresh policy is close to uniform: sampling must produce every action
    single, _ = model.predict(observation[0], deterministic=True)
    assert np.ndim(single) == 0
    samples = {int(model.predict(observation[0], deterministic=False)[0]) for _ in range(200)}
    assert samples == {0, 1, 2}


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")  # SB3's progress bar uses tqdm.rich
def test_callbacks_progress_bar_and_tensorboard(tmp_path):
    class CountSteps(BaseCallback):
        def _on_step(self) -> bool:
            return True

    callback = CountSteps()
    model = small_model(tensorboard_log=str(tmp_path))
    model.learn(200, callback=callback, progress_bar=True)
    assert callback.n_calls == 200
    assert list(tmp_path.glob("DiscreteSAC_1/events.out.tfevents.*"))


def test_n_step_returns_use_sb3_buffer():
    model = small_model(n_steps=3)
    assert isinstance(model.replay_buffer, NStepReplayBuffer) and model.replay_buffer.n_steps == 3
    model.learn(200)


def test_custom_net_arch_layer_norm_and_critics():
    model = small_model(policy_kwargs=dict(net_arch=dict(pi=[16], qf=[8, 8]), input_layer_norm=True, n_critics=3))
    actor_layers = [type(m).__name__ for m in model.actor.latent_pi]
    assert actor_layers == ["LayerNorm", "Linear", "ReLU"]
    assert model.actor.action_logits.out_features == 3
    assert len(model.critic.q_networks) == 3
    for q_net in model.critic.q_networks:
        assert isinstance(q_net[0], th.nn.LayerNorm) and q_net[-1].out_features == 3
    model.learn(150)


def test_shared_features_extractor_is_trained_by_the_actor_only():
    model = small_model(policy_kwargs=dict(net_arch=[16], share_features_extractor=True))
    assert model.critic.features_extractor is model.actor.features_extractor
    critic_optimised = {id(p) for group in model.critic.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in critic_optimised for p in model.actor.features_extractor.parameters())
    model.learn(150)


def test_grad_norm_clipping_runs():
    model = small_model(max_grad_norm=0.5)
    model.learn(150)
    assert model.logger.name_to_value["train/n_updates"] > 0


# --- persistence ---------------------------------------------------------------------------------


def test_save_load_same_predictions_and_same_continued_training(tmp_path):
    model = small_model(learning_starts=50)
    model.learn(200)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")

    loaded = DiscreteSAC.load(tmp_path / "model.zip", env=CueEnv(), device="cpu")
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")

    # Full state: actor, critics, targets, entropy coefficient and optimiser moments
    assert_same_tensors(policy_tensors(model), policy_tensors(loaded))
    for name in ("actor.optimizer", "critic.optimizer", "ent_coef_optimizer"):
        left = model.get_parameters()[name]["state"]
        right = loaded.get_parameters()[name]["state"]
        for index in left:
            for key in left[index]:
                assert th.equal(left[index][key], right[index][key]), (name, index, key)
    assert loaded.target_entropy == model.target_entropy
    np.testing.assert_array_equal(model.replay_buffer.observations, loaded.replay_buffer.observations)

    observations = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(
        model.predict(observations, deterministic=True)[0],
        loaded.predict(observations, deterministic=True)[0],
    )

    # Same seed, same fresh environment: continuing either one must give bit-identical networks
    for m in (model, loaded):
        m.set_env(CueEnv())
        m.set_random_seed(7)
        m.learn(150, reset_num_timesteps=False)
    assert_same_tensors(policy_tensors(model), policy_tensors(loaded))


def test_fixed_ent_coef_survives_save_load(tmp_path):
    model = small_model(ent_coef=0.3)
    model.save(tmp_path / "model.zip")
    loaded = DiscreteSAC.load(tmp_path / "model.zip", device="cpu")
    assert float(loaded.ent_coef_tensor) == pytest.approx(0.3)


# --- replay memory -------------------------------------------------------------------------------


def test_float16_observations_halve_the_buffer():
    half = small_model(CueEnv(dtype=np.float16), buffer_size=1000)
    full = small_model(CueEnv(dtype=np.float32), buffer_size=1000)
    assert half.replay_buffer.observations.dtype == np.float16
    assert half.replay_buffer.next_observations.dtype == np.float16
    assert 2 * half.replay_buffer.observations.nbytes == full.replay_buffer.observations.nbytes
    assert 2 * half.replay_buffer.next_observations.nbytes == full.replay_buffer.next_observations.nbytes
    half.learn(300)
    action, _ = half.predict(np.eye(3, dtype=np.float16), deterministic=True)
    assert action.shape == (3,)


def test_optimize_memory_usage_needs_explicit_timeout_choice():
    with pytest.raises(ValueError, match="handle_timeout_termination=False"):
        small_model(optimize_memory_usage=True)
    with pytest.raises(ValueError, match="n_steps"):
        small_model(optimize_memory_usage=True, n_steps=3)
    model = small_model(optimize_memory_usage=True, replay_buffer_kwargs=dict(handle_timeout_termination=False))
    assert not hasattr(model.replay_buffer, "next_observations")
    model.learn(200)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Pendulum-v1"])
def test_rejects_continuous_actions(env_id: str):
    with pytest.raises(TypeError, match=r"Discrete action space.*stable_baselines3\.SAC"):
        DiscreteSAC("MlpPolicy", env_id)


def test_rejects_multi_discrete_actions():
    env = CueEnv()
    env.action_space = spaces.MultiDiscrete([2, 2])
    with pytest.raises(TypeError, match="Discrete action space"):
        DiscreteSAC("MlpPolicy", env)


def test_nan_loss_is_reported_and_networks_kept():
    model = small_model(learning_starts=50)
    model.learn(100)
    before = policy_tensors(model)
    n_updates = model._n_updates
    model.replay_buffer.rewards[:] = np.nan

    with pytest.raises(NonFiniteLossError) as error:
        model.train(gradient_steps=5, batch_size=16)
    message = str(error.value)
    assert f"gradient step {n_updates + 1}" in message
    assert "critic_loss=nan" in message and "rewards" in message
    assert "actor_loss" not in message.split("Non-finite tensors")[0]  # the actor loss stayed finite
    assert_same_tensors(before, policy_tensors(model))


def test_agents_never_import_the_environment_package():
    code = "import sys, agents; sys.exit('mara_env' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


# --- MARA preset ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "initial_alpha"), [("paper", 0.8), ("authors", 0.01)])
def test_mara_preset_builds_the_paper_network(variant: str, initial_alpha: float):
    hidden = 16
    env = CueEnv(n_actions=2)
    env.observation_space = spaces.Box(-1.0, 1.0, shape=(hidden,), dtype=np.float32)
    kwargs = mara_preset(variant, buffer_size=1000, learning_starts=10)
    model = DiscreteSAC("MlpPolicy", env, **kwargs)

    for net in (model.actor.latent_pi, *model.critic.q_networks):
        shapes = [tuple(m.weight.shape) for m in net if hasattr(m, "weight")]
        assert shapes[:3] == [(hidden,), (1024, hidden), (256, 1024)]
    assert model.actor.action_logits.weight.shape == (2, 256)
    assert all(q[-1].weight.shape == (2, 256) for q in model.critic.q_networks)
    assert model.target_entropy == pytest.approx(0.6 * math.log(2))
    assert float(model.log_ent_coef.detach().exp()) == pytest.approx(initial_alpha)
    assert model.max_grad_norm == 0.5 and model.batch_size == 1024 and model.gamma == 0.99

    fixed = mara_preset(variant, kl_coef=0.1, policy_kwargs=dict(n_critics=3))
    assert fixed["ent_coef"] == 0.1
    assert fixed["policy_kwargs"] == dict(net_arch=[1024, 256], input_layer_norm=True, n_critics=3)
    with pytest.raises(ValueError, match="variant"):
        mara_preset("appendix")


def test_episodic_train_freq_with_several_envs_is_a_clear_error():
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    with pytest.raises(
        ValueError, match=r"counts episodes, which SB3 supports with one environment only; this VecEnv has 2"
    ):
        DiscreteSAC("MlpPolicy", venv, train_freq=(1, "episode"))
    DiscreteSAC("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), train_freq=(1, "episode"))  # one env: fine


def test_action_prior_sets_initial_policy_and_survives_save(tmp_path):
    env = gym.make("CartPole-v1")
    model = DiscreteSAC("MlpPolicy", env, seed=0, policy_kwargs=dict(action_prior=[0.2, 0.8]))
    obs = th.as_tensor(np.random.default_rng(0).normal(scale=3.0, size=(64, 4)), dtype=th.float32)
    probs, _ = model.actor.action_probs(obs)
    np.testing.assert_allclose(probs.detach().numpy()[:, 1], 0.8, atol=0.01)
    model.save(tmp_path / "m")
    loaded = DiscreteSAC.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.actor.action_probs(obs)[0].detach().numpy(), probs.detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="action_prior must be 2 positive probabilities"):
        DiscreteSAC("MlpPolicy", env, policy_kwargs=dict(action_prior=[0.5, 0.6]))


def test_critic_warmup_burst_trains_only_the_critics():
    model = DiscreteSAC("MlpPolicy", CueEnv(), learning_starts=64, critic_warmup_steps=40, policy_kwargs=SMALL, seed=0)
    model.learn(64)  # fills the buffer; the first update has not run yet
    actor = [p.detach().clone() for p in model.actor.parameters()]
    critic = [p.detach().clone() for p in model.critic.parameters()]
    model.train(gradient_steps=0, batch_size=32)  # the whole burst is owed at the first update
    assert model._n_updates == 40
    assert all(th.equal(a, b) for a, b in zip(actor, model.actor.parameters()))
    assert not all(th.equal(a, b) for a, b in zip(critic, model.critic.parameters()))
    model.train(gradient_steps=2, batch_size=32)  # afterwards the actor learns as usual
    assert model._n_updates == 42
    assert not all(th.equal(a, b) for a, b in zip(actor, model.actor.parameters()))
    with pytest.raises(ValueError, match="critic_warmup_steps must be an integer >= 0"):
        DiscreteSAC("MlpPolicy", CueEnv(), critic_warmup_steps=-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"DiscreteSAC: batch_size must be an integer >= 1 .*, got 0"),
        ({"gamma": -0.1}, r"DiscreteSAC: gamma must be a number in \[0, 1\]"),
        ({"learning_rate": float("inf")}, r"DiscreteSAC: learning_rate must be a finite number > 0"),
        ({"target_update_interval": 0}, r"DiscreteSAC: target_update_interval must be an integer >= 1"),
    ],
)
def test_settings_out_of_range_are_refused_at_construction(kwargs, match):
    # batch_size=0 used to train on empty batches and fail later with a non-finite loss blaming the data
    with pytest.raises(ValueError, match=match):
        DiscreteSAC("MlpPolicy", CueEnv(), **kwargs)
