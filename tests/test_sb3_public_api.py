"""Outside ``agents/sac_discrete/`` (an SB3 algorithm, built the way SB3 builds its own), the project uses
Stable-Baselines3 through its public API only: no ``_``-prefixed attribute, method or constructor argument of
SB3's algorithms and policies.

The private names are read off SB3 itself (its classes and built instances of DQN and PPO), so an upgrade
that adds one is checked too. One form stays allowed: a policy that overrides an SB3 hook (``_build``,
``_get_constructor_parameters``) calling the parent's implementation of that same hook through ``super()``,
which is how SB3's documentation extends a policy.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import gymnasium as gym
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("agents", "mara_env", "benchmarks")
ALLOWED = ROOT / "agents" / "sac_discrete"


def _single_underscore(names: object) -> set[str]:
    return {n for n in names if n.startswith("_") and not n.startswith("__")}  # type: ignore[attr-defined]


def sb3_private_names() -> set[str]:
    """The ``_name`` attributes SB3's algorithms and policies define (class and instance), and the ``_name``
    arguments of their constructors; torch's and Python's own are not SB3's and are left out."""
    env = gym.make("CartPole-v1")
    dqn = DQN("MlpPolicy", env, buffer_size=16, learning_starts=0)
    ppo = PPO("MlpPolicy", env, n_steps=8, batch_size=8)
    names: set[str] = set()
    for thing in (BaseAlgorithm, OffPolicyAlgorithm, OnPolicyAlgorithm, BasePolicy, dqn, dqn.policy, ppo, ppo.policy):
        names |= _single_underscore(dir(thing))
    for cls in (BaseAlgorithm, OffPolicyAlgorithm, OnPolicyAlgorithm, DQN, PPO):
        names |= _single_underscore(inspect.signature(cls.__init__).parameters)
    env.close()
    return names - _single_underscore(dir(torch.nn.Module())) - _single_underscore(dir(object)) - {"_abc_impl"}


def private_uses(source: str, private: set[str]) -> list[tuple[int, str]]:
    """``(line, text)`` of each use of a name in ``private``: ``x._name``, ``f(_name=...)``, ``getattr(x, "_name")``."""
    tree = ast.parse(source)
    extending: set[int] = set()  # super()._name inside def _name: a hook extended, not private state read
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == function.name
                    and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name)
                    and node.value.func.id == "super"
                ):
                    extending.add(id(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private and id(node) not in extending:
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.keyword) and node.arg in private:
            found.append((node.value.lineno, f"{node.arg}=..."))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_the_private_names_are_read_off_sb3():
    private = sb3_private_names()
    named_in_the_issue = {
        "_last_obs",
        "_sample_action",
        "_n_updates",
        "_episode_num",
        "_update_current_progress_remaining",
        "_setup_learn",
        "_on_step",
        "_predict",
        "_excluded_save_params",
        "_get_torch_save_params",
        "_setup_model",
        "_init_setup_model",
        "_current_progress_remaining",
        "_wrap_env",
        "_n_calls",
        "_total_timesteps",
    }
    assert named_in_the_issue <= private, named_in_the_issue - private
    assert not private & {"_apply", "_modules", "_parameters", "_version"}, "torch's names are not SB3's"


def test_the_scan_finds_each_kind_of_use_and_allows_extending_a_hook():
    private = {"_last_obs", "_build", "_init_setup_model", "_n_updates"}
    source = """
class Policy(Base):
    def _build(self, lr_schedule):
        super()._build(lr_schedule)  # allowed: extends the hook it overrides

    def other(self, model):
        super()._build(None)
        obs = model._last_obs
        Algo(policy, env, _init_setup_model=False)
        return getattr(model, "_n_updates")
"""
    lines = sorted(line for line, _ in private_uses(source, private))
    assert lines == [7, 8, 9, 10], private_uses(source, private)


def test_no_sb3_private_name_is_used_outside_sac_discrete():
    private = sb3_private_names()
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ALLOWED in path.parents:
                continue
            for line, text in private_uses(path.read_text(encoding="utf-8"), private):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not offenders, (
        "Stable-Baselines3's private names used outside agents/sac_discrete/ (use its public API: callbacks, "
        "collect_rollouts, predict, get_parameters, save; or a public method on DiscreteSAC):\n" + "\n".join(offenders)
    )
