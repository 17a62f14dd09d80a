"""Reading the pickles inside a saved agent without running code: an exact allow-list, checked at each calling opcode.

Stable-Baselines3's ``model.save()`` keeps the attributes JSON cannot hold (spaces, schedules, arrays,
classes) as pickles, and a pickle is a small program: loading one the usual way can call any function
it names. This module reads them with Python's own unpickler (the pure-Python one, whose opcodes can be
replaced) under these rules:

=========================================  =====================================================================
opcode                                     rule
=========================================  =====================================================================
``GLOBAL``, ``STACK_GLOBAL``, ``INST``,    the ``(module, name)`` pair must be one of :func:`allowed_pairs`, exactly. A
``EXT1/2/4`` (look a name up)              dotted name (protocol 4 walks ``a.b.c`` attribute by attribute, so
                                           ``numpy.dtypes`` + ``__loader__.__class__.set_data`` reaches importlib's
                                           file writer) or a dunder name is refused before any import
``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``,     the callable must be one of the pairs marked *call* (data types and
``INST``, ``OBJ`` (call)                   their reconstructors, some wrapped to check their arguments); a class
                                           that is only *named* (a policy class stored as a setting) is never called
``BUILD`` (set an object's state)          only on instances of the data types of the allow-list
``APPEND(S)``, ``SETITEM(S)``,             only on lists, dicts, sets and deques
``ADDITEMS`` (call the target's methods)
``PERSID``, ``BINPERSID``                  refused
=========================================  =====================================================================

Every other opcode builds plain data (numbers, strings, bytes, tuples, lists, dicts). A refusal raises
:class:`UnsafePickleError` naming what was refused. Example::

    >>> import pickle
    >>> safe_loads(pickle.dumps({"shape": (2, 3), "dtype": "float32"}))
    {'shape': (2, 3), 'dtype': 'float32'}
    >>> safe_loads(pickle.dumps(eval))
    Traceback (most recent call last):
    ...
    agents.safe_unpickler.UnsafePickleError: a reference to builtins.eval, which is not one of the data types ...

Like the registry, this module loads none of ``mara_env``'s LLM machinery.
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import io
import pickle
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar

import numpy as np

__all__ = ["UnsafePickleError", "allowed_classes", "allowed_pairs", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asks for something outside the allow-list: loading it the usual way could run code."""


def _numpy_core(module: str) -> list[str]:
    """``module`` under numpy 2's ``numpy._core`` and numpy 1's ``numpy.core`` (saves of both exist)."""
    return [f"numpy._core.{module}", f"numpy.core.{module}"]


# ---------------------------------------------------------------------------------------------------------
# Wrapped reconstructors: the real function, called only with the arguments a real save gives it


def _bit_generator_classes() -> dict[str, type]:
    from numpy.random import MT19937, PCG64, PCG64DXSM, SFC64, Philox

    return {cls.__name__: cls for cls in (MT19937, PCG64, PCG64DXSM, Philox, SFC64)}


def _bit_generator(spec: Any) -> Any:
    """numpy's ``__bit_generator_ctor``, for a bit generator named or given by its class only."""
    classes = _bit_generator_classes()
    cls = classes.get(spec) if isinstance(spec, str) else spec if spec in classes.values() else None
    if cls is None:
        raise UnsafePickleError(f"a random generator of kind {spec!r}, which is not one of numpy's bit generators")
    return cls()


def _random_generator(bit_generator: Any = "MT19937", bit_generator_ctor: Any = None) -> np.random.Generator:
    """numpy's ``__generator_ctor`` without its ``bit_generator_ctor``, a callable the pickle would choose."""
    from numpy.random.bit_generator import BitGenerator

    if isinstance(bit_generator, BitGenerator):
        return np.random.Generator(bit_generator)
    return np.random.Generator(_bit_generator(bit_generator))


def _random_state(bit_generator: Any = "MT19937", bit_generator_ctor: Any = None) -> np.random.RandomState:
    """numpy's ``__randomstate_ctor``, likewise."""
    from numpy.random.bit_generator import BitGenerator

    if isinstance(bit_generator, BitGenerator):
        return np.random.RandomState(bit_generator)
    return np.random.RandomState(_bit_generator(bit_generator))


def _seed_sequence(cls: Any, checksum: Any, state: Any) -> Any:
    """Cython's ``__pyx_unpickle_SeedSequence``, for the class ``SeedSequence`` itself."""
    from numpy.random import bit_generator

    if cls is not bit_generator.SeedSequence:
        raise UnsafePickleError(f"a SeedSequence of class {cls!r}")
    return bit_generator.__pyx_unpickle_SeedSequence(cls, checksum, state)


