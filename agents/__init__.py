"""Agents for MARA and what is built from them, one concept per module.

- The algorithms (``agents.sac_discrete`` with its policies, ``agents.reference_anchor``,
  ``agents.presets``, ``agents.hyperparameters``, ``agents.registry``, ``agents.safe_unpickler``,
  ``agents.agent_file``, ``agents.loading``,
  ``agents.accept``): they work on any Gymnasium environment with a ``Discrete`` action space; of
  ``mara_env`` they know only the :class:`~mara_env.contract.AgentContract` a MARA environment publishes
  (``mara_env.contract``, without the LLM machinery; ``tests/test_layering.py``).
- The application on top, which uses ``mara_env``: ``agents.generation`` (aligned generation),
  ``agents.reward_guided`` (the ARGS baseline), ``agents.evaluation`` (statistics, results, figures,
  report, the evaluation pipeline), ``agents.training`` (run config, callbacks, checkpoints, the runner)
  and ``agents.cli`` (the ``mara`` command: argument parsing and printing). The dependency points one
  way: ``mara_env`` never imports ``agents``.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    #: The installed distribution's version (``pyproject.toml`` is the one place it is written).
    __version__ = version("mara-rl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ARGSGenerator",
    "DiscreteSAC",
    "Generation",
    "MARAGenerator",
    "NonFiniteLossError",
    "export_authors_actor",
    "import_authors_actor",
    "load_agent_file",
    "mara_preset",
    "save_agent_file",
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
    "load_agent_file": "agents.agent_file",
    "mara_preset": "agents.presets",
    "save_agent_file": "agents.agent_file",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
