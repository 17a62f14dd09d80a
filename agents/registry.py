"""The algorithm registry: every agent that trains on MARA, with its default hyperparameters.

:data:`ALGORITHMS` is the one table of which algorithms ``mara train`` knows and what each one's
MARA defaults are; :func:`make_algorithm` builds one (defaults < ``overrides``). Saved agents are
read by :mod:`agents.loading`; what an agent decides is read by :mod:`agents.accept`.

Like every algorithm module this one works on any Gymnasium environment with a ``Discrete`` action
space. Of ``mara_env`` it knows only what a MARA environment publishes for agents, its
:class:`~mara_env.contract.AgentContract` (``kl_coef``, the shaping discount, the observation layout),
from :mod:`mara_env.contract`, which loads none of the LLM machinery. Example, on a classic-control task::

    >>> import gymnasium as gym
    >>> from stable_baselines3.common.vec_env import DummyVecEnv
    >>> venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    >>> model = make_algorithm("sac-discrete", venv, seed=0, learning_starts=32, batch_size=32, buffer_size=256)
    >>> model.ent_coef                   # no MARA kl_coef to fix it to: learned, from the authors' 0.01
    'auto_0.01'
    >>> model.learn(64).num_timesteps
    64

On MARA (``gym.make_vec("MARA-v1", ...)`` wrapped in ``VecMonitor(SB3VecEnv(...))``) the same call fixes
``ent_coef`` to the environment's ``kl_coef`` and anchors the policy to the reference.

The defaults assume a vector env of about 16 sub-environments on a CPU (the default run of
``mara train``): the schedules that count environment steps (``train_freq``, ``n_steps``) are per
vector step, so each one collects ``value * num_envs`` decisions.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sb3_contrib import QRDQN
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize

from agents.hints import did_you_mean
from agents.hyperparameters import range_problem
from agents.presets import mara_preset
from agents.reference_anchor import AnchoredActorCriticPolicy, check_raw_observations
from agents.sac_discrete import DiscreteSAC
from agents.sac_discrete.policies import DiscreteSACPolicy
from mara_env.contract import AgentContract, find_agent_contract

__all__ = [
    "ALGORITHMS",
    "KL_COEF",
    "NON_HYPERPARAMETERS",
    "REFERENCE_LOGITS",
    "SHAPING_GAMMA",
    "AlgorithmSpec",
    "check_overrides",
    "get_spec",
    "hyperparameter_owners",
    "make_algorithm",
    "resolve_kwargs",
]


#: ``ent_coef`` value meaning "the environment's KL coefficient" (resolved by :func:`make_algorithm`)
KL_COEF = "kl_coef"

#: ``gamma`` value meaning "the discount under which the environment's reward shaping keeps the optimum"
#: (resolved by :func:`make_algorithm`): the env's ``shaping_gamma`` with ``reward_shaping="potential"``
#: (MARA-v1), 1.0 without shaping (finite episodes: the undiscounted return is the exact objective).
SHAPING_GAMMA = "shaping_gamma"

#: ``policy_kwargs["reference_logits"]`` values resolved from the environment's observation layout by
#: :func:`make_algorithm`: ``"auto"`` anchors the policy when the observation carries the reference's
#: log-probabilities (MARA-v1) and leaves it plain otherwise (MARA-v0); ``"observation"`` requires them.
REFERENCE_LOGITS = ("auto", "observation")

_PLAIN_POLICY = "MlpPolicy"

#: Constructor parameters that are not hyperparameters: the caller or the run supplies them.
NON_HYPERPARAMETERS = frozenset(
    {"self", "policy", "env", "verbose", "tensorboard_log", "_init_setup_model", "seed", "device"}
)


@dataclass(frozen=True)
class AlgorithmSpec:
    """One registered algorithm.

    :param name: registry name (``mara train --algo <name>``).
    :param cls: the Stable-Baselines3-style algorithm class.
    :param defaults: keyword arguments for ``cls`` on MARA-v0, before user overrides.
    :param on_policy: whether it learns from fresh rollouts only (no replay buffer).
    :param description: one line for ``--help`` and reports.
    :param save_keys: keys of a saved zip's ``data`` that tell this algorithm apart from others
        with the same policy class (PPO and A2C share ``ActorCriticPolicy``).
    :param anchored_policy: the policy class used when ``policy_kwargs["reference_logits"]`` is set
        (actions anchored to the reference, :mod:`agents.reference_anchor`); ``None``: not supported.
    """

    name: str
    cls: type[BaseAlgorithm]
    defaults: Mapping[str, Any]
    on_policy: bool
    description: str
    save_keys: frozenset[str] = field(default_factory=frozenset)
    anchored_policy: type | None = None

    @property
    def hyperparameters(self) -> list[str]:
        """The constructor parameters a user may override, in signature order."""
        return [p for p in inspect.signature(self.cls.__init__).parameters if p not in NON_HYPERPARAMETERS]

    @property
    def policy_modules(self) -> frozenset[str]:
        """Modules of its policy classes (``"MlpPolicy"`` and the anchored one), as recorded in saved zips."""
        classes = [self.cls.policy_aliases["MlpPolicy"], self.anchored_policy]
        return frozenset(c.__module__ for c in classes if c is not None)


# Off-policy defaults shared by DQN and QR-DQN (see the table below for why).
_Q_LEARNING_DEFAULTS: dict[str, Any] = dict(
    learning_rate=1e-4,  # SB3's DQN default; Q-learning on 576-d hidden states is touchy at higher rates
    buffer_size=100_000,  # more than a 30k-decision default run; 230 MB of float32 576-d observations
    learning_starts=2_000,  # ~24 episodes of random accept/reject before the first update (SB3: 100)
    batch_size=256,  # as sac-discrete; ~10 ms per update on one CPU thread
    gamma=0.99,  # bootstrapped targets need a discount < 1 to stay bounded while Q is wrong
    train_freq=4,  # vector steps between updates: 64 decisions with 16 envs
    gradient_steps=8,  # 8 updates per 64 decisions, as sac-discrete (~10 per 85-decision episode)
    target_update_interval=1_000,  # decisions between target copies; SB3's 10,000 is a third of a default run
    exploration_fraction=0.2,  # epsilon decays over the first 20% of training...
    exploration_final_eps=0.05,  # ...to 5% random decisions
    policy_kwargs=dict(net_arch=[256, 256]),  # SB3's [64, 64] is narrow for 576-d inputs
)

ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            name="sac-discrete",
            cls=DiscreteSAC,
            # The authors' agent (agents.presets): network [H, 1024, 256] with input LayerNorm,
            # lr 3e-4, tau 0.005, gamma 0.99, target entropy 0.6 ln 2, grad clip 0.5.
            # Adapted to a vector env on a CPU:
            defaults=MappingProxyType(
                mara_preset(
                    "authors",
                    # The authors' 65,536 random transitions would be twice a default run; 2,000 is
                    # ~24 episodes.
                    learning_starts=2_000,
                    # 1024 is the paper's GPU batch: ~0.35 s per update on one CPU thread, 256 ~0.1 s.
                    batch_size=256,
                    # 1e6 transitions of 576 floats would reserve 4.6 GB for a 30k-decision run.
                    buffer_size=100_000,
                    # SB3 counts episodic train_freq only with one env: update every 4 vector steps
                    # (128 decisions with the default run's 32 envs) instead.
                    train_freq=4,
                    # The authors update 10 times per episode, ~0.12 updates per decision for a
                    # 48-token SmolLM2 episode of ~85 decisions. On MARA-v1 (episodes of ~165 decisions:
                    # the anchored agent examines candidates as the reference does) 16 per 4 vector steps
                    # (0.125 per decision with 32 envs) did better than 8 on training prompts (+27% vs
                    # +24% preference, 96 prompts x 2).
                    gradient_steps=16,
                    # Fixed to the env's kl_coef (mara_preset(kl_coef=...)): with the env's per-decision
                    # reward kl_coef * log p_ref, SAC then optimises E[R] - kl_coef * KL(pi || ref) exactly.
                    ent_coef=KL_COEF,
                    # MARA-v1: actor logits log p_ref(.|k) + f(s), f = 0 at the start (the untrained agent
                    # is the LLM's own sampling, KL 0), and the warm-up follows that policy.
                    # The critics as kl_coef * log p_ref(a|k) + g(s, a): the immediate KL reward is known
                    # exactly (+34% vs +27% with plain critics on training prompts, same settings).
                    policy_kwargs=dict(reference_logits="auto", critic_reference_scale=KL_COEF),
                )
            ),
            on_policy=False,
            description="discrete Soft Actor-Critic with the MARA authors' network and settings (the paper's agent)",
            anchored_policy=DiscreteSACPolicy,
        ),
        AlgorithmSpec(
            name="ppo",
            cls=PPO,
            defaults=MappingProxyType(
                dict(
                    learning_rate=3e-4,  # SB3's default, the usual PPO rate
                    n_steps=128,  # per env: 2,048 decisions per rollout with 16 envs (SB3's default size)
                    batch_size=256,  # 8 minibatches per rollout (SB3's 64 would be 32 small CPU steps)
                    n_epochs=4,  # fewer passes than SB3's 10: the rollouts are expensive, the updates not
                    # Potential shaping gamma_s Phi(s') - Phi(s) telescopes only under the agent's own discount
                    # gamma_s: with gamma 1 on MARA-v1 the shaped return is R - Phi(s_0) - (1 - gamma_s) sum_t Phi(s_t),
                    # which pays for long episodes (many rejections) where Phi < 0. Without shaping: 1.0.
                    gamma=SHAPING_GAMMA,
                    gae_lambda=0.95,
                    # The env pays kl_coef * log p_ref(a | k) per decision; with an entropy bonus of the same
                    # weight the objective is E[R] - kl_coef * KL(pi || p_ref). Without it, maximising
                    # E[log p_ref(a | k)] alone makes every decision deterministic (KL grows with the answer).
                    # At pi = p_ref the two terms' gradients cancel: the anchored start is stationary.
                    ent_coef=KL_COEF,
                    # wider than [64, 64]; anchored to the reference on MARA-v1 (AnchoredActorCriticPolicy)
                    policy_kwargs=dict(net_arch=dict(pi=[256, 256], vf=[256, 256]), reference_logits="auto"),
                )
            ),
            on_policy=True,
            description="Proximal Policy Optimization (stable-baselines3)",
            save_keys=frozenset({"clip_range", "n_epochs"}),
            anchored_policy=AnchoredActorCriticPolicy,
        ),
        AlgorithmSpec(
            name="a2c",
            cls=A2C,
            defaults=MappingProxyType(
                dict(
                    learning_rate=7e-4,  # SB3's default
                    n_steps=8,  # per env: 128 decisions per update with 16 envs
                    gamma=SHAPING_GAMMA,  # as for PPO: the discount that keeps the shaped optimum
                    gae_lambda=0.95,  # some bias for much less variance than Monte-Carlo returns
                    ent_coef=KL_COEF,  # as for PPO: with the env's KL reward, E[R] - kl_coef * KL(pi || p_ref)
                    policy_kwargs=dict(net_arch=dict(pi=[256, 256], vf=[256, 256]), reference_logits="auto"),
                )
            ),
            on_policy=True,
            description="Advantage Actor-Critic (stable-baselines3)",
            anchored_policy=AnchoredActorCriticPolicy,
        ),
        AlgorithmSpec(
            name="dqn",
            cls=DQN,
            defaults=MappingProxyType(copy.deepcopy(_Q_LEARNING_DEFAULTS)),
            on_policy=False,
            description="Deep Q-Network with epsilon-greedy exploration (stable-baselines3)",
        ),
        AlgorithmSpec(
            name="qrdqn",
            cls=QRDQN,
            defaults=MappingProxyType(
                {
                    **copy.deepcopy(_Q_LEARNING_DEFAULTS),
                    # 50 quantiles instead of sb3-contrib's 200: a quarter of the head's cost on a CPU
                    "policy_kwargs": dict(net_arch=[256, 256], n_quantiles=50),
                }
            ),
            on_policy=False,
            description="Quantile-Regression DQN, distributional Q-learning (sb3-contrib)",
        ),
    )
}


def get_spec(name: str) -> AlgorithmSpec:
    """The registry entry called ``name``; an unknown name raises ``ValueError`` with a suggestion."""
    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}.{_hint(name, ALGORITHMS)}")
    return ALGORITHMS[name]


def _hint(key: str, valid: Any) -> str:
    names = sorted(valid)
    # A prefix ("sac" for "sac-discrete") is a better guess than the closest spelling
    return f"{did_you_mean(key, names, prefix=True)} Valid: {', '.join(names)}."


def hyperparameter_owners() -> dict[str, list[str]]:
    """Every hyperparameter that can be set by name (a flag, a config key) -> the algorithms that have it."""
    owners: dict[str, list[str]] = {}
    for name, spec in ALGORITHMS.items():
        for parameter in spec.hyperparameters:
            # Classes cannot be named on a command line
            if not parameter.endswith("_class"):
                owners.setdefault(parameter, []).append(name)
    return owners


def check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a key that is not a hyperparameter of algorithm ``name``, or a value of the
    wrong type or out of its range (:data:`agents.hyperparameters.RANGES`).

    :param name: registry name.
    :param overrides: hyperparameter overrides.
    """
    spec = get_spec(name)
    valid = spec.hyperparameters
    parameters = inspect.signature(spec.cls.__init__).parameters
    for key, value in overrides.items():
        if key not in valid:
            owners = hyperparameter_owners().get(key)
            # another algorithm's hyperparameter: say whose, rather than guess a spelling
            hint = f" It is a hyperparameter of {', '.join(owners)}." if owners else _hint(key, valid)
            raise ValueError(f"{key!r} is not a hyperparameter of {name} ({spec.cls.__name__}).{hint}")
        if (key, value) in (("gamma", SHAPING_GAMMA), ("ent_coef", KL_COEF)):
            continue
        expected = _expected_type(key, parameters[key].default, value) or range_problem(key, value)
        if expected is not None:
            raise ValueError(f"Hyperparameter {key!r} of {name} must be {expected}, got {value!r}.")


