"""benchmarks/teacher_ablation.py's ``--merge`` adds arms to an earlier result only when the base LLM and best-of-2
answered as they did then."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import load_benchmark


@pytest.fixture
def ablation(monkeypatch):
    return load_benchmark("teacher_ablation", monkeypatch)


def _report(base_reward: float, bo2_reward: float, rate: float) -> dict:
    return {
        "systems": {
            "base": {"reward_mean": base_reward, "cost_mean": 0.1},
            "best-of-2": {"reward_mean": bo2_reward, "cost_mean": 0.05},
        },
        "comparisons": {"best-of-2": {"rate": rate}},
    }


def _earlier(with_base: bool) -> dict:
    meta = {"best_of_2": {"reward_mean": 0.8, "cost_mean": 0.05}, "best_of_2_vs_base": 0.35}
    if with_base:
        meta["base"] = {"reward_mean": 0.6, "cost_mean": 0.1}
    return {"meta": meta}


@pytest.mark.parametrize("with_base", [True, False])
def test_the_same_answers_merge(ablation, with_base):
    ablation.same_comparison(_earlier(with_base), _report(0.6, 0.8, 0.35), argparse.Namespace(merge=Path("e.json")))


def test_other_answers_are_refused_naming_what_differs(ablation):
    args = argparse.Namespace(merge=Path("e.json"))
    with pytest.raises(SystemExit, match=r"best-of-2 reward_mean: 0\.8 then, 0\.81 now.*drop --merge"):
        ablation.same_comparison(_earlier(False), _report(0.6, 0.81, 0.35), args)
    with pytest.raises(SystemExit, match=r"base reward_mean: 0\.6 then, 0\.59 now"):
        ablation.same_comparison(_earlier(True), _report(0.59, 0.8, 0.35), args)
    with pytest.raises(SystemExit, match=r"best-of-2 vs base: 0\.35 then, 0\.36 now"):
        ablation.same_comparison(_earlier(True), _report(0.6, 0.8, 0.36), args)


def test_an_arm_the_earlier_result_has_is_refused(ablation, tmp_path, capsys):
    earlier = tmp_path / "teacher_ablation.json"
    earlier.write_text('{"meta": {"arms": ["sac", "teacher"], "seeds": [100]}}')
    with pytest.raises(SystemExit):
        ablation.main(["--arms", "teacher", "--merge", str(earlier), "--out", str(tmp_path / "out")])
    assert "already has the arm(s) ['teacher']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_merged_table_says_which_arms_came_from_which_comparison(ablation):
    spread = {"mean": 0.2, "std": 0.01}
    arm = {k: spread for k in ("preference", "vs_best_of_2", "kl", "train_cpu_seconds")}
    arm["scorer_calls"] = {"mean": 0}
    result = {
        "meta": {
            "prompts": 96,
            "samples_per_prompt": 2,
            "decisions": 30000,
            "seeds": [100],
            "machine": {"torch_threads": 2},
            "arms": ["sac", "teacher+bc"],
            "created": "2026-12-05 21:06 UTC",
            "merged_from": {"created": "2026-12-05 16:05 UTC", "arms": ["sac"]},
        },
        "runs": [{"arm": "sac", "preference": 0.2}, {"arm": "teacher+bc", "preference": 0.1}],
        "arms": {"sac": arm, "teacher+bc": arm},
        "winner": "sac",
    }
    table = ablation.markdown(result)
    assert "| teacher+bc | **+20.0% ± 1.0** (+10.0%)" in table
    assert "The sac arm(s) come from the comparison of 2026-12-05 16:05 UTC; teacher+bc was decoded on" in table
    result["meta"]["merged_from"] = None
    assert "come from the comparison" not in ablation.markdown(result)
