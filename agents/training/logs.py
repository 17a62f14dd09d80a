"""A run's training logs: SB3's logger writing ``progress.csv`` and TensorBoard, kept across ``--resume``.

A resumed run appends to the first segment's ``progress.csv`` after the checkpoint's rows (the rows logged
after the checkpoint are redone), so one file holds the whole run.
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from pathlib import Path

from stable_baselines3.common.logger import CSVOutputFormat, HumanOutputFormat, Logger, make_output_format

from agents.training.run_folder import PROGRESS_FILE, TENSORBOARD_DIR

__all__ = ["make_logger"]


def make_logger(out: Path, verbose: int, *, keep_until: int | None = None) -> Logger:
    """SB3 logger writing ``out/progress.csv`` and ``out/tb/`` (and stdout when ``verbose``).

    :param keep_until: when resuming, keep the rows of ``progress.csv`` up to this many decisions
        (the checkpoint's) and append after them; rows logged after the checkpoint are redone.
    """
    formats = [
        _ResumableCSVOutputFormat(out / PROGRESS_FILE, keep_until),
        make_output_format("tensorboard", str(out / TENSORBOARD_DIR)),
    ]
    if verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    return Logger(folder=str(out), output_formats=formats)


class _ResumableCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV writer (which truncates its file), starting from the kept rows of an earlier segment."""

    def __init__(self, filename: Path, keep_until: int | None) -> None:
        header: list[str] = []
        rows: list[list[str]] = []
        table: list[list[str]] = []
        if keep_until is not None and filename.is_file():
            try:
                with open(filename, newline="", encoding="utf-8") as file:
                    table = list(csv.reader(file))
            except (csv.Error, UnicodeDecodeError) as error:
                aside = filename.with_name(f"{filename.stem}.damaged{filename.suffix}")
                os.replace(filename, aside)
                warnings.warn(f"{filename} cannot be read ({error}); kept as {aside}, a new one begins.", stacklevel=2)
        if table and "time/total_timesteps" in table[0]:
            header, column = table[0], table[0].index("time/total_timesteps")
            damaged = 0
            for row in filter(None, table[1:]):
                decisions = _number(row[column]) if len(row) == len(header) else None
                if decisions is None:
                    damaged += 1  # e.g. the last row, cut short by a kill
                elif decisions <= keep_until:
                    rows.append(row)
            if damaged:
                warnings.warn(f"{filename}: dropped {damaged} damaged row(s), e.g. cut short by a kill.", stacklevel=2)
        super().__init__(str(filename))
        if header:
            writer = csv.writer(self.file, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            self.file.flush()
            self.keys = header


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
