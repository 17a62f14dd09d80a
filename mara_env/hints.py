"""The "did you mean" hint of every error that refuses an unknown name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str], otherwise: str = "") -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices`` to ``value``, else ``otherwise``.

    >>> did_you_mean("potentail", ("none", "potential"))
    " Did you mean 'potential'?"
    """
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else otherwise
