"""Tests for agents.evaluation: win/tie/lose, preference rate, bootstrap intervals and reports (no LLM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.evaluation import (
    MeanDifference,
    Preference,
    SystemResult,
    accept_position_counts,
    bootstrap_ci,
    compare,
    mean_difference,
    preference,
    preference_rate,
    write_report,
)

# --------------------------------------------------------------------------- compare


def test_compare_hand_computed_cases() -> None:
    # (reward_a, cost_a, reward_b, cost_b, expected)
    cases = [
        (2.0, -1.0, 1.0, 0.0, 1),  # more helpful and safer: win
        (0.0, 1.0, 1.0, 0.0, -1),  # less helpful and less safe: loss
        (1.0, -5.0, 1.0, 0.0, 0),  # equal reward, safer: tie
        (2.0, 1.0, 1.0, 0.0, 0),  # more helpful but also more cost: tie
        (0.0, -1.0, 1.0, 0.0, 0),  # a refusal: safer but less helpful: tie
        (2.0, 0.0, 1.0, 0.0, 0),  # equal cost: tie
        (1.0, 0.0, 1.0, 0.0, 0),  # identical: tie
        (0.0, 5.0, 1.0, 5.0, 0),  # less helpful, equal cost: tie
    ]
    ra, ca, rb, cb, expected = (list(column) for column in zip(*cases))
    outcomes = compare(ra, ca, rb, cb)
    assert outcomes.dtype == np.int8
    assert outcomes.tolist() == expected
    # Swapping the systems flips every outcome.
    assert compare(rb, cb, ra, ca).tolist() == [-e for e in expected]


def test_compare_accepts_numpy_and_tuples() -> None:
    out = compare(np.array([1.0, 2.0]), (0.0, 0.0), [0, 3], np.array([1, -1], dtype=np.int32))
    assert out.tolist() == [1, -1]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0]), r"lengths differ.*reward_a=3.*cost_b=2"),
        (([], [], [], []), r"empty"),
        (([1.0, 2.0], [0.0, 0.0], [1.0, 2.0], [0.0, np.nan]), r"cost_b\[1\] is nan.*drop it from both"),
        (([1.0, np.inf], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]), r"reward_a\[1\] is inf"),
        (([[1.0], [2.0]], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]), r"reward_a must be 1-D.*shape \(2, 1\)"),
        ((1.0, 0.0, 1.0, 0.0), r"reward_a must be 1-D"),
        ((["a", "b"], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]), r"reward_a must be a 1-D sequence of numbers"),
    ],
)
def test_compare_rejects_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compare(*args)


# --------------------------------------------------------------------------- preference rate


def test_preference_rate_on_known_counts() -> None:
    outcomes = [1] * 40 + [0] * 95 + [-1] * 22
    assert preference_rate(outcomes) == pytest.approx(18 / 157)
    # Paper table 7: MARA on Llama 3-8B, SafeRLHF: 93 wins, 80 ties, 26 losses -> +33.67% (table 1).
    paper = np.array([1] * 93 + [0] * 80 + [-1] * 26)
    assert round(100 * preference_rate(paper), 2) == 33.67
    assert preference_rate([1, 1]) == 1.0
    assert preference_rate([-1]) == -1.0
    assert preference_rate([0, 0, 0]) == 0.0


@pytest.mark.parametrize(
    ("outcomes", "match"),
    [
        ([], r"outcomes is empty"),
        ([1, 2, 0], r"outcomes\[1\] is 2.*compare\(\)"),
        ([[1, 0]], r"outcomes must be 1-D"),
        ([1, np.nan], r"outcomes\[1\] is nan"),
    ],
)
def test_preference_rate_rejects_bad_outcomes(outcomes: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        preference_rate(outcomes)


# --------------------------------------------------------------------------- bootstrap


def _outcomes(wins: int, ties: int, losses: int) -> np.ndarray:
    return np.array([1] * wins + [0] * ties + [-1] * losses, dtype=np.int8)


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    outcomes = _outcomes(40, 95, 22)
    low, high = bootstrap_ci(outcomes, seed=3)
    assert -1.0 <= low < preference_rate(outcomes) < high <= 1.0
    assert bootstrap_ci(outcomes, seed=3) == (low, high)


def test_bootstrap_ci_narrows_with_more_prompts() -> None:
    small = _outcomes(8, 19, 4)
    large = np.tile(small, 10)  # same rate, ten times the prompts
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert high_l - low_l < 0.5 * (high_s - low_s)
    # Width of a mean's interval shrinks like 1/sqrt(n): sqrt(10) ~ 3.2.
    assert (high_s - low_s) / (high_l - low_l) == pytest.approx(np.sqrt(10), rel=0.2)


def test_bootstrap_ci_matches_resampling_prompts_directly() -> None:
    # Drawing multinomial counts must give the same interval as resampling the prompt indices.
    outcomes = _outcomes(50, 110, 40)
    rng = np.random.default_rng(1)
    indices = rng.integers(0, outcomes.size, size=(20_000, outcomes.size))
    direct = np.quantile(outcomes[indices].mean(axis=1), [0.025, 0.975])
    low, high = bootstrap_ci(outcomes, n_resamples=20_000)
    assert low == pytest.approx(direct[0], abs=0.011)
    assert high == pytest.approx(direct[1], abs=0.011)


def test_bootstrap_ci_coverage() -> None:
    # 200 data sets of 120 prompts from a known outcome distribution; the 90% interval should
    # cover the true rate about 90% of the time.
    probabilities = np.array([0.30, 0.50, 0.20])  # win, tie, loss
    true_rate = probabilities[0] - probabilities[2]
    rng = np.random.default_rng(123)
    covered = 0
    for k in range(200):
        outcomes = rng.choice(np.array([1, 0, -1]), size=120, p=probabilities)
        low, high = bootstrap_ci(outcomes, level=0.90, n_resamples=1000, seed=k)
        covered += low <= true_rate <= high
    assert 0.80 <= covered / 200 <= 0.97


def test_bootstrap_ci_all_ties_is_degenerate() -> None:
    assert bootstrap_ci([0] * 20) == (0.0, 0.0)


def _old_bootstrap(outcomes: np.ndarray, level: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """The bootstrap as it was before prompts could have several samples (one outcome per prompt)."""
    n = outcomes.size
    frequencies = np.array([np.sum(outcomes == v) for v in (1, 0, -1)], dtype=np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, frequencies, size=n_resamples)
    low, high = np.quantile((counts[:, 0] - counts[:, 2]) / n, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def test_cluster_bootstrap_with_one_sample_per_prompt_is_the_plain_bootstrap() -> None:
    outcomes = _outcomes(40, 95, 22)
    expected = _old_bootstrap(outcomes, 0.95, 10_000, 3)
    assert bootstrap_ci(outcomes, seed=3) == expected
    assert bootstrap_ci(outcomes, seed=3, groups=np.arange(outcomes.size)[::-1]) == expected
    assert preference(outcomes, seed=3, groups=np.arange(outcomes.size)).prompts == 157


def test_cluster_bootstrap_keeps_each_prompts_pairs_together() -> None:
    # 50 prompts x 4 samples. Correlated: a prompt's 4 pairs share one outcome, so there are only 50
    # independent outcomes and the honest interval is sqrt(4) = 2x the per-pair one.
    per_prompt = _outcomes(20, 20, 10)
    correlated = np.repeat(per_prompt, 4)
    groups = np.repeat(np.arange(50), 4)
    low_c, high_c = bootstrap_ci(correlated, groups=groups)
    low_p, high_p = bootstrap_ci(correlated)  # as if the 200 pairs were independent prompts
    assert (high_c - low_c) / (high_p - low_p) == pytest.approx(2.0, rel=0.15)
    assert (low_c, high_c) == bootstrap_ci(per_prompt)  # resampling prompts: the 4 copies add nothing
    # Anti-correlated: every prompt has 2 wins and 2 losses, so every resample of prompts has rate 0.
    balanced = np.tile([1, 1, -1, -1], 50)
    assert bootstrap_ci(balanced, groups=groups) == (0.0, 0.0)
    assert bootstrap_ci(balanced)[1] - bootstrap_ci(balanced)[0] > 0.2


def test_cluster_bootstrap_matches_resampling_prompts_directly() -> None:
    rng = np.random.default_rng(5)
    outcomes = rng.choice(np.array([1, 0, -1]), size=(60, 3), p=[0.4, 0.4, 0.2])  # 60 prompts x 3 samples
    outcomes[:20] = outcomes[:20, :1]  # some prompts with equal samples, so pairs are not independent
    draws = rng.integers(0, 60, size=(20_000, 60))
    direct = np.quantile(outcomes[draws].mean(axis=(1, 2)), [0.025, 0.975])
    # groups as arbitrary labels, with the pairs shuffled: only which pairs share a prompt matters
    order = rng.permutation(180)
    labels = (np.repeat(np.arange(60), 3) * 7 + 100)[order]
    low, high = bootstrap_ci(outcomes.ravel()[order], n_resamples=20_000, groups=labels)
    assert low == pytest.approx(direct[0], abs=0.012)
    assert high == pytest.approx(direct[1], abs=0.012)
    # prompts with different numbers of pairs: a resample's rate is (wins - losses) / its pairs
    ragged = np.array([1, 1, 1, 0, -1, 0, 1, -1, -1, 0] * 6)
    ragged_groups = np.repeat(np.arange(30), [1, 3] * 15)
    starts = np.concatenate([[0], np.cumsum(np.bincount(ragged_groups))[:-1]])
    sums, sizes = np.add.reduceat(ragged, starts), np.bincount(ragged_groups)
    picks = rng.integers(0, 30, size=(20_000, 30))
    direct = np.quantile(sums[picks].sum(1) / sizes[picks].sum(1), [0.025, 0.975])
    low, high = bootstrap_ci(ragged, n_resamples=20_000, groups=ragged_groups)
    assert (low, high) == pytest.approx(tuple(direct), abs=0.02)


def test_bootstrap_groups_must_label_every_outcome() -> None:
    with pytest.raises(ValueError, match=r"groups must give one prompt label per outcome \(3\); got shape \(2,\)"):
        bootstrap_ci([1, 0, -1], groups=[0, 1])


def test_mean_difference_interval_contains_the_true_difference() -> None:
    rng = np.random.default_rng(0)
    prompts, samples = 80, 3
    base = rng.normal(0.0, 1.0, prompts * samples)
    system = base + 0.3 + rng.normal(0.0, 0.5, prompts * samples)  # true mean difference 0.3
    groups = np.repeat(np.arange(prompts), samples)
    diff = mean_difference(system, base, groups=groups)
    assert isinstance(diff, MeanDifference)
    assert diff.mean == pytest.approx(np.mean(system - base))
    assert diff.ci_low < 0.3 < diff.ci_high and diff.ci_low > 0.0
    assert str(diff) == f"{diff.mean:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]"
    # a constant difference is known exactly
    assert mean_difference(base + 0.25, base).to_dict() == pytest.approx(
        {"mean": 0.25, "ci_low": 0.25, "ci_high": 0.25, "level": 0.95, "n_resamples": 10_000}
    )


def test_mean_difference_covers_when_samples_of_a_prompt_are_correlated() -> None:
    # difference = 0.2 + prompt effect (shared by its 4 samples) + noise. Resampling prompts covers the
    # truth about as often as asked; treating the pairs as independent is overconfident.
    rng = np.random.default_rng(11)
    prompts, samples, true = 40, 4, 0.2
    groups = np.repeat(np.arange(prompts), samples)
    covered = {"prompts": 0, "pairs": 0}
    for k in range(200):
        d = true + np.repeat(rng.normal(0.0, 1.0, prompts), samples) + rng.normal(0.0, 0.3, prompts * samples)
        for name, g in (("prompts", groups), ("pairs", None)):
            diff = mean_difference(d, np.zeros_like(d), level=0.9, n_resamples=1000, seed=k, groups=g)
            covered[name] += diff.ci_low <= true <= diff.ci_high
    assert 0.8 <= covered["prompts"] / 200 <= 0.97
    assert covered["pairs"] / 200 < 0.75


def test_mean_difference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"same non-zero number of values.*got 3 and 2"):
        mean_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"values_b must be 1-D"):
        mean_difference([1.0], [[1.0]])
    with pytest.raises(ValueError, match=r"pair 1 has a non-finite difference"):
        mean_difference([1.0, np.nan], [0.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": 1.0}, r"level must lie strictly between 0 and 1"),
        ({"level": 0.0}, r"level must lie strictly between 0 and 1"),
        ({"level": 95}, r"level must lie strictly between 0 and 1"),
        ({"n_resamples": 50}, r"n_resamples=50 is too few.*at least 100"),
        ({"n_resamples": 1000.5}, r"n_resamples must be an integer"),
    ],
)
def test_bootstrap_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_ci([1, 0, -1], **kwargs)
    with pytest.raises(ValueError, match=match):
        preference([1, 0, -1], **kwargs)


def test_preference_dataclass() -> None:
    pref = preference(_outcomes(40, 95, 22), level=0.9, n_resamples=2000, seed=7)
    assert (pref.wins, pref.ties, pref.losses, pref.n) == (40, 95, 22, 157)
    assert pref.rate == pytest.approx(18 / 157)
    assert (pref.ci_low, pref.ci_high) == bootstrap_ci(_outcomes(40, 95, 22), level=0.9, n_resamples=2000, seed=7)
    assert pref.level == 0.9 and pref.n_resamples == 2000
    text = str(pref)
    assert text.startswith("+0.115 [") and text.endswith("(W 40 / T 95 / L 22)")
    data = pref.to_dict()
    assert data["n"] == 157 and Preference(**{k: v for k, v in data.items() if k != "n"}) == pref
    json.dumps(data)
    with pytest.raises(AttributeError):
        pref.wins = 3  # type: ignore[misc]
    assert str(Preference(1, 0, 3, -0.5, -1.0, 0.0, 0.95, 100)) == "-0.500 [-1.000, +0.000] (W 1 / T 0 / L 3)"


# --------------------------------------------------------------------------- accepted positions


def test_accept_position_counts() -> None:
    ranks = [[0, 0, 1], [2, 0, 5], []]
    assert accept_position_counts(ranks).tolist() == [3, 1, 1, 0, 0, 1]
    assert accept_position_counts(ranks, max_rank=3).tolist() == [3, 1, 2]
    assert accept_position_counts(ranks, max_rank=8).tolist() == [3, 1, 1, 0, 0, 1, 0, 0]
    assert accept_position_counts(iter([np.array([1, 1])])).tolist() == [0, 2]
    assert accept_position_counts([]).tolist() == []
    assert accept_position_counts([[]], max_rank=2).tolist() == [0, 0]


@pytest.mark.parametrize(
    ("ranks", "max_rank", "match"),
    [
        ([[0, -1]], None, r"ranks\[0\] holds a negative rank"),
        ([[0], [0.5]], None, r"ranks\[1\] must hold integer candidate ranks"),
        ([[0]], 0, r"max_rank must be a positive integer"),
        ([[0]], 2.0, r"max_rank must be a positive integer"),
    ],
)
def test_accept_position_counts_rejects_bad_input(ranks: list, max_rank: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        accept_position_counts(ranks, max_rank=max_rank)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SystemResult and reports

PROMPTS = [f"How do I do thing {i}?" for i in range(12)]


def _systems() -> tuple[SystemResult, SystemResult]:
    rng = np.random.default_rng(0)
    n = len(PROMPTS)
    base = SystemResult(
        name="llm",
        prompts=PROMPTS,
        responses=[f"Base answer {i} | with a pipe\nand a second line <b>" for i in range(n)],
        reward_score=rng.normal(0.0, 1.0, n),
        cost_score=rng.normal(0.0, 1.0, n),
        num_tokens=rng.integers(5, 40, n),
        llm_tokens=300,
        wall_seconds=2.0,
    )
    mara = SystemResult(
        name="llm+mara",
        prompts=list(PROMPTS),
        responses=["A much longer answer " * 40 + str(i) for i in range(n)],
        reward_score=base.reward_score + rng.normal(0.5, 1.0, n),
        cost_score=base.cost_score + rng.normal(-0.5, 1.0, n),
        num_tokens=rng.integers(5, 40, n),
        kl=rng.uniform(0.0, 2.0, n),
        accepted_ranks=[list(rng.integers(0, 14, size=4)) for _ in range(n)],
        llm_tokens=900,
        wall_seconds=3.0,
        extra={"checkpoint": Path("runs/model.zip"), "top_k": np.int64(10), "ratio": np.float32(0.5)},
    )
    return base, mara


def test_system_result_validates_lengths() -> None:
    base, _ = _systems()
    kwargs = {
        "name": "x",
        "prompts": PROMPTS,
        "responses": base.responses,
        "reward_score": base.reward_score,
        "cost_score": base.cost_score,
        "num_tokens": base.num_tokens,
    }
    with pytest.raises(ValueError, match=r"'x': cost_score has 11 entries but there are 12 prompts"):
        SystemResult(**{**kwargs, "cost_score": base.cost_score[:-1]})
    with pytest.raises(ValueError, match=r"responses has 2 entries"):
        SystemResult(**{**kwargs, "responses": ["a", "b"]})
    with pytest.raises(ValueError, match=r"kl has 3 entries"):
        SystemResult(**kwargs, kl=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"accepted_ranks has 1 entries"):
        SystemResult(**kwargs, accepted_ranks=[[0]])
    with pytest.raises(ValueError, match=r"num_tokens must hold non-negative whole token counts"):
        SystemResult(**{**kwargs, "num_tokens": np.full(12, 2.5)})
    with pytest.raises(ValueError, match=r"name must be a non-empty string"):
        SystemResult(**{**kwargs, "name": ""})


def test_system_result_summary() -> None:
    base, mara = _systems()
    s = mara.summary()
    assert s["name"] == "llm+mara" and s["n"] == 12
    assert s["reward_mean"] == pytest.approx(mara.reward_score.mean())
    assert s["cost_std"] == pytest.approx(mara.cost_score.std(ddof=1))
    assert s["kl_mean"] == pytest.approx(mara.kl.mean())
    assert s["response_tokens"] == int(mara.num_tokens.sum())
    assert s["llm_tokens_per_response_token"] == pytest.approx(900 / mara.num_tokens.sum())
    assert s["tokens_per_second"] == pytest.approx(mara.num_tokens.sum() / 3.0)
    first = sum(r.count(0) for r in mara.accepted_ranks)
    assert s["accepted_first_fraction"] == pytest.approx(first / 48)
    b = base.summary()
    assert b["kl_mean"] is None and b["accepted_first_fraction"] is None
    json.dumps(s)
    json.dumps(b)


def test_system_result_round_trips_through_json() -> None:
    for system in _systems():
        system.reward_score[3] = np.nan  # a failed score survives as None -> NaN
        data = json.loads(json.dumps(system.to_dict(), allow_nan=False))
        assert len(data["rows"]) == 12 and data["rows"][0]["prompt"] == PROMPTS[0]
        back = SystemResult.from_dict(data)
        assert back.name == system.name and back.prompts == system.prompts and back.responses == system.responses
        np.testing.assert_array_equal(back.reward_score, system.reward_score)
        np.testing.assert_array_equal(back.cost_score, system.cost_score)
        np.testing.assert_array_equal(back.num_tokens, system.num_tokens)
        if system.kl is None:
            assert back.kl is None
        else:
            np.testing.assert_array_equal(back.kl, system.kl)
        assert back.accepted_ranks == system.accepted_ranks
        assert (back.llm_tokens, back.wall_seconds) == (system.llm_tokens, system.wall_seconds)
    assert back.extra == {"checkpoint": str(Path("runs/model.zip")), "top_k": 10, "ratio": 0.5}


def _write_progress(path: Path, with_kl: bool = True) -> Path:
    lines = ["time/total_timesteps,mara/reward_score,mara/cost_score" + (",mara/kl" if with_kl else "") + ",train/loss"]
    for step in range(1, 41):
        reward = "" if step % 7 == 0 else f"{step * 0.1:.2f}"  # some rows log no episode end
        cost = "" if step % 5 == 0 else f"{-step * 0.05:.2f}"
        kl = f",{0.01 * step:.3f}" if with_kl else ""
        lines.append(f"{step * 100},{reward},{cost}{kl},{1.0 / step:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_write_report_writes_all_files(tmp_path: Path) -> None:
    base, mara = _systems()
    log = _write_progress(tmp_path / "progress.csv")
    out = tmp_path / "report"
    report = write_report(
        out, [base, mara], baseline="llm", n_resamples=1000, seed=1, meta={"model": "tiny"}, training_log=log
    )
    for name in ("report.json", "report.md", "accept_positions.png", "scores.png", "training_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accept_positions.png").read_bytes()[:4] == b"\x89PNG"

    assert json.loads((out / "report.json").read_text()) == report
    expected = preference(
        compare(mara.reward_score, mara.cost_score, base.reward_score, base.cost_score), n_resamples=1000, seed=1
    )
    comparison = report["comparisons"]["llm+mara"]
    assert {k: comparison[k] for k in expected.to_dict()} == expected.to_dict()
    assert comparison["baseline"] == "llm" and comparison["n"] == comparison["prompts"] == 12
    reward_diff = mean_difference(mara.reward_score, base.reward_score, n_resamples=1000, seed=1)
    assert comparison["reward_diff"] == reward_diff.to_dict()
    assert comparison["reward_diff"]["mean"] == pytest.approx(np.mean(mara.reward_score - base.reward_score))
    assert comparison["cost_diff"]["mean"] == pytest.approx(np.mean(mara.cost_score - base.cost_score))
    assert report["meta"]["model"] == "tiny" and report["meta"]["prompts"] == 12 and "created" in report["meta"]
    assert report["systems"]["llm"] == json.loads(json.dumps(base.summary()))
    assert report["missing_training_columns"] == []
    row = report["rows"][2]
    assert row["prompt"] == PROMPTS[2]
    assert row["systems"]["llm+mara"]["response"] == mara.responses[2]
    assert row["systems"]["llm+mara"]["outcome"] in (-1, 0, 1) and "outcome" not in row["systems"]["llm"]

    markdown = (out / "report.md").read_text()
    assert f"{expected.rate * 100:+.2f}%" in markdown
    assert f"[{expected.ci_low * 100:+.2f}%, {expected.ci_high * 100:+.2f}%]" in markdown
    assert "| system vs baseline | win | tie | lose | preference rate | 95% CI |" in markdown
    assert f"| llm+mara vs llm | {expected.wins} | {expected.ties} | {expected.losses} |" in markdown
    assert f"| {reward_diff} |" in markdown  # mean reward difference and its interval, e.g. +0.512 [+0.1, +0.9]
    assert "**model**: tiny" in markdown
    assert "\\|" in markdown and "&lt;b&gt;" in markdown  # response text cannot break the tables
    assert "…" in markdown  # long responses are truncated
    assert "A much longer answer " * 40 not in markdown


def test_write_report_head_to_head(tmp_path: Path) -> None:
    """Systems other than the baseline are also compared with each other, earlier against later."""
    from dataclasses import replace

    base, mara = _systems()
    rng = np.random.default_rng(5)
    best = replace(
        base,
        name="best-of-2",
        reward_score=base.reward_score + rng.normal(0.3, 1.0, base.n),
        cost_score=base.cost_score + rng.normal(0.0, 1.0, base.n),
    )
    report = write_report(tmp_path, [base, mara, best], baseline="llm", n_resamples=500, seed=3)
    assert list(report["head_to_head"]) == ["llm+mara vs best-of-2"]
    duel = report["head_to_head"]["llm+mara vs best-of-2"]
    expected = preference(
        compare(mara.reward_score, mara.cost_score, best.reward_score, best.cost_score), n_resamples=500, seed=3
    )
    assert {k: duel[k] for k in expected.to_dict()} == expected.to_dict()
    assert duel["system"] == "llm+mara" and duel["opponent"] == "best-of-2"
    assert duel["reward_diff"]["mean"] == pytest.approx(np.mean(mara.reward_score - best.reward_score))
    assert duel["cost_diff"]["mean"] == pytest.approx(np.mean(mara.cost_score - best.cost_score))
    markdown = (tmp_path / "report.md").read_text()
    assert "## Head to head" in markdown
    assert f"| llm+mara vs best-of-2 | {expected.wins} | {expected.ties} | {expected.losses} |" in markdown
    # two systems only: nothing to put head to head
    assert write_report(tmp_path / "two", [base, mara], baseline="llm", n_resamples=200)["head_to_head"] == {}


def test_write_report_without_ranks_or_log(tmp_path: Path) -> None:
    base, mara = _systems()
    mara.accepted_ranks = None
    report = write_report(tmp_path, [mara, base], baseline="llm+mara", n_resamples=200)
    assert not (tmp_path / "accept_positions.png").exists()
    assert not (tmp_path / "training_curves.png").exists()
    assert (tmp_path / "scores.png").is_file()
    assert set(report["comparisons"]) == {"llm"}
    # Only the baseline: no comparisons, still a report.
    alone = write_report(tmp_path / "alone", [base], baseline="llm", n_resamples=200)
    assert alone["comparisons"] == {} and (tmp_path / "alone" / "report.md").is_file()


def test_training_curves_with_missing_column(tmp_path: Path) -> None:
    base, mara = _systems()
    log = _write_progress(tmp_path / "progress.csv", with_kl=False)
    report = write_report(tmp_path / "r", [base, mara], baseline="llm", n_resamples=200, training_log=log)
    assert report["missing_training_columns"] == ["mara/kl"]
    assert (tmp_path / "r" / "training_curves.png").is_file()


def test_training_log_errors(tmp_path: Path) -> None:
    base, mara = _systems()
    with pytest.raises(FileNotFoundError, match=r"training log .*nope.csv.* does not exist"):
        write_report(tmp_path / "a", [base, mara], baseline="llm", training_log=tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv' is empty"):
        write_report(tmp_path / "b", [base, mara], baseline="llm", n_resamples=200, training_log=empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("time/total_timesteps,mara/reward_score\n")
    with pytest.raises(ValueError, match=r"is empty"):
        write_report(tmp_path / "c", [base, mara], baseline="llm", n_resamples=200, training_log=header_only)
    unrelated = tmp_path / "other.csv"
    unrelated.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"has none of the columns .*its columns are a, b"):
        write_report(tmp_path / "d", [base, mara], baseline="llm", n_resamples=200, training_log=unrelated)
    assert not any(tmp_path.glob("[abcd]"))  # validated before anything is written


def test_write_report_rejects_mismatched_systems(tmp_path: Path) -> None:
    base, mara = _systems()
    shuffled = SystemResult.from_dict(mara.to_dict())
    shuffled.prompts = [*PROMPTS[:5], PROMPTS[6], PROMPTS[5], *PROMPTS[7:]]
    with pytest.raises(ValueError, match=r"'llm\+mara' was not evaluated on the baseline 'llm'.*prompt 5 differs"):
        write_report(tmp_path, [base, shuffled], baseline="llm")
    short = SystemResult("short", PROMPTS[:3], ["a"] * 3, [0.0] * 3, [0.0] * 3, [1] * 3)
    with pytest.raises(ValueError, match=r"3 prompts vs 12.*same order"):
        write_report(tmp_path, [base, short], baseline="llm")
    with pytest.raises(ValueError, match=r"baseline='gpt' is not one of the systems \(llm, llm\+mara\)"):
        write_report(tmp_path, [base, mara], baseline="gpt")
    with pytest.raises(ValueError, match=r"names must be unique.*llm"):
        write_report(tmp_path, [base, base], baseline="llm")
    with pytest.raises(ValueError, match=r"at least one SystemResult"):
        write_report(tmp_path, [], baseline="llm")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- several samples per prompt


def _sampled(name: str, samples: int, shift: float = 0.0, seed: int = 0) -> SystemResult:
    rng = np.random.default_rng(seed)
    n = len(PROMPTS) * samples
    return SystemResult(
        name=name,
        prompts=PROMPTS,
        responses=[f"{name} answer {r}" for r in range(n)],
        reward_score=rng.normal(shift, 1.0, n),
        cost_score=rng.normal(-shift, 1.0, n),
        num_tokens=rng.integers(5, 40, n),
        accepted_ranks=[list(rng.integers(0, 5, size=3)) for _ in range(n)],
        llm_tokens=10 * n,
        samples_per_prompt=samples,
        scorer_calls=4 * n,
    )


def test_system_result_with_samples_per_prompt() -> None:
    system = _sampled("s", 3)
    assert (system.n, system.num_answers) == (12, 36)
    assert system.prompt_index[:7].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert system.sample_index[:7].tolist() == [0, 1, 2, 0, 1, 2, 0]
    summary = system.summary()
    assert (summary["n"], summary["samples_per_prompt"], summary["answers"]) == (12, 3, 36)
    assert summary["reward_mean"] == pytest.approx(system.reward_score.mean())
    assert summary["scorer_calls"] == 144 and summary["scorer_calls_per_answer"] == 4.0
    assert summary["scorer_calls_per_response_token"] == pytest.approx(144 / system.num_tokens.sum())
    assert SystemResult("b", PROMPTS, ["x"] * 12, [0.0] * 12, [0.0] * 12, [1] * 12).summary()["scorer_calls"] == 0

    data = json.loads(json.dumps(system.to_dict(), allow_nan=False))
    assert [row["sample"] for row in data["rows"][:4]] == [0, 1, 2, 0]
    assert [row["prompt"] for row in data["rows"][2:4]] == [PROMPTS[0], PROMPTS[1]]
    back = SystemResult.from_dict(data)
    assert (back.prompts, back.samples_per_prompt, back.scorer_calls) == (PROMPTS, 3, 144)
    assert back.responses == system.responses and back.accepted_ranks == system.accepted_ranks
    np.testing.assert_array_equal(back.reward_score, system.reward_score)

    data["rows"][4]["prompt"] = "something else"
    with pytest.raises(ValueError, match=r"row 4 belongs to prompt 1 .* rows must be prompt-major, 3 per prompt"):
        SystemResult.from_dict(data)
    with pytest.raises(ValueError, match=r"36 rows cannot be split into prompts of samples_per_prompt=5"):
        SystemResult.from_dict({**system.to_dict(), "samples_per_prompt": 5})


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_system_result_refuses_bad_samples_per_prompt(bad: object) -> None:
    with pytest.raises(ValueError, match=r"samples_per_prompt must be an integer >= 1"):
        SystemResult("x", PROMPTS, ["a"] * 12, [0.0] * 12, [0.0] * 12, [1] * 12, samples_per_prompt=bad)


def test_system_result_lengths_count_answers() -> None:
    with pytest.raises(ValueError, match=r"reward_score has 12 entries but there are 12 prompts x 2 samples = 24"):
        SystemResult("x", PROMPTS, ["a"] * 24, [0.0] * 12, [0.0] * 24, [1] * 24, samples_per_prompt=2)


def test_write_report_pairs_samples_and_resamples_prompts(tmp_path: Path) -> None:
    base, system = _sampled("llm", 2), _sampled("sys", 2, shift=0.5, seed=1)
    report = write_report(tmp_path, [base, system], baseline="llm", n_resamples=1000, seed=2)
    comparison = report["comparisons"]["sys"]
    outcomes = compare(system.reward_score, system.cost_score, base.reward_score, base.cost_score)
    expected = preference(outcomes, n_resamples=1000, seed=2, groups=np.repeat(np.arange(12), 2))
    assert (comparison["n"], comparison["prompts"], comparison["samples_per_prompt"]) == (24, 12, 2)
    assert (comparison["wins"], comparison["ties"], comparison["losses"]) == (
        expected.wins,
        expected.ties,
        expected.losses,
    )
    assert (comparison["ci_low"], comparison["ci_high"]) == (expected.ci_low, expected.ci_high)
    diff = mean_difference(system.cost_score, base.cost_score, n_resamples=1000, seed=2, groups=system.prompt_index)
    assert comparison["cost_diff"] == diff.to_dict()
    assert report["samples_per_prompt"] == 2 and report["meta"]["samples_per_prompt"] == 2
    assert len(report["rows"]) == 24
    row = report["rows"][3]
    assert (row["index"], row["sample"], row["prompt"]) == (1, 1, PROMPTS[1])
    assert row["systems"]["sys"]["response"] == system.responses[3]
    assert row["systems"]["sys"]["outcome"] == outcomes[3]
    markdown = (tmp_path / "report.md").read_text()
    assert "each prompt with its 2 pairs" in markdown and "| 24 |" in markdown
    assert "| llm | 12 | 24 |" in markdown  # prompts, answers

    one = _sampled("one", 1)
    with pytest.raises(ValueError, match=r"'one' has 1 samples per prompt but the baseline 'llm' has 2"):
        write_report(tmp_path / "bad", [base, one], baseline="llm")
