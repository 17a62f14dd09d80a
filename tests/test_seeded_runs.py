"""benchmarks/seeded_runs.py's ``train`` (behind scaling.py and teacher_ablation.py) goes on from a stopped run's
checkpoint instead of training it again from the start."""

from __future__ import annotations

import json
import shutil

from conftest import load_benchmark, save_tiny_files

from agents.cli import main
from agents.training.run_config import RunConfig


def test_a_stopped_run_goes_on_from_its_checkpoint(tmp_path, monkeypatch):
    seeded_runs = load_benchmark("seeded_runs", monkeypatch)
    llm, prompts = save_tiny_files(tmp_path / "tiny")
    out = tmp_path / "run"
    flags = [
        *("--llm", str(llm), "--prompts", str(prompts), "--prompt-split", "all", "--reward-model", "length"),
        *("--cost-model", "none", "--max-new-tokens", "12", "--top-k", "8", "--devices", "cpu", "--num-envs", "4"),
        *("--learning-starts", "64", "--batch-size", "32", "--buffer-size", "4000", "--no-progress"),
    ]
    assert main(["train", "--out", str(out), *flags, "--total-decisions", "192", "--checkpoint-every", "80"]) == 0
    config = RunConfig.from_file(out / "config.yaml")
    # stopped at 160: the last checkpoint and the published model are gone, checkpoint.prev/ holds 160 decisions
    shutil.rmtree(out / "checkpoint")
    for name in ("model.zip", "summary.json"):
        (out / name).unlink()
    marker = out / "kept.txt"
    marker.write_text("not a fresh start")
    summary = seeded_runs.train(config, out)
    assert (out / "model.zip").is_file() and marker.is_file()  # resumed in place, not replaced
    assert summary["decisions"] >= 192 and summary["resumed"] is True
    timing = json.loads((out / seeded_runs.TIMING_FILE).read_text())
    assert timing[0]["resumed_at"] == 160 and summary["train_cpu_seconds"] is None
    assert summary["train_wall_seconds"] == summary["wall_seconds"]  # the trainer's own total
