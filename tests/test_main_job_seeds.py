"""benchmarks/main_job_seeds.py never throws a run away: a stopped training run goes on from its checkpoint,
a finished one is only evaluated, and a folder it cannot use is refused with the fix, not deleted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from conftest import load_benchmark


@pytest.fixture
def driver(monkeypatch):
    module = load_benchmark("main_job_seeds", monkeypatch)
    commands = []

    def fake_timed(command, log):
        commands.append(command[3:])
        if "train" in command:  # what a finished training leaves behind
            out = Path(command[command.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.zip").write_text("model")
            (out / "summary.json").write_text(json.dumps({"wall_seconds": 123.0}))
        return {"wall_seconds": 1.0, "cpu_seconds": 2.0}

    monkeypatch.setattr(module, "timed", fake_timed)
    return module, commands


def args(rerun: bool = False) -> argparse.Namespace:
    return argparse.Namespace(rerun=rerun, train_args="", evaluate_args="")


def test_a_stopped_run_resumes_from_its_checkpoint(driver, tmp_path):
    module, commands = driver
    run = tmp_path / "seed2"
    (run / "checkpoint").mkdir(parents=True)
    timing = module.main_job(2, run, args())
    assert (run / "checkpoint").is_dir()  # kept
    assert commands[0][:1] == ["train"] and "--resume" in commands[0] and "--seed" not in commands[0]
    assert commands[1][:1] == ["evaluate"]
    assert timing["train"] == {"wall_seconds": 123.0, "cpu_seconds": None}  # the trainer's own total


def test_a_finished_run_is_only_evaluated(driver, tmp_path):
    module, commands = driver
    run = tmp_path / "seed1"
    run.mkdir()
    (run / "model.zip").write_text("model")
    (run / "summary.json").write_text(json.dumps({"wall_seconds": 50.0}))
    timing = module.main_job(1, run, args())
    assert [c[0] for c in commands] == ["evaluate"]
    assert timing["train"]["wall_seconds"] == 50.0 and (run / "model.zip").read_text() == "model"


def test_a_folder_it_cannot_use_is_refused_not_deleted(driver, tmp_path):
    module, commands = driver
    run = tmp_path / "seed0"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="--rerun"):
        module.main_job(0, run, args())
    assert (run / "notes.txt").read_text() == "mine" and commands == []
    module.main_job(0, run, args(rerun=True))  # asked for: starts afresh
    assert not (run / "notes.txt").exists() and [c[0] for c in commands] == ["train", "evaluate"]
    assert "--seed" in commands[0]
