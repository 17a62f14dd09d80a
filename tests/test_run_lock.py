"""One writer per run folder: two ``mara train --out X`` at once, a lock left by a dead process, re-entry."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_tiny_files

from agents.loading import read_saved_data
from agents.training.run_config import RunConfig
from agents.training.run_lock import RunLocked, lock_path, run_lock

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
TOTAL = 192


def _train(files: tuple[Path, Path], out: Path, seed: int) -> subprocess.Popen:
    llm, prompts = files
    flags = [
        *("--out", str(out), "--llm", str(llm), "--prompts", str(prompts), "--prompt-split", "all"),
        *("--reward-model", "length", "--cost-model", "none", "--max-new-tokens", "12", "--top-k", "8"),
        *("--devices", "cpu", "--num-envs", "4", "--no-progress", "--learning-starts", "64"),
        *("--batch-size", "32", "--buffer-size", "4000", "--log-every", "32", "--checkpoint-every", "64"),
        *("--total-decisions", str(TOTAL), "--seed", str(seed)),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "train", *flags],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_trainings_on_one_folder_exactly_one_trains(tmp_path):
    files = save_tiny_files(tmp_path)
    out = tmp_path / "run"
    procs = {seed: _train(files, out, seed) for seed in (0, 1)}  # both start at once
    ended: dict[int, float] = {}
    start = time.monotonic()
    while len(ended) < 2:
        for seed, proc in procs.items():
            if seed not in ended and proc.poll() is not None:
                ended[seed] = time.monotonic() - start
        assert time.monotonic() - start < 300, "the trainings did not end"
        time.sleep(0.05)
    results = {seed: (proc.returncode, *proc.communicate()) for seed, proc in procs.items()}
    winners = [seed for seed, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    winner, loser = winners[0], 1 - winners[0]
    code, _, err = results[loser]
    # refused at once, while the other trained, in one line naming the holder's pid and the lock
    assert code == 1 and ended[loser] < ended[winner], (ended, err)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("mara train: error: "), err
    assert f"pid {procs[winner].pid}" in lines[0] and str(lock_path(out)) in lines[0]

    # the finished run is the winner's alone, and consistent
    assert RunConfig.from_file(out / "config.yaml").train.seed == winner
    assert read_saved_data(out / "model.zip")["num_timesteps"] == TOTAL
    assert json.loads((out / "summary.json").read_text())["decisions"] == TOTAL
    with open(out / "progress.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert len({len(row) for row in rows}) == 1 and len(rows) > 2
    assert not lock_path(out).exists()


def test_a_lock_held_by_another_process_is_refused_and_a_dead_ones_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from agents.training.run_lock import run_lock\n"
            f"with run_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"pid {holder.pid}.*its lock is {lock_path(out)}"), run_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    # killed while holding it: the file is left with the dead pid, and the next writer takes it over
    assert str(holder.pid) in lock_path(out).read_text()
    with run_lock(out), run_lock(out):  # re-entrant in one process
        assert lock_path(out).read_text().split()[0] == str(os.getpid())
    assert f"left by pid {holder.pid}, which is no longer running" in capsys.readouterr().err
    assert not lock_path(out).exists()


def test_a_refused_writer_waits_for_the_holder_to_write_its_pid(tmp_path):
    """The holder writes its pid just after taking the lock; a writer refused in between names it all the same."""
    import threading

    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, its line not written yet
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, f"{os.getpid()} mara train --out run\n".encode(), 0))
    writer.start()
    try:
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()}: mara train --out run\)"), run_lock(out):
            pass
    finally:
        writer.join()
        os.close(fd)
