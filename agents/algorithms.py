"""The algorithm registry: every agent that trains on MARA-v0, with its default hyperparameters.

:data:`ALGORITHMS` is the one table of which algorithms ``mara train`` knows and what each one's
MARA defaults are. :func:`make_algorithm` builds one (defaults < ``overrides``),
:func:`load_algorithm` loads a saved zip of any of them (detecting which) without unpickling
untrusted code, and :func:`accept_probabilities` asks any of them how likely it is to accept.

Example::

    >>> venv = VecMonitor(SB3VecEnv(gym.make_vec("MARA-v0", num_envs=16, max_new_tokens=48)))
    >>> model = make_algorithm("sac-discrete", venv, seed=0, learning_starts=500)
    >>> model.learn(5_000)
    >>> model.save("agent.zip")
    >>> same = load_algorithm("agent.zip")       # algorithm detected from the file
    >>> accept_probabilities(same, obs)          # P(accept) per observation row

The defaults assume a vector env of about 16 sub-environments on a CPU (the default run of
``mara train``): the schedules that count environment steps (``train_freq``, ``n_steps``) are per
vector step, so each one collects ``value * num_envs`` decisions.
"""

from __future__ import annotations

import base64
import copy
import difflib
import inspect
import io
import json
import math
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import QRDQN
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.authors_format import weights_error
from agents.hyperparameters import range_problem
from agents.presets import mara_preset
from agents.reference_anchor import AnchoredActorCriticPolicy
from agents.sac_discrete import DiscreteSAC
from agents.sac_discrete.policies import DiscreteSACPolicy

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
                    # (64 decisions with 16 envs) instead.
                    train_freq=4,
                    # The authors update 10 times per episode, ~0.12 updates per decision for a
                    # 48-token SmolLM2 episode of ~85 decisions (8 per 64). On MARA-v1 (episodes of
                    # ~165 decisions: the anchored agent examines candidates as the reference does)
                    # 16 per 64 did better on training prompts (+27% vs +24% preference, 96 prompts x 2).
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
                    ent_coef=0.0,  # the per-decision KL reward already anchors the policy to the reference
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
                    ent_coef=0.0,  # as for PPO
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
        raise ValueError(f"Unknown algorithm {name!r}.{_did_you_mean(name, ALGORITHMS)}")
    return ALGORITHMS[name]


def _did_you_mean(key: str, valid: Any) -> str:
    names = sorted(valid)
    # A prefix ("sac" for "sac-discrete") is a better guess than the closest spelling
    close = [n for n in names if n.startswith(key)] or difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid: {', '.join(names)}."


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
            raise ValueError(
                f"{key!r} is not a hyperparameter of {name} ({spec.cls.__name__}).{_did_you_mean(key, valid)}"
            )
        if key == "gamma" and value == SHAPING_GAMMA:
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


def _env_candidates(env: Any, attribute: str) -> list[Any]:
    """``env``, its unwrapped env and, for an SB3 VecEnv (through wrappers such as VecMonitor), each
    sub-environment's ``attribute``: where a MARA setting may be found."""
    candidates = [env, getattr(env, "unwrapped", None)]
    try:
        candidates += env.get_attr(attribute)
    except Exception:  # not an SB3 VecEnv, or an env without that attribute
        pass
    return candidates


