"""The report of ``benchmarks/gpu_suite.py``: the issue's bars and the markdown tables of ``gpu_suite.md``."""

from __future__ import annotations

from typing import Any

#: The issue's bars on a GPU.
BAR_X_LAZY, BAR_X_AUTHORS, BAR_X_PLAIN = 15.0, 100.0, 0.95


def bars(models: dict[str, dict[str, Any]], largest_n: int) -> list[dict[str, Any]]:
    """The issue's bars, per model: measured value, threshold, reached."""
    out = []
    for name, result in models.items():
        env = {r["strategy"]: r for r in result.get("env", [])}
        top = env.get(f"mara N={largest_n}")
        if top is not None:
            for key, label, bar in (
                ("x_lazy_b1", "x lazy batch-1", BAR_X_LAZY),
                ("x_authors", "x authors", BAR_X_AUTHORS),
            ):
                out.append(
                    dict(
                        model=name,
                        bar=f"N={largest_n} decisions/s {label} >= {bar:g}",
                        threshold=bar,
                        value=top[key],
                        ok=top[key] >= bar,
                    )
                )
        for r in result.get("decode", []):
            if r["system"] == "always-accept":
                out.append(
                    dict(
                        model=name,
                        bar=f"always-accept B={r['batch_size']} >= {BAR_X_PLAIN:g}x plain",
                        threshold=BAR_X_PLAIN,
                        value=r["x_plain"],
                        ok=r["x_plain"] >= BAR_X_PLAIN,
                    )
                )
    return out


def failures(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The failed sections of one model's result, with their errors."""
    return list(result.get("errors", {}).items())


def markdown(report: dict[str, Any]) -> str:
    """The report's tables as markdown."""
    meta = report["meta"]
    lines = [
        f"GPU suite: {meta['device_name']} ({meta['device']}), {meta['dtype']}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}, {meta['date']}; {meta['wall_seconds']:.0f} s in all"
        + (" (smoke run: checks it runs, not what it measures)" if meta["smoke"] else ""),
        "",
        "| model | parameters | hidden | scale | set size mean / median |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        c = m.get("calibration")
        if not c:
            continue
        lines.append(
            f"| {name} | {m['parameters'] / 1e6:,.1f}M | {m['hidden_size']} | {c['scale']:.3g} "
            f"| {c['mean_set_size']:.1f} / {c['median_set_size']:.0f} |"
        )
    lines += [
        "",
        "| model | strategy | chunk | decisions/s | tokens/s | x lazy batch-1 | x authors | forwards/step "
        "| aten ops/step | ops/forward | host syncs/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for name, m in report["models"].items():
        for r in m.get("env", []):
            chunk = "" if r["chunk_size"] is None else str(r["chunk_size"])
            lines.append(
                f"| {name} | {r['strategy']} | {chunk} | {r['decisions_per_s']:.1f} | {r['tokens_per_s']:.1f} "
                f"| {r['x_lazy_b1']:.1f} | {r['x_authors']:.1f} | {cell(r['forwards_per_step'], '.2f')} "
                f"| {cell(r.get('ops_per_step'), '.0f')} | {cell(r.get('ops_per_forward'), '.0f')} "
                f"| {cell(r.get('syncs_per_step'), '.2f')} |"
            )
    lines += [
        "",
        "| model | batch | system | answer tokens/s | x plain | LLM tokens per answer token | forwards per token "
        "| aten ops per answer token | host syncs per token |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        for r in m.get("decode", []):
            lines.append(
                f"| {name} | {r['batch_size']} | {r['system']} | {r['tokens_per_s']:.1f} | {r['x_plain']:.2f} "
                f"| {r['llm_tokens_per_answer_token']:.2f} | {cell(r.get('forwards_per_token'), '.2f')} "
                f"| {cell(r.get('ops_per_answer_token'), '.0f')} | {cell(r.get('syncs_per_token'), '.2f')} |"
            )
    shaped = {name: m["shaping"] for name, m in report["models"].items() if m.get("shaping")}
    if shaped:
        lines += [
            "",
            "| LLM | score model | N | unshaped decisions/s | shaped decisions/s | x unshaped "
            "| score tokens run / full |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in shaped.items():
            tokens = f"{r['score_tokens_run']:,} / {r['score_tokens_full']:,}" if r.get("score_tokens_run") else ""
            lines.append(
                f"| {name} | {r['score_model']} | {r['num_envs']} | {r['unshaped_decisions_per_s']:.1f} "
                f"| {r['shaped_decisions_per_s']:.1f} | {r['x_unshaped']:.2f} | {tokens} |"
            )
    lines += ["", "| H | learner | batch | gradient steps/s | x SB3 SAC |", "|---:|---|---:|---:|---:|"]
    for r in report["sac"]:
        if "skipped" in r:
            lines.append(f"| {r['hidden']} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(
                f"| {r['hidden']} | {r['learner']} | {r['batch_size']} | {r['gradient_steps_per_s']:.1f} "
                f"| {r['x_sb3_sac']:.2f} |"
            )
    lines += ["", "| model | bar | measured | reached |", "|---|---|---:|---|"]
    for b in report["bars"]:
        lines.append(f"| {b['model']} | {b['bar']} | {b['value']:.2f} | {'yes' if b['ok'] else 'no'} |")
    skipped = [f"{name}: {', '.join(m['skipped'])}" for name, m in report["models"].items() if m.get("skipped")]
    errors = [f"{name} {section}: {error}" for name, m in report["models"].items() for section, error in failures(m)]
    errors += [f"SAC H={r['hidden']}: {r['error']}" for r in report["sac"] if "error" in r]
    lines += ["", "Notes:", *(f"- {n}" for n in report["notes"])]
    if skipped:
        lines.append(f"- Skipped (time budget spent): {'; '.join(skipped)}.")
    lines += [f"- Failed: {e}" for e in errors]
    return "\n".join(lines) + "\n"
