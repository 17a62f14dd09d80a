"""run_comparison: base vs agents vs best-of-N on held-out prompts, written as a report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_PROMPTS

from agents.comparison import held_out_prompts, run_comparison
from mara_env.prompts import PromptSet

SETTINGS = dict(top_k=8, top_p=0.95, devices=["cpu"], batch_size=4)


def reject_first(obs: np.ndarray) -> np.ndarray:
    """Rejects most first candidates: answers differ from the base LLM's."""
    return np.full(obs.shape[0], 0.2)


def test_comparison_report(tiny_llm, tmp_path):
    report = run_comparison(
        {"mara": reject_first},
        tmp_path / "eval",
        llm=tiny_llm,
        prompts=TINY_PROMPTS,
        max_new_tokens=10,
        best_of=3,
        reward_model="length",
        cost_model=None,
        progress=False,
        **SETTINGS,
    )
    for name in ("report.json", "report.md", "accept_positions.png", "scores.png"):
        assert (tmp_path / "eval" / name).is_file()
    assert set(report["systems"]) == {"base", "mara", "best-of-3"}
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["comparisons"]["mara"]["rate"] == report["comparisons"]["mara"]["rate"]
    rows = [r["systems"] for r in report["rows"]]
    assert [r["prompt"] for r in report["rows"]] == TINY_PROMPTS
    # best-of-3 keeps the highest reward among 3 base answers, the first of which is the base's own
    for r in rows:
        assert r["best-of-3"]["reward"] >= r["base"]["reward"]
    # with no cost model, an answer wins on reward alone
    for r in rows:
        diff = r["mara"]["reward"] - r["base"]["reward"]
        assert r["mara"]["outcome"] == int(np.sign(diff))
    systems = report["systems"]
    assert systems["best-of-3"]["llm_tokens"] > 2 * systems["base"]["llm_tokens"]
    assert systems["mara"]["llm_tokens"] > 0


def test_best_of_auto_matches_agent_compute(tiny_llm, tmp_path):
    report = run_comparison(
        {"mara": reject_first},
        tmp_path / "eval",
        llm=tiny_llm,
        prompts=TINY_PROMPTS[:4],
        max_new_tokens=8,
        reward_model="length",
        cost_model=None,
        progress=False,
        **SETTINGS,
    )
    n = report["meta"]["best_of"]
    ratio = report["systems"]["mara"]["llm_tokens"] / report["systems"]["base"]["llm_tokens"]
    assert n == max(2, round(ratio))
    assert f"best-of-{n}" in report["systems"]


def test_held_out_prompts_are_never_training_prompts():
    test = held_out_prompts("default")
    train = PromptSet.from_source("default", part="train")
    assert test and not set(test) & {train[i] for i in range(len(train))}
    assert held_out_prompts("default", num_prompts=5) == test[:5]


def test_bad_arguments(tiny_llm, tmp_path):
    with pytest.raises(ValueError, match="agents is empty"):
        run_comparison({}, tmp_path, llm=tiny_llm)
    with pytest.raises(ValueError, match="reserved"):
        run_comparison({"base": reject_first}, tmp_path, llm=tiny_llm)
    with pytest.raises(ValueError, match="best_of must be"):
        run_comparison({"mara": reject_first}, tmp_path, llm=tiny_llm, best_of=-1)
    with pytest.raises(ValueError, match="num_prompts must be"):
        held_out_prompts("default", num_prompts=0)
