"""``mara evaluate`` and ``mara generate`` on a tiny trained run: reports, answers, and refused input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_PROMPTS, save_tiny_files

from agents.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A short ``mara train`` run on the tiny model (held-out split kept), and its prompts file."""
    folder = tmp_path_factory.mktemp("tiny-run")
    llm, prompts = save_tiny_files(folder)
    run = folder / "run"
    flags = [
        *("--llm", str(llm), "--prompts", str(prompts), "--test-fraction", "0.25"),
        *("--reward-model", "length", "--cost-model", "none", "--max-new-tokens", "8", "--top-k", "8"),
        *("--devices", "cpu", "--num-envs", "4", "--no-progress", "--total-decisions", "96"),
        *("--learning-starts", "32", "--batch-size", "16", "--checkpoint-every", "96", "--log-every", "32"),
    ]
    assert main(["train", "--out", str(run), *flags]) == 0
    return run, prompts


def test_evaluate_writes_the_report_and_refuses_to_overwrite_it(tiny_run, capsys):
    run, _ = tiny_run
    args = ["evaluate", "--run", str(run), "--best-of", "2", "--no-progress", "--out", str(run / "eval-a")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out prompts" in out and "preference rate" in out
    report = json.loads((run / "eval-a" / "report.json").read_text())
    assert set(report["comparisons"]) == {"mara", "best-of-2"}
    for pref in report["comparisons"].values():
        assert pref["wins"] + pref["ties"] + pref["losses"] == 2  # the two held-out prompts of eight
        assert pref["ci_low"] <= pref["rate"] <= pref["ci_high"]
    assert (run / "eval-a" / "report.md").stat().st_size > 0
    assert (run / "eval-a" / "accept_positions.png").is_file()

    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "eval-a" / "report.json").is_file(), "a refused run leaves the old report alone"
    # An --overwrite that cannot run leaves the old report too: it is replaced only by a finished one
    before = (run / "eval-a" / "report.json").read_bytes()
    assert main([*args, "--overwrite", "--prompts", str(run / "typo.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (run / "eval-a" / "report.json").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("eval-a")) == ["eval-a"], "no staging left"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-prompts", "0"], "--num-prompts must be >= 1"),
        (["--best-of", "two"], "--best-of must be an integer"),
        (["--agent", "missing.zip"], "'missing.zip' does not exist"),
        (["--samples-per-prompt", "0"], "--samples-per-prompt must be an integer >= 1"),
        (["--samples-per-prompt", "-2"], "--samples-per-prompt must be an integer >= 1"),
        (["--samples-per-prompt", "1.5"], "--samples-per-prompt must be an integer >= 1"),
        (["--args-weight", "-1"], "--args-weight must be a finite number >= 0"),
        (["--args-k", "0"], "--args-k must be an integer >= 1"),
        (["--cost-scale", "logit"], "cost_scale='logit' needs a cost model"),
    ],
)
def test_evaluate_errors_name_the_problem(tiny_run, extra, message, tmp_path, capsys):
    run, _ = tiny_run
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval"), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_with_samples_per_prompt_and_args(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    args = ["evaluate", "--run", str(run), "--best-of", "2", "--no-progress", "--out", str(tmp_path / "e")]
    assert main([*args, "--samples-per-prompt", "2", "--args-weight", "2", "--args-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 held-out prompts x 2 samples = 4 pairs" in out
    assert "reward diff" in out and "cost diff" in out and "scorer calls per answer" in out
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert set(report["comparisons"]) == {"mara", "args-w2-k3", "best-of-2"}
    for pref in report["comparisons"].values():
        assert (pref["n"], pref["prompts"]) == (4, 2)
        assert pref["reward_diff"]["ci_low"] <= pref["reward_diff"]["mean"] <= pref["reward_diff"]["ci_high"]
    systems = report["systems"]
    assert systems["args-w2-k3"]["scorer_calls"] == 3 * systems["args-w2-k3"]["response_tokens"]
    assert systems["base"]["scorer_calls"] == systems["mara"]["scorer_calls"] == 0
    assert "scorer calls / answer" in (tmp_path / "e" / "report.md").read_text()


def test_evaluate_selects_best_of_n_by_a_logit_cost(tiny_run, tmp_path):
    run, _ = tiny_run
    args = ["evaluate", "--run", str(run), "--best-of", "2", "--no-progress", "--out", str(tmp_path / "e")]
    assert main([*args, "--cost-model", "toxicity", "--cost-scale", "logit", "--alpha-c", "0.3"]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert (report["meta"]["cost_scale"], report["meta"]["alpha_c"]) == ("logit", 0.3)
    # the report's costs are the scorer's probabilities, not their log-odds
    assert all(0 <= row["systems"]["base"]["cost"] <= 1 for row in report["rows"])


def test_evaluate_refuses_a_file_that_is_not_an_agent(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    fake = tmp_path / "agent.zip"
    fake.write_text("not a model")
    assert main(["evaluate", "--run", str(run), "--agent", str(fake), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert str(fake) in err and "Traceback" not in err
    assert not (tmp_path / "e" / "report.md").exists()


def test_generate_aligned_and_raw_answers_as_json(tiny_run, capsys):
    run, _ = tiny_run
    assert main(["generate", "--run", str(run), "--compare", "--json", "tell me a story", "why is the sky"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["prompt"], r["system"]) for r in records] == [
        ("tell me a story", "aligned"),
        ("tell me a story", "raw"),
        ("why is the sky", "aligned"),
        ("why is the sky", "raw"),
    ]
    for r in records:
        assert 1 <= r["num_tokens"] <= 8 and sum(r["accept_position_counts"]) <= r["num_tokens"]
    assert all(r["num_decisions"] == 0 and r["kl_estimate"] == 0 for r in records if r["system"] == "raw")
    assert all(r["num_decisions"] >= 1 for r in records if r["system"] == "aligned")
    # one name per statistic: generate --json and the server's `mara` field show the same keys
    from agents.answer_stats import ANSWER_STATISTICS

    assert list(records[0])[3:] == list(ANSWER_STATISTICS)


def test_generate_reads_a_prompts_file_and_refuses_missing_or_empty_ones(tiny_run, tmp_path, capsys):
    run, prompts = tiny_run
    assert main(["generate", "--run", str(run), "--file", str(prompts)]) == 0
    assert capsys.readouterr().out.count("### ") == len(TINY_PROMPTS)

    assert main(["generate", "--run", str(run), "--file", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt' does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["generate", "--run", str(run), "--file", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "empty.txt" in err or "no prompts" in err


def test_evaluate_states_the_spread_over_several_agents(tiny_run, capsys):
    run, _ = tiny_run
    args = ["evaluate", "--run", str(run), "--best-of", "0", "--no-progress"]
    assert main([*args, "--out", str(run / "eval-one")]) == 0
    assert "one agent is one training run" in capsys.readouterr().out
    report = json.loads((run / "eval-one" / "report.json").read_text())
    assert report["spread"] is None and "One agent is one training run" in (run / "eval-one" / "report.md").read_text()

    # Two agents (here the same model under two names, as runs of one recipe would be): their mean and spread
    second = ["--agent", f"again={run / 'model.zip'}"]
    assert main([*args, *second, "--out", str(run / "eval-two"), "--seed", "3"]) == 0
    assert "2 agents: preference rate mean" in capsys.readouterr().out
    report = json.loads((run / "eval-two" / "report.json").read_text())
    rates = [report["comparisons"][name]["rate"] for name in ("mara", "again")]
    assert report["spread"]["systems"] == ["mara", "again"]
    assert report["spread"]["rate"]["mean"] == pytest.approx(sum(rates) / 2)
    assert "Spread over 2 agents" in (run / "eval-two" / "report.md").read_text()
