"""The algorithm registry: building, training, saving, detecting and loading every algorithm on MARA-v0."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor

import mara_env  # noqa: F401  (registers MARA-v0)
from agents import DiscreteSAC
from agents.accept import accept_probabilities
from agents.loading import detect_algorithm, load_algorithm, read_saved_data
from agents.registry import ALGORITHMS, make_algorithm, resolve_kwargs
from mara_env.sb3 import SB3VecEnv

# Small enough that a few hundred decisions include updates of every algorithm.
SMALL = {
    "sac-discrete": dict(learning_starts=64, batch_size=32, buffer_size=2_000, gradient_steps=2),
    "ppo": dict(n_steps=32, batch_size=64, n_epochs=2),
    "a2c": dict(n_steps=8),
    "dqn": dict(learning_starts=64, batch_size=32, buffer_size=2_000, target_update_interval=100),
    "qrdqn": dict(learning_starts=64, batch_size=32, buffer_size=2_000, target_update_interval=100),
}


@pytest.fixture
def venv(tiny_kwargs):
    env = VecMonitor(SB3VecEnv(gym.make_vec("MARA-v0", num_envs=4, **tiny_kwargs)))
    yield env
    env.close()


def test_accept_probabilities_of_discrete_sac_is_the_actor_softmax(venv):
    model = make_algorithm("sac-discrete", venv, seed=0, **SMALL["sac-discrete"])
    obs = venv.reset()
    probs = accept_probabilities(model, obs)
    assert probs.shape == (4,) and probs.dtype == np.float64
    with torch.no_grad():
        logits = model.actor.logits(torch.as_tensor(obs))
    np.testing.assert_allclose(probs, torch.softmax(logits, dim=1)[:, 1].numpy(), rtol=1e-6)
    # A single observation row gives one probability; the policy's training flag is restored
    model.policy.set_training_mode(True)
    assert accept_probabilities(model, obs[0]).shape == (1,)
    assert model.policy.training
    with pytest.raises(ValueError, match=r"observations must have shape \(n, 32\)"):
        accept_probabilities(model, obs[:, :5])


def test_accept_probabilities_of_dqn_is_greedy_and_its_behaviour_is_epsilon_greedy(venv):
    model = make_algorithm("dqn", venv, seed=0, **SMALL["dqn"])
    obs = venv.reset()
    greedy = accept_probabilities(model, obs)
    actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(greedy, actions.astype(np.float64))
    model.exploration_rate = 0.3
    np.testing.assert_allclose(accept_probabilities(model, obs, behaviour=True), 0.15 + 0.7 * greedy)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_algorithm_trains_saves_and_loads_with_detection(name, venv, tmp_path):
    model = make_algorithm(name, venv, seed=0, **SMALL[name])
    model.learn(256)
    assert model.num_timesteps >= 256
    assert model._n_updates > 0, "the run was long enough for at least one update"
    obs = venv.reset()
    probs = accept_probabilities(model, obs)
    assert probs.shape == (4,) and probs.dtype == np.float64
    assert np.all((probs >= 0) & (probs <= 1))
    behaviour = accept_probabilities(model, obs, behaviour=True)
    assert np.all((behaviour > 0) & (behaviour < 1)), "training explores: every action has some probability"

    model.save(tmp_path / "agent.zip")
    assert detect_algorithm(read_saved_data(tmp_path / "agent.zip")) == name
    loaded = load_algorithm(tmp_path / "agent", env=venv)  # ".zip" may be left off, as with SB3
    other = "ppo" if name != "ppo" else "a2c"
    with pytest.raises(ValueError, match=f"holds a {name} agent, not {other}"):
        load_algorithm(tmp_path / "agent.zip", algo=other)
    assert type(loaded) is ALGORITHMS[name].cls
    np.testing.assert_array_equal(accept_probabilities(loaded, obs), probs)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_sac_entropy_coefficient_is_the_env_kl_coef_unless_overridden(venv):
    assert make_algorithm("sac-discrete", venv, **SMALL["sac-discrete"]).ent_coef == 0.1  # the env's kl_coef
    assert make_algorithm("sac-discrete", venv, kl_coef=0.3, **SMALL["sac-discrete"]).ent_coef == 0.3
    learned = make_algorithm("sac-discrete", venv, ent_coef="auto_0.05", **SMALL["sac-discrete"])
    assert learned.log_ent_coef is not None
    assert float(learned.log_ent_coef.detach().exp()) == pytest.approx(0.05)
    # policy_kwargs is merged key by key: the preset's input LayerNorm stays
    kwargs = resolve_kwargs("sac-discrete", policy_kwargs=dict(net_arch=[64]))
    assert kwargs["policy_kwargs"] == dict(
        net_arch=[64], input_layer_norm=True, reference_logits="auto", critic_reference_scale="kl_coef"
    )


def test_unknown_hyperparameter_and_algorithm_are_named(venv):
    with pytest.raises(
        ValueError, match=r"'learning_rat' is not a hyperparameter of ppo.*Did you mean 'learning_rate'"
    ):
        make_algorithm("ppo", venv, learning_rat=1e-3)
    with pytest.raises(ValueError, match=r"'buffer_size' is not a hyperparameter of a2c"):
        make_algorithm("a2c", venv, buffer_size=10)
    with pytest.raises(ValueError, match=r"Unknown algorithm 'sac'.*Did you mean 'sac-discrete'"):
        make_algorithm("sac", venv)
    with pytest.raises(ValueError, match=r"Hyperparameter 'batch_size' of dqn must be an integer, got 'many'"):
        make_algorithm("dqn", venv, batch_size="many")
    with pytest.raises(ValueError, match=r"Could not build sac-discrete.*target_entropy=5 nats cannot be reached"):
        make_algorithm("sac-discrete", venv, target_entropy=5.0)


@pytest.mark.parametrize(
    ("algo", "name", "value", "match"),
    [
        ("sac-discrete", "batch_size", 0, r"'batch_size' of sac-discrete must be an integer >= 1 .*, got 0"),
        ("sac-discrete", "buffer_size", 0, r"'buffer_size' .* an integer >= 1"),
        ("sac-discrete", "tau", 1.5, r"'tau' .* a number in \[0, 1\]"),
        ("sac-discrete", "gradient_steps", 0, r"'gradient_steps' .* an integer >= 1, or -1"),
        ("sac-discrete", "train_freq", [0, "step"], r"'train_freq' .* frequency >= 1"),
        ("sac-discrete", "learning_starts", -5, r"'learning_starts' .* an integer >= 0"),
        ("dqn", "gamma", 1.5, r"'gamma' of dqn must be a number in \[0, 1\], got 1.5"),
        ("dqn", "exploration_final_eps", -0.1, r"'exploration_final_eps' .* in \[0, 1\]"),
        ("dqn", "target_update_interval", 0, r"'target_update_interval' .* an integer >= 1"),
        ("ppo", "learning_rate", 0.0, r"'learning_rate' of ppo must be a finite number > 0 or a schedule"),
        ("ppo", "n_epochs", 0, r"'n_epochs' .* an integer >= 1"),
        ("a2c", "vf_coef", float("nan"), r"'vf_coef' .* a finite number >= 0, got nan"),
    ],
)
def test_hyperparameters_out_of_range_are_named(algo, name, value, match):
    """Caught where given, not as a 'non-finite loss' (batch_size 0) or a silent no-op later."""
    with pytest.raises(ValueError, match=r"Hyperparameter " + match):
        resolve_kwargs(algo, **{name: value})


def test_load_algorithm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved agent"):
        load_algorithm(tmp_path / "missing.zip")
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(ValueError, match="not an agent checkpoint: not a zip"):
        load_algorithm(tmp_path / "text.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not an agent")
    with pytest.raises(ValueError, match="not an agent checkpoint: the zip has no 'data'"):
        load_algorithm(tmp_path / "other.zip")
    with zipfile.ZipFile(tmp_path / "alien.zip", "w") as archive:
        archive.writestr("data", json.dumps({"policy_class": {"__module__": "some.other.library"}}))
    with pytest.raises(ValueError, match="belongs to no registered algorithm"):
        load_algorithm(tmp_path / "alien.zip")


class _Payload:
    """Unpickling this calls ``pathlib.Path.touch`` on a marker file: code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_load_algorithm_refuses_pickled_code(venv, tmp_path):
    model = make_algorithm("sac-discrete", venv, seed=0, **SMALL["sac-discrete"])
    model.save(tmp_path / "agent.zip")
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "agent.zip") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    data["observation_space"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match=r"refusing to load .*attribute 'observation_space'.*pathlib"):
        load_algorithm(tmp_path / "evil.zip")
    assert not marker.exists()
    assert isinstance(load_algorithm(tmp_path / "agent.zip"), DiscreteSAC)  # the untouched file loads

    # The weights (.pth entries) are pickles too: code there is refused by name, damage is named as such
    with zipfile.ZipFile(tmp_path / "agent.zip") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for name, content, match in [
        ("evil_weights", _torch_bytes({"w": _Payload(str(marker))}), r"refusing to load .*its weights hold a "
         r"reference to getattr.*could run code"),
        ("damaged_weights", entries["policy.pth"][:100], r"evil_damaged_weights\.zip is damaged: its weights .*"),
    ]:  # fmt: skip
        with zipfile.ZipFile(tmp_path / f"evil_{name}.zip", "w") as archive:
            for entry, value in entries.items():
                archive.writestr(entry, content if entry == "policy.pth" else value)
        with pytest.raises(ValueError, match=match):
            load_algorithm(tmp_path / f"evil_{name}.zip")
    assert not marker.exists()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
