"""Files that are never left half-written, and the JSON they hold.

Every result, report, config and summary the package writes goes through :func:`write_text_atomic`
(or :func:`copy_atomic`): written beside its destination, flushed, then renamed over it. A kill at any
moment leaves either the old file or the new one, never a mix. :func:`jsonable` turns numbers, arrays,
paths and containers into JSON's types (non-finite numbers become ``None``: JSON has no NaN).

>>> import numpy as np
>>> jsonable({"n": np.int64(3), "x": [np.float32(0.5), float("nan")], "shape": (2, 1)})
{'n': 3, 'x': [0.5, None], 'shape': [2, 1]}
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["copy_atomic", "finite_or_none", "jsonable", "write_json_atomic", "write_text_atomic"]


def finite_or_none(value: Any) -> float | None:
    """A float for JSON: non-finite values become ``None``."""
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value: Any, default: Callable[[Any], Any] = str) -> Any:
    """``value`` as JSON data: numpy scalars and arrays, tuples and sets as numbers and lists; NaN/inf -> ``None``.

    :param value: any value.
    :param default: what any other object becomes (default ``str``).
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, default) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), default)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, default) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if value is None or isinstance(value, str):
        return value
    return default(value)


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``<path>.tmp`` and a rename."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any, default: Callable[[Any], Any] = str) -> None:
    """Write ``jsonable(data, default)`` as indented JSON (one trailing newline), atomically."""
    write_text_atomic(path, json.dumps(jsonable(data, default), indent=2, ensure_ascii=False) + "\n")


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy ``source`` to ``path`` through ``<path>.tmp`` and a rename."""
    path = Path(path)
    tmp = _temporary(path)
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)
