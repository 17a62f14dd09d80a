"""Why a preference rate is what it is: the two conditions of a win, per system, from comparison reports.

The paper's preference (appendix A.2, :func:`agents.evaluation.statistics.compare`) counts a win when an
answer's reward is higher *and* its cost lower than the baseline's, a loss when both are the other way::

    preference = P(R > R_b and C < C_b) - P(R < R_b and C > C_b)

so it is bounded by how often each condition holds. This script reads ``report.json`` files written by
:func:`agents.evaluation.pipeline.run_comparison` (``mara evaluate``, ``benchmarks/recipe_arms.py``, ...) and
prints, for every system against the baseline: how often its reward is higher, how often its cost is lower,
how often its cost is lower given a higher reward, and the preference; systems named ``<arm>-s<seed>`` are also
averaged per arm. The KL to the LLM (nats per answer) is the report's (none for best-of-N). A system that
appears in several reports (best-of-2 decoded again with the same seeds) is read from the first.

Usage::

    python benchmarks/win_conditions.py benchmarks/results/recipe_arms/report-*/report.json \
        benchmarks/results/teacher_ablation/report/report.json --out benchmarks/results/win_conditions

Outputs under ``--out``: ``win_conditions.json``, ``.md`` and ``.png`` (one point per arm: how often the reward
is higher against how often the cost is lower).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation.statistics import compare, preference_rate

#: ``<arm>-s<seed>``, the system names of benchmarks that train an arm for several seeds.
SEEDED = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)$")


def conditions(rows: Sequence[Mapping[str, Any]], system: str, baseline: str) -> dict[str, float]:
    """How often ``system``'s reward is higher / cost lower than ``baseline``'s, over a report's rows (pairs)."""
    try:
        r, c, rb, cb = (
            np.array([row["systems"][name][key] for row in rows], dtype=np.float64)
            for name, key in ((system, "reward"), (system, "cost"), (baseline, "reward"), (baseline, "cost"))
        )
    except KeyError as missing:
        raise ValueError(f"the report's rows have no {missing} for {system!r} or {baseline!r}.") from None
    higher, lower = r > rb, c < cb
    outcomes = compare(r, c, rb, cb)  # the paper's rule, as the reports apply it
    return {
        "pairs": int(r.size),
        "reward_higher": float(higher.mean()),
        "cost_lower": float(lower.mean()),
        # NaN where the reward is never higher: the condition is then undefined, not 0
        "cost_lower_given_reward_higher": float(lower[higher].mean()) if higher.any() else float("nan"),
        "wins": float(np.mean(outcomes == 1)),
        "losses": float(np.mean(outcomes == -1)),
        "preference": preference_rate(outcomes),
    }


def read_reports(paths: Sequence[Path], baseline: str) -> dict[str, dict[str, Any]]:
    """System -> its conditions against ``baseline`` (and the report it came from), first report first."""
    systems: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable report.json ({error}).") from None
        rows = report.get("rows")
        if not rows or baseline not in rows[0].get("systems", {}):
            raise ValueError(
                f"{path}: no per-pair rows with a system {baseline!r}; give report.json files of "
                "agents.evaluation.pipeline.run_comparison (mara evaluate), and --baseline one of their systems."
            )
        for name in rows[0]["systems"]:
            if name != baseline and name not in systems:
                kl = (report.get("systems", {}).get(name) or {}).get("kl_mean")
                kl = float("nan") if kl is None else float(kl)
                systems[name] = {**conditions(rows, name, baseline), "kl": kl, "report": str(path)}
    return systems


def by_arm(systems: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean conditions per arm (``<arm>-s<seed>`` systems; any other system is an arm of its own)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for name, figures in systems.items():
        match = SEEDED.match(name)
        groups.setdefault(match["arm"] if match else name, []).append(figures)
    keys = ("reward_higher", "cost_lower", "cost_lower_given_reward_higher", "wins", "losses", "preference", "kl")
    return {
        arm: {"systems": len(group), **{k: _mean([g[k] for g in group]) for k in keys}} for arm, group in groups.items()
    }


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there is none (a condition never defined, a KL not measured)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _figure(value: float, spec: str) -> str:
    return "-" if not np.isfinite(value) else format(value, spec)


def markdown(arms: Mapping[str, Mapping[str, Any]], baseline: str) -> str:
    lines = [
        f"| arm (vs {baseline}) | systems | reward higher | cost lower | cost lower, given reward higher | wins | "
        "losses | preference | KL (nats) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, f in arms.items():
        lines.append(
            f"| {arm} | {f['systems']} | {f['reward_higher']:.0%} | {f['cost_lower']:.0%} | "
            f"{_figure(f['cost_lower_given_reward_higher'], '.0%')} | {f['wins']:.0%} | {f['losses']:.0%} | "
            f"{f['preference']:+.1%} | {_figure(f['kl'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def _nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def figure(arms: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    # a bare Figure on an Agg canvas: no pyplot, so no global backend switch for a caller and nothing to close
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for arm, f in arms.items():
        point = (100 * f["reward_higher"], 100 * f["cost_lower"])
        ax.scatter(*point)
        kl = f", {f['kl']:.1f} nats" if np.isfinite(f["kl"]) else ""
        label = f"{arm} ({100 * f['preference']:+.0f}%{kl})"
        ax.annotate(label, point, xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.axhline(50, color="grey", lw=0.5)
    ax.set_xlabel("reward higher than the base LLM's (% of pairs)")
    ax.set_ylabel("cost lower than the base LLM's (% of pairs)")
    ax.set_title("The two conditions of a win (preference and KL in brackets)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files of comparisons")
    parser.add_argument("--baseline", default="base", help="the system every other is held against (default: base)")
    parser.add_argument("--out", type=Path, help="folder for win_conditions.json/.md/.png (default: print only)")
    args = parser.parse_args(argv)
    try:
        systems = read_reports(args.reports, args.baseline)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    arms = by_arm(systems)
    table = markdown(arms, args.baseline)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {
            "baseline": args.baseline,
            "reports": [str(p) for p in args.reports],
            "arms": arms,
            "systems": systems,
        }
        # NaN is not JSON: an undefined figure is written as null
        text = json.dumps(_nulls(result), indent=2, allow_nan=False)
        (args.out / "win_conditions.json").write_text(text + "\n")
        (args.out / "win_conditions.md").write_text(table)
        figure(arms, args.out / "win_conditions.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
