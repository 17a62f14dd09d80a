"""benchmarks/recipe_arms.py (and teacher_ablation.py, one preset of it): arms given as settings, ``--merge`` adding
arms to an earlier result only when the base LLM and best-of-2 answered as they did then, the winner within the KL
bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark


@pytest.fixture
def ablation(monkeypatch):
    return load_benchmark("recipe_arms", monkeypatch)


@pytest.fixture
def teacher(monkeypatch):
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
    ablation.same_comparison(_earlier(with_base), _report(0.6, 0.8, 0.35), Path("e.json"))


def test_other_answers_are_refused_naming_what_differs(ablation):
    args = Path("e.json")
    with pytest.raises(SystemExit, match=r"best-of-2 reward_mean: 0\.8 then, 0\.81 now.*drop --merge"):
        ablation.same_comparison(_earlier(False), _report(0.6, 0.81, 0.35), args)
    with pytest.raises(SystemExit, match=r"base reward_mean: 0\.6 then, 0\.59 now"):
        ablation.same_comparison(_earlier(True), _report(0.59, 0.8, 0.35), args)
    with pytest.raises(SystemExit, match=r"best-of-2 vs base: 0\.35 then, 0\.36 now"):
        ablation.same_comparison(_earlier(True), _report(0.6, 0.8, 0.36), args)


def test_an_arm_the_earlier_result_has_is_refused_before_any_work(teacher, tmp_path):
    earlier = tmp_path / "teacher_ablation.json"
    earlier.write_text('{"meta": {"arms": ["sac", "teacher"], "seeds": [100]}}')
    with pytest.raises(SystemExit, match=r"already has the arm\(s\) \['teacher'\]"):
        teacher.main(["--arms", "teacher", "--merge", str(earlier), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_merge_checks_the_set_up_and_the_kept_arms(ablation):
    earlier = {"meta": {"arms": ["sac", "teacher"], "seeds": [100], "decisions": 30000}}
    setup = {"seeds": [100], "decisions": 30000}
    assert ablation.check_merge(earlier, ["kl0.05"], None, setup, Path("e.json")) == ["sac", "teacher"]
    assert ablation.check_merge(earlier, ["kl0.05"], ["sac"], setup, Path("e.json")) == ["sac"]
    assert ablation.check_merge(earlier, ["teacher"], ["sac"], setup, Path("e.json")) == ["sac"]
    with pytest.raises(SystemExit, match=r"--keep \['ppo'\]: e.json has the arms \['sac', 'teacher'\]"):
        ablation.check_merge(earlier, ["kl0.05"], ["ppo"], setup, Path("e.json"))
    with pytest.raises(SystemExit, match=r"has decisions=30000, this run 15000; use the same"):
        ablation.check_merge(earlier, ["kl0.05"], None, {**setup, "decisions": 15000}, Path("e.json"))


def test_arms_are_settings_checked_before_any_work(ablation):
    arms = ablation.parse_arms([["default"], ["kl0.05", "env.kl_coef=0.05", "train.teacher=null"]])
    assert arms == {"default": {}, "kl0.05": {"env": {"kl_coef": 0.05}, "train": {"teacher": None}}}
    config = ablation.arm_config(arms["kl0.05"], 7, 1000, "kl0.05")
    assert (config.env["kl_coef"], config.train.seed, config.train.total_decisions) == (0.05, 7, 1000)
    with pytest.raises(SystemExit, match=r"'env.kl_coef' is not a setting: write SECTION.KEY=VALUE"):
        ablation.parse_arms([["kl", "env.kl_coef"]])
    with pytest.raises(SystemExit, match=r"--arm kl: .*kl_coef must be a finite number >= 0, got -1"):
        ablation.parse_arms([["kl", "env.kl_coef=-1"]])
    with pytest.raises(SystemExit, match=r"--arm env.kl_coef=0.05: an arm starts with its name"):
        ablation.parse_arms([["env.kl_coef=0.05"]])
    with pytest.raises(SystemExit, match=r"--arm a is given twice"):
        ablation.parse_arms([["a"], ["a", "env.kl_coef=0.05"]])


def test_the_teacher_presets_are_the_runs_settings(teacher):
    assert teacher.arm_settings("sac", 1.0, 64) == {"train": {"teacher": None}}
    assert teacher.arm_settings("teacher", 1.0, 64) == {
        "train": {"teacher": "args", "teacher_bc": 0.0, "teacher_prompts": 64}
    }
    assert teacher.arm_settings("teacher+bc", 0.5, 32)["train"]["teacher_bc"] == 0.5


def test_the_winner_stays_within_the_kl_bar(ablation):
    def arm(p, kl):
        return {"preference": {"mean": p}, "kl": {"mean": kl}}

    assert ablation.choose({"a": arm(0.2, 3.0), "b": arm(0.3, 6.0), "c": arm(0.25, 4.9)}, 5.0) == "c"
    assert ablation.choose({"b": arm(0.3, 6.0)}, 5.0) is None


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
    result["meta"]["arm_settings"] = {"sac": {}, "teacher+bc": {"train": {"teacher": "args", "teacher_bc": 1.0}}}
    table = ablation.markdown(result)
    assert "| sac | the default | **+20.0% ± 1.0** (+20.0%)" in table
    assert "| teacher+bc | `train.teacher=args`, `train.teacher_bc=1.0` | **+20.0% ± 1.0** (+10.0%)" in table
    assert (
        "Decoded in 2 comparisons and merged: sac on 2026-12-05 16:05 UTC; teacher+bc on 2026-12-05 21:06 UTC" in table
    )
    # a result merged again keeps each arm's own date in its runs
    result["runs"] = [{**r, "compared": ablation.compared_on(result, r["arm"])} for r in result["runs"]]
    result["runs"].append({"arm": "kl0.07", "preference": 0.3, "compared": "2026-12-06 00:00 UTC"})
    result["meta"].update(arms=["sac", "teacher+bc", "kl0.07"], merged_from={"created": "x", "arms": ["teacher+bc"]})
    result["arms"]["kl0.07"] = arm
    assert "3 comparisons and merged: sac on 2026-12-05 16:05 UTC; teacher+bc on 2026-12-05 21:06 UTC; kl0.07 on" in (
        ablation.markdown(result)
    )
    result["meta"]["merged_from"] = None
    result["runs"] = [{k: v for k, v in r.items() if k != "compared"} for r in result["runs"]]
    assert "comparisons and merged" not in ablation.markdown(result)
    result["winner"] = None
    assert "No arm has a mean KL <= 5 nats: no winner." in ablation.markdown(result)


def test_the_trade_off_line_is_fitted_over_every_run_with_a_kl(ablation):
    # preference = 0.1 + 0.02 KL exactly; a run without a KL is left out
    runs = [{"arm": "a", "kl": kl, "preference": 0.1 + 0.02 * kl} for kl in (2.0, 4.0, 8.0)]
    result = {"meta": {"kl_max": 5.0}, "runs": [*runs, {"arm": "b", "preference": 0.9}]}
    line = ablation.trade_off(result)
    assert line["slope"] == pytest.approx(0.02) and line["intercept"] == pytest.approx(0.1)
    assert line["at_kl_max"] == pytest.approx(0.2) and line["r"] == pytest.approx(1.0) and line["runs"] == 3
    assert ablation.trade_off({"meta": {}, "runs": runs[:2]}) is None  # two points always fit a line
    assert ablation.trade_off({"meta": {}, "runs": [{**r, "kl": 3.0} for r in runs]}) is None  # one KL: no slope


def test_redraw_writes_the_views_of_a_result_and_refuses_an_unreadable_file(ablation, tmp_path):
    spread = {"mean": 0.2, "std": 0.01}
    arm = {k: spread for k in ("preference", "vs_best_of_2", "kl", "train_cpu_seconds")}
    arm["scorer_calls"] = {"mean": 0}
    runs = [
        {"arm": "sac", "seed": s, "kl": 2.0 + s, "preference": 0.2 + 0.01 * s, "vs_best_of_2": 0.05} for s in range(3)
    ]
    result = {
        "meta": {
            "prompts": 96,
            "samples_per_prompt": 2,
            "decisions": 30000,
            "seeds": [0, 1, 2],
            "machine": {"torch_threads": 2},
            "arms": ["sac"],
            "arm_settings": {"sac": {}},
            "created": "2026-12-06 05:00 UTC",
            "merged_from": None,
        },
        "runs": runs,
        "arms": {"sac": arm},
        "winner": "sac",
    }
    path = tmp_path / "arms.json"
    path.write_text(json.dumps(result))
    ablation.main(["--redraw", str(path)])
    assert "+1.00 points per nat (r = 1.00); the line gives +23.0% at 5 nats." in (tmp_path / "arms.md").read_text()
    assert (tmp_path / "arms.png").stat().st_size > 0
    (tmp_path / "bad.json").write_text('{"meta": {}}')
    with pytest.raises(SystemExit, match=r"--redraw .*bad.json: not a readable recipe_arms result \(KeyError"):
        ablation.main(["--redraw", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):  # neither arms nor --redraw: argparse's usage error
        ablation.main([])
