"""
Agents for MARA and what is built from them.

- ``agents.sac_discrete``, ``agents.presets``, ``agents.algorithms``: the RL algorithms. They work on any
  Gymnasium environment with a ``Discrete`` action space and never import ``mara_env``.
- ``agents.generation``, ``agents.reward_guided``, ``agents.comparison``, ``agents.cli``: aligned generation,
  the ARGS baseline, evaluation and the ``mara`` command, which use ``mara_env`` (the dependency points one
  way: ``mara_env`` never imports ``agents``).
"""

from typing import Any

from agents.authors_format import export_authors_actor, import_authors_actor
from agents.presets import mara_preset
from agents.sac_discrete import DiscreteSAC, NonFiniteLossError

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


def __getattr__(name: str) -> Any:
    # Loaded on first use so that ``import agents`` (and DiscreteSAC on any environment) never pulls in
    # ``mara_env``, transformers and the LLM machinery.
    if name in ("Generation", "MARAGenerator"):
        from agents import generation

        return getattr(generation, name)
    if name == "ARGSGenerator":
        from agents import reward_guided

        return reward_guided.ARGSGenerator
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