def _expected_type(key: str, default: Any, value: Any) -> str | None:
    """What ``value`` should have been, judged by the parameter's default; ``None`` if it fits."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(value, bool) and isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, int):
        # train_freq also takes (frequency, "step" | "episode")
        if isinstance(value, int) or (key == "train_freq" and isinstance(value, (list, tuple)) and len(value) == 2):
            return None
        return "an integer" if key != "train_freq" else 'an integer or [frequency, "step" | "episode"]'
    if isinstance(default, float):
        # schedules (learning_rate, clip_range) may be callables of the remaining progress
        return None if isinstance(value, (int, float)) or callable(value) else "a number"
    if isinstance(default, str):
        # ent_coef / target_entropy: "auto..." or a number
        return None if isinstance(value, (str, int, float)) else "a string or a number"
    return None


def _resolve_reference(name: str, contract: AgentContract | None, kwargs: dict[str, Any], kl: float | None) -> Any:
    """Resolve ``reference_logits`` / ``critic_reference_scale`` in ``kwargs["policy_kwargs"]``; return the policy."""
    spec = get_spec(name)
    policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
    value = policy_kwargs.get("reference_logits")
    if isinstance(value, str):
        if value not in REFERENCE_LOGITS:
            raise ValueError(
                f"policy_kwargs.reference_logits={value!r} is not understood: use 'auto', 'observation', a list of "
                "observation indices (one per action) or none."
            )
        layout = None if contract is None else contract.observation_layout
        if layout is not None and layout.has_reference:
            policy_kwargs["reference_logits"] = tuple(layout.reference_logits)
        elif value == "auto":
            policy_kwargs.pop("reference_logits")
        else:
            raise ValueError(
                "policy_kwargs.reference_logits='observation' anchors the policy to the reference's "
                "log-probabilities, but this environment's observation does not carry them: create it with "
                "observation='hidden+ref' (the default of MARA-v1), or set reference_logits to none."
            )
    anchored = policy_kwargs.get("reference_logits") is not None
    scale = policy_kwargs.get("critic_reference_scale")
    if scale == KL_COEF:
        # "the env's kl_coef, where the observation carries log p_ref": dropped on a plain observation
        policy_kwargs["critic_reference_scale"] = kl if anchored and kl else None
    if not anchored:
        policy_kwargs.pop("reference_logits", None)
        if policy_kwargs.get("critic_reference_scale") is not None:
            raise ValueError(
                "policy_kwargs.critic_reference_scale needs the reference's log-probabilities in the observation: "
                "create the environment with observation='hidden+ref' (MARA-v1)."
            )
        policy_kwargs.pop("critic_reference_scale", None)
    if policy_kwargs or "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    if not anchored:
        return _PLAIN_POLICY
    if spec.anchored_policy is None:
        raise ValueError(
            f"{name} has no policy anchored to the reference (only "
            f"{', '.join(n for n, s in ALGORITHMS.items() if s.anchored_policy is not None)} do); "
            "remove policy_kwargs.reference_logits."
        )
    return spec.anchored_policy


def resolve_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The algorithm's defaults with ``overrides`` applied (``policy_kwargs`` merged key by key).

    :param name: registry name.
    :param overrides: hyperparameters replacing the defaults (checked by :func:`check_overrides`).
    :return: constructor keyword arguments; ``ent_coef`` may still be :data:`KL_COEF`.
    """
    check_overrides(name, overrides)
    kwargs = copy.deepcopy(dict(get_spec(name).defaults))
    overrides = copy.deepcopy(overrides)
    policy_kwargs = {**kwargs.pop("policy_kwargs", {}), **(overrides.pop("policy_kwargs", None) or {})}
    if isinstance(overrides.get("train_freq"), list):  # YAML/CLI give lists; SB3 reads only tuples
        overrides["train_freq"] = tuple(overrides["train_freq"])
    kwargs.update(overrides)
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def make_algorithm(
    name: str,
    env: Any,
    *,
    seed: int | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
    kl_coef: float | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """Build a registered algorithm on ``env`` with its MARA defaults.

    :param name: registry name: ``"sac-discrete"``, ``"ppo"``, ``"a2c"``, ``"dqn"`` or ``"qrdqn"``.
    :param env: the environment, usually ``VecMonitor(SB3VecEnv(gym.make_vec("MARA-v0", ...)))``.
    :param seed: seed of the algorithm (and of the environment's resets).
    :param tensorboard_log: TensorBoard folder (``None``: none, or set a logger with ``set_logger``).
    :param verbose: 0 silent, 1 info, 2 debug.
    :param kl_coef: the environment's KL coefficient (read from ``env`` when ``None``). An
        ``ent_coef`` of :data:`KL_COEF` (sac-discrete's default) becomes this value, or, without a
        positive one, a learned coefficient starting at the authors' 0.01.
    :param overrides: hyperparameters replacing the defaults (checked against the class's constructor;
        ``device`` is accepted too).
    :return: the untrained model.
    """
    device = overrides.pop("device", "auto")
    kwargs = resolve_kwargs(name, **overrides)
    spec = get_spec(name)
    contract = find_agent_contract(env)
    kl = (None if contract is None else float(contract.kl_coef)) if kl_coef is None else kl_coef
    kl_tied = kwargs.get("ent_coef") == KL_COEF
    if kl_tied:
        # Without a positive kl_coef: SAC learns its coefficient (from the authors' 0.01), PPO/A2C use none.
        learned = isinstance(inspect.signature(spec.cls.__init__).parameters["ent_coef"].default, str)
        fallback = "auto_0.01" if learned else 0.0
        kwargs["ent_coef"] = float(kl) if kl is not None and kl > 0 else fallback
    shaping_gamma = None if contract is None else contract.shaping_discount
    if kwargs.get("gamma") == SHAPING_GAMMA:
        # not a MARA env: SB3's usual 0.99
        kwargs["gamma"] = shaping_gamma if shaping_gamma is not None else (1.0 if contract is not None else 0.99)
    elif shaping_gamma is not None and "gamma" in kwargs and not math.isclose(kwargs["gamma"], shaping_gamma):
        warnings.warn(
            f"{name} discounts with gamma={kwargs['gamma']} but the environment shapes its rewards with "
            f"shaping_gamma={shaping_gamma}: potential shaping keeps the optimal policy only when the two are equal "
            f"(otherwise the return gains (1 - shaping_gamma) * Phi per decision). Set gamma={shaping_gamma} or "
            f"'{SHAPING_GAMMA}', or create the environment with shaping_gamma={kwargs['gamma']}.",
            stacklevel=2,
        )
    policy = _resolve_reference(name, contract, kwargs, kl)
    vec_normalize = unwrap_vec_normalize(env) if isinstance(env, VecEnv) else None
    if policy != _PLAIN_POLICY:
        check_raw_observations(vec_normalize, f"{name} on a VecNormalize environment")
    if vec_normalize is not None and vec_normalize.norm_reward and contract is not None and kl_tied:
        warnings.warn(
            f"{name}: ent_coef is the environment's kl_coef ({kwargs['ent_coef']}), which makes the entropy bonus "
            "cancel the per-decision KL reward only at the environment's own reward scale; VecNormalize(norm_reward="
            "True) divides rewards by a running scale, so the objective is no longer E[R] - kl_coef * KL. Use "
            "norm_reward=False, or scale the env's alpha_r/alpha_c instead.",
            stacklevel=2,
        )
    try:
        return spec.cls(
            policy, env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose, device=device, **kwargs
        )
    except (TypeError, ValueError, AssertionError) as exc:
        # SB3 checks its arguments with asserts and deep errors; say which algorithm and settings.
        raise ValueError(f"Could not build {name} ({spec.cls.__name__}) with {kwargs}: {exc}") from exc
