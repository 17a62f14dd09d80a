"""benchmarks/win_conditions.py: the two conditions of a win (reward higher, cost lower) read from reports, per
system and per arm, agreeing with the preference rate the report computes (agents.evaluation.statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

from agents.evaluation.statistics import compare, preference_rate


@pytest.fixture
def wc(monkeypatch):
    return load_benchmark("win_conditions", monkeypatch)


# base, then two seeds of one arm and best-of-2, four pairs each: (reward, cost)
BASE = [(0.5, 0.10), (0.2, 0.02), (0.9, 0.01), (0.0, 0.30)]
SYSTEMS = {
    "arm-s1": [(0.6, 0.05), (0.1, 0.03), (0.9, 0.02), (0.5, 0.10)],  # win, loss, tie (equal reward), win
    "arm-s2": [(0.4, 0.20), (0.3, 0.01), (1.0, 0.00), (0.1, 0.40)],
    "best-of-2": [(-1.0, 0.5)] * 4,  # never the higher reward, never the lower cost
}


def _write(path: Path, systems: dict[str, list[tuple[float, float]]], with_kl: bool = True) -> Path:
    rows = [
        {"systems": {name: {"reward": pairs[i][0], "cost": pairs[i][1]} for name, pairs in systems.items()}}
        for i in range(len(BASE))
    ]
    kl = {name: {"kl_mean": 1.5 if name.startswith("arm") and with_kl else None} for name in systems}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "systems": kl}))
    return path


def test_conditions_match_the_preference_rate(wc, tmp_path):
    report = _write(tmp_path / "a" / "report.json", {"base": BASE, **SYSTEMS})
    systems = wc.read_reports([report], "base")
    rb, cb = np.array(BASE).T
    for name, pairs in SYSTEMS.items():
        r, c = np.array(pairs).T
        got = systems[name]
        assert got["pairs"] == 4
        assert got["reward_higher"] == pytest.approx(np.mean(r > rb))
        assert got["cost_lower"] == pytest.approx(np.mean(c < cb))
        assert got["preference"] == pytest.approx(preference_rate(compare(r, c, rb, cb)))
        assert got["wins"] - got["losses"] == pytest.approx(got["preference"])
    # arm-s1: reward higher on pairs 0 and 3, cost lower on both of them
    assert systems["arm-s1"]["cost_lower_given_reward_higher"] == 1.0
    # best-of-2 never has the higher reward: the conditional is undefined, not 0
    assert np.isnan(systems["best-of-2"]["cost_lower_given_reward_higher"])
    arms = wc.by_arm(systems)
    assert set(arms) == {"arm", "best-of-2"} and arms["arm"]["systems"] == 2
    expected = np.mean([systems["arm-s1"]["preference"], systems["arm-s2"]["preference"]])
    assert arms["arm"]["preference"] == pytest.approx(expected)
    assert arms["arm"]["kl"] == 1.5 and np.isnan(arms["best-of-2"]["kl"])


def test_the_first_report_of_a_system_counts_and_outputs_are_written(wc, tmp_path, capsys):
    first = _write(tmp_path / "a" / "report.json", {"base": BASE, **SYSTEMS})
    changed = {"base": BASE, "best-of-2": [(1.0, 0.0)] * 4, "other-s1": SYSTEMS["arm-s1"]}
    second = _write(tmp_path / "b" / "report.json", changed)
    out = tmp_path / "out"
    assert wc.main([str(first), str(second), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| best-of-2 | 1 | 0% | 0% | - | 0% | 100% | -100.0% | - |" in table and "| other | 1 |" in table
    result = json.loads((out / "win_conditions.json").read_text())  # strict JSON: undefined figures are null
    assert result["systems"]["best-of-2"]["report"] == str(first)
    assert result["arms"]["best-of-2"]["cost_lower_given_reward_higher"] is None
    assert (out / "win_conditions.md").read_text() == table.rstrip("\n") + "\n"
    assert (out / "win_conditions.png").stat().st_size > 0


def test_reports_without_rows_or_baseline_are_refused(wc, tmp_path, capsys):
    report = _write(tmp_path / "report.json", {"base": BASE, **SYSTEMS})
    assert wc.main([str(report), "--baseline", "nobody"]) == 2
    assert "no per-pair rows with a system 'nobody'" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert wc.main([str(broken)]) == 2
    assert "not a readable report.json" in capsys.readouterr().err
    assert wc.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json: not a readable report.json" in capsys.readouterr().err
