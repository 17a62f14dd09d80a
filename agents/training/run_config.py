"""``RunConfig``: every setting of a training run, from defaults, a config file and command-line flags.

A run has three sections:

``env``
    ``env_id`` (``MARA-v1`` or ``MARA-v0``: the task version, whose defaults apply to the fields not
    given) and any :class:`mara_env.MARAConfig` field (the environment, its LLM, rewards and prompts);
``agent``
    ``algo`` (a name in :data:`agents.registry.ALGORITHMS`) and hyperparameters of that algorithm;
``train``
    ``total_decisions``, ``num_envs``, ``seed``, ``checkpoint_every``, ``log_every``, ``device``,
    ``progress_bar``, and the Ray cluster of distributed training: ``collectors``, ``ray_address``,
    ``collector_gpus``, ``collect_steps``, ``scorer_placement``, ``scorer_gpus`` (:class:`TrainSettings`,
    :mod:`agents.distributed`), and
    learning from a teacher: ``teacher``, ``teacher_weight``, ``teacher_k``, ``teacher_prompts``,
    ``teacher_bc``, ``teacher_bc_decisions`` (:mod:`agents.teacher`).

Precedence: :data:`DEFAULT_RUN` < config file (TOML or YAML) < command-line flags. A run writes its
fully resolved config with :meth:`RunConfig.dump`; ``mara train --config <run>/config.yaml``
repeats it. Example file (``run.yaml``)::

    env:
      top_k: 40
      kl_coef: 0.05
    agent:
      algo: ppo
      n_steps: 64
    train:
      total_decisions: 50000
"""

from __future__ import annotations

import copy
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agents.files import write_text_atomic
from agents.hints import did_you_mean
from agents.registry import ALGORITHMS, check_overrides, resolve_kwargs
from agents.teacher import TEACHERS
from mara_env import VERSIONS, MARAConfig
from mara_env.config import type_problem

#: The default run ("main job"): what ``mara train`` does with no options. The embedded
#: SmolLM2-135M-Instruct (``llm=None``), the default prompt set's train part, sentiment reward,
#: toxicity cost. Sized for a 2-core CPU; these are the values to tune for the run's duration.
DEFAULT_RUN: dict[str, dict[str, Any]] = {
    "env": dict(
        env_id="MARA-v1",  # hidden state + reference features, potential shaping (mara_env.MARA_V1)
        llm=None,
        prompts="default",
        prompt_split="train",
        reward_model="sentiment",
        cost_model="toxicity",
        max_new_tokens=48,
    ),
    "agent": dict(algo="sac-discrete"),
    "train": dict(
        total_decisions=30_000,
        # 32 sequences per LLM forward: ~60 decisions/s on 2 idle cores against ~40 with 16
        num_envs=32,
        seed=0,
        checkpoint_every=5_000,
        log_every=1_000,
        device="auto",
        progress_bar=True,
        # Distributed training (agents.distributed): None trains in this process
        collectors=None,
        ray_address=None,
        collector_gpus=None,
        collect_steps=8,
        scorer_placement="collector",
        scorer_gpus=None,
        # Learning from ARGS (agents.teacher): None trains on the agent's own experience only
        teacher=None,
        teacher_weight=10.0,
        teacher_k=10,
        teacher_prompts=64,
        teacher_bc=0.0,
        teacher_bc_decisions=15_000,
    ),
}

SECTIONS = ("env", "agent", "train")
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


#: Where Ray collectors' score models run (``train.scorer_placement``).
SCORER_PLACEMENTS = ("collector", "shared")