def _ndarray_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, for plain arrays only (what ``ndarray.__reduce__`` gives)."""
    from numpy._core.multiarray import _reconstruct

    if cls is not np.ndarray:
        raise UnsafePickleError(f"an array of class {cls!r}")
    return _reconstruct(cls, shape, dtype)


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for ``bytes``; no other codec is looked up."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"a codec call _codecs.encode(..., {encoding!r}) other than latin-1 bytes")
    return text.encode("latin-1")


def _bytearray(value: Any = b"", encoding: str | None = None) -> bytearray:
    """``bytearray`` as protocols 2-4 pickle one: from bytes or a latin-1 string, never ``bytearray(size)``."""
    if isinstance(value, (bytes, bytearray)) and encoding is None:
        return bytearray(value)
    if isinstance(value, str) and encoding in ("latin1", "latin-1"):
        return bytearray(value, encoding)
    raise UnsafePickleError("a bytearray built from anything but bytes")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0-1) for an allowed data type on ``object`` or ``tuple``."""
    if id(cls) not in _callables() or base not in (object, tuple) or not issubclass(cls, base):
        raise UnsafePickleError(f"an object of class {cls!r} on base {base!r}")
    return copyreg._reconstructor(cls, base, state)


# ---------------------------------------------------------------------------------------------------------
# The allow-list


def _data_types() -> dict[tuple[str, str], Any]:
    """Pairs a save may call (``REDUCE``/``NEWOBJ``) and whose instances it may fill (``BUILD``)."""
    import gymnasium.spaces as sp
    from stable_baselines3.common import type_aliases, utils

    calls: dict[tuple[str, str], Any] = {
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "range"): range,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): _bytearray,
        ("collections", "deque"): collections.deque,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("numpy", "dtype"): np.dtype,
        ("numpy.random._pickle", "__generator_ctor"): _random_generator,
        ("numpy.random._pickle", "__bit_generator_ctor"): _bit_generator,
        ("numpy.random._pickle", "__randomstate_ctor"): _random_state,
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): _seed_sequence,
    }
    from numpy._core import multiarray, numeric

    for module in _numpy_core("multiarray"):
        calls[(module, "_reconstruct")] = _ndarray_reconstruct
        calls[(module, "scalar")] = multiarray.scalar
    for module in _numpy_core("numeric"):
        calls[(module, "_frombuffer")] = numeric._frombuffer
    for cls in (
        sp.Box,
        sp.Discrete,
        sp.MultiDiscrete,
        sp.MultiBinary,
        sp.Dict,
        sp.Tuple,
        utils.FloatSchedule,
        utils.ConstantSchedule,
        utils.LinearSchedule,
        type_aliases.TrainFreq,
        type_aliases.TrainFrequencyUnit,
    ):
        calls[(cls.__module__, cls.__qualname__)] = cls
    return calls


def _named_classes() -> dict[tuple[str, str], Any]:
    """Pairs a save may only name: classes stored as settings (the policy, its optimiser, ...), never called."""
    import torch as th
    from stable_baselines3.common import buffers, torch_layers
    from torch import nn

    from agents.registry import ALGORITHMS

    classes: list[Any] = [
        object,
        tuple,  # the base of named tuples in protocols 0-1
        np.ndarray,
        np.random.Generator,
        np.random.bit_generator.SeedSequence,
        *_bit_generator_classes().values(),
        buffers.ReplayBuffer,
        buffers.DictReplayBuffer,
        buffers.RolloutBuffer,
        buffers.DictRolloutBuffer,
        torch_layers.FlattenExtractor,
        torch_layers.NatureCNN,
        torch_layers.CombinedExtractor,
        th.optim.Adam,
        th.optim.AdamW,
        th.optim.RMSprop,
        th.optim.SGD,
        nn.ReLU,
        nn.Tanh,
        nn.ELU,
        nn.LeakyReLU,
        nn.GELU,
        nn.SiLU,
        nn.Sigmoid,
        nn.Softplus,
        nn.Mish,
        nn.Identity,
    ]
    for spec in ALGORITHMS.values():
        classes += [*spec.cls.policy_aliases.values(), spec.anchored_policy]
    return {(cls.__module__, cls.__qualname__): cls for cls in classes if cls is not None}


@cache
def _table() -> dict[tuple[str, str], tuple[Any, bool]]:
    """``(module, name) -> (object, callable)`` for every allowed pair."""
    table = {pair: (obj, False) for pair, obj in _named_classes().items()}
    table.update({pair: (obj, True) for pair, obj in _data_types().items()})
    return table


@cache
def _callables() -> frozenset[int]:
    return frozenset(id(obj) for obj, call in _table().values() if call)


