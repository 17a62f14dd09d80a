"""The report's figures: accepted candidate positions (the paper's figure 3), reward vs cost, training curves
(figure 4, from a Stable-Baselines3 ``progress.csv``).

matplotlib (Agg canvas, no display, no pyplot state) and pandas are imported when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.accepted_positions import ACCEPT_POSITION_BINS, accept_position_counts
from agents.evaluation.results import SystemResult

__all__ = [
    "TRAINING_COLUMNS",
    "TRAINING_OPTIONAL_COLUMNS",
    "TRAINING_X_COLUMN",
    "plot_accept_positions",
    "plot_scores",
    "plot_training_curves",
    "read_training_log",
]

#: Columns of a Stable-Baselines3 ``progress.csv`` that :func:`plot_training_curves` reads.
TRAINING_X_COLUMN = "time/total_timesteps"
TRAINING_COLUMNS = {
    "mara/reward_score": "reward score R(x, y)",
    "mara/cost_score": "cost score C(x, y)",
    "mara/kl": "KL to reference (nats)",
}
#: Drawn as extra panels only when the log has them.
TRAINING_OPTIONAL_COLUMNS = {
    "mara/terminal_reward": "terminal reward",
    "mara/response_tokens": "response tokens",
}


def _new_figure(width: float, height: float) -> Any:
    # A bare Figure on an Agg canvas: no pyplot, so no global backend switch and nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_accept_positions(systems: Sequence[SystemResult], path: str | Path, bins: int = ACCEPT_POSITION_BINS) -> bool:
    """
    Bar chart of the accepted candidate positions as fractions (the paper's figure 3), one bar group
    per position and one bar per system that has ``accepted_ranks``.

    :param systems: The systems; those without ``accepted_ranks`` are left out
    :param path: PNG file to write
    :param bins: Positions ``1 .. bins - 1`` and a last ``bins+`` bar for later positions
    :return: ``False`` (and nothing written) if no system has ranks
    """
    with_ranks = [(i, s) for i, s in enumerate(systems) if s.accepted_ranks is not None]
    if not with_ranks:
        return False
    figure = _new_figure(max(6.0, 0.6 * bins + 1.5), 4.0)
    ax = figure.subplots()
    positions = np.arange(1, bins + 1)
    width = 0.8 / len(with_ranks)
    for j, (i, system) in enumerate(with_ranks):
        counts = accept_position_counts(system.accepted_ranks or [], max_rank=bins)
        total = int(counts.sum())
        fractions = counts / total if total else np.zeros(bins)
        offset = (j - (len(with_ranks) - 1) / 2) * width
        ax.bar(positions + offset, fractions, width, color=f"C{i}", label=f"{system.name} ({total} accepts)")
    ax.set_xticks(positions, [str(p) for p in positions[:-1]] + [f"{bins}+"])
    ax.set_xlabel("accepted candidate position (1 = most likely token)")
    ax.set_ylabel("fraction of accepted tokens")
    ax.set_ylim(0, 1)
    ax.set_title("Accepted candidate positions")
    ax.legend()
    figure.savefig(path, dpi=120)
    return True


def plot_scores(systems: Sequence[SystemResult], path: str | Path, baseline: str | None = None) -> None:
    """
    Reward vs cost per response and per-system means; with a baseline, a second panel of per-prompt
    differences to it, where the win quadrant (more reward, less cost) and the loss quadrant are shaded.

    :param systems: The systems (same prompts for the difference panel)
    :param path: PNG file to write
    :param baseline: Name of the baseline system, or ``None`` for the first panel only
    """
    base = next((s for s in systems if s.name == baseline), None)
    others = [(i, s) for i, s in enumerate(systems) if base is not None and s is not base]
    figure = _new_figure(11.0 if others else 6.0, 4.8)
    axes = figure.subplots(1, 2 if others else 1, squeeze=False)[0]

    ax = axes[0]
    for i, system in enumerate(systems):
        ax.scatter(system.reward_score, system.cost_score, s=14, alpha=0.45, color=f"C{i}", linewidths=0)
        # Error bars: 95% interval of the mean (normal approximation).
        sem = [
            1.96 * float(np.std(v, ddof=1)) / math.sqrt(v.size) if v.size > 1 else 0.0
            for v in (system.reward_score, system.cost_score)
        ]
        ax.errorbar(
            float(np.mean(system.reward_score)),
            float(np.mean(system.cost_score)),
            xerr=sem[0],
            yerr=sem[1],
            fmt="o",
            ms=9,
            color=f"C{i}",
            mec="black",
            capsize=4,
            label=f"{system.name} mean",
        )
    ax.set_xlabel("reward score (higher = more helpful)")
    ax.set_ylabel("cost score (lower = safer)")
    ax.set_title("Reward vs cost per response (better: right and down)")
    ax.legend(fontsize="small")

    if others and base is not None:
        ax = axes[1]
        for i, system in others:
            d_reward = system.reward_score - base.reward_score
            d_cost = system.cost_score - base.cost_score
            ax.scatter(d_reward, d_cost, s=12, alpha=0.5, color=f"C{i}", linewidths=0, label=system.name)
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.axvline(0.0, color="gray", lw=0.8)
        # Shade the quadrants after scattering so the limits fit the data.
        x_low, x_high = ax.get_xlim()
        y_low, y_high = ax.get_ylim()
        ax.fill_between([0, x_high], y_low, 0, color="tab:green", alpha=0.08, label="win (more reward, less cost)")
        ax.fill_between([x_low, 0], 0, y_high, color="tab:red", alpha=0.08, label="loss")
        ax.set_xlim(x_low, x_high)
        ax.set_ylim(y_low, y_high)
        ax.set_xlabel(f"reward - reward of {base.name}")
        ax.set_ylabel(f"cost - cost of {base.name}")
        ax.set_title(f"Per-prompt difference to {base.name}")
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def read_training_log(progress_csv: str | Path) -> Any:
    """
    Read a Stable-Baselines3 ``progress.csv`` and check that it holds MARA training curves.

    :param progress_csv: The CSV log
    :return: The ``pandas.DataFrame``; empty cells are NaN
    """
    import pandas as pd

    source = Path(progress_csv)
    if not source.is_file():
        raise FileNotFoundError(
            f"training log {str(source)!r} does not exist; pass the progress.csv that Stable-Baselines3 "
            "writes with the 'csv' logger format (or training_log=None to skip the training curves)."
        )
    try:
        table = pd.read_csv(source)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty:
        raise ValueError(f"training log {str(source)!r} is empty: it has no logged rows yet.")
    known = [*TRAINING_COLUMNS, *TRAINING_OPTIONAL_COLUMNS]
    if not any(c in table.columns for c in known):
        raise ValueError(
            f"training log {str(source)!r} has none of the columns {', '.join(TRAINING_COLUMNS)}; its columns are "
            f"{', '.join(map(str, table.columns))}. Is it the progress.csv of a MARA training run?"
        )
    return table


def plot_training_curves(progress_csv: Any, path: str | Path) -> list[str]:
    """
    Reward, cost and KL against environment decisions from a Stable-Baselines3 ``progress.csv``
    (the paper's figure 4), one panel each, plus panels for ``mara/terminal_reward`` and
    ``mara/response_tokens`` when logged. Empty cells are skipped per column; long curves get a
    rolling mean over the raw values.

    :param progress_csv: Path of the CSV log, or the table from :func:`read_training_log`; x-axis
        column ``time/total_timesteps`` (the row number if absent)
    :param path: PNG file to write
    :return: The required columns that were missing (noted in their panels)
    """
    import pandas as pd

    table = progress_csv if isinstance(progress_csv, pd.DataFrame) else read_training_log(progress_csv)
    wanted = dict(TRAINING_COLUMNS)
    wanted.update({c: label for c, label in TRAINING_OPTIONAL_COLUMNS.items() if c in table.columns})
    if TRAINING_X_COLUMN in table.columns:
        x_all = pd.to_numeric(table[TRAINING_X_COLUMN], errors="coerce")
        x_label = "environment decisions (time/total_timesteps)"
    else:
        x_all = pd.Series(np.arange(len(table), dtype=np.float64), index=table.index)
        x_label = f"log row ({TRAINING_X_COLUMN} not in log)"

    n_cols = min(3, len(wanted))
    n_rows = -(-len(wanted) // n_cols)
    figure = _new_figure(4.4 * n_cols, 3.6 * n_rows)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[len(wanted) :]:
        ax.set_visible(False)
    missing = []
    for ax, (column, label) in zip(axes, wanted.items()):
        ax.set_title(label)
        ax.set_xlabel(x_label)
        if column not in table.columns:
            missing.append(column)
            ax.text(0.5, 0.5, f"'{column}'\nnot in log", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        y_all = pd.to_numeric(table[column], errors="coerce")
        keep = x_all.notna() & y_all.notna()
        if not keep.any():
            ax.text(0.5, 0.5, f"'{column}'\nhas no values", ha="center", va="center", transform=ax.transAxes)
            continue
        order = np.argsort(x_all[keep].to_numpy(), kind="stable")
        x = x_all[keep].to_numpy()[order]
        y = y_all[keep].to_numpy()[order]
        if len(y) > 30:
            smooth = pd.Series(y).rolling(max(3, len(y) // 20), center=True, min_periods=1).mean()
            ax.plot(x, y, color="C0", alpha=0.3, lw=0.8, label="logged")
            ax.plot(x, smooth, color="C0", lw=1.8, label="rolling mean")
            ax.legend(fontsize="small")
        else:
            ax.plot(x, y, color="C0", marker="o", ms=3)
    figure.savefig(path, dpi=120)
    return missing
