"""The dependency between the two packages points one way, and the algorithms stand alone.

Each import runs in a fresh interpreter, so that modules other tests imported do not hide a dependency.
What the algorithms know of a MARA environment is its published :class:`~mara_env.contract.AgentContract`
and nothing else: they import only the contract's modules (also inside functions), and settings the
environment holds elsewhere are not read.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from agents.registry import make_algorithm
from mara_env.contract import AgentContract, find_agent_contract
from mara_env.observation import ObservationLayout
from mara_env.sb3 import SB3VecEnv

ROOT = Path(__file__).resolve().parent.parent

#: Modules that must work on any Gymnasium environment, without ``mara_env``'s LLM machinery.
ALGORITHM_MODULES = (
    "agents",
    "agents.sac_discrete",
    "agents.presets",
    "agents.hyperparameters",
    "agents.reference_anchor",
    "agents.registry",
    "agents.loading",
    "agents.safe_unpickler",
    "agents.agent_file",
    "agents.accept",
    "agents.hints",
    "agents.files",
    "agents.errors",
)

#: The part of ``mara_env`` the algorithm modules may load: the contract and what it is made of, no LLM machinery.
CONTRACT_MODULES = {"mara_env", "mara_env.contract", "mara_env.observation", "mara_env.hints"}

#: The application layers under the command line: the ``mara`` command uses them, never the reverse.
APPLICATION_MODULES = (
    "agents.training.runner",
    "agents.distributed.learner",
    "agents.evaluation.pipeline",
    "agents.generation",
    "agents.serving",
)


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ALGORITHM_MODULES)
def test_algorithm_modules_load_only_the_env_contract(module: str) -> None:
    loaded = _loaded_after_import(module)
    env_modules = {name for name in loaded if name == "mara_env" or name.startswith("mara_env.")}
    assert env_modules <= CONTRACT_MODULES, (module, env_modules - CONTRACT_MODULES)
    assert "transformers" not in loaded, module


def _mara_env_imports(path: Path) -> set[str]:
    """Every ``mara_env`` module that ``path`` imports, at any depth of its code (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mara_env":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mara_env"}
    return found


@pytest.mark.parametrize("module", ALGORITHM_MODULES)
def test_algorithm_modules_import_only_the_env_contract(module: str) -> None:
    # read statically: an import inside a function (hidden from the check above until it runs) counts too
    path = ROOT.joinpath(*module.split("."))
    if module == "agents":  # the package's own file; its other modules are checked one by one or are the application
        files = [path / "__init__.py"]
    else:
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    imported = set().union(*(_mara_env_imports(f) for f in files))
    assert imported <= CONTRACT_MODULES - {"mara_env"}, (module, imported)


def test_mara_environments_publish_their_contract(tiny_kwargs) -> None:
    kwargs = {**tiny_kwargs, "kl_coef": 0.25, "reward_shaping": "potential", "shaping_gamma": 0.9}
    venv = VecMonitor(SB3VecEnv(gym.make_vec("MARA-v1", num_envs=2, **kwargs)))
    single = gym.make("MARA-v0", **tiny_kwargs)
    try:
        contract = find_agent_contract(venv)
        assert contract == AgentContract(ObservationLayout("hidden+ref", 32), 0.25, "potential", 0.9)
        assert contract.shaping_discount == 0.9
        assert find_agent_contract(single) == AgentContract(ObservationLayout("hidden", 32), 0.1, "none", 0.99)
        assert find_agent_contract(single).shaping_discount is None
        # what the registry makes of it: the entropy weight, the discount and the anchor
        model = make_algorithm("ppo", venv, seed=0, n_steps=4, batch_size=8)
        assert (model.ent_coef, model.gamma) == (0.25, 0.9)
        assert tuple(model.policy_kwargs["reference_logits"]) == contract.observation_layout.reference_logits
    finally:
        venv.close()
        single.close()


class _SettingsButNoContract(gym.Wrapper):
    """An environment with MARA-looking attributes (what the registry once read by duck typing), but no contract."""

    config = type("Config", (), {"kl_coef": 0.5, "reward_shaping": "potential", "shaping_gamma": 0.5})()


class _PublishedContract(gym.Wrapper):
    agent_contract = AgentContract(ObservationLayout("hidden", 4), 0.5, "potential", 0.5)


def test_the_registry_reads_the_contract_and_nothing_else() -> None:
    def venv(wrapper: type[gym.Wrapper]) -> DummyVecEnv:
        return DummyVecEnv([lambda: wrapper(gym.make("CartPole-v1"))])

    plain = make_algorithm("ppo", venv(_SettingsButNoContract), seed=0, n_steps=4, batch_size=4)
    assert (plain.ent_coef, plain.gamma) == (0.0, 0.99)  # not a MARA env: no KL weight, SB3's discount
    published = make_algorithm("ppo", venv(_PublishedContract), seed=0, n_steps=4, batch_size=4)
    assert (published.ent_coef, published.gamma) == (0.5, 0.5)
    assert np.isclose(find_agent_contract(venv(_PublishedContract)).kl_coef, 0.5)


def test_contract_refuses_values_the_environment_could_not_have() -> None:
    layout = ObservationLayout("hidden", 4)
    with pytest.raises(ValueError, match=r"reward_shaping must be 'none' or 'potential', got 'dense'"):
        AgentContract(layout, 0.1, "dense", 0.99)
    with pytest.raises(ValueError, match=r"shaping_gamma must be in \(0, 1\], got 0"):
        AgentContract(layout, 0.1, "none", 0)
    with pytest.raises(TypeError, match="observation_layout must be"):
        AgentContract({"mode": "hidden"}, 0.1, "none", 0.99)  # type: ignore[arg-type]


def test_mara_env_does_not_import_agents() -> None:
    loaded = _loaded_after_import("mara_env")
    assert not {name for name in loaded if name == "agents" or name.startswith("agents.")}


@pytest.mark.parametrize("module", APPLICATION_MODULES)
def test_application_modules_do_not_import_the_command_line(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not {name for name in loaded if name == "agents.cli" or name.startswith("agents.cli.")}, module


def test_generation_does_not_import_the_evaluation() -> None:
    # the evaluation generates answers; generation needs nothing of it (the shared counts live below both)
    loaded = _loaded_after_import("agents.generation")
    assert not {name for name in loaded if name.startswith("agents.evaluation")}


def test_lazy_evaluation_names_are_the_pipelines_exports() -> None:
    # agents.evaluation lists the pipeline's names by hand, to load it only on first use
    import agents.evaluation as evaluation
    import agents.evaluation.pipeline as pipeline

    assert set(pipeline.__all__) == evaluation._PIPELINE
    assert set(evaluation.__all__) >= evaluation._PIPELINE


def test_mara_env_exports_what_a_user_of_the_environment_needs() -> None:
    import mara_env

    # every public name resolves (loaded on first use), and only those are the package's
    assert set(mara_env.__all__) == set(mara_env._EXPORTS) | {"MARA_V1", "VERSIONS"}
    for name in mara_env.__all__:
        assert getattr(mara_env, name) is not None, name
    # the machinery under the environments stays in its modules
    with pytest.raises(AttributeError, match="internals are imported from their module"):
        mara_env.DecoderConfig  # noqa: B018
    from mara_env.config import DecoderConfig  # noqa: F401
