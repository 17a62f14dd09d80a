"""run_comparison: base vs agents vs best-of-N on held-out prompts, written as a report."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from conftest import TINY_PROMPTS

from agents.evaluation.pipeline import SAMPLE_SEED_STRIDE, held_out_prompts, run_comparison, sample_seed
from agents.generation import MARAGenerator
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
    # with no cost model, an answer wins on reward alone
    for r in rows:
        diff = r["mara"]["reward"] - r["base"]["reward"]
        assert r["mara"]["outcome"] == int(np.sign(diff))
    systems = report["systems"]
    assert systems["best-of-3"]["llm_tokens"] > 2 * systems["base"]["llm_tokens"]
    assert systems["mara"]["llm_tokens"] > 0
    # scorer calls made to produce the answers: none for the base and agents, N per answer for best-of-N
    assert [systems[s]["scorer_calls_per_answer"] for s in ("base", "mara", "best-of-3")] == [0.0, 0.0, 3.0]
    assert systems["best-of-3"]["scorer_calls"] == 3 * len(TINY_PROMPTS)
    for c in report["comparisons"].values():
        assert c["reward_diff"]["ci_low"] <= c["reward_diff"]["mean"] <= c["reward_diff"]["ci_high"]


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
    with pytest.raises(ValueError, match="agents is empty and no args setting is given"):
        run_comparison({}, tmp_path, llm=tiny_llm)
    for name in ("base", "best-of-2", "args-w1-k10"):
        with pytest.raises(ValueError, match="reserved"):
            run_comparison({name: reject_first}, tmp_path, llm=tiny_llm)
    with pytest.raises(ValueError, match=r"args: unknown key\(s\) w; the keys are weight, k, sample"):
        run_comparison({}, tmp_path, llm=tiny_llm, args={"w": 1.0})
    with pytest.raises(ValueError, match="the same setting twice"):
        run_comparison({}, tmp_path, llm=tiny_llm, args=[{"weight": 1}, {"weight": 1.0}], **SETTINGS)
    with pytest.raises(ValueError, match="ARGS k must be an integer >= 1"):
        run_comparison({}, tmp_path, llm=tiny_llm, args={"k": 0}, **SETTINGS)
    with pytest.raises(ValueError, match="best_of must be"):
        run_comparison({"mara": reject_first}, tmp_path, llm=tiny_llm, best_of=-1)
    with pytest.raises(ValueError, match="num_prompts must be"):
        held_out_prompts("default", num_prompts=0)


def crc_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward unrelated to the base LLM's own choices: a fixed pseudo-random value per answer text."""
    return [zlib.crc32(r.encode()) % 1000 / 1000 for r in responses]


COMMON = dict(reward_model=crc_reward, cost_model=None, progress=False, **SETTINGS)


def test_best_of_n_draws_apart_from_the_base_and_can_lose(tiny_llm, tmp_path):
    samples, n = 2, 2
    report = run_comparison(
        {"mara": reject_first},
        tmp_path,
        llm=tiny_llm,
        prompts=TINY_PROMPTS,
        max_new_tokens=6,
        samples_per_prompt=samples,
        best_of=n,
        **COMMON,
    )
    rows = report["rows"]
    # The base system's own samples are the streams 0 .. S-1; best-of-N's candidates are streams S .. S + S*N - 1.
    gen = MARAGenerator(tiny_llm, None, top_k=8, top_p=0.95, devices=["cpu"], batch_size=4)
    own = [[g.text for g in gen.generate_raw(TINY_PROMPTS, 6, seed=sample_seed(0, j))] for j in range(samples)]
    assert [r["systems"]["base"]["response"] for r in rows] == [own[j][i] for i in range(8) for j in range(samples)]
    for j in range(samples):
        drawn = [
            [g.text for g in gen.generate_raw(TINY_PROMPTS, 6, seed=sample_seed(0, samples + j * n + m))]
            for m in range(n)
        ]
        for i in range(len(TINY_PROMPTS)):
            row = rows[i * samples + j]["systems"]
            values = crc_reward([], [drawn[0][i], drawn[1][i]])
            assert row["best-of-2"]["response"] == [drawn[0][i], drawn[1][i]][int(np.argmax(values))]
    # Not the base's own sample among the candidates, so best-of-N can lose a pair (here: a lower reward).
    pref = report["comparisons"]["best-of-2"]
    assert pref["losses"] > 0 and pref["wins"] > pref["losses"]
    assert any(r["systems"]["best-of-2"]["outcome"] == -1 for r in rows)
    assert report["systems"]["best-of-2"]["scorer_calls_per_answer"] == 2.0


