"""The report of ``benchmarks/gpu_suite.py``: the issues' bars and the markdown tables of ``gpu_suite.md``."""

from __future__ import annotations

from typing import Any

#: Issue 11's bars on a GPU: the largest N against the batch-1 strategies; always-accept against plain decoding.
BAR_X_LAZY, BAR_X_AUTHORS, BAR_X_PLAIN = 15.0, 100.0, 0.95
#: Issue 25's bars: the random agent (p=0.5) against plain decoding at every batch size; the 8B shape's env at
#: N=32 in decisions/s and its aligned decoding at batch 1 in answer tokens/s.
BAR_X_PLAIN_RANDOM, BAR_8B_DECISIONS, BAR_8B_TOKENS = 0.6, 1500.0, 100.0
#: The model, env size and batch size of issue 25's absolute bars.
BAR_MODEL, BAR_N, BAR_BATCH = "llama-8b", 32, 1
#: Aligned decoding in the MARA paper (Llama-3.1-8B, batch 1), answer tokens/s.
PAPER_TOKENS_PER_S = 31.4
#: The decode section's aligned systems.
ALIGNED = ("always-accept", "random agent (p=0.5)")


def best(rows: dict[str, dict[str, Any]], name: str, key: str) -> tuple[dict[str, Any] | None, str]:
    """The better of row ``name`` and ``name captured`` by ``key``, and which it is ("eager" / "captured")."""
    found = [(rows[n], mode) for n, mode in ((name, "eager"), (f"{name} captured", "captured")) if n in rows]
    if not found:
        return None, ""
    return max(found, key=lambda pair: pair[0][key])


def bar(model: str, label: str, threshold: float, value: float) -> dict[str, Any]:
    return dict(model=model, bar=label, threshold=threshold, value=value, ok=value >= threshold)


def bars(models: dict[str, dict[str, Any]], largest_n: int) -> list[dict[str, Any]]:
    """The bars, per model: measured value, threshold, reached. Where a system ran eager and captured, its bar
    takes the better of the two and says which."""
    out = []
    for name, result in models.items():
        env = {r["strategy"]: r for r in result.get("env", [])}
        top = env.get(f"mara N={largest_n}") or env.get(f"mara N={largest_n} captured")
        if top is not None:
            for key, label, threshold in (
                ("x_lazy_b1", "x lazy batch-1", BAR_X_LAZY),
                ("x_authors", "x authors", BAR_X_AUTHORS),
            ):
                out.append(bar(name, f"N={largest_n} decisions/s {label} >= {threshold:g}", threshold, top[key]))
        if name == BAR_MODEL:
            row, mode = best(env, f"mara N={BAR_N}", "decisions_per_s")
            if row is not None:
                label = f"N={BAR_N} decisions/s >= {BAR_8B_DECISIONS:,.0f} ({mode})"
                out.append(bar(name, label, BAR_8B_DECISIONS, row["decisions_per_s"]))
        decode: dict[int, dict[str, dict[str, Any]]] = {}
        for r in result.get("decode", []):
            decode.setdefault(r["batch_size"], {})[r["system"]] = r
        for batch, rows in decode.items():
            for system, threshold in zip(ALIGNED, (BAR_X_PLAIN, BAR_X_PLAIN_RANDOM)):
                row, mode = best(rows, system, "x_plain")
                if row is not None:
                    label = f"{system} B={batch} >= {threshold:g}x plain ({mode})"
                    out.append(bar(name, label, threshold, row["x_plain"]))
            if name == BAR_MODEL and batch == BAR_BATCH:
                row, mode = best(rows, ALIGNED[1], "tokens_per_s")
                if row is not None:
                    label = f"aligned ({ALIGNED[1]}) B={batch} tokens/s >= {BAR_8B_TOKENS:g} ({mode})"
                    out.append(bar(name, label, BAR_8B_TOKENS, row["tokens_per_s"]))
    return out


