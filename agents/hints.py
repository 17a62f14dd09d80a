"""The "did you mean" hint of every error in ``agents`` that refuses an unknown name.

``mara_env`` has its own (:mod:`mara_env.hints`): ``mara_env`` never imports ``agents``, and the algorithm
modules use nothing of ``mara_env`` but its agent contract, so each package keeps this one function.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str], otherwise: str = "", *, prefix: bool = False) -> str:
    """``" Did you mean 'x'?"`` for the best guess among ``choices``, else ``otherwise``.

    :param value: the unknown name.
    :param choices: the valid names.
    :param otherwise: returned when nothing is close.
    :param prefix: prefer a choice that starts with ``value`` (``"sac"`` -> ``"sac-discrete"``) over the
        closest spelling.

    >>> did_you_mean("learning_rat", ["batch_size", "learning_rate"])
    " Did you mean 'learning_rate'?"
    >>> did_you_mean("sac", ["ppo", "sac-discrete"], prefix=True)
    " Did you mean 'sac-discrete'?"
    >>> did_you_mean("zzz", ["ppo"], " Valid: ppo.")
    ' Valid: ppo.'
    """
    names = list(choices)
    close = [n for n in names if n.startswith(str(value))] if prefix else []
    close = close or difflib.get_close_matches(str(value), names, n=1)
    return f" Did you mean {close[0]!r}?" if close else otherwise
