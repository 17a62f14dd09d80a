"""Reading saved agents without running code from the file: agent files, SB3 zips, actors in the authors' layout.

:func:`load_algorithm` loads a ``model.save()`` zip of any algorithm of :data:`agents.registry.ALGORITHMS`,
detecting which (:func:`detect_algorithm`): SB3 keeps non-JSON attributes as pickles, which this module
reads with :func:`agents.safe_unpickler.safe_loads` (an exact allow-list of data types), after checking
that no entry of the zip inflates beyond what an agent takes. It also reads agent files
(:mod:`agents.agent_file`: safetensors weights plus JSON settings, no pickle at all).
:func:`load_authors_actor` builds an actor from the MARA authors' released state dict
(:mod:`agents.authors_format`), and :func:`load_agent` picks among the three by path.

Zips saved by earlier versions keep loading: their pickled policy classes are resolved by module path,
and :data:`MOVED_MODULES` maps any path that has since moved to where the class lives now. Example::

    >>> from pathlib import Path
    >>> saved = Path("tests/fixtures/ppo-v1-tiny.zip")        # a PPO agent saved before agents/ was reorganised
    >>> detect_algorithm(read_saved_data(saved))
    'ppo'
    >>> type(load_algorithm(saved, device="cpu").policy).__name__
    'AnchoredActorCriticPolicy'

Like the registry, this module loads none of ``mara_env``'s LLM machinery.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import FlattenExtractor

from agents.agent_file import AGENT_SETTINGS, is_agent_file, load_agent_file
from agents.authors_format import AUTHORS_SUFFIXES, UnsafeFileError, import_authors_actor, load_weights, weights_error
from agents.hub import hub_agent_path
from agents.registry import ALGORITHMS, get_spec
from agents.sac_discrete.policies import DiscreteActor
from agents.safe_unpickler import UnsafePickleError, safe_loads

__all__ = [
    "MOVED_MODULES",
    "detect_algorithm",
    "load_agent",
    "load_algorithm",
    "load_authors_actor",
    "read_saved_data",
]

#: Module paths that pickled classes of earlier saves name -> where those classes live now. The policy
#: classes of every release so far kept their module (``agents.sac_discrete.policies``,
#: ``agents.reference_anchor``, SB3's own); a class that moves gets its old path recorded here, so that
#: saved runs keep loading (``tests/test_saved_agents.py`` loads zips saved before issue 12's move).
MOVED_MODULES: Mapping[str, str] = {}


#: The largest uncompressed entries of a saved zip that are read: its ``data`` JSON and each weights
#: file. A save of an agent for an 8B model's 4096-wide hidden state is ~100 MB; beyond these a zip
#: is damaged or hostile (a small zip can declare gigabytes), and it is refused before anything is read.
MAX_DATA_BYTES = 64 << 20
MAX_ENTRY_BYTES = 4 << 30


def _check_archive(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse a zip whose entries could not be an SB3 save's: too large once inflated, or encrypted."""
    for info in archive.infolist():
        limit = MAX_DATA_BYTES if info.filename == "data" else MAX_ENTRY_BYTES
        if info.file_size > limit:
            raise ValueError(
                f"{path} is not an agent checkpoint: its entry {info.filename!r} inflates to {info.file_size:,} "
                f"bytes, more than the {limit:,} an agent's {'settings' if limit == MAX_DATA_BYTES else 'weights'} "
                "take (the file is damaged or was made to exhaust memory)."
            )
        if info.flag_bits & 0x1:
            raise ValueError(f"{path} is not an agent checkpoint: its entry {info.filename!r} is encrypted.")


