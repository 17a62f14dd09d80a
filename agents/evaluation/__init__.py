"""Evaluation: aligned systems compared the way the MARA paper does (section 4.1, appendix A.2).

- :mod:`agents.evaluation.statistics`: win / tie / lose, the preference rate and its prompt-cluster
  bootstrap interval, mean differences, accepted-position counts;
- :mod:`agents.evaluation.results`: :class:`SystemResult`, one system's answers, scores and compute;
- :mod:`agents.evaluation.figures`: accepted positions, reward vs cost, training curves;
- :mod:`agents.evaluation.report`: :func:`write_report` (``report.json``, ``report.md``, figures);
- :mod:`agents.evaluation.pipeline`: :func:`run_comparison`, the evaluation ``mara evaluate`` runs
  (the base LLM, agents, ARGS and best-of-N answer the same held-out prompts; scored; reported).

Every name below is importable from ``agents.evaluation`` directly. Importing this package loads
numpy only; the pipeline (LLMs, scorers) loads on first use of its names.
"""

from importlib import import_module
from typing import Any

from agents.accepted_positions import ACCEPT_POSITION_BINS, accept_position_counts
from agents.evaluation.figures import (
    TRAINING_COLUMNS,
    TRAINING_OPTIONAL_COLUMNS,
    TRAINING_X_COLUMN,
    plot_accept_positions,
    plot_scores,
    plot_training_curves,
    read_training_log,
)
from agents.evaluation.report import write_report
from agents.evaluation.results import SystemResult
from agents.evaluation.statistics import (
    MeanDifference,
    Preference,
    bootstrap_ci,
    compare,
    mean_difference,
    preference,
    preference_rate,
)

__all__ = [
    "ACCEPT_POSITION_BINS",
    "ARGS_DEFAULTS",
    "BASE",
    "SAMPLE_SEED_STRIDE",
    "TRAINING_COLUMNS",
    "TRAINING_OPTIONAL_COLUMNS",
    "TRAINING_X_COLUMN",
    "MeanDifference",
    "Preference",
    "SystemResult",
    "accept_position_counts",
    "args_settings",
    "bootstrap_ci",
    "check_samples_per_prompt",
    "compare",
    "held_out_prompts",
    "mean_difference",
    "plot_accept_positions",
    "plot_scores",
    "plot_training_curves",
    "preference",
    "preference_rate",
    "read_training_log",
    "run_comparison",
    "sample_seed",
    "summarize_generations",
    "write_report",
]

#: Names of :mod:`agents.evaluation.pipeline`, which imports the generator and the LLM machinery.
_PIPELINE = frozenset(
    {
        "ARGS_DEFAULTS",
        "BASE",
        "SAMPLE_SEED_STRIDE",
        "args_settings",
        "check_samples_per_prompt",
        "held_out_prompts",
        "run_comparison",
        "sample_seed",
        "summarize_generations",
    }
)


def __getattr__(name: str) -> Any:
    if name in _PIPELINE:
        return getattr(import_module("agents.evaluation.pipeline"), name)
    raise AttributeError(f"module 'agents.evaluation' has no attribute {name!r}")
