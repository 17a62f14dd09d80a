"""
Agents for MARA and what is built from them.

- ``agents.sac_discrete``, ``agents.presets``, ``agents.algorithms``: the RL algorithms. They work on any
  Gymnasium environment with a ``Discrete`` action space and never import ``mara_env``.
- ``agents.generation``, ``agents.comparison``, ``agents.cli``: aligned generation, evaluation and the
  ``mara`` command, which use ``mara_env`` (the dependency points one way: ``mara_env`` never imports ``agents``).
"""

from agents.authors_format import export_authors_actor, import_authors_actor
from agents.generation import Generation, MARAGenerator
from agents.presets import mara_preset
from agents.sac_discrete import DiscreteSAC, NonFiniteLossError

__all__ = [
    "DiscreteSAC",
    "Generation",
    "MARAGenerator",
    "NonFiniteLossError",
    "export_authors_actor",
    "import_authors_actor",
    "mara_preset",
]