def env_kl_coef(env: Any) -> float | None:
    """The KL coefficient of a MARA environment (plain, vector or SB3-wrapped), else ``None``."""
    for candidate in _env_candidates(env, "config"):
        config = getattr(candidate, "config", candidate)
        value = getattr(config, "kl_coef", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def env_shaping_gamma(env: Any) -> float | None:
    """The discount of a MARA environment's potential shaping (``None``: no shaping, or not a MARA env)."""
    for candidate in _env_candidates(env, "config"):
        config = getattr(candidate, "config", candidate)
        if getattr(config, "reward_shaping", None) is not None:
            return float(config.shaping_gamma) if config.reward_shaping == "potential" else None
    return None


def _is_mara_env(env: Any) -> bool:
    return env_kl_coef(env) is not None


def env_observation_layout(env: Any) -> Any:
    """The observation layout of a MARA environment (plain, vector or SB3-wrapped), else ``None``.

    Read by duck typing (``observation_layout`` with ``reference_logits``), so this module never imports ``mara_env``.
    """
    for candidate in _env_candidates(env, "observation_layout"):
        layout = getattr(candidate, "observation_layout", candidate)
        if hasattr(layout, "has_reference"):
            return layout
    return None


def _resolve_reference(name: str, env: Any, kwargs: dict[str, Any], kl: float | None) -> Any:
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
        layout = env_observation_layout(env)
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
        return "MlpPolicy"
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
    kl = env_kl_coef(env) if kl_coef is None else kl_coef
    if kwargs.get("ent_coef") == KL_COEF:
        kwargs["ent_coef"] = float(kl) if kl is not None and kl > 0 else "auto_0.01"
    shaping_gamma = env_shaping_gamma(env)
    if kwargs.get("gamma") == SHAPING_GAMMA:
        # not a MARA env: SB3's usual 0.99
        kwargs["gamma"] = shaping_gamma if shaping_gamma is not None else (1.0 if _is_mara_env(env) else 0.99)
    elif shaping_gamma is not None and "gamma" in kwargs and not math.isclose(kwargs["gamma"], shaping_gamma):
        warnings.warn(
            f"{name} discounts with gamma={kwargs['gamma']} but the environment shapes its rewards with "
            f"shaping_gamma={shaping_gamma}: potential shaping keeps the optimal policy only when the two are equal "
            f"(otherwise the return gains (1 - shaping_gamma) * Phi per decision). Set gamma={shaping_gamma} or "
            f"'{SHAPING_GAMMA}', or create the environment with shaping_gamma={kwargs['gamma']}.",
            stacklevel=2,
        )
    policy = _resolve_reference(name, env, kwargs, kl)
    spec = get_spec(name)
    try:
        return spec.cls(
            policy, env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose, device=device, **kwargs
        )
    except (TypeError, ValueError, AssertionError) as exc:
        # SB3 checks its arguments with asserts and deep errors; say which algorithm and settings.
        raise ValueError(f"Could not build {name} ({spec.cls.__name__}) with {kwargs}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Loading saved agents without running pickled code


class _SafeUnpickler(pickle.Unpickler):
    """Unpickle only the data types an SB3 save stores: spaces, schedules, arrays, policy classes.

    SB3 keeps its non-JSON attributes as cloudpickle, which can run any code when loaded. This
    unpickler resolves a global only when it is a known harmless function or a class of an
    allowed kind from an allowed package, so a crafted zip cannot call ``os.system`` and the like.
    """

    _FUNCTIONS = frozenset(
        {
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("builtins", "slice"),
            ("builtins", "range"),
            ("builtins", "complex"),
            ("builtins", "bytearray"),
            ("builtins", "object"),
            ("collections", "deque"),
            ("collections", "OrderedDict"),
            ("_codecs", "encode"),
            ("copyreg", "_reconstructor"),
            ("numpy", "dtype"),
            ("numpy", "ndarray"),
            ("numpy.random._pickle", "__bit_generator_ctor"),
            ("numpy.random._pickle", "__generator_ctor"),
            ("numpy.random._pickle", "__randomstate_ctor"),
            ("numpy.random.bit_generator", "SeedSequence"),
            ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
            ("numpy.random._pcg64", "PCG64"),
            ("numpy.random._mt19937", "MT19937"),
            ("numpy.random._philox", "Philox"),
            ("numpy.random._sfc64", "SFC64"),
            ("numpy.random._generator", "Generator"),
        }
        | {
            (f"numpy.{core}.{module}", name)
            for core in ("core", "_core")
            for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
        }
    )
    _PACKAGES = ("stable_baselines3.", "sb3_contrib.", "agents.", "gymnasium.spaces.", "torch.optim.", "torch.nn.")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._FUNCTIONS or module == "numpy.dtypes":
            return super().find_class(module, name)
        if module.startswith(self._PACKAGES):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and issubclass(obj, _allowed_bases()):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name}")


def _allowed_bases() -> tuple[type, ...]:
    from stable_baselines3.common.buffers import BaseBuffer
    from stable_baselines3.common.policies import BasePolicy
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

    return (
        BasePolicy,
        BaseFeaturesExtractor,
        BaseBuffer,
        spaces.Space,
        th.optim.Optimizer,
        th.nn.Module,  # activation functions in policy_kwargs
        TrainFreq,
        TrainFrequencyUnit,
        ConstantSchedule,
        FloatSchedule,
        LinearSchedule,
    )


def read_saved_data(path: str | Path) -> dict[str, Any]:
    """The ``data`` JSON of an SB3 zip, as stored (pickled items still base64 text).

    :param path: the zip (``.zip`` may be left off, as with SB3's ``load``).
    :raises FileNotFoundError: no such file.
    :raises ValueError: not a zip, or a zip that is not an SB3 save.
    """
    path = _zip_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                raise ValueError(
                    f"{path} is not an agent checkpoint: the zip has no 'data' entry (files saved with "
                    "model.save() by stable-baselines3 or agents.DiscreteSAC have one)."
                )
            data = json.loads(archive.read("data"))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not an agent checkpoint: not a zip file (expected a model.save() zip).") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not an agent checkpoint: its 'data' entry is not JSON.") from exc
    if not isinstance(data, dict) or "policy_class" not in data:
        raise ValueError(f"{path} is not an agent checkpoint: its 'data' has no policy_class.")
    return data