def paper_rows(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The 8B shape's aligned decoding at batch 1 against the paper's 31.4 tokens/s, one row per system."""
    rows = []
    for r in models.get(BAR_MODEL, {}).get("decode", []):
        if r["batch_size"] == BAR_BATCH and r["system"].removesuffix(" captured") in ALIGNED:
            speed = r["tokens_per_s"]
            rows.append(
                dict(
                    system=r["system"],
                    tokens_per_s=speed,
                    paper_tokens_per_s=PAPER_TOKENS_PER_S,
                    x_paper=speed / PAPER_TOKENS_PER_S,
                )
            )
    return rows


def failures(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The failed sections of one model's result, with their errors."""
    return list(result.get("errors", {}).items())


def cell(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def busy_cell(busy: dict[str, Any] | None) -> str:
    if not busy:
        return ""
    if "skipped" in busy:
        return "skipped"
    return f"{busy['busy_share']:.0%} (kernel sum {busy['kernel_sum_share']:.0%})"


def stats_cell(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    text = f"{stats['captured']} / {stats['replayed']} / {stats['eager']}"
    return text + (f" (failed: {stats['failure']})" if stats.get("failure") else "")


def model_tables(report: dict[str, Any]) -> list[str]:
    """The models and their candidate sets; env throughput; decode speed."""
    lines = [
        "| model | parameters | hidden | scale | calibration set size mean / median "
        "| env sets: mean / p50 / p90 | single-candidate sets | sets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        c = m.get("calibration")
        if not c:
            continue
        s = m.get("candidate_sets") or {}
        sets = f"{s['mean']:.1f} / {s['p50']:.0f} / {s['p90']:.0f}" if s else ""
        lines.append(
            f"| {name} | {m['parameters'] / 1e6:,.1f}M | {m['hidden_size']} | {c['scale']:.3g} "
            f"| {c['mean_set_size']:.1f} / {c['median_set_size']:.0f} | {sets} "
            f"| {cell(s.get('single_share'), '.1%')} | {s.get('sets', '')} |"
        )
    lines += [
        "",
        "| model | strategy | chunk | decisions/s | tokens/s | x lazy batch-1 | x authors | x eager | forwards/step "
        "| aten ops/step | ops/forward | host syncs/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        for r in m.get("env", []):
            chunk = "" if r["chunk_size"] is None else str(r["chunk_size"])
            lines.append(
                f"| {name} | {r['strategy']} | {chunk} | {r['decisions_per_s']:.1f} | {r['tokens_per_s']:.1f} "
                f"| {r['x_lazy_b1']:.1f} | {r['x_authors']:.1f} | {cell(r.get('x_eager'), '.2f')} "
                f"| {cell(r['forwards_per_step'], '.2f')} | {cell(r.get('ops_per_step'), '.0f')} "
                f"| {cell(r.get('ops_per_forward'), '.0f')} | {cell(r.get('syncs_per_step'), '.2f')} |"
            )
    lines += [
        "",
        "| model | batch | system | answer tokens/s | x plain | x plain compiled | x eager "
        "| LLM tokens per answer token | forwards per token | aten ops per answer token | host syncs per token |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        for r in m.get("decode", []):
            lines.append(
                f"| {name} | {r['batch_size']} | {r['system']} | {r['tokens_per_s']:.1f} | {r['x_plain']:.2f} "
                f"| {cell(r.get('x_plain_compiled'), '.2f')} | {cell(r.get('x_eager'), '.2f')} "
                f"| {r['llm_tokens_per_answer_token']:.2f} | {cell(r.get('forwards_per_token'), '.2f')} "
                f"| {cell(r.get('ops_per_answer_token'), '.0f')} | {cell(r.get('syncs_per_token'), '.2f')} |"
            )
    return lines


def capture_table(report: dict[str, Any]) -> list[str]:
    """Captured rows' statistics and the GPU-busy shares, env and decode."""
    lines = [
        "| model | section | row | capture: captured / replayed / eager | GPU busy |",
        "|---|---|---|---|---|",
    ]
    found = False
    for name, m in report["models"].items():
        rows = [("env", r["strategy"], r) for r in m.get("env", [])]
        rows += [("decode", f"B={r['batch_size']} {r['system']}", r) for r in m.get("decode", [])]
        for section, label, r in rows:
            if r.get("capture_stats") or r.get("gpu_busy"):
                found = True
                lines.append(
                    f"| {name} | {section} | {label} | {stats_cell(r.get('capture_stats'))} "
                    f"| {busy_cell(r.get('gpu_busy'))} |"
                )
    checks = [(name, m["capture_check"]) for name, m in report["models"].items() if m.get("capture_check")]
    if checks:
        found = True
        lines += [
            "",
            "| model | captured vs eager, same decisions: steps with the same tokens | first different token "
            "| largest observation difference, norm relative to eager |",
            "|---|---:|---:|---:|",
        ]
        for name, c in checks:
            if "skipped" in c:
                lines.append(f"| {name} | skipped: {c['skipped']} | | |")
                continue
            first = "none" if c["first_token_difference"] is None else f"step {c['first_token_difference']}"
            lines.append(
                f"| {name} | {c['steps_agreed']} / {c['steps']} | {first} | {c['max_relative_obs_difference']:.2e} |"
            )
    return ["", *lines] if found else []


def markdown(report: dict[str, Any]) -> str:
    """The report's tables as markdown."""
    meta = report["meta"]
    lines = [
        f"GPU suite: {meta['device_name']} ({meta['device']}), {meta['dtype']}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}, {meta['date']}; {meta['wall_seconds']:.0f} s in all"
        + (" (smoke run: checks it runs, not what it measures)" if meta["smoke"] else ""),
        "",
        *model_tables(report),
        *capture_table(report),
    ]
    if report.get("paper"):
        lines += [
            "",
            "| 8B shape, batch 1, aligned | tokens/s | paper (tokens/s) | x paper |",
            "|---|---:|---:|---:|",
        ]
        for r in report["paper"]:
            lines.append(
                f"| {r['system']} | {r['tokens_per_s']:.1f} | {r['paper_tokens_per_s']:g} | {r['x_paper']:.2f} |"
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
    if meta.get("time_plan"):
        lines += ["", "| section | slice (s) | used (s) |", "|---|---:|---:|"]
        lines += [f"| {t['section']} | {t['slice_s']:.0f} | {t['used_s']:.0f} |" for t in meta["time_plan"]]
    skipped = [f"{name}: {'; '.join(m['skipped'])}" for name, m in report["models"].items() if m.get("skipped")]
    for name, m in report["models"].items():
        compiled = m.get("compiled_plain") or {}
        if compiled.get("skipped"):
            skipped.append(f"{name}: plain compiled ({compiled['skipped']})")
        if compiled.get("error"):
            skipped.append(f"{name}: plain compiled (failed: {compiled['error']})")
        reasons: dict[str, int] = {}
        for r in m.get("env", []) + m.get("decode", []):
            why = (r.get("gpu_busy") or {}).get("skipped")
            if why:
                reasons[why] = reasons.get(why, 0) + 1
        skipped += [f"{name}: GPU-busy share of {count} row(s) ({why})" for why, count in reasons.items()]
    errors = [f"{name} {section}: {error}" for name, m in report["models"].items() for section, error in failures(m)]
    errors += [f"SAC H={r['hidden']}: {r['error']}" for r in report["sac"] if r.get("error")]
    lines += ["", "Notes:", *(f"- {n}" for n in report["notes"])]
    lines += [f"- Skipped: {s}." for s in skipped]
    lines += [f"- Failed: {e}" for e in errors]
    return "\n".join(lines) + "\n"
