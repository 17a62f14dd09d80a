"""Agent files: a trained agent as safetensors weights plus JSON settings, which no loading can turn into running code.

An agent file is a folder with two files of fixed names::

    agent.json           what the agent is (below); plain JSON
    agent.safetensors    its tensors: the policy's state dict as "policy.<name>" and the algorithm's other
                         torch variables as "variables.<name>" (e.g. SAC's log_ent_coef)

``agent.json`` holds ``format`` (``"mara-agent"``), ``format_version`` (1), ``algo`` (a name of
:data:`agents.registry.ALGORITHMS`), ``num_timesteps`` (decisions trained), ``observation_size``,
``versions`` (of the libraries that wrote it), ``weights`` (the file name, its size and SHA-256, checked on
loading) and ``settings``: every attribute the algorithm rebuilds its networks from (spaces, policy class
and ``policy_kwargs``, hyperparameters), as Stable-Baselines3's ``model.save()`` keeps them but without a
pickle. Values JSON cannot hold are objects with a ``"$type"`` key::

    {"$type": "class", "name": "torch.optim.adam:Adam"}     a class of agents.safe_unpickler.allowed_classes()
    {"$type": "Box", "low": ..., "high": ..., "shape": [576], "dtype": "float32"}
    {"$type": "Discrete", "n": 2, "start": 0}
    {"$type": "FloatSchedule", "value_schedule": {"$type": "ConstantSchedule", "val": 0.0003}}
    {"$type": "LinearSchedule", "start": 1.0, "end": 0.05, "end_fraction": 0.2}
    {"$type": "TrainFreq", "frequency": 4, "unit": "step"}
    {"$type": "float", "value": "inf"}                      non-finite numbers; {"$type": "tuple", "items": [...]}

Reading one calls no code the file names: JSON gives plain values, classes are looked up in the allow-list
and the tensors come from safetensors. What acts is saved (the policy, with its critics); the optimisers'
state and the replay buffer are not (a run's ``checkpoint/`` keeps those for ``mara train --resume``).
``mara train`` writes an agent file into the run folder beside ``model.zip``; ``mara generate``, ``evaluate``
and ``serve`` read it first. Example::

    >>> import gymnasium as gym
    >>> from stable_baselines3.common.vec_env import DummyVecEnv
    >>> from agents.registry import make_algorithm
    >>> model = make_algorithm("ppo", DummyVecEnv([lambda: gym.make("CartPole-v1")]), seed=0)
    >>> import tempfile; folder = tempfile.mkdtemp()
    >>> save_agent_file(model, folder).name
    'agent.json'
    >>> type(load_agent_file(folder, device="cpu")).__name__
    'PPO'

Like the registry, this module loads none of ``mara_env``'s LLM machinery.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule
from stable_baselines3.common.vec_env import VecEnv

from agents.files import write_text_atomic
from agents.registry import ALGORITHMS, get_spec
from agents.safe_unpickler import allowed_classes
from agents.spaces_env import SpacesOnlyVecEnv

__all__ = [
    "AGENT_SETTINGS",
    "AGENT_WEIGHTS",
    "FORMAT",
    "FORMAT_VERSION",
    "agent_folder",
    "is_agent_file",
    "load_agent_file",
    "read_agent_settings",
    "save_agent_file",
]

#: File names inside an agent folder.
AGENT_SETTINGS = "agent.json"
AGENT_WEIGHTS = "agent.safetensors"
#: ``agent.json``'s ``format`` and the version this code writes (and the newest it reads).
FORMAT = "mara-agent"
FORMAT_VERSION = 1

#: Attributes of a model that describe a training in progress, not the agent: never written.
_RUNTIME = frozenset(
    {"_last_obs", "_last_episode_starts", "_last_original_obs", "ep_info_buffer", "ep_success_buffer", "_logger"}
)
_POLICY, _VARIABLES = "policy.", "variables."


# ------------------------------------------------------------------------------------------------- saving


def save_agent_file(model: BaseAlgorithm, folder: str | os.PathLike) -> Path:
    """Write ``model``'s agent file into ``folder`` (created if needed); returns the path of ``agent.json``.

    Both files are written atomically, the weights first, so a kill leaves the previous pair or a weights
    file that the previous ``agent.json`` refuses by its SHA-256, never a silent mix.

    :param model: a model of any registered algorithm.
    :param folder: the agent folder (a run folder is one).
    :raises TypeError: a setting the format cannot express (e.g. a custom class outside the allow-list).
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    algo = _algo_name(model)
    saved, variable_names = _saved_by_sb3(model)
    attributes = vars(model)
    settings = {key: _encode(attributes[key], key) for key in saved if key not in _RUNTIME}

    tensors = {_POLICY + k: v.detach().to("cpu").contiguous() for k, v in model.policy.state_dict().items()}
    for name in variable_names:
        value = _getattr_path(model, name)
        tensors[_VARIABLES + name] = value.detach().to("cpu").contiguous().clone()
    weights = folder / AGENT_WEIGHTS
    content = save(tensors)
    tmp = weights.with_name(weights.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, weights)
    digest = hashlib.sha256(content).hexdigest()
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": algo,
        "num_timesteps": int(model.num_timesteps),
        "observation_size": int(np.prod(model.observation_space.shape or (0,))),
        "versions": _versions(),
        "weights": {"file": AGENT_WEIGHTS, "bytes": len(content), "sha256": digest},
        "settings": settings,
    }
    path = folder / AGENT_SETTINGS
    write_text_atomic(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def _saved_by_sb3(model: BaseAlgorithm) -> tuple[list[str], list[str]]:
    """The attributes and the torch variables (e.g. SAC's ``log_ent_coef``) SB3's public ``model.save()`` keeps.

    Asked of ``save`` itself, into memory: its ``data`` entry names the attributes (everything but what each
    algorithm excludes and the torch objects saved apart) and ``pytorch_variables.pth`` the variables, so an
    agent file holds what SB3's zip holds, whatever the algorithm, without pickles.
    """
    buffer = io.BytesIO()
    model.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        attributes = list(json.loads(archive.read("data")))
        variables: list[str] = []
        if "pytorch_variables.pth" in archive.namelist():
            with archive.open("pytorch_variables.pth") as file:
                variables = list(th.load(io.BytesIO(file.read()), map_location="cpu", weights_only=True))
    return attributes, variables


def _algo_name(model: BaseAlgorithm) -> str:
    for spec in ALGORITHMS.values():
        if type(model) is spec.cls:
            return spec.name
    raise TypeError(f"{type(model).__name__} is not a registered algorithm ({', '.join(ALGORITHMS)}).")


def _versions() -> dict[str, str]:
    found = {}
    for package in ("mara-rl", "stable-baselines3", "torch"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(value: Any, where: str) -> Any:
    """``value`` as JSON, with ``$type`` objects for what JSON cannot hold (see the module's table)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"$type": "float", "value": str(value)}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, type):
        if allowed_classes().get((value.__module__, value.__qualname__)) is not value:
            raise TypeError(
                f"{where}: the class {_class_name(value)} cannot be written to an agent file: it is not one of the "
                "classes an agent file may name (agents.safe_unpickler.allowed_classes)."
            )
        return {"$type": "class", "name": _class_name(value)}
    if isinstance(value, TrainFreq):
        return {"$type": "TrainFreq", "frequency": int(value.frequency), "unit": TrainFrequencyUnit(value.unit).value}
    if isinstance(value, tuple):
        return {"$type": "tuple", "items": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value) or "$type" in value:
            raise TypeError(f"{where}: a mapping with keys {list(value)[:5]} cannot be written to an agent file.")
        return {k: _encode(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, spaces.Box):
        return {
            "$type": "Box",
            "low": _bound(value.low),
            "high": _bound(value.high),
            "shape": list(value.shape),
            "dtype": np.dtype(value.dtype).name,
        }
    if isinstance(value, spaces.Discrete):
        return {"$type": "Discrete", "n": int(value.n), "start": int(value.start)}
    if isinstance(value, FloatSchedule):
        return {"$type": "FloatSchedule", "value_schedule": _encode(value.value_schedule, where)}
    if isinstance(value, ConstantSchedule):
        return {"$type": "ConstantSchedule", "val": _encode(value.val, where)}
    if isinstance(value, LinearSchedule):
        return {
            "$type": "LinearSchedule",
            "start": _encode(value.start, where),
            "end": _encode(value.end, where),
            "end_fraction": _encode(value.end_fraction, where),
        }
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be written to an agent file (it holds numbers, strings, lists, "
        "spaces Box/Discrete, SB3 schedules and allowed classes)."
    )


def _bound(array: np.ndarray) -> Any:
    """A Box bound: one number when all are equal (the usual case), else the list."""
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    if flat.size and (flat == flat[0]).all():
        return _encode(flat[0], "bound")
    return [_encode(v, "bound") for v in flat]


# ------------------------------------------------------------------------------------------------- loading


def agent_folder(path: str | os.PathLike) -> Path:
    """The agent folder ``path`` names: the folder itself, or the folder of its ``agent.json`` / ``agent.safetensors``.

    :raises FileNotFoundError: no agent file there.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in (AGENT_SETTINGS, AGENT_WEIGHTS) and path.suffix != ".safetensors":
        raise FileNotFoundError(f"{path} is not an agent file ({AGENT_SETTINGS} + {AGENT_WEIGHTS}).")
    if not (folder / AGENT_SETTINGS).is_file():
        raise FileNotFoundError(f"No agent file at {path}: {folder / AGENT_SETTINGS} does not exist.")
    return folder


def is_agent_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an agent folder, or its ``agent.json`` / ``.safetensors`` file."""
    try:
        agent_folder(path)
    except FileNotFoundError:
        return False
    return True


def read_agent_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of ``agent.json`` (values still JSON); nothing else is read.

    :raises FileNotFoundError: no agent file at ``path``.
    :raises ValueError: not an agent file of a format this version reads.
    """
    file = agent_folder(path) / AGENT_SETTINGS
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file} is damaged: it is not JSON ({error}).") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{file} is not an agent file: its 'format' is not {FORMAT!r}.")
    version = record.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{file} is an agent file of format version {version!r}; this mara-rl reads versions 1 to "
            f"{FORMAT_VERSION}. Upgrade mara-rl to load it."
        )
    for key, kind in (("algo", str), ("settings", dict), ("weights", dict)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"{file} is damaged: its {key!r} is missing or not a {kind.__name__}.")
    if record["algo"] not in ALGORITHMS:
        raise ValueError(f"{file}: algo {record['algo']!r} is not a registered algorithm ({', '.join(ALGORITHMS)}).")
    return record