def _zip_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".zip")
    if path.suffix != ".zip" and with_suffix.is_file():
        return with_suffix
    if path.is_dir() and (path / "model.zip").is_file():  # a run or checkpoint folder
        return path / "model.zip"
    raise FileNotFoundError(f"No saved agent at {path} (no such file).")


def detect_algorithm(data: Mapping[str, Any]) -> str:
    """The registry name of the algorithm that wrote a save's ``data`` (see :func:`read_saved_data`).

    :raises ValueError: the policy class belongs to no registered algorithm.
    """
    policy = data.get("policy_class")
    module = policy.get("__module__") if isinstance(policy, dict) else None
    candidates = [spec for spec in ALGORITHMS.values() if module in spec.policy_modules]
    # Among algorithms sharing a policy class, the one whose identifying keys are all there and most numerous
    matching = [spec for spec in candidates if spec.save_keys <= data.keys()]
    if not matching:
        known = ", ".join(sorted(set().union(*(spec.policy_modules for spec in ALGORITHMS.values()))))
        raise ValueError(
            f"The saved agent's policy comes from {module!r}, which belongs to no registered algorithm "
            f"(known policy modules: {known}). Pass algo=... if it is one of {', '.join(ALGORITHMS)}."
        )
    return max(matching, key=lambda spec: len(spec.save_keys)).name


