"""The valid ranges of the algorithms' hyperparameters, checked where a value is given.

A value out of range rarely fails where it is given: ``batch_size=0`` trains on empty batches and
ends in a "non-finite loss" that blames the data, ``gradient_steps=0`` silently never updates.
:func:`range_problem` says what a value should have been; the registry
(:func:`agents.registry.check_overrides`, for config files, flags and :func:`~agents.registry.make_algorithm`)
and :class:`~agents.sac_discrete.DiscreteSAC`'s constructor (for direct use) both ask it.

Example::

    >>> range_problem("batch_size", 0)
    'an integer >= 1 (transitions per gradient step)'
    >>> range_problem("batch_size", 256) is None
    True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _train_freq(value: Any) -> bool:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        frequency, unit = value
        return _integer(frequency) and frequency >= 1 and str(getattr(unit, "value", unit)) in ("step", "episode")
    return _integer(value) and value >= 1


def _positive_or_schedule(value: Any) -> bool:
    return callable(value) or (_number(value) and value > 0)


def _unit(value: Any) -> bool:
    return _number(value) and 0.0 <= value <= 1.0


#: Hyperparameter -> (whether a value is valid, what a valid value is). Names not listed are not checked here.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (_positive_or_schedule, "a finite number > 0 or a schedule"),
    "buffer_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (replay buffer transitions)"),
    "learning_starts": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (transitions before the first update)"),
    "batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (transitions per gradient step)"),
    "tau": (_unit, "a number in [0, 1] (0 freezes the target critics, 1 copies the critics)"),
    "gamma": (_unit, "a number in [0, 1]"),
    "train_freq": (_train_freq, 'an integer frequency >= 1, or [frequency >= 1, "step" | "episode"]'),
    "gradient_steps": (lambda v: _integer(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 (one per transition)"),
    "n_steps": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "n_epochs": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "gae_lambda": (_unit, "a number in [0, 1]"),
    "clip_range": (_positive_or_schedule, "a finite number > 0 or a schedule"),
    "clip_range_vf": (lambda v: v is None or _positive_or_schedule(v), "none, a finite number > 0 or a schedule"),
    "vf_coef": (lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    "max_grad_norm": (lambda v: v is None or (_number(v) and v > 0), "none or a finite number > 0"),
    "target_kl": (lambda v: v is None or (_number(v) and v > 0), "none or a finite number > 0"),
    "target_update_interval": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "exploration_fraction": (_unit, "a number in [0, 1]"),
    "exploration_initial_eps": (_unit, "a number in [0, 1]"),
    "exploration_final_eps": (_unit, "a number in [0, 1]"),
    "critic_warmup_steps": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "stats_window_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "rms_prop_eps": (lambda v: _number(v) and v > 0, "a finite number > 0"),
}


def range_problem(name: str, value: Any) -> str | None:
    """What ``value`` should have been for hyperparameter ``name``; ``None`` if it is valid or not checked.

    Numbers given as strings (``ent_coef="auto"``) and settings without a listed range are left to the algorithm.
    """
    if name not in RANGES:
        return None
    valid, description = RANGES[name]
    return None if valid(value) else description


def check_ranges(owner: str, values: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first of ``values`` out of its range.

    :param owner: who the values are for, e.g. ``"DiscreteSAC"``, shown first in the message.
    :param values: hyperparameter name -> value.
    """
    for name, value in values.items():
        expected = range_problem(name, value)
        if expected is not None:
            raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}.")