def load_agent_file(path: str | os.PathLike, env: Any = None, *, device: str | th.device = "auto") -> BaseAlgorithm:
    """The model saved by :func:`save_agent_file`, ready to act (its optimisers start afresh).

    :param path: the agent folder, or its ``agent.json`` or ``agent.safetensors``.
    :param env: an environment to attach (its spaces must match the agent's).
    :param device: torch device of the policy.
    :raises FileNotFoundError: no agent file at ``path``.
    :raises ValueError: a damaged file, weights that do not match the settings, or an unknown format.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = agent_folder(path)
    record = read_agent_settings(folder)
    name = folder / AGENT_SETTINGS
    weights = folder / str(record["weights"].get("file", AGENT_WEIGHTS))
    if weights.parent != folder or not weights.is_file():
        raise ValueError(f"{name} names the weights file {weights.name!r}, which is not in {folder}.")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != record["weights"].get("sha256"):
        raise ValueError(
            f"{weights} does not match {name} (its SHA-256 differs from the one recorded): the file is damaged, or "
            "one of the two was replaced without the other."
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{weights} is damaged: {error}.") from error
    try:
        settings = {key: _decode(value, key) for key, value in record["settings"].items()}
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{name} is damaged: {error}") from error
    for key in ("policy_class", "observation_space", "action_space"):
        if key not in settings:
            raise ValueError(f"{name} is damaged: its settings have no {key!r}.")

    cls = get_spec(record["algo"]).cls
    if env is not None:
        settings["n_envs"] = env.num_envs if isinstance(env, VecEnv) else 1
    # The public constructor builds the networks, on an environment that carries the saved spaces
    described = SpacesOnlyVecEnv(
        int(settings.get("n_envs", 1)), settings["observation_space"], settings["action_space"]
    )
    arguments = _constructor_arguments(cls, settings)
    try:
        model = cls(policy=settings["policy_class"], env=described, device=device, **arguments)
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise ValueError(
            f"{name}: the {record['algo']} agent cannot be rebuilt from its settings ({error})."
        ) from error
    # Then every saved attribute, as SB3's own load restores them (counters, schedules as saved)
    vars(model).update(settings)
    model.env = None
    if env is not None:
        model.set_env(env)  # SB3 wraps it and checks its spaces against the agent's
    policy = {k[len(_POLICY) :]: v for k, v in tensors.items() if k.startswith(_POLICY)}
    try:
        model.policy.load_state_dict(policy, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{weights} does not fit the {record['algo']} policy of {name}: {first}") from error
    for key, value in tensors.items():
        if key.startswith(_VARIABLES):
            target = _getattr_path(model, key[len(_VARIABLES) :])
            if not isinstance(target, th.Tensor) or target.shape != value.shape:
                raise ValueError(f"{weights}: {key} does not fit the {record['algo']} agent.")
            with th.no_grad():
                target.copy_(value)
    return model


def _constructor_arguments(cls: type[BaseAlgorithm], settings: dict[str, Any]) -> dict[str, Any]:
    """The saved attributes that ``cls``'s constructor takes by the same name (its public parameters)."""
    parameters = inspect.signature(cls.__init__).parameters
    skip = {"self", "policy", "env", "device"}
    return {key: settings[key] for key in parameters if key in settings and key not in skip and not key.startswith("_")}


