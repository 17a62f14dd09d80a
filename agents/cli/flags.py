"""How ``mara`` flags show their type and default: one vocabulary for every command's ``--help``.

Every flag that takes a value names its type as its metavar (``--top-k INT``, ``--prompts YAML``) or
lists its choices, and ends its help with ``(default: ...)``; ``tests/test_cli_help.py`` parses each
command's help to hold this. The metavars:

- ``INT``, ``FLOAT``, ``TEXT``: read as such (``|none``: ``none`` too);
- ``PATH``, ``FILE``, ``DIR``: a path; ``ID``: a Hugging Face Hub repository id;
- ``YAML``: read as YAML, so ``1e-3``, ``none``, ``true``, ``[64, 64]`` and ``{net_arch: [256]}`` all work.

Example::

    >>> metavar("int | None")
    'INT|none'
    >>> with_default("candidates per position.", 50)
    'candidates per position. (default: 50)'
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["METAVARS", "docstring_params", "metavar", "show_default", "with_default"]

#: Annotation word -> metavar word.
_WORDS = {"int": "INT", "float": "FLOAT", "str": "TEXT", "bool": "BOOL", "Any": "YAML", "None": "none"}

#: Every metavar a value-taking flag may have (a ``|``-joined combination of these counts too).
METAVARS = frozenset({"INT", "FLOAT", "TEXT", "BOOL", "YAML", "PATH", "FILE", "DIR", "ID", "N", "none"})


def metavar(annotation: str) -> str:
    """The metavar of a dataclass field annotated ``annotation`` (e.g. ``"int | None"`` -> ``"INT|none"``)."""
    parts = [part.strip() for part in annotation.split("|")]
    words = [_WORDS.get(part, "YAML") for part in parts]
    if "YAML" in words:  # YAML already reads numbers, text and none
        return "YAML"
    return "|".join(sorted(words, key=lambda w: w == "none"))


def show_default(value: Any) -> str:
    """A default as a user would type it: ``none``, ``true``, numbers as printed, lists in YAML flow style."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_default(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_default(v) for v in value) + "]"
    return str(value)


def with_default(help_text: str | None, default: Any, *, shown: str | None = None) -> str:
    """``help_text`` followed by ``(default: ...)``, ``%`` escaped for argparse.

    :param default: the default value (shown with :func:`show_default`).
    :param shown: what to show instead of the value (e.g. ``"the run's"``).
    """
    text = (help_text or "").strip().replace("%", "%%")
    return f"{text} (default: {shown if shown is not None else show_default(default).replace('%', '%%')})".strip()


def docstring_params(cls: type) -> dict[str, str]:
    """The first sentence of each ``:param name: text`` of a class's docstring (SB3 documents its
    hyperparameters so), whitespace collapsed."""
    found: dict[str, str] = {}
    doc = cls.__doc__ or ""
    for name, text in re.findall(r":param (\w+):(.*?)(?=\n\s*:\w|\Z)", doc, flags=re.S):
        sentence = " ".join(text.split())
        sentence = re.split(r"(?<!e\.g)(?<!i\.e)(?<=[a-z0-9)])\. ", sentence)[0].rstrip(".")
        found[name] = sentence
    return found
