"""Reading saved agents: SB3 zips of any registered algorithm, safely, and actors in the authors' layout.

:func:`load_algorithm` loads a ``model.save()`` zip of any algorithm of :data:`agents.registry.ALGORITHMS`,
detecting which (:func:`detect_algorithm`), without running pickled code: SB3 keeps non-JSON attributes
as cloudpickle, which this module reads with an unpickler that only builds known data types.
:func:`load_authors_actor` builds an actor from the MARA authors' released state dict
(:mod:`agents.authors_format`), and :func:`load_agent` picks between the two by file suffix.

Zips saved by earlier versions keep loading: their pickled policy classes are resolved by module path,
and :data:`MOVED_MODULES` maps any path that has since moved to where the class lives now. Example::

    >>> from pathlib import Path
    >>> saved = Path("tests/fixtures/ppo-v1-tiny.zip")        # a PPO agent saved before agents/ was reorganised
    >>> detect_algorithm(read_saved_data(saved))
    'ppo'
    >>> type(load_algorithm(saved, device="cpu").policy).__name__
    'AnchoredActorCriticPolicy'

Like the registry, this module never imports ``mara_env``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import FlattenExtractor

from agents.authors_format import import_authors_actor, load_weights, weights_error
from agents.registry import ALGORITHMS, get_spec
from agents.sac_discrete.policies import DiscreteActor

__all__ = [
    "AUTHORS_SUFFIXES",
    "MOVED_MODULES",
    "detect_algorithm",
    "load_agent",
    "load_algorithm",
    "load_authors_actor",
    "read_saved_data",
]

#: File suffixes read as an actor in the authors' state-dict layout.
AUTHORS_SUFFIXES = (".pt", ".pth", ".bin")

#: Module paths that pickled classes of earlier saves name -> where those classes live now. The policy
#: classes of every release so far kept their module (``agents.sac_discrete.policies``,
#: ``agents.reference_anchor``, SB3's own); a class that moves gets its old path recorded here, so that
#: saved runs keep loading (``tests/test_saved_agents.py`` loads zips saved before issue 12's move).
MOVED_MODULES: Mapping[str, str] = {}


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
        module = MOVED_MODULES.get(module, module)
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
    module = MOVED_MODULES.get(module, module)
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


def load_authors_actor(path: str | os.PathLike) -> DiscreteActor:
    """Build an actor from a checkpoint in the authors' layout (``ln``, ``linear1``, ``linear2``, ``output_linear``).

    The layer sizes are read from the file; it is loaded with ``weights_only=True``.
    """
    state = load_weights(path)
    needed = ("ln.weight", "linear1.weight", "linear2.weight", "output_linear.weight")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), th.Tensor) for k in needed):
        raise ValueError(
            f"'{os.fspath(path)}' is not an agent checkpoint: expected an SB3 .zip save or an actor state dict in "
            f"the authors' layout with keys {list(needed)}."
        )
    hidden = int(state["ln.weight"].shape[0])
    net_arch = [int(state["linear1.weight"].shape[0]), int(state["linear2.weight"].shape[0])]
    obs_space = spaces.Box(-np.inf, np.inf, shape=(hidden,), dtype=np.float32)
    actor = DiscreteActor(
        obs_space,
        spaces.Discrete(int(state["output_linear.weight"].shape[0])),
        net_arch=net_arch,
        features_extractor=FlattenExtractor(obs_space),
        features_dim=hidden,
        input_layer_norm=True,
    )
    import_authors_actor(actor, state)
    return actor


def load_agent(path: str | os.PathLike, device: str | th.device = "auto") -> BaseAlgorithm | DiscreteActor:
    """The agent in a file: an actor in the authors' layout (:data:`AUTHORS_SUFFIXES`), else a saved SB3 zip.

    :param path: the file.
    :param device: torch device of a loaded SB3 model (an authors' actor loads on the CPU).
    :raises FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"agent checkpoint '{path}' does not exist.")
    if path.suffix.lower() in AUTHORS_SUFFIXES:
        return load_authors_actor(path)
    return load_algorithm(path, device=device)