def _getattr_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(value: Any, where: str) -> Any:
    """The value :func:`_encode` wrote."""
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("$type")
    if kind is None:
        return {k: _decode(v, f"{where}.{k}") for k, v in value.items()}
    if kind == "float":
        return float(value["value"])
    if kind == "tuple":
        return tuple(_decode(v, where) for v in value["items"])
    if kind == "class":
        module, _, qualname = str(value["name"]).partition(":")
        found = allowed_classes().get((module, qualname))
        if found is None:
            raise ValueError(f"{where} names the class {value['name']!r}, which an agent file may not name.")
        return found
    if kind == "TrainFreq":
        return TrainFreq(int(value["frequency"]), TrainFrequencyUnit(value["unit"]))
    if kind == "Box":
        shape = tuple(int(n) for n in value["shape"])
        dtype = np.dtype(value["dtype"])
        low, high = (
            np.broadcast_to(np.asarray(_decode(value[k], where), dtype=np.float64).reshape(-1), (math.prod(shape),))
            .reshape(shape)
            .astype(dtype)
            for k in ("low", "high")
        )
        return spaces.Box(low, high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(value["n"]), start=int(value.get("start", 0)))
    if kind == "FloatSchedule":
        return FloatSchedule(_decode(value["value_schedule"], where))
    if kind == "ConstantSchedule":
        return ConstantSchedule(float(_decode(value["val"], where)))
    if kind == "LinearSchedule":
        return LinearSchedule(*(float(_decode(value[k], where)) for k in ("start", "end", "end_fraction")))
    raise ValueError(f"{where} has an unknown $type {kind!r}.")