@cache
def _buildable() -> tuple[type, ...]:
    """Types whose instances ``BUILD`` may fill: the data types of the allow-list, arrays, dtypes, generators."""
    from numpy.random.bit_generator import BitGenerator, SeedSequence

    types = [obj for obj, call in _table().values() if call and isinstance(obj, type)]
    return (*types, np.ndarray, np.dtype, np.generic, np.random.Generator, BitGenerator, SeedSequence)


def allowed_classes() -> Mapping[tuple[str, str], type]:
    """Every class of the allow-list by ``(module, qualified name)``: what a saved agent may name.

    :mod:`agents.agent_file` resolves the class names of its JSON settings through this same table.
    """
    return {pair: obj for pair, (obj, _) in _table().items() if isinstance(obj, type)}


def allowed_pairs() -> frozenset[tuple[str, str]]:
    """Every allowed ``(module, name)`` pair, exactly as a pickle must spell it."""
    return frozenset(_table())


# ---------------------------------------------------------------------------------------------------------
# The unpickler


def _refuse(what: str) -> UnsafePickleError:
    return UnsafePickleError(f"{what}, which is not one of the data types an agent file holds")


def _name_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


class _SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """Python's pure-Python unpickler with the opcodes that call code checked against the allow-list."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, moved_modules: Mapping[str, str]) -> None:
        super().__init__(io.BytesIO(data))
        self.moved_modules = moved_modules

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise _refuse(f"a global named by {type(module).__name__}/{type(name).__name__}")
        if self.proto < 3:  # Python 2's names (copy_reg, __builtin__), as the standard unpickler maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = self.moved_modules.get(module, module)
        if "." in name or (name.startswith("__") and name.endswith("__")):
            raise _refuse(f"a reference to {module}.{name} (a dotted or dunder name reaches other objects)")
        found = _table().get((module, name))
        if found is None:
            raise _refuse(f"a reference to {module}.{name}")
        return found[0]

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("a persistent id")

    def _check_call(self, func: Any) -> None:
        if id(func) not in _callables():
            raise _refuse(f"a call of {_name_of(func)}")

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST, OBJ
        self._check_call(klass)
        super()._instantiate(klass, args)

    def load_reduce(self) -> None:
        self._check_call(self.stack[-2])
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]

    def load_newobj(self) -> None:
        self._check_call(self.stack[-2])
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def load_newobj_ex(self) -> None:
        self._check_call(self.stack[-3])
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]

    def load_build(self) -> None:
        target = self.stack[-2]
        if not isinstance(target, _buildable()):
            raise _refuse(f"setting the state of a {_name_of(type(target))}")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    def load_append(self) -> None:
        target = self.stack[-2]
        if type(target) not in (list, collections.deque):
            raise _refuse(f"APPEND on a {_name_of(type(target))}")
        target.append(self.stack.pop())

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) not in (list, collections.deque):
            raise _refuse(f"APPENDS on a {_name_of(type(target))}")
        target.extend(items)

    def load_setitem(self) -> None:
        if type(self.stack[-3]) not in (dict, collections.OrderedDict):
            raise _refuse(f"SETITEM on a {_name_of(type(self.stack[-3]))}")
        pickle._Unpickler.load_setitem(self)  # type: ignore[attr-defined]

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) not in (dict, collections.OrderedDict):
            raise _refuse(f"SETITEMS on a {_name_of(type(target))}")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _refuse(f"ADDITEMS on a {_name_of(type(target))}")
        target.update(items)


for _opcode, _method in (
    (pickle.REDUCE, "load_reduce"),
    (pickle.APPEND, "load_append"),
    (pickle.NEWOBJ, "load_newobj"),
    (pickle.NEWOBJ_EX, "load_newobj_ex"),
    (pickle.BUILD, "load_build"),
    (pickle.APPENDS, "load_appends"),
    (pickle.SETITEM, "load_setitem"),
    (pickle.SETITEMS, "load_setitems"),
    (pickle.ADDITEMS, "load_additems"),
):
    _SafeUnpickler.dispatch[_opcode[0]] = getattr(_SafeUnpickler, _method)


def safe_loads(data: bytes, moved_modules: Mapping[str, str] | None = None) -> Any:
    """The object pickled in ``data``, built under the allow-list's rules (see the module's table).

    :param data: a pickle of any protocol (0-5).
    :param moved_modules: module paths of earlier saves -> where their classes live now.
    :raises UnsafePickleError: the pickle names, calls or fills something outside the allow-list.
    :raises pickle.UnpicklingError, EOFError, ValueError: the pickle is damaged.
    """
    return _SafeUnpickler(data, moved_modules or {}).load()