def load_algorithm(
    path: str | Path, env: Any = None, *, algo: str | None = None, device: str | th.device = "auto"
) -> BaseAlgorithm:
    """Load an agent saved with ``model.save`` by any registered algorithm.

    Pickled attributes are read with an unpickler that only builds known data types (spaces,
    schedules, arrays, policy classes); weights are read with ``torch.load(weights_only=True)``.

    :param path: the zip (``.zip`` may be left off), or a folder holding ``model.zip``.
    :param env: environment to attach (needed to continue training); its spaces must match.
    :param algo: registry name; ``None`` detects it from the file.
    :param device: torch device of the loaded policy.
    :raises FileNotFoundError: no such file.
    :raises ValueError: not an agent checkpoint, an unknown algorithm, or an unsafe pickled object.
    """
    zip_path = _zip_path(path)
    data = read_saved_data(zip_path)
    if algo is None:
        name = detect_algorithm(data)
    else:
        name = get_spec(algo).name
        try:
            detected = detect_algorithm(data)
        except ValueError:  # an unrecognised policy module: trust the caller
            detected = name
        if detected != name:
            raise ValueError(f"{zip_path} holds a {detected} agent, not {name}: pass algo={detected!r} or algo=None.")
    custom_objects: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and ":serialized:" in value:
            try:
                raw = base64.b64decode(value[":serialized:"])
                custom_objects[key] = _SafeUnpickler(io.BytesIO(raw)).load()
            except pickle.UnpicklingError as exc:
                raise ValueError(
                    f"{zip_path}: refusing to load attribute {key!r}: it holds a pickled {exc}, which is not "
                    "one of the data types an agent checkpoint needs (it could run code). If you trust the "
                    f"file, load it with {get_spec(name).cls.__name__}.load()."
                ) from exc
            except Exception as exc:  # truncated or corrupt base64/pickle
                raise ValueError(
                    f"{zip_path} is not an agent checkpoint: attribute {key!r} is corrupt ({exc})."
                ) from exc
    try:
        return get_spec(name).cls.load(zip_path, env=env, device=device, custom_objects=custom_objects)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        # The .pth entries, read by SB3 with weights_only=True; a torch stream error means a damaged entry
        if isinstance(exc, RuntimeError) and "PytorchStreamReader" not in str(exc):
            raise ValueError(f"{zip_path} could not be loaded as a {name} agent: {exc}") from exc
        raise weights_error(str(zip_path), exc, what="its weights") from exc
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{zip_path} could not be loaded as a {name} agent: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Acceptance probabilities


def accept_probabilities(model: BaseAlgorithm, obs: np.ndarray, *, behaviour: bool = False) -> np.ndarray:
    """The probability that ``model`` accepts (action 1) on each observation row.

    - DiscreteSAC: ``pi(accept | s)``, the actor's softmax.
    - PPO, A2C (any actor-critic policy): the categorical distribution's ``probs[:, 1]``.
    - DQN, QR-DQN: the greedy action as 0 or 1; with ``behaviour=True`` the epsilon-greedy
      mixture ``eps / 2 + (1 - eps) * greedy`` with ``eps = model.exploration_rate``, the
      probability with which training picked its actions.

    :param model: a model of a registered algorithm with a ``Discrete(2)`` action space.
    :param obs: observations, shape ``(n, *obs_shape)`` or a single ``obs_shape`` row.
    :param behaviour: return the exploration policy's probability where it differs from the policy's.
    :return: shape ``(n,)``, float64, in ``[0, 1]``.
    """
    action_space = model.action_space
    if not (isinstance(action_space, spaces.Discrete) and action_space.n == 2):
        raise ValueError(f"accept_probabilities needs a Discrete(2) action space (reject/accept), got {action_space}.")
    obs = np.asarray(obs)
    obs_shape = model.observation_space.shape
    if obs.shape == obs_shape:
        obs = obs[None]
    if obs.shape[1:] != obs_shape:
        raise ValueError(
            f"observations must have shape (n, {', '.join(map(str, obs_shape))}) for this model; got {obs.shape}."
        )
    policy = model.policy
    was_training = policy.training
    policy.set_training_mode(False)  # dropout / batch norm in inference behaviour
    try:
        with th.no_grad():
            obs_tensor, _ = policy.obs_to_tensor(obs)
            if isinstance(policy, DiscreteSACPolicy):
                probs = policy.actor.action_probs(obs_tensor)[0][:, 1]
            elif hasattr(policy, "get_distribution"):
                probs = policy.get_distribution(obs_tensor).distribution.probs[:, 1]
            elif hasattr(model, "exploration_rate"):
                probs = policy._predict(obs_tensor, deterministic=True).reshape(-1).float()
                if behaviour:
                    eps = float(model.exploration_rate)
                    probs = eps / 2 + (1 - eps) * probs
            else:
                raise TypeError(f"accept_probabilities does not know how to read {type(model).__name__}'s policy.")
    finally:
        policy.set_training_mode(was_training)
    return probs.detach().cpu().numpy().astype(np.float64)
