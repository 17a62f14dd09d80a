"""Arms of the default recipe, compared on training prompts: which change of settings trains the better agent?

An arm is a name and the settings it changes in the default run
(:data:`agents.training.run_config.DEFAULT_RUN`), as ``SECTION.KEY=VALUE`` items: ``--arm kl0.05
env.kl_coef=0.05``; an arm with no items is the default recipe. Every arm is trained for the same decisions
with the same tuning seeds, and every model is decoded on the same *training* prompts (held-out prompts are for
the report only) in one comparison with the base LLM and best-of-2. Per arm: mean and standard deviation over
seeds of the preference rate against the base and of the head-to-head rate against best-of-2, KL, training
wall and CPU time and a teacher's scorer calls.

The winner is the arm with the highest mean preference against the base among the arms whose mean KL to the
LLM is within ``--kl-max`` (issue 23's bar, 5 nats): a setting that buys preference by leaving the LLM further
than the bar allows does not become the default.

Usage::

    python benchmarks/recipe_arms.py --arm default --arm kl0.05 env.kl_coef=0.05 --out results/kl
    python benchmarks/recipe_arms.py --arm kl0.05 env.kl_coef=0.05 \\
        --merge benchmarks/results/teacher_ablation/teacher_ablation.json --keep sac --out results/kl

``--redraw RESULT.json`` writes an earlier result's table and figure again (training and decoding nothing).

``--merge EARLIER.json`` adds arms to an earlier result (of this script or of ``teacher_ablation.py``, which is
one preset of it) without decoding its agents again: every system's answers depend only on its own seeds
(:mod:`agents.evaluation.pipeline`), so the base LLM and best-of-2 answer as they did then; the merge checks
that they did (their mean scores and best-of-2's rate against the base must be equal) and refuses otherwise.
``--keep`` takes only some of the earlier arms.

Outputs under ``--out``: ``<name>.json``, ``<name>.md``, ``<name>.png`` (``--name``, default
``recipe_arms``), ``report/`` (the comparison); run folders in ``--runs`` (default ``<out>/runs``) as
``<arm>/seed<S>``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from seeded_runs import (  # benchmarks/seeded_runs.py, beside this script
    assignments,
    compare_agents,
    machine,
    percent,
    prompts_of,
    spread,
    train,
    trained,
)

from agents.training.run_config import RunConfig
from agents.training.run_folder import MODEL_FILE

#: The issue-23 bar on the KL to the LLM; the default of ``--kl-max``.
KL_MAX = 5.0


def arm_config(settings: Mapping[str, Mapping[str, Any]], seed: int, decisions: int, name: str) -> RunConfig:
    """The default run with an arm's ``{"section": {"key": value}}`` changes, its seed and its length."""
    sections = {section: dict(values) for section, values in settings.items()}  # the caller's stay as they are
    sections.setdefault("train", {}).update(seed=seed, total_decisions=decisions, progress_bar=False)
    return RunConfig.from_sections(sections, source=f"arm {name}")


