"""
Agents for MARA and what is built from them.

- ``agents.sac_discrete``, ``agents.presets``, ``agents.algorithms``: the RL algorithms. They work on any
  Gymnasium environment with a ``Discrete`` action space and never import ``mara_env``.
- ``agents.generation``, ``agents.reward_guided``, ``agents.comparison``, ``agents.cli``: aligned generation,
  the ARGS baseline, evaluation and the ``mara`` command, which use ``mara_env`` (the dependency points one
  way: ``mara_env`` never imports ``agents``).
"""

from importlib import import_module
from typing import Any

__all__ = [
    "ARGSGenerator",
    "DiscreteSAC",
    "Generation",
    "MARAGenerator",
    "NonFiniteLossError",
    "export_authors_actor",
    "import_authors_actor",
    "mara_preset",
]

#: Where each export lives. Loaded on first use, so that ``import agents`` (and DiscreteSAC on any
#: environment) never pulls in ``mara_env``, transformers and the LLM machinery, and so that the
#: ``mara`` command reaches its error boundary (which turns Ctrl-C into one line) before torch loads.
_EXPORTS = {
    "ARGSGenerator": "agents.reward_guided",
    "DiscreteSAC": "agents.sac_discrete",
    "Generation": "agents.generation",
    "MARAGenerator": "agents.generation",
    "NonFiniteLossError": "agents.sac_discrete",
    "export_authors_actor": "agents.authors_format",
    "import_authors_actor": "agents.authors_format",
    "mara_preset": "agents.presets",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
