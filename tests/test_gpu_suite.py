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
from conftest import TINY_PROMPTS, build_tokenizer
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
    assert list(rows) == ["authors", "lazy batch-1", "mara N=1", "mara N=4", "mara N=4 wait"]
    for r in rows.values():
        assert _positive(r["decisions_per_s"]) and _positive(r["tokens_per_s"]), r
        assert r["decisions"] > 0 and r["seconds"] > 0
        assert r["x_lazy_b1"] == pytest.approx(r["decisions_per_s"] / rows["lazy batch-1"]["decisions_per_s"])
        assert r["x_authors"] == pytest.approx(r["decisions_per_s"] / rows["authors"]["decisions_per_s"])
    assert rows["lazy batch-1"]["x_lazy_b1"] == pytest.approx(1.0)
    for name in ("mara N=1", "mara N=4", "mara N=4 wait"):
        assert _positive(rows[name]["forwards_per_step"])
        assert rows[name]["chunk_size"] == "1"  # "auto" on CPU
    assert rows["authors"]["forwards_per_step"] is None


def test_decode_rows_cover_three_systems_at_each_batch_size(smoke):
    report, _, _ = smoke
    rows = report["models"]["tiny"]["decode"]
    systems = ["plain", "always-accept", "random agent (p=0.5)"]
    assert [(r["batch_size"], r["system"]) for r in rows] == [(b, s) for b in (1, 4) for s in systems]
    for r in rows:
        assert _positive(r["tokens_per_s"]) and _positive(r["x_plain"]) and _positive(r["llm_tokens_per_answer_token"])
        assert r["answer_tokens"] > 0
    assert [r["x_plain"] for r in rows if r["system"] == "plain"] == [pytest.approx(1.0)] * 2


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
    assert [b["threshold"] for b in report["bars"]] == [15.0, 100.0, 0.95, 0.95]
    assert set(bars) == {
        "N=4 decisions/s x lazy batch-1 >= 15",
        "N=4 decisions/s x authors >= 100",
        "always-accept B=1 >= 0.95x plain",
        "always-accept B=4 >= 0.95x plain",
    }
    env = {r["strategy"]: r for r in report["models"]["tiny"]["env"]}
    assert bars["N=4 decisions/s x authors >= 100"]["value"] == pytest.approx(env["mara N=4"]["x_authors"])
    for b in bars.values():
        assert b["ok"] == (b["value"] >= b["threshold"])
    for header in ("| model | strategy |", "| model | batch | system |", "| H | learner |", "| model | bar |"):
        assert header in table
    assert "| tiny | mara N=4 |" in table and "| tiny | 4 | random agent (p=0.5) |" in table
    assert "smoke run" in table and report["meta"]["smoke"] is True


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
    result = _run("--device", "cuda:7", "--models", "tiny", "--smoke")
    assert result.returncode != 0 and "cuda:7" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_section_is_recorded_and_the_report_still_written(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as running the script does: its siblings are importable
    spec = importlib.util.spec_from_file_location("gpu_suite_module", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
