"""Tests of the actor export/import in the MARA authors' plain state-dict layout."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch import nn

from agents import DiscreteSAC, export_authors_actor, import_authors_actor, mara_preset

HIDDEN = 24  # stands in for the LLM hidden size H (2048 to 4096 in the paper)


class HiddenStateEnv(gym.Env):
    """Observations shaped like LLM hidden states, accept (1) / reject (0) actions."""

    def __init__(self, hidden: int = HIDDEN):
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(hidden,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self.np_random.standard_normal(self.observation_space.shape).astype(np.float32), {}

    def step(self, action):
        observation = self.np_random.standard_normal(self.observation_space.shape).astype(np.float32)
        return observation, float(action), False, False, {}


class AuthorsActor(nn.Module):
    """The authors' actor written out independently: LayerNorm, 1024 and 256 ReLU layers, 2 outputs."""

    def __init__(self, hidden: int):
        super().__init__()
        self.ln = nn.LayerNorm(hidden)
        self.linear1 = nn.Linear(hidden, 1024)
        self.linear2 = nn.Linear(1024, 256)
        self.output_linear = nn.Linear(256, 2)

    def forward(self, x: th.Tensor) -> th.Tensor:
        x = th.relu(self.linear1(self.ln(x)))
        x = th.relu(self.linear2(x))
        return th.softmax(self.output_linear(x), dim=-1)


def mara_model(hidden: int = HIDDEN, seed: int = 0) -> DiscreteSAC:
    return DiscreteSAC("MlpPolicy", HiddenStateEnv(hidden), **mara_preset(buffer_size=100), seed=seed, device="cpu")


def actor_tensors(model: DiscreteSAC) -> dict[str, th.Tensor]:
    return {key: value.clone() for key, value in model.actor.state_dict().items()}


EXPECTED_SHAPES = {
    "ln.weight": (HIDDEN,),
    "ln.bias": (HIDDEN,),
    "linear1.weight": (1024, HIDDEN),
    "linear1.bias": (1024,),
    "linear2.weight": (256, 1024),
    "linear2.bias": (256,),
    "output_linear.weight": (2, 256),
    "output_linear.bias": (2,),
}


def test_export_has_the_authors_keys_shapes_and_dtype(tmp_path):
    path = tmp_path / "actor.pt"
    exported = export_authors_actor(mara_model(), path)
    assert {key: tuple(value.shape) for key, value in exported.items()} == EXPECTED_SHAPES
    assert all(value.dtype == th.float32 and value.device.type == "cpu" for value in exported.values())
    on_disk = th.load(path, weights_only=True)
    assert on_disk.keys() == exported.keys()


def test_exported_actor_runs_in_an_independent_authors_network():
    """The authors' forward pass on our exported weights gives our actor's probabilities."""
    model = mara_model()
    # Non-trivial LayerNorm parameters, so a wrong mapping could not pass by accident
    with th.no_grad():
        model.actor.latent_pi[0].weight.uniform_(0.5, 1.5)
        model.actor.latent_pi[0].bias.uniform_(-0.5, 0.5)
    reference = AuthorsActor(HIDDEN)
    reference.load_state_dict(export_authors_actor(model), strict=True)

    observations = th.randn(32, HIDDEN) * 5
    with th.no_grad():
        ours, _ = model.actor.action_probs(observations)
        theirs = reference(observations)
    th.testing.assert_close(ours, theirs)


def test_round_trip_through_a_file(tmp_path):
    source = mara_model(seed=0)
    target = mara_model(seed=1)
    critic_before = {key: value.clone() for key, value in target.critic.state_dict().items()}
    assert not all(
        th.equal(a, b) for a, b in zip(actor_tensors(source).values(), actor_tensors(target).values(), strict=True)
    )

    path = tmp_path / "actor.pt"
    export_authors_actor(source, path)
    import_authors_actor(target, path)

    for key, value in actor_tensors(source).items():
        assert th.equal(value, target.actor.state_dict()[key]), key
    # Only the actor is in the authors' file: the critics are untouched
    for key, value in critic_before.items():
        assert th.equal(value, target.critic.state_dict()[key]), key
    observations = np.random.default_rng(0).standard_normal((16, HIDDEN)).astype(np.float32)
    np.testing.assert_array_equal(
        source.predict(observations, deterministic=True)[0],
        target.predict(observations, deterministic=True)[0],
    )
    # The import also accepts an in-memory state dict, and the actor object itself
    import_authors_actor(target.actor, export_authors_actor(source.actor))


def test_wrong_keys_are_named_and_nothing_is_loaded(tmp_path):
    model = mara_model()
    before = actor_tensors(model)
    state_dict = export_authors_actor(mara_model(seed=3))
    state_dict["fc1.weight"] = state_dict.pop("linear1.weight")
    path = tmp_path / "renamed.pt"
    th.save(state_dict, path)

    with pytest.raises(ValueError, match=r"missing keys \['linear1.weight'\].*unexpected keys \['fc1.weight'\]"):
        import_authors_actor(model, path)
    for key, value in before.items():
        assert th.equal(value, model.actor.state_dict()[key]), key


def test_wrong_hidden_size_is_named(tmp_path):
    path = tmp_path / "bigger.pt"
    export_authors_actor(mara_model(hidden=HIDDEN + 8), path)
    with pytest.raises(ValueError, match=r"checkpoint is for hidden size H=32 but the model observes H=24"):
        import_authors_actor(mara_model(), path)


def test_wrong_shape_of_output_layer_is_named():
    state_dict = export_authors_actor(mara_model())
    state_dict["output_linear.weight"] = th.zeros(3, 256)
    with pytest.raises(ValueError, match=r"output_linear.weight has shape \[3, 256\]"):
        import_authors_actor(mara_model(), state_dict)


def test_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    th.save(th.zeros(3), path)
    with pytest.raises(ValueError, match="not a state dict"):
        import_authors_actor(mara_model(), path)


class _Payload:
    """Stands for arbitrary code in a pickle; weights_only loading must refuse it."""


def test_files_are_loaded_with_weights_only(tmp_path):
    path = tmp_path / "untrusted.pt"
    th.save({"ln.weight": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*untrusted\.pt.*_Payload.*could run code"):
        import_authors_actor(mara_model(), path)
    with pytest.raises(ValueError, match=r"refusing to load"):  # also a ValueError, a bad input for the CLI
        import_authors_actor(mara_model(), path)
    damaged = tmp_path / "damaged.pt"
    th.save(export_authors_actor(mara_model()), damaged)
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"damaged\.pt is damaged or not a PyTorch file"):
        import_authors_actor(mara_model(), damaged)


def test_model_not_in_the_authors_shape_is_refused():
    model = DiscreteSAC("MlpPolicy", HiddenStateEnv(), policy_kwargs=dict(net_arch=[64, 64]), buffer_size=100)
    with pytest.raises(ValueError, match="input_layer_norm=True"):
        export_authors_actor(model)
    with pytest.raises(TypeError, match="DiscreteSAC"):
        export_authors_actor(object())  # type: ignore[arg-type]