def parse_arms(items: Sequence[Sequence[str]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``--arm NAME [SECTION.KEY=VALUE ...]`` items -> ``{name: sections}``; the settings are checked here."""
    arms: dict[str, dict[str, dict[str, Any]]] = {}
    for name, *settings in items:
        if "=" in name:
            raise SystemExit(f"--arm {name}: an arm starts with its name, e.g. --arm kl0.05 env.kl_coef=0.05.")
        if name in arms:
            raise SystemExit(f"--arm {name} is given twice; give each arm a name of its own.")
        arms[name] = assignments(settings)
        try:
            arm_config(arms[name], 0, 1, name)
        except ValueError as error:
            raise SystemExit(f"--arm {name}: {error}") from None
    return arms


def same_comparison(earlier: Mapping[str, Any], report: Mapping[str, Any], merge: Path) -> None:
    """Refuse to merge unless the base LLM and best-of-2 answered as in ``earlier`` (equal mean scores and rate)."""
    then, now = earlier["meta"], report["systems"]
    checks = [(f"best-of-2 {k}", then["best_of_2"][k], now["best-of-2"][k]) for k in ("reward_mean", "cost_mean")]
    checks.append(("best-of-2 vs base", then["best_of_2_vs_base"], report["comparisons"]["best-of-2"]["rate"]))
    if "base" in then:  # results written before the base's scores were kept say only the rate above
        checks += [(f"base {k}", then["base"][k], now["base"][k]) for k in ("reward_mean", "cost_mean")]
    differ = [f"{name}: {a!r} then, {b!r} now" for name, a, b in checks if a != b]
    if differ:
        raise SystemExit(
            f"--merge {merge}: the base LLM or best-of-2 answered otherwise than in that comparison "
            f"({'; '.join(differ)}), so its figures and this run's are not one comparison. Run every arm "
            "together instead (drop --merge)."
        )


def check_merge(
    earlier: Mapping[str, Any], arms: Sequence[str], keep: Sequence[str] | None, setup: Mapping[str, Any], merge: Path
) -> list[str]:
    """The earlier arms to keep; refuse (naming the problem) an overlapping arm or another set-up, before any work."""
    meta = earlier["meta"]
    kept = list(meta["arms"]) if keep is None else list(keep)
    if unknown := [arm for arm in kept if arm not in meta["arms"]]:
        raise SystemExit(f"--keep {unknown}: {merge} has the arms {meta['arms']}.")
    if overlap := sorted(set(kept) & set(arms)):
        raise SystemExit(
            f"--merge: {merge} already has the arm(s) {overlap}; pass only new arms with --arm (or leave them out "
            "of --keep)."
        )
    for key, value in setup.items():
        if meta.get(key) != value:
            raise SystemExit(f"--merge: {merge} has {key}={meta.get(key)!r}, this run {value!r}; use the same.")
    return kept


def choose(arms: Mapping[str, Mapping[str, Any]], kl_max: float) -> str | None:
    """The arm with the highest mean preference among those with mean KL <= ``kl_max``; None if none is."""
    allowed = [a for a, agg in arms.items() if agg["kl"]["mean"] is not None and agg["kl"]["mean"] <= kl_max]
    return max(allowed, key=lambda a: arms[a]["preference"]["mean"]) if allowed else None


def trade_off(result: Mapping[str, Any]) -> dict[str, float] | None:
    """Preference against KL over every seed's run: the least-squares line ``preference = a + b KL``.

    ``slope`` is ``b`` (preference per nat), ``at_kl_max`` the line's preference at the KL bar and ``r`` the
    correlation. It says how much preference the arms bought with KL, whatever setting moved it; None when fewer
    than 3 runs have a KL or all have the same.
    """
    runs = [(r["kl"], r["preference"]) for r in result["runs"] if r.get("kl") is not None]
    if len(runs) < 3 or len({kl for kl, _ in runs}) < 2:
        return None
    kl, pref = np.array(runs).T
    slope, intercept = np.polyfit(kl, pref, 1)
    kl_max = result["meta"].get("kl_max", KL_MAX)
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "at_kl_max": float(intercept + slope * kl_max),
        "r": float(np.corrcoef(kl, pref)[0, 1]),
        "runs": len(runs),
    }


def describe(changes: Mapping[str, Mapping[str, Any]] | None) -> str:
    """An arm's settings for the table: ``env.kl_coef=0.05`` items, "the default", or "-" when not recorded."""
    if changes is None:
        return "-"
    items = [f"`{section}.{key}={value}`" for section, values in changes.items() for key, value in values.items()]
    return ", ".join(items) or "the default"


def compared_on(result: Mapping[str, Any], arm: str) -> str:
    """When ``arm``'s models were decoded: its runs' ``compared`` date, else (results written before runs kept
    it) the date of the comparison the result says the arm was merged from, else the result's own."""
    dates = {r["compared"] for r in result["runs"] if r["arm"] == arm and "compared" in r}
    if dates:
        return min(dates)
    merged = result["meta"].get("merged_from")
    return merged["created"] if merged and arm in merged["arms"] else result["meta"]["created"]


def markdown(result: Mapping[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"{meta['prompts']} training prompts x {meta['samples_per_prompt']} samples; {meta['decisions']:,} decisions "
        f"per run, seeds {', '.join(map(str, meta['seeds']))}; {meta['machine']['torch_threads']} torch thread(s).",
        "",
        "| arm | settings | preference vs base, mean ± std (per seed) | vs best-of-2, mean ± std | KL (nats) "
        "| train CPU min | teacher scorer calls |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for arm in meta["arms"]:
        agg = result["arms"][arm]
        runs = [r for r in result["runs"] if r["arm"] == arm]
        seeds = "; ".join(percent(r["preference"]) for r in runs)
        p, h, kl, cpu = agg["preference"], agg["vs_best_of_2"], agg["kl"], agg["train_cpu_seconds"]
        calls = agg["scorer_calls"]["mean"]
        cpu_text = "-" if cpu["mean"] is None else f"{cpu['mean'] / 60:.1f}"
        settings = describe((meta.get("arm_settings") or {}).get(arm))
        lines.append(
            f"| {arm} | {settings} | **{percent(p['mean'])} ± {p['std'] * 100:.1f}** ({seeds}) | "
            f"{percent(h['mean'])} ± {h['std'] * 100:.1f} | {kl['mean']:.2f} | {cpu_text} | {calls or 0:,.0f} |"
        )
    when = {arm: compared_on(result, arm) for arm in meta["arms"]}
    if len(set(when.values())) > 1:
        dates = dict.fromkeys(sorted(when.values()))
        parts = [f"{', '.join(a for a in meta['arms'] if when[a] == d)} on {d}" for d in dates]
        lines += [
            "",
            f"Decoded in {len(dates)} comparisons and merged: {'; '.join(parts)} (each merge checked that the base "
            "LLM and best-of-2 answered as they did before: equal mean scores and rate).",
        ]
    kl_max = meta.get("kl_max", KL_MAX)
    line = trade_off(result)
    if line is not None:
        lines += [
            "",
            f"Preference against KL over the {line['runs']} runs (least squares, every arm and seed): "
            f"{line['slope'] * 100:+.2f} points per nat (r = {line['r']:.2f}); the line gives "
            f"{percent(line['at_kl_max'])} at {kl_max:g} nats.",
        ]
    winner = result["winner"]
    lines += [
        "",
        f"Winner (highest mean preference vs base with mean KL <= {kl_max:g} nats): **{winner}**."
        if winner is not None
        else f"No arm has a mean KL <= {kl_max:g} nats: no winner.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = result["meta"]["arms"]
    fig = Figure(figsize=(max(13, 3.2 * len(arms)), 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    for ax, key, scale, label in (
        (axes[0], "preference", 100, "preference vs base LLM (%)"),
        (axes[1], "vs_best_of_2", 100, "head to head vs best-of-2 (%)"),
        (axes[2], "kl", 1, "KL to the reference (nats)"),
    ):
        means = [result["arms"][a][key]["mean"] * scale for a in arms]
        stds = [result["arms"][a][key]["std"] * scale for a in arms]
        ax.bar(arms, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
        for i, arm in enumerate(arms):
            values = [r[key] * scale for r in result["runs"] if r["arm"] == arm]
            ax.plot([i] * len(values), values, "o", color="black", ms=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    axes[2].axhline(result["meta"].get("kl_max", KL_MAX), color="tab:red", lw=0.8, ls="--")
    axes[0].set_title("mean ± std over seeds (dots: each seed)", fontsize=9)
    _plot_trade_off(axes[3], result)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_trade_off(ax: Any, result: Mapping[str, Any]) -> None:
    """Preference against KL: each arm's mean ± std in both, the least-squares line over the runs, the KL bar."""
    for arm in result["meta"]["arms"]:
        agg = result["arms"][arm]
        if agg["kl"]["mean"] is None:
            continue
        ax.errorbar(
            agg["kl"]["mean"],
            agg["preference"]["mean"] * 100,
            xerr=agg["kl"]["std"],
            yerr=agg["preference"]["std"] * 100,
            fmt="o",
            ms=4,
            capsize=3,
        )
        ax.annotate(
            arm,
            (agg["kl"]["mean"], agg["preference"]["mean"] * 100),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    line = trade_off(result)
    if line is not None:
        xs = np.array(ax.get_xlim())
        ax.plot(
            xs,
            (line["intercept"] + line["slope"] * xs) * 100,
            color="gray",
            lw=0.8,
            label=f"{line['slope'] * 100:+.1f} points / nat",
        )
        ax.legend(fontsize=7, loc="lower right")
    ax.axvline(result["meta"].get("kl_max", KL_MAX), color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("KL to the reference (nats)")
    ax.set_ylabel("preference vs base LLM (%)")


def run_arms(
    arms: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    seeds: Sequence[int],
    decisions: int,
    out: Path,
    name: str,
    runs_root: Path | None = None,
    folders: Mapping[tuple[str, int], Path] | None = None,
    num_prompts: int = 96,
    samples_per_prompt: int = 2,
    threads: int | None = None,
    train_only: bool = False,
    merge: Path | None = None,
    keep: Sequence[str] | None = None,
    kl_max: float = KL_MAX,
    extra_meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every arm for every seed, decode all models in one comparison on training prompts, pick the winner.

    :param arms: arm name -> the settings it changes, ``{"section": {"key": value}}``.
    :param folders: ``(arm, seed)`` -> the run folder to use instead of ``runs_root/<arm>/seed<S>``, e.g. earlier
        runs of the same settings kept elsewhere.
    :param extra_meta: more set-up to record (and to require of a merged result), e.g. a preset's options.
    :return: the result written to ``out/<name>.json``.
    """
    setup = {
        "seeds": list(seeds),
        "decisions": decisions,
        "samples_per_prompt": samples_per_prompt,
        "prompts": num_prompts,
        **(extra_meta or {}),
    }
    earlier = json.loads(merge.read_text()) if merge is not None else None
    kept = check_merge(earlier, list(arms), keep, setup, merge) if earlier is not None else []
    if threads:
        torch.set_num_threads(threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    host = machine(threads)
    runs_root = out / "runs" if runs_root is None else runs_root

    run_folders: dict[tuple[str, int], Path] = {}
    for seed in seeds:
        for arm, settings in arms.items():
            folder = (folders or {}).get((arm, seed), runs_root / arm / f"seed{seed}")
            train(arm_config(settings, seed, decisions, arm), folder)
            run_folders[arm, seed] = folder
            print(f"{arm} seed {seed}: trained", flush=True)
    if train_only:
        return {}

    prompts = prompts_of("train", num_prompts)
    names = {key: f"{key[0]}-s{key[1]}" for key in run_folders}
    report = compare_agents(
        {names[key]: folder / MODEL_FILE for key, folder in run_folders.items()},
        out / ("report" if earlier is None else "report-" + "-".join(arms)),
        prompts,
        samples_per_prompt=samples_per_prompt,
        best_of=2,
        meta={"benchmark": name, "part": "train"},
    )
    runs = []
    for (arm, seed), folder in run_folders.items():
        label = names[arm, seed]
        c, s = report["comparisons"][label], report["systems"][label]
        h = report["head_to_head"][f"{label} vs best-of-2"]
        summary = trained(folder)
        runs.append(
            {
                "arm": arm,
                "seed": seed,
                "preference": c["rate"],
                "ci": [c["ci_low"], c["ci_high"]],
                "vs_best_of_2": h["rate"],
                "vs_best_of_2_ci": [h["ci_low"], h["ci_high"]],
                "kl": s["kl_mean"],
                "reward": s["reward_mean"],
                "cost": s["cost_mean"],
                "train_wall_seconds": summary["train_wall_seconds"],
                "train_cpu_seconds": summary["train_cpu_seconds"],
                "scorer_calls": (summary.get("teacher") or {}).get("scorer_calls", 0),
                "teacher": summary.get("teacher"),
                "compared": started,
            }
        )
    all_arms = list(arms)
    arm_settings = {arm: {k: dict(v) for k, v in s.items()} for arm, s in arms.items()}
    if earlier is not None:
        same_comparison(earlier, report, merge)
        all_arms = [*kept, *arms]
        runs = [
            *({**r, "compared": compared_on(earlier, r["arm"])} for r in earlier["runs"] if r["arm"] in kept),
            *runs,
        ]
        arm_settings = {
            **{a: s for a, s in (earlier["meta"].get("arm_settings") or {}).items() if a in kept},
            **arm_settings,
        }
    keys = ("preference", "vs_best_of_2", "kl", "reward", "train_wall_seconds", "train_cpu_seconds", "scorer_calls")
    aggregates = {arm: {k: spread([r[k] for r in runs if r["arm"] == arm]) for k in keys} for arm in all_arms}
    result = {
        "meta": {
            "created": started,
            "machine": host,
            "part": "train",
            **setup,
            "prompts": len(prompts),
            "arms": all_arms,
            "arm_settings": arm_settings,
            "kl_max": kl_max,
            "merged_from": None
            if earlier is None
            else {"created": earlier["meta"]["created"], "arms": kept, "file": str(merge)},
            "base": {k: report["systems"]["base"][k] for k in ("reward_mean", "cost_mean")},
            "best_of_2": {k: report["systems"]["best-of-2"][k] for k in ("reward_mean", "cost_mean")},
            "best_of_2_vs_base": report["comparisons"]["best-of-2"]["rate"],
        },
        "runs": runs,
        "arms": aggregates,
        "winner": choose(aggregates, kl_max),
        "rule": f"highest mean preference against the base LLM over the seeds, on training prompts, among the arms "
        f"with mean KL <= {kl_max:g} nats",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_views(result, out, name)
    return result


def write_views(result: Mapping[str, Any], out: Path, name: str) -> None:
    """``<name>.md`` and ``<name>.png`` of a result (also from ``--redraw``, which trains and decodes nothing)."""
    table = markdown(result)
    (out / f"{name}.md").write_text(table)
    plot(result, out / f"{name}.png")
    print(table)


def redraw(path: Path) -> dict[str, Any]:
    """Write the table and figure of an earlier result again, beside it; exit naming the problem if unreadable."""
    try:
        result = json.loads(path.read_text())
        markdown(result)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--redraw {path}: not a readable recipe_arms result ({type(exc).__name__}: {exc}).") from None
    write_views(result, path.parent, path.stem)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--arm",
        nargs="+",
        action="append",
        metavar=("NAME", "SECTION.KEY=VALUE"),
        help="an arm: its name and the settings it changes (none: the default recipe); repeat per arm",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102], help="training seeds (tuning seeds)")
    p.add_argument("--decisions", type=int, default=30_000, help="decisions per run")
    p.add_argument("--num-prompts", type=int, default=96, help="training prompts of the comparison")
    p.add_argument("--samples-per-prompt", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--out", type=Path, help="folder of the result and the comparison (required with --arm)")
    p.add_argument("--name", default="recipe_arms", help="file name of the result (<name>.json, .md, .png)")
    p.add_argument("--runs", type=Path, help="folder of the run folders (default: <out>/runs)")
    p.add_argument("--merge", type=Path, help="an earlier result whose arms this run adds to")
    p.add_argument("--keep", nargs="+", help="the earlier result's arms to keep (default: all)")
    p.add_argument("--kl-max", type=float, default=KL_MAX, help="the winner's mean KL must be at most this (nats)")
    p.add_argument("--redraw", type=Path, metavar="RESULT.json", help="write RESULT's .md and .png again, nothing else")
    args = p.parse_args(argv)
    if args.redraw is not None:
        if args.arm:
            p.error("--redraw writes an earlier result's views only; give it without --arm")
        return redraw(args.redraw)
    if not args.arm or args.out is None:
        p.error("give --arm NAME [SECTION.KEY=VALUE ...] (repeat per arm) and --out, or --redraw RESULT.json")
    arms = parse_arms(args.arm)
    return run_arms(
        arms,
        seeds=args.seeds,
        decisions=args.decisions,
        out=args.out,
        name=args.name,
        runs_root=args.runs,
        num_prompts=args.num_prompts,
        samples_per_prompt=args.samples_per_prompt,
        threads=args.threads,
        train_only=args.train_only,
        merge=args.merge,
        keep=args.keep,
        kl_max=args.kl_max,
    )


if __name__ == "__main__":
    main()
