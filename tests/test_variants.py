"""MARA-v0 task variants, and the algorithms benchmark run end to end on the tiny model."""

from __future__ import annotations

import json
import math
import sys

import pytest
from conftest import TINY_PROMPTS, load_benchmark

import mara_env
from agents.training.run_config import DEFAULT_RUN
from mara_env.config import MARAConfig
from mara_env.prompts import BUILTIN_PROMPT_SETS
from mara_env.variants import VARIANTS, variant_settings


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/algorithms.py`` as a module (benchmarks/ is not a package)."""
    with pytest.MonkeyPatch.context() as patch:
        yield load_benchmark("algorithms", patch)


# --------------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize("variant_id", list(VARIANTS))
def test_every_variant_is_a_valid_config(variant_id):
    settings = variant_settings(variant_id)
    config = MARAConfig.from_kwargs(settings)
    assert config.prompt_split == "train"  # the test part stays held out for evaluation
    assert settings["prompts"] in BUILTIN_PROMPT_SETS


def test_variants_are_documented_and_exported():
    doc = sys.modules["mara_env.variants"].__doc__
    table_ids = {line.split()[0] for line in doc.splitlines() if line.split() and line.split()[0] in VARIANTS}
    assert table_ids == set(VARIANTS)
    assert mara_env.VARIANTS is VARIANTS and mara_env.variant_settings is variant_settings


def test_variants_differ_as_named():
    base = VARIANTS["default"]
    changed = {vid: {k: v for k, v in s.items() if base[k] != v} for vid, s in VARIANTS.items() if vid != "default"}
    assert changed == {
        "harmful": {"prompts": "strongreject"},
        "benign": {"prompts": "benign"},
        "topk10": {"top_k": 10},
        "topk40": {"top_k": 40},
        "topp08": {"top_p": 0.8},
        "kl001": {"kl_coef": 0.01},
        "kl1": {"kl_coef": 1.0},
    }


def test_default_variant_is_the_default_run():
    default = variant_settings("default")
    for key, value in DEFAULT_RUN["env"].items():
        if key != "env_id":  # a variant is a task on either version; the version is named beside it
            assert default[key] == value, key


def test_variant_settings_returns_a_copy():
    settings = variant_settings("default")
    settings["top_k"] = 3
    assert VARIANTS["default"]["top_k"] == 50


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"Did you mean 'topk10'\?.*Variants: default, harmful"):
        variant_settings("topk1O")
    with pytest.raises(ValueError, match=r"Unknown MARA-v0 variant 'nothing-like-it'\. Variants:"):
        variant_settings("nothing-like-it")


# --------------------------------------------------------------------------------------------- benchmark


def test_budget_presets_and_flags(bench):
    assert set(bench.BUDGETS) == {"quick", "standard", "full"}
    args = bench.parse_args(["--budget", "standard", "--decisions", "100", "--compare-prompts", "all", "--seeds", "3"])
    budget = bench.budget_from_args(args)
    assert budget.decisions == 100 and budget.compare_prompts is None and budget.seeds == (3,)
    assert budget.num_envs == bench.BUDGETS["standard"].num_envs
    assert bench.budget_from_args(bench.parse_args(["--max-new-tokens", "variant"])).max_new_tokens is None
    with pytest.raises(ValueError, match="decisions"):
        bench.Budget(0, (0,), 4, 10, 2, 2, None, 10)


def test_fit_to_budget(bench):
    # The standard budget: PPO's rollout and the warm-ups shortened to a quarter of 6,000 decisions.
    assert bench.fit_to_budget("ppo", 6_000, 16) == {"n_steps": 64}
    assert bench.fit_to_budget("a2c", 6_000, 16) == {}
    assert bench.fit_to_budget("sac-discrete", 6_000, 16) == {"learning_starts": 1_500, "buffer_size": 6_016}
    assert bench.fit_to_budget("dqn", 200_000, 64) == {}
    assert bench.fit_to_budget("ppo", 300, 8) == {"n_steps": 8, "batch_size": 64}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_benchmark_end_to_end_and_resume(bench, tiny_llm, tmp_path):
    settings = dict(
        prompts=TINY_PROMPTS,
        prompt_split="train",
        test_fraction=0.25,  # 6 training prompts, 2 held out
        reward_model="length",
        cost_model="toxicity",
        max_new_tokens=10,
        top_k=8,
        top_p=0.95,
        devices=["cpu"],
    )
    budget = bench.Budget(
        decisions=192,
        seeds=(0,),
        num_envs=4,
        eval_every=96,
        eval_prompts=2,
        compare_prompts=2,
        max_new_tokens=None,
        log_every=64,
    )
    algos = ["ppo", "sac-discrete"]
    out = tmp_path / "bench"
    results = bench.run_benchmark(settings, algos, budget, out, llm=tiny_llm, variant="tiny", progress=False)

    for name in ("results.json", "results.md", "learning_curves.png"):
        assert (out / name).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == results["summary"]
    assert set(saved["runs"]) == set(algos) and saved["meta"]["task"] == "MARA-v1 / tiny"
    for algo in algos:
        run = saved["runs"][algo]["0"]
        assert run["decisions"] >= budget.decisions
        for key in ("preference_rate", "reward", "cost", "kl", "accept_first", "decisions_per_s", "wall_seconds"):
            assert _finite(run[key]), (algo, key, run[key])
        assert run["preference_ci_low"] <= run["preference_rate"] <= run["preference_ci_high"]
        curve = run["curve"]
        assert curve[0]["decisions"] == 0 and curve[-1]["decisions"] == run["decisions"] and len(curve) >= 3
        assert all(_finite(p["reward"]) and _finite(p["cost"]) for p in curve)
        assert math.isclose(sum(run["accept_positions"]), 1.0)
        assert _finite(saved["summary"][algo]["reward"]["mean"])
        assert (out / "runs" / algo / "seed0" / "comparison" / "report.md").is_file()
        assert (out / "runs" / algo / "seed0" / "progress.csv").is_file()
    assert saved["runs"]["ppo"]["0"]["budget_overrides"] == {"n_steps": 8, "batch_size": 32}
    table = (out / "results.md").read_text()
    assert "| ppo |" in table and "| sac-discrete |" in table and "nan" not in table.lower()

    # --resume reuses finished pairs without running them again
    stamp = (out / "runs" / "ppo" / "seed0" / "result.json").stat().st_mtime_ns
    again = bench.run_benchmark(settings, algos, budget, out, llm=tiny_llm, variant="tiny", resume=True, progress=False)
    assert again["meta"]["resumed_runs"] == ["ppo/seed0", "sac-discrete/seed0"]
    assert (out / "runs" / "ppo" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert again["summary"]["ppo"]["reward"] == saved["summary"]["ppo"]["reward"]

    # finished runs are never silently replaced, nor reused under other settings
    with pytest.raises(FileExistsError, match="--resume"):
        bench.run_benchmark(settings, algos, budget, out, llm=tiny_llm, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(settings\.kl_coef differ\)"):
        bench.run_benchmark({**settings, "kl_coef": 0.5}, algos, budget, out, llm=tiny_llm, resume=True, progress=False)