def read_saved_data(path: str | Path) -> dict[str, Any]:
    """The ``data`` JSON of an SB3 zip, as stored (pickled items still base64 text).

    :param path: the zip (``.zip`` may be left off, as with SB3's ``load``).
    :raises FileNotFoundError: no such file.
    :raises ValueError: not a zip, or a zip that is not an SB3 save.
    """
    path = _zip_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_archive(archive, path)
            if "data" not in archive.namelist():
                raise ValueError(
                    f"{path} is not an agent checkpoint: the zip has no 'data' entry (files saved with "
                    "model.save() by stable-baselines3 or agents.DiscreteSAC have one)."
                )
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ValueError(
            f"{path} is not an agent checkpoint: not a zip file, or a damaged one (expected a model.save() zip; {exc})."
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
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
    """Load an agent saved with ``model.save`` by any registered algorithm, or an agent file.

    Pickled attributes are read by :func:`agents.safe_unpickler.safe_loads`, which builds only the
    data types of its exact allow-list (spaces, schedules, arrays) and names only known classes;
    weights are read with ``torch.load(weights_only=True)``. An agent file (:mod:`agents.agent_file`)
    holds no pickle at all.

    :param path: the zip (``.zip`` may be left off), an agent folder (or its ``agent.safetensors``), or a
        folder holding ``model.zip``.
    :param env: environment to attach (needed to continue training); its spaces must match.
    :param algo: registry name; ``None`` detects it from the file.
    :param device: torch device of the loaded policy.
    :raises FileNotFoundError: no such file.
    :raises ValueError: not an agent checkpoint, an unknown algorithm, or an unsafe pickled object.
    """
    if (Path(path).is_dir() and is_agent_file(path)) or Path(path).suffix == ".safetensors":
        model = load_agent_file(path, env, device=device)
        if algo is not None and type(model) is not get_spec(algo).cls:
            raise ValueError(f"{path} holds a {type(model).__name__} agent, not {algo}: pass algo=None.")
        return model
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
                raw = base64.b64decode(value[":serialized:"], validate=True)
                custom_objects[key] = safe_loads(raw, MOVED_MODULES)
            except UnsafePickleError as exc:
                raise UnsafeFileError(
                    f"refusing to load {zip_path}: its attribute {key!r} holds {exc} (loading it could run code). "
                    "Use only agent files from sources you trust."
                ) from exc
            except Exception as exc:  # truncated or corrupt base64/pickle, or a data type misused
                raise ValueError(
                    f"{zip_path} is not an agent checkpoint: attribute {key!r} is corrupt "
                    f"({type(exc).__name__}: {str(exc)[:200]})."
                ) from exc
    try:
        return get_spec(name).cls.load(zip_path, env=env, device=device, custom_objects=custom_objects)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        # The .pth entries, read by SB3 with weights_only=True; a torch stream error means a damaged entry
        if isinstance(exc, RuntimeError) and "PytorchStreamReader" not in str(exc):
            raise ValueError(f"{zip_path} could not be loaded as a {name} agent: {exc}") from exc
        raise weights_error(str(zip_path), exc, what="its weights") from exc
    except (KeyError, TypeError, AssertionError, AttributeError, zipfile.BadZipFile, zlib.error) as exc:
        # settings that do not fit the algorithm: a damaged or hand-made file
        raise ValueError(f"{zip_path} could not be loaded as a {name} agent: {type(exc).__name__}: {exc}") from exc


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
    """The agent at ``path``, read without running code from the file.

    - an agent file (:mod:`agents.agent_file`: a folder with ``agent.json`` + ``agent.safetensors``, or
      either of the two files);
    - an actor in the authors' layout (:data:`~agents.authors_format.AUTHORS_SUFFIXES`, ``weights_only=True``);
    - a saved SB3 zip (:func:`load_algorithm`), or a folder holding ``model.zip``;
    - ``hf:ID[@REVISION][:FILE]``: an agent file or an authors' actor on the Hugging Face Hub, downloaded
      (:func:`agents.hub.hub_agent_path`; a zip is never fetched from the Hub).

    :param path: the file or folder, or an ``hf:`` reference.
    :param device: torch device of a loaded SB3 model (an authors' actor loads on the CPU).
    :raises FileNotFoundError: no such file, or a folder without an agent.
    """
    if isinstance(path, str) and path.startswith("hf:"):
        path = hub_agent_path(path)
    path = Path(path)
    if path.is_dir():
        if is_agent_file(path):
            return load_agent_file(path, device=device)
        if (path / "model.zip").is_file():
            return load_algorithm(path / "model.zip", device=device)
        raise FileNotFoundError(
            f"the agent path {path} is a folder holding no agent (no {AGENT_SETTINGS}, no model.zip). Pass an agent "
            "file (model.zip, an agent folder, a .pt actor); a training run folder goes to --run."
        )
    if not path.is_file():
        raise FileNotFoundError(f"agent checkpoint '{path}' does not exist.")
    if path.suffix.lower() in AUTHORS_SUFFIXES:
        return load_authors_actor(path)
    if path.suffix.lower() == ".safetensors" or path.name == AGENT_SETTINGS:
        return load_agent_file(path, device=device)
    return load_algorithm(path, device=device)