def test_samples_per_prompt_pairs_sample_j_with_sample_j(tiny_llm, tmp_path):
    kwargs = dict(llm=tiny_llm, prompts=TINY_PROMPTS[:5], max_new_tokens=6, samples_per_prompt=3, best_of=0, **COMMON)
    report = run_comparison({"mara": reject_first}, tmp_path / "a", **kwargs)
    pref = report["comparisons"]["mara"]
    assert (pref["n"], pref["prompts"], pref["samples_per_prompt"]) == (15, 5, 3)
    assert pref["wins"] + pref["ties"] + pref["losses"] == 15
    rows = report["rows"]
    assert [(r["index"], r["sample"]) for r in rows[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert report["systems"]["mara"]["answers"] == report["systems"]["base"]["answers"] == 15
    for system in ("base", "mara"):  # independent samples: a prompt's answers differ between samples
        assert any(len({rows[3 * i + j]["systems"][system]["response"] for j in range(3)}) > 1 for i in range(5))
        for r in rows:
            assert r["systems"][system]["reward"] == crc_reward([], [r["systems"][system]["response"]])[0]
    # reproducible: the same seeds give the same report
    again = run_comparison({"mara": reject_first}, tmp_path / "b", **kwargs)
    assert again["rows"] == rows and again["comparisons"] == report["comparisons"]
    assert SAMPLE_SEED_STRIDE > 1000


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_samples_per_prompt_must_be_a_positive_integer(tiny_llm, tmp_path, bad):
    with pytest.raises(ValueError, match=r"samples_per_prompt must be an integer >= 1 .*got"):
        run_comparison({"mara": reject_first}, tmp_path, llm=tiny_llm, samples_per_prompt=bad)


def test_args_is_a_system_with_exact_scorer_calls(tiny_llm, tmp_path):
    report = run_comparison(
        {},
        tmp_path,
        llm=tiny_llm,
        prompts=TINY_PROMPTS[:4],
        max_new_tokens=6,
        samples_per_prompt=2,
        args=[{"weight": 5.0, "k": 3}, {"weight": 5.0, "k": 3, "sample": True}],
        **COMMON,
    )
    assert set(report["systems"]) == {"base", "args-w5-k3", "args-w5-k3-sample", "best-of-2"}
    assert report["meta"]["args"] == ["args-w5-k3", "args-w5-k3-sample"]
    greedy, sampled = report["systems"]["args-w5-k3"], report["systems"]["args-w5-k3-sample"]
    # k = 3 scored pairs per answer token; greedy ARGS is decoded once and its answers repeated per sample
    assert greedy["scorer_calls"] == 3 * greedy["response_tokens"]
    assert sampled["scorer_calls"] == 3 * sampled["response_tokens"]
    assert greedy["scorer_calls_per_answer"] == pytest.approx(3 * greedy["tokens_mean"])
    rows = report["rows"]
    greedy_rows = [r["systems"]["args-w5-k3"] for r in rows]
    assert all(greedy_rows[2 * i]["response"] == greedy_rows[2 * i + 1]["response"] for i in range(4))
    # ...compared with two different base samples
    assert any(
        rows[2 * i]["systems"]["base"]["response"] != rows[2 * i + 1]["systems"]["base"]["response"] for i in range(4)
    )
    # one LLM forward per answer token: the compute of plain decoding
    assert greedy["llm_tokens_per_response_token"] == pytest.approx(
        report["systems"]["base"]["llm_tokens_per_response_token"], rel=0.5
    )
    assert report["meta"]["best_of"] == 2  # "auto" without agents matches ARGS's compute, at least 2