@dataclass(frozen=True)
class TrainSettings:
    """How long and how a run trains (each setting's help text is in its field's ``metadata["help"]``)."""

    total_decisions: int = field(
        metadata={"help": "environment decisions (SB3 timesteps, summed over sub-environments) to train for."}
    )
    num_envs: int = field(metadata={"help": "sub-environments batched through the LLM."})
    seed: int | None = field(metadata={"help": "seed of the agent and of the environment's episodes (None: random)."})
    checkpoint_every: int = field(metadata={"help": "decisions between checkpoints (<run>/checkpoint/)."})
    log_every: int = field(metadata={"help": "decisions between rows of progress.csv / TensorBoard points."})
    device: str = field(
        metadata={"help": 'torch device of the agent ("auto": a GPU if there is one); the LLM\'s is env.devices.'}
    )
    progress_bar: bool = field(metadata={"help": "show a progress bar."})
    collectors: int | None = field(
        default=None,
        metadata={
            "help": "Ray collector actors, each with its own LLM and vector env of num_envs (none: train in this "
            "process)."
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster to join with collectors, e.g. 10.0.0.1:6379 or auto (none: start a local one)."},
    )
    collector_gpus: float | None = field(
        default=None,
        metadata={"help": "GPUs per collector, e.g. 1 or 0.5 (none: 1 when the cluster has GPUs, else 0)."},
    )
    collect_steps: int = field(
        default=8,
        metadata={"help": "vector steps per collection task of a collector (collect_steps * num_envs decisions)."},
    )
    scorer_placement: str = field(
        default="collector",
        metadata={
            "help": "where Ray collectors' reward and cost models run: 'collector' (each collector loads its own, "
            "on its device) or 'shared' (one scorer actor for all, agents/distributed/scorer_service.py)."
        },
    )
    scorer_gpus: float | None = field(
        default=None,
        metadata={"help": "GPUs of the shared scorer actor (none: 1 when the collectors leave a GPU, else 0)."},
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "learn from a teacher's demonstrations: 'args' (reward-guided decoding on training prompts, "
            "replayed through the environment into the replay buffer; agents/teacher.py) or none."
        },
    )
    teacher_weight: float = field(default=10.0, metadata={"help": "the ARGS teacher's reward weight w (>= 0)."})
    teacher_k: int = field(default=10, metadata={"help": "the ARGS teacher's candidates per position (>= 2)."})
    teacher_prompts: int = field(
        default=64,
        metadata={"help": "training prompts the teacher answers; its replayed decisions count in total_decisions."},
    )
    teacher_bc: float = field(
        default=0.0,
        metadata={"help": "weight of the behaviour-cloning term on the teacher's decisions (0: none), fading to 0."},
    )
    teacher_bc_decisions: int = field(
        default=15_000, metadata={"help": "decisions over which the behaviour-cloning weight fades to 0."}
    )

    def __post_init__(self) -> None:
        names = ("total_decisions", "num_envs", "checkpoint_every", "log_every", "collect_steps", "teacher_prompts")
        for name in (*names, "teacher_bc_decisions"):
            value = getattr(self, name)
            if type_problem("int", value) is None and value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}.")
        if type_problem("int", self.collectors) is None and self.collectors is not None and self.collectors < 1:
            raise ValueError(
                f"train.collectors (--collectors) must be an integer >= 1 (Ray collector actors), got "
                f"{self.collectors!r}; omit it (or set none) to train in this process."
            )
        if self.teacher is not None and self.teacher not in TEACHERS:
            hint = did_you_mean(str(self.teacher), TEACHERS)
            raise ValueError(
                f"train.teacher (--teacher) {self.teacher!r} is not a teacher.{hint} Teachers: "
                f"{', '.join(TEACHERS)}, or none."
            )
        for name, low in (("teacher_weight", 0.0), ("teacher_bc", 0.0)):
            value = getattr(self, name)
            if type_problem("float", value) is None and not (math.isfinite(value) and value >= low):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"train.{name} ({flag}) must be a finite number >= 0, got {value!r}.")
        if type_problem("int", self.teacher_k) is None and self.teacher_k < 2:
            raise ValueError(
                f"train.teacher_k (--teacher-k) must be an integer >= 2 (ARGS's candidates per position; with one "
                f"there is nothing to choose), got {self.teacher_k!r}."
            )
        for name, what, who in (
            ("collector_gpus", "per collector", "the collectors"),
            ("scorer_gpus", "for the shared scorer", "it"),
        ):
            gpus = getattr(self, name)
            if type_problem("float", gpus) is None and gpus is not None and gpus < 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"train.{name} ({flag}) must be >= 0 GPUs {what}, got {gpus!r}; 0 runs {who} on CPUs.")
        if self.scorer_placement not in SCORER_PLACEMENTS:
            raise ValueError(
                f"train.scorer_placement (--scorer-placement) must be one of {', '.join(SCORER_PLACEMENTS)}, got "
                f"{self.scorer_placement!r}."
            )


@dataclass(frozen=True)
class AgentSettings:
    """The algorithm and its hyperparameters.

    :param algo: registry name (``sac-discrete``, ``ppo``, ``a2c``, ``dqn``, ``qrdqn``).
    :param hyperparameters: constructor arguments replacing the algorithm's defaults.
    """

    algo: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """The algorithm's defaults with :attr:`hyperparameters` applied (``policy_kwargs`` merged)."""
        return resolve_kwargs(self.algo, **self.hyperparameters)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``none`` -> ``None``, numbers, booleans, ``[a, b]`` lists, else the string."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError:
        return text  # e.g. a path with characters YAML reads specially


