"""The import path of the registry, safe loading and accept probabilities before they had a module each.

Kept so that code written against it (``from agents.algorithms import make_algorithm, load_algorithm``)
keeps working; new code imports from the modules named below. Like them, it never imports ``mara_env``.

- :mod:`agents.registry`: :data:`ALGORITHMS`, :func:`make_algorithm`, :func:`resolve_kwargs`, ...
- :mod:`agents.loading`: :func:`load_algorithm`, :func:`read_saved_data`, :func:`detect_algorithm`
- :mod:`agents.accept`: :func:`accept_probabilities`
"""

from agents.accept import accept_probabilities
from agents.loading import detect_algorithm, load_algorithm, read_saved_data
from agents.registry import (
    ALGORITHMS,
    KL_COEF,
    NON_HYPERPARAMETERS,
    REFERENCE_LOGITS,
    SHAPING_GAMMA,
    AlgorithmSpec,
    check_overrides,
    env_kl_coef,
    env_observation_layout,
    env_shaping_gamma,
    get_spec,
    make_algorithm,
    resolve_kwargs,
)

__all__ = [
    "ALGORITHMS",
    "KL_COEF",
    "NON_HYPERPARAMETERS",
    "REFERENCE_LOGITS",
    "SHAPING_GAMMA",
    "AlgorithmSpec",
    "accept_probabilities",
    "check_overrides",
    "detect_algorithm",
    "env_kl_coef",
    "env_observation_layout",
    "env_shaping_gamma",
    "get_spec",
    "load_algorithm",
    "make_algorithm",
    "read_saved_data",
    "resolve_kwargs",
]
