"""``benchmarks/gpu_suite.py`` in its CI-sized form: ``--device cpu --smoke`` on a 2-layer model.

The smoke run happens as on a bare GPU machine: in a fresh interpreter without site-packages
(``python -S``) whose path holds only torch, transformers, what they require and the packages
``--list-packages`` names (linked from this environment), plus the repository itself.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_PROMPTS, build_tokenizer, load_benchmark
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"


def _run(*args: str, site: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the suite; with ``site``, as on a bare machine: no site-packages, only ``site`` and the repository."""
    path = str(ROOT) if site is None else f"{site}{os.pathsep}{ROOT}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    flags = [] if site is None else ["-S"]
    return subprocess.run(
        [sys.executable, *flags, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def _closure(roots: list[str]) -> set[str]:
    """The installed distributions that ``roots`` require, recursively (extras left out), normalised."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


def _bare_site(folder: Path, distributions: set[str]) -> Path:
    """A folder of links to the files of ``distributions`` only (their modules and metadata)."""
    folder.mkdir()
    for name in distributions:
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []} - {".."}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run of the tiny model on a bare path: its report, its markdown and the packages listed."""
    tmp = tmp_path_factory.mktemp("gpu_suite")
    listed = _run("--list-packages")
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = [line.split("==")[0] for line in listed.stdout.split()]
    site = _bare_site(tmp / "site", _closure(["torch", "transformers", *names]))
    build_tokenizer().save_pretrained(tmp / "tokenizer")
    (tmp / "assets").mkdir()
    (tmp / "assets" / "default_prompts.json").write_text(json.dumps(TINY_PROMPTS))
    out = tmp / "out"
    result = _run(
        "--device", "cpu", "--smoke", "--models", "tiny", "--tokenizer", str(tmp / "tokenizer"),
        "--assets", str(tmp / "assets"), "--out", str(out), site=site,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    return report, (out / "gpu_suite.md").read_text(), listed.stdout.split()


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_env_rows_compare_every_strategy_with_both_baselines(smoke):
    report, _, _ = smoke
    rows = {r["strategy"]: r for r in report["models"]["tiny"]["env"]}
    assert list(rows) == ["authors", "lazy batch-1", "mara N=1", "mara N=4", "mara N=4 wait", "mara N=4 captured"]
    for r in rows.values():
        assert _positive(r["decisions_per_s"]) and _positive(r["tokens_per_s"]), r
        assert r["decisions"] > 0 and r["seconds"] > 0 and 0 < r["seconds_per_round"] <= 1.0
        assert r["x_lazy_b1"] == pytest.approx(r["decisions_per_s"] / rows["lazy batch-1"]["decisions_per_s"])
        assert r["x_authors"] == pytest.approx(r["decisions_per_s"] / rows["authors"]["decisions_per_s"])
    assert rows["lazy batch-1"]["x_lazy_b1"] == pytest.approx(1.0)
    for name in ("mara N=1", "mara N=4", "mara N=4 wait", "mara N=4 captured"):
        assert _positive(rows[name]["forwards_per_step"]) and _positive(rows[name]["ops_per_step"])
        assert rows[name]["chunk_size"] == "1"  # "auto" on CPU
    assert rows["authors"]["forwards_per_step"] is None


def test_the_captured_env_row_runs_static_shapes_eagerly_on_a_cpu(smoke):
    report, table, _ = smoke
    rows = {r["strategy"]: r for r in report["models"]["tiny"]["env"]}
    captured, eager = rows["mara N=4 captured"], rows["mara N=4"]
    assert captured["x_eager"] == pytest.approx(captured["decisions_per_s"] / eager["decisions_per_s"])
    stats = captured["capture_stats"]
    assert stats["captured"] == stats["replayed"] == 0 and stats["eager"] > 0 and stats["failure"] is None
    assert eager["capture_stats"] is None and eager["x_eager"] is None
    # the GPU-busy share: profiled on CUDA only, here skipped with the reason
    for row in (captured, eager):
        assert "no CUDA device" in row["gpu_busy"]["skipped"]
    assert rows["mara N=1"]["gpu_busy"] is None  # only the largest N is profiled
    assert "| tiny | env | mara N=4 captured | 0 / 0 / " in table and "GPU-busy share of" in table


def test_the_capture_check_steps_eager_and_captured_envs_together(smoke):
    report, table, _ = smoke
    check = report["models"]["tiny"]["capture_check"]
    # the smoke run is bfloat16: the same tokens all the way, observations equal to bfloat16 rounding (on this
    # calibrated 2-layer model eager bfloat16 itself is 0.5-5% away from float32; captured vs eager 0.1-3.4%, and
    # 1.6e-7 in float32)
    assert check["steps_agreed"] == check["steps"] and check["first_token_difference"] is None
    assert check["max_relative_obs_difference"] < 0.1 and check["capture_stats"]["eager"] > 0
    assert f"| tiny | {check['steps']} / {check['steps']} | none |" in table


def test_candidate_set_sizes_over_the_env_steps(smoke):
    report, table, _ = smoke
    sets = report["models"]["tiny"]["candidate_sets"]
    assert sets["sets"] > 0 and 1 <= sets["p50"] <= sets["p90"] <= 50 and 1 <= sets["mean"] <= 50
    assert 0 <= sets["single_share"] <= 1 and 0 <= sets["top_k_share"] <= 1
    assert f"| {sets['sets']} |" in table


def test_decode_rows_cover_every_system_at_each_batch_size(smoke):
    report, _, _ = smoke
    model = report["models"]["tiny"]
    rows = model["decode"]
    systems = ["plain", "always-accept", "always-accept captured", "random agent (p=0.5)"]
    systems.append("random agent (p=0.5) captured")
    assert [(r["batch_size"], r["system"]) for r in rows] == [(b, s) for b in (1, 4) for s in systems]
    for r in rows:
        assert _positive(r["tokens_per_s"]) and _positive(r["x_plain"]) and _positive(r["llm_tokens_per_answer_token"])
        assert r["answer_tokens"] > 0 and _positive(r["forwards_per_token"]) and _positive(r["ops_per_answer_token"])
        assert r["x_plain_compiled"] is None  # no compiled baseline on a CPU
    assert [r["x_plain"] for r in rows if r["system"] == "plain"] == [pytest.approx(1.0)] * 2
    # the compiled plain baseline is skipped on a CPU, with the reason
    assert "not on CUDA" in model["compiled_plain"]["skipped"]
    by = {(r["batch_size"], r["system"]): r for r in rows}
    for b in (1, 4):
        for name in ("always-accept", "random agent (p=0.5)"):
            captured, eager = by[(b, f"{name} captured")], by[(b, name)]
            assert captured["x_eager"] == pytest.approx(captured["tokens_per_s"] / eager["tokens_per_s"])
            stats = captured["capture_stats"]
            assert stats["captured"] == stats["replayed"] == 0 and stats["eager"] > 0  # static shapes, eagerly
            assert captured["generate_calls"] == 1 and eager["capture_stats"] is None
        assert "no CUDA device" in by[(b, "random agent (p=0.5) captured")]["gpu_busy"]["skipped"]


def test_every_section_ran_in_its_slice_of_the_budget(smoke):
    report, table, _ = smoke
    plan = report["meta"]["time_plan"]
    assert [t["section"] for t in plan] == ["tiny build", "tiny env", "tiny decode", "tiny shaping", "sac"]
    assert all(t["slice_s"] > 0 and t["used_s"] >= 0 for t in plan)
    # the first slice: its weight's share of the whole budget (build 0.4 of 0.4 + 1 + 1 + 1 + 0.6)
    assert plan[0]["slice_s"] == pytest.approx(report["meta"]["args"]["budget_s"] * 0.4 / 4.0, rel=0.05)
    assert "| section | slice (s) | used (s) |" in table and "- Skipped: tiny: plain compiled (not on CUDA" in table


def test_the_shaping_section_times_a_causal_score_model_beside_the_llm(smoke):
    report, markdown, _ = smoke
    r = report["models"]["tiny"]["shaping"]
    assert r["score_model"] == "tiny" and r["num_envs"] == 4 and r["incremental"] is True
    assert _positive(r["unshaped_decisions_per_s"]) and _positive(r["shaped_decisions_per_s"])
    assert r["x_unshaped"] == pytest.approx(r["shaped_decisions_per_s"] / r["unshaped_decisions_per_s"])
    # scored incrementally: fewer tokens than full re-scoring of every grown prefix would have run
    assert 0 < r["score_tokens_run"] < r["score_tokens_full"]
    assert "| tiny | tiny | 4 |" in markdown


def test_calibration_reaches_the_target_mean_set_size(smoke):
    report, _, _ = smoke
    model = report["models"]["tiny"]
    cal = model["calibration"]
    assert cal["mean_set_size"] == pytest.approx(23.0, abs=0.5)
    assert 1 <= cal["median_set_size"] <= 50 and _positive(cal["scale"]) and cal["positions"] > 0
    assert model["hidden_size"] == 64 and model["layers"] == 2 and model["vocab_size"] == len(build_tokenizer())


def test_learner_rows_at_each_observation_size(smoke):
    report, _, _ = smoke
    rows = report["sac"]
    assert [(r["hidden"], r["learner"]) for r in rows] == [
        (h, name) for h in (64, 256) for name in ("DiscreteSAC", "SB3 SAC")
    ]  # the smoke size and the model's hidden size
    for r in rows:
        assert _positive(r["gradient_steps_per_s"]) and r["gradient_steps"] > 0
    assert [r["x_sb3_sac"] for r in rows if r["learner"] == "SB3 SAC"] == [pytest.approx(1.0)] * 2


def test_bars_and_markdown(smoke):
    report, table, _ = smoke
    bars = {b["bar"]: b for b in report["bars"]}
    assert [b["threshold"] for b in report["bars"]] == [15.0, 100.0, 0.95, 0.6, 0.95, 0.6]
    assert set(bars) >= {"N=4 decisions/s x lazy batch-1 >= 15", "N=4 decisions/s x authors >= 100"}
    env = {r["strategy"]: r for r in report["models"]["tiny"]["env"]}
    assert bars["N=4 decisions/s x authors >= 100"]["value"] == pytest.approx(env["mara N=4"]["x_authors"])
    decode = {(r["batch_size"], r["system"]): r for r in report["models"]["tiny"]["decode"]}
    for b in (1, 4):  # the better of eager and captured, named
        (label,) = [k for k in bars if k.startswith(f"random agent (p=0.5) B={b} >= 0.6x plain")]
        eager, captured = decode[(b, "random agent (p=0.5)")], decode[(b, "random agent (p=0.5) captured")]
        assert bars[label]["value"] == pytest.approx(max(eager["x_plain"], captured["x_plain"]))
    for b in bars.values():
        assert b["ok"] == (b["value"] >= b["threshold"])
    for header in ("| model | strategy |", "| model | batch | system |", "| H | learner |", "| model | bar |"):
        assert header in table
    assert "| tiny | mara N=4 |" in table and "| tiny | 4 | random agent (p=0.5) |" in table
    assert "smoke run" in table and report["meta"]["smoke"] is True
    assert report["paper"] == []  # the 8B shape's row only


@pytest.fixture
def bench(monkeypatch):
    """The benchmark modules, imported as running the script does (its siblings importable)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return lambda name: importlib.import_module(name)


def test_issue_25_bars_and_the_paper_row_for_the_8b_shape(bench):
    report = bench("gpu_report")
    env = [
        dict(strategy="mara N=32", decisions_per_s=1200.0, x_lazy_b1=20.0, x_authors=150.0),
        dict(strategy="mara N=32 captured", decisions_per_s=1600.0, x_lazy_b1=26.0, x_authors=200.0),
    ]
    decode = [
        dict(system=s, batch_size=1, tokens_per_s=v, x_plain=v / 40.0)
        for s, v in (("plain", 40.0), ("random agent (p=0.5)", 30.0), ("random agent (p=0.5) captured", 120.0))
    ]
    bars = {b["bar"]: b for b in report.bars({"llama-8b": dict(env=env, decode=decode)}, 32)}
    assert bars["N=32 decisions/s >= 1,500 (captured)"]["ok"] is True
    assert bars["N=32 decisions/s x lazy batch-1 >= 15"]["value"] == 20.0  # the eager row
    assert bars["aligned (random agent (p=0.5)) B=1 tokens/s >= 100 (captured)"]["value"] == 120.0
    assert bars["random agent (p=0.5) B=1 >= 0.6x plain (captured)"]["value"] == pytest.approx(3.0)
    paper = report.paper_rows({"llama-8b": dict(decode=decode)})
    assert [(r["system"], r["x_paper"]) for r in paper] == [
        ("random agent (p=0.5)", pytest.approx(30.0 / 31.4)),
        ("random agent (p=0.5) captured", pytest.approx(120.0 / 31.4)),
    ]
    assert not [b for b in report.bars({"llama-1b": dict(env=env, decode=decode)}, 32) if "1,500" in b["bar"]]


def test_the_budget_shares_out_what_is_left(bench, monkeypatch):
    sections = bench("gpu_sections")
    now = [0.0]
    monkeypatch.setattr(sections.time, "perf_counter", lambda: now[0])
    budget = sections.Budget(100.0)
    budget.plan([("a", 1.0), ("b", 3.0), ("c", 1.0)])
    a = budget.slice("a")
    assert a.seconds == pytest.approx(20.0)
    now[0] = 40.0  # a overran by 20 s: b and c share the 60 s left, 3 to 1
    a.close()
    assert budget.overruns() == ["a +20 s"]
    b = budget.slice("b")
    assert b.seconds == pytest.approx(45.0) and b.left()
    now[0] = 90.0
    assert not b.left()
    b.skip("b round 2")
    assert b.skipped == ["b round 2 (its slice of 45 s spent)"]
    budget.drop("c")
    assert budget.pending == {} and budget.left()


def test_the_profiler_parts(bench):
    import torch

    profile = bench("gpu_profile")
    assert profile.union_seconds([(0, 2e6), (1e6, 3e6), (5e6, 6e6)]) == pytest.approx(4.0)
    assert "no CUDA device" in profile.busy_share(lambda: None, 2, torch.device("cpu"))["skipped"]
    # the events' parsing, on the CPU's own ops (a CUDA run reads the GPU's)
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(64, 64) @ torch.ones(64, 64)
    busy, summed, count = profile.device_time(prof.events(), DeviceType.CPU)
    assert count > 0 and 0 < busy <= summed


def test_set_sizes_read_every_episode_to_its_end(bench):
    from types import SimpleNamespace

    profile = bench("gpu_profile")
    first, other = SimpleNamespace(set_sizes=[5, 1]), SimpleNamespace(set_sizes=[3])
    decoder = SimpleNamespace(rows=[first, other])
    sets = profile.SetSizes()
    sets.observe(decoder)
    first.set_sizes += [1, 7]  # the episode takes two more sets, then ends: a new one took one set
    decoder.rows[0] = SimpleNamespace(set_sizes=[2])
    sets.observe(decoder)
    assert sorted(sets.sizes) == [1, 1, 2, 3, 5, 7]
    summary = sets.summary(top_k=7)
    assert summary["sets"] == 6 and summary["single_share"] == pytest.approx(2 / 6)
    assert summary["top_k_share"] == pytest.approx(1 / 6) and summary["p50"] == pytest.approx(2.5)


def test_it_runs_with_only_torch_transformers_and_the_listed_packages(smoke):
    report, _, listed = smoke
    names = [line.split("==")[0] for line in listed]
    assert names == ["gymnasium", "stable-baselines3", "cloudpickle", "farama-notifications"]
    assert all(importlib.metadata.version(n) == line.split("==")[1] for n, line in zip(names, listed))
    # the run had nothing else (the fixture's bare path): each listed package was needed and loaded
    loaded = {d.lower().replace("_", "-") for d in report["meta"]["distributions_loaded"]}
    assert {"torch", "transformers", *names} <= loaded
    assert loaded <= _closure(["torch", "transformers", *names])


def test_bad_arguments_exit_with_a_message():
    result = _run("--device", "cpu", "--seconds", "0")
    assert result.returncode == 2 and "--seconds must be > 0, got 0.0" in result.stderr
    result = _run("--device", "cpu", "--compiled-plain", "llama-9b")
    assert result.returncode == 2 and "--compiled-plain: ['llama-9b']" in result.stderr
    result = _run("--device", "cpu", "--capture", "always")
    assert result.returncode == 2 and "--capture" in result.stderr
    result = _run("--device", "cuda:7", "--models", "tiny", "--smoke")
    assert result.returncode != 0 and "cuda:7" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_section_is_recorded_and_the_report_still_written(monkeypatch):
    module = load_benchmark("gpu_suite", monkeypatch)
    result: dict = {}
    assert module.Suite.guarded(None, result, "env", lambda: 1 / 0) is None
    assert result["errors"] == {"env": "ZeroDivisionError: division by zero"} and "env" in result["section_seconds"]
    report = dict(
        meta=dict(device="cuda:0", device_name="GPU", dtype="bfloat16", torch="2", transformers="5", date="d",
                  wall_seconds=1.0, smoke=False),
        models={"llama-8b": dict(skipped=["decode"], env=[], **result)},
        sac=[dict(hidden=4096, skipped="failed", error="RuntimeError: boom")],
        bars=[],
        notes=["a note"],
    )  # fmt: skip
    table = module.markdown(report)
    assert "- Failed: llama-8b env: ZeroDivisionError: division by zero" in table
    assert "- Failed: SAC H=4096: RuntimeError: boom" in table and "llama-8b: decode" in table
    assert "| section |" not in table and "| 8B shape" not in table  # no time plan, no paper rows given