_TRAIN_TYPES = {f.name: str(f.type) for f in fields(TrainSettings)}
_ENV_TYPES = {f.name: str(f.type) for f in fields(MARAConfig)}
_ENV_DEFAULTS = {f.name: f.default for f in fields(MARAConfig)}

#: The env-section key naming the task version (a registered id of :data:`mara_env.VERSIONS`).
ENV_ID = "env_id"


def _unknown(key: str, section: str, valid: list[str], source: str) -> ValueError:
    hint = did_you_mean(key, valid, f" Valid keys: {', '.join(valid)}.")
    return ValueError(f"{source}: unknown key {key!r} in section [{section}].{hint}")


def _wrong_type(key: str, section: str, expected: str, value: Any, source: str) -> ValueError:
    return ValueError(f"{source}: {section}.{key} must be {expected}, got {value!r} ({type(value).__name__}).")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run (see the module docstring).

    :param env: ``env_id`` and the keyword arguments of that environment, every :class:`~mara_env.MARAConfig` field.
    :param agent: the algorithm and its hyperparameter overrides.
    :param train: run length, parallelism, seed, checkpoints, logging.
    """

    env: dict[str, Any]
    agent: AgentSettings
    train: TrainSettings

    @property
    def env_id(self) -> str:
        """The task version, e.g. ``"MARA-v1"``."""
        return self.env[ENV_ID]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The environment's keyword arguments: every ``MARAConfig`` field (``gym.make_vec(env_id, **env_kwargs)``)."""
        return {key: value for key, value in self.env.items() if key != ENV_ID}

    @classmethod
    def default(cls) -> RunConfig:
        """The default run, :data:`DEFAULT_RUN`."""
        return cls._layer(DEFAULT_RUN, "DEFAULT_RUN", None)

    @classmethod
    def from_sections(
        cls, sections: Mapping[str, Any], *, source: str = "config", base: RunConfig | None = None
    ) -> RunConfig:
        """A config from ``{"env": {...}, "agent": {...}, "train": {...}}`` laid over ``base``.

        :param sections: any subset of the sections, each with any subset of its keys. An
            ``agent.algo`` other than ``base``'s drops ``base``'s hyperparameters (they were another algorithm's).
        :param source: where the values come from, for error messages (a file name, ``"command line"``).
        :param base: the config the values replace (default: :meth:`default`).
        :raises ValueError: unknown section or key, wrong type, or a value the environment or algorithm refuses.
        """
        return cls._layer(sections, source, cls.default() if base is None else base)

    @classmethod
    def _layer(cls, sections: Mapping[str, Any], source: str, base: RunConfig | None) -> RunConfig:
        if not isinstance(sections, Mapping):
            raise ValueError(f"{source}: expected sections {', '.join(SECTIONS)}, got {type(sections).__name__}.")
        for name, section in sections.items():
            if name not in SECTIONS:
                hint = did_you_mean(name, SECTIONS)
                raise ValueError(f"{source}: unknown section {name!r}.{hint} Sections: {', '.join(SECTIONS)}.")
            if not isinstance(section, Mapping):
                raise ValueError(f"{source}: section [{name}] must be a table of key = value, got {section!r}.")

        env = dict(base.env) if base else {}
        layer = dict(sections.get("env", {}))
        if "scorer_device" in layer and "scorer_devices" not in layer:  # its name in runs written before it took a list
            layer["scorer_devices"] = layer.pop("scorer_device")
        env_id = layer.pop(ENV_ID, env.pop(ENV_ID, None) or "MARA-v0")
        if env_id not in VERSIONS:
            hint = did_you_mean(env_id, list(VERSIONS))
            raise ValueError(
                f"{source}: env.{ENV_ID} {env_id!r} is not a MARA version.{hint} Versions: {', '.join(VERSIONS)}."
            )
        if base is None or base.env_id != env_id:
            # A version sets the defaults of the settings it changes: switching versions resets them
            for key in {k for defaults in VERSIONS.values() for k in defaults}:
                env[key] = VERSIONS[env_id].get(key, _ENV_DEFAULTS[key])
        for key, value in layer.items():
            if key not in _ENV_TYPES:
                raise _unknown(key, "env", [ENV_ID, *_ENV_TYPES], source)
            expected = type_problem(_ENV_TYPES[key], value)
            if expected is not None:
                raise _wrong_type(key, "env", expected, value, source)
            env[key] = value
        try:
            resolved_env = MARAConfig.from_kwargs(env)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: [env] {exc}") from exc
        env = {ENV_ID: env_id, **{f.name: getattr(resolved_env, f.name) for f in fields(MARAConfig)}}

        agent_section = dict(sections.get("agent", {}))
        algo = agent_section.pop("algo", base.agent.algo if base else None)
        if algo not in ALGORITHMS:
            hint = did_you_mean(algo, ALGORITHMS, prefix=isinstance(algo, str))
            raise ValueError(
                f"{source}: agent.algo {algo!r} is not a known algorithm.{hint} Known: {', '.join(ALGORITHMS)}."
            )
        # Hyperparameters belong to one algorithm: a layer that switches algorithms starts afresh
        kept = base.agent.hyperparameters if base and base.agent.algo == algo else {}
        hyperparameters = {**kept, **agent_section}
        try:
            check_overrides(algo, hyperparameters)
        except ValueError as exc:
            raise ValueError(f"{source}: [agent] {exc}") from exc

        train = asdict(base.train) if base else {}
        for key, value in sections.get("train", {}).items():
            if key not in _TRAIN_TYPES:
                raise _unknown(key, "train", list(_TRAIN_TYPES), source)
            expected = type_problem(_TRAIN_TYPES[key], value)
            if expected is not None:
                raise _wrong_type(key, "train", expected, value, source)
            train[key] = value
        try:
            train_settings = TrainSettings(**train)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
        return cls(env=env, agent=AgentSettings(algo, hyperparameters), train=train_settings)

    @classmethod
    def from_file(cls, path: str | Path, *, base: RunConfig | None = None) -> RunConfig:
        """Read a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) config file laid over ``base``.

        :raises FileNotFoundError: no such file.
        :raises ValueError: another suffix, a syntax error, or a bad section, key or value.
        """
        path = Path(path)
        if path.suffix.lower() not in CONFIG_SUFFIXES:
            raise ValueError(
                f"{path}: config files must end in .toml, .yaml or .yml (the suffix picks the format), "
                f"got {path.suffix or 'no suffix'!r}."
            )
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path} is not a text file (byte {exc.start} is not UTF-8): it is damaged or not a config file."
            ) from exc
        try:
            if path.suffix.lower() == ".toml":
                data = _tomllib().loads(text)
            else:
                data = yaml.load(text, Loader=_Loader) or {}  # a SafeLoader subclass: no arbitrary objects
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # tomllib.TOMLDecodeError is a ValueError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not valid {path.suffix[1:].upper()}: {first}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: a config file holds sections (env, agent, train); this one holds a {type(data).__name__}."
            )
        return cls.from_sections(data, source=str(path), base=base)

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """The fully resolved config: every env field, the algorithm's resolved hyperparameters, every train setting."""
        agent = {"algo": self.agent.algo, **self.agent.resolved()}
        return _plain({"agent": agent, "env": dict(self.env), "train": asdict(self.train)})

    def dump(self, path: str | Path) -> None:
        """Write the fully resolved config as YAML, readable by :meth:`from_file`.

        :raises ValueError: a setting that a file cannot hold (e.g. a live model or a callable).
        """
        sections = self.to_sections()
        for name, section in sections.items():
            for key, value in section.items():
                try:
                    yaml.safe_dump(value)
                except yaml.YAMLError as exc:
                    raise ValueError(
                        f"{name}.{key} = {value!r} cannot be written to a config file, so this run could not be "
                        "repeated from it: give it as a name, path or number instead."
                    ) from exc
        # Written beside and renamed over, so a kill never leaves half a config
        write_text_atomic(path, yaml.safe_dump(sections, sort_keys=True))

    def changes_from(self, other: RunConfig) -> list[str]:
        """``section.key`` of every resolved setting that differs between ``self`` and ``other``."""
        mine, theirs = self.to_sections(), other.to_sections()
        return [
            f"{name}.{key}"
            for name in SECTIONS
            for key in sorted(set(mine[name]) | set(theirs[name]))
            if mine[name].get(key) != theirs[name].get(key)
        ]


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML's safe dumper writes no tuples), recursively; a deep copy otherwise."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib
