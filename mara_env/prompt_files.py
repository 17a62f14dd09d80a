"""Reading prompts out of files and datasets: the raw values of one source and where each came from.

:func:`mara_env.prompts.load_prompts` cleans what these readers return (strips, drops empty and duplicate
prompts) and reports what it dropped, by the locations kept here (``line 3``, ``row 12``).
"""

from __future__ import annotations

import codecs
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "instruction", "question", "forbidden_prompt", "goal", "text")
"""Column names tried, in this order, when a table is loaded without ``column=``."""

#: Table files: the prompt comes from a column.
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
#: Every file kind a prompt source can be.
FILE_SUFFIXES = (".txt", *TABLE_SUFFIXES)


@dataclass
class Records:
    """The raw prompt values of one source and where each came from, for errors and warnings.

    :param values: the values, ``None`` for a missing cell or field.
    :param unit: what a location counts: ``"line"``, ``"item"`` or ``"row"``.
    :param numbers: the 1-based location of each value; empty: locations are list indices.
    :param column: the table column or JSON field read, if any.
    :param comments: line numbers of skipped ``#`` lines (``.txt`` files).
    :param quiet: skipped records are expected (built-in sets, sequences): no warning.
    """

    values: list[Any]
    unit: str = "item"
    numbers: list[int] = field(default_factory=list)
    column: str | None = None
    comments: list[int] = field(default_factory=list)
    quiet: bool = False

    def where(self, index: int) -> str:
        """The location of value ``index``, e.g. ``"line 3"``."""
        return f"{self.unit} {self.numbers[index]}" if self.numbers else f"item {index}"


def read_file(path: Path, *, column: str | None) -> Records:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_lines(path)
    if suffix == ".jsonl":
        records, numbers = [], []
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"prompts: {str(path)!r} line {number} is not valid JSON ({error.msg} at column {error.colno}); "
                    "fix or remove that line."
                ) from error
            numbers.append(number)
        values, name = records_column(records, column, path)
        return Records(values, "line", numbers, name)
    if suffix == ".json":
        try:
            data = json.loads(read_text(path) or "[]")
        except json.JSONDecodeError as error:
            raise ValueError(
                f"prompts: {str(path)!r} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
            ) from error
        if not isinstance(data, list):
            raise ValueError(
                f"prompts: the file {str(path)!r} holds a JSON {type(data).__name__}; expected a list of "
                "strings or of objects. Use one JSON object per line (.jsonl) for records."
            )
        values, name = records_column(data, column, path)
        return Records(values, "item", list(range(1, len(values) + 1)), name)
    if suffix in (".csv", ".parquet"):
        import pandas as pd  # lazy: only tables need pandas

        try:
            frame = pd.read_csv(io.StringIO(read_text(path))) if suffix == ".csv" else pd.read_parquet(path)
        except pd.errors.EmptyDataError:
            return Records([])
        except (ValueError, OSError) as error:  # pandas' ParserError and pyarrow's errors are among these
            kind = "CSV" if suffix == ".csv" else "Parquet"
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"prompts: {str(path)!r} is not a valid {kind} file ({first}); check that it was written whole."
            ) from error
        name = pick_column([str(c) for c in frame.columns], column, path)
        series = frame[name]
        values = [None if missing else value for value, missing in zip(series, series.isna(), strict=True)]
        return Records(values, "row", list(range(1, len(values) + 1)), name)
    raise ValueError(
        f"prompts: cannot read {str(path)!r}: unknown extension {path.suffix!r}. Use one of {', '.join(FILE_SUFFIXES)}."
    )


def read_text(path: Path) -> str:
    """A text file's content as UTF-8 (a leading byte-order mark is dropped); errors name the line."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"prompts: {str(path)!r} line {line} is not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
            f"{column}); save the file as UTF-8."
        ) from error


def read_lines(path: Path) -> Records:
    records = Records([], "line")
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if line.startswith("#"):
            records.comments.append(number)
        elif line:
            records.values.append(line)
            records.numbers.append(number)
    return records


def records_column(records: list[Any], column: str | None, path: Path) -> tuple[list[Any], str | None]:
    """The prompt values of a list of JSON strings or objects, and the field they come from."""
    if all(isinstance(record, str) for record in records):
        return records, None
    if not all(isinstance(record, dict) for record in records):
        raise ValueError(
            f"prompts: {str(path)!r} mixes JSON objects with other values; expected only strings or only objects."
        )
    columns = list(dict.fromkeys(key for record in records for key in record))
    name = pick_column(columns, column, path)
    return [record.get(name) for record in records], name


def pick_column(columns: Sequence[str], column: str | None, where: object) -> str:
    if column is not None:
        if column not in columns:
            raise ValueError(
                f"prompts: {str(where)!r} has no column {column!r}; its columns are {list(columns)}. "
                "Pass column= (the environment's prompt_column=, mara's --prompt-column / --column) with one of them."
            )
        return column
    for name in PROMPT_COLUMNS:
        if name in columns:
            return name
    raise ValueError(
        f"prompts: {str(where)!r} has none of the usual prompt columns {list(PROMPT_COLUMNS)}; its columns "
        f"are {list(columns)}. Pass column= (the environment's prompt_column=, mara's --prompt-column / --column) "
        "with the one that holds the prompts."
    )


def read_hf_dataset(name: str, *, column: str | None, split: str) -> Records:
    try:
        import datasets
    except ImportError as error:  # a dependency of mara-rl: only a broken installation lacks it
        raise ModuleNotFoundError(
            f"prompts={name!r} needs the package 'datasets' to load a Hugging Face dataset: pip install datasets"
        ) from error
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:
        raise ValueError(
            f"prompts: could not load the Hugging Face dataset {name!r} (split {split!r}): {error}. "
            "Check the id and split; without internet access, download it once elsewhere into the "
            "Hugging Face cache, or export the prompts to a local .jsonl, .csv or .parquet file."
        ) from error
    return dataset_records(dataset, column, name)


def is_hf_dataset(value: Any) -> bool:
    """Whether ``value`` is a ``datasets`` object (checked without importing ``datasets``: whoever made one has)."""
    datasets = sys.modules.get("datasets")
    kinds = tuple(getattr(datasets, name, None) for name in ("Dataset", "DatasetDict"))
    return all(isinstance(kind, type) for kind in kinds) and isinstance(value, kinds)


def read_dataset_object(dataset: Any, *, column: str | None, split: str) -> tuple[Records, str]:
    """The prompt values of a ``Dataset`` (or of ``split`` of a ``DatasetDict``), and a phrase naming their origin."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(
                f"prompts: the DatasetDict has no split {split!r}; its splits are {list(dataset)}. Pass one of them "
                "as split= (dataset_split= in the environment's settings), or pass dataset[split] itself."
            )
        origin = f"split {split!r} of the given DatasetDict"
        dataset = dataset[split]
    else:
        origin = "the given Dataset"
    return dataset_records(dataset, column, origin), origin


def dataset_records(dataset: Any, column: str | None, where: str) -> Records:
    picked = pick_column(dataset.column_names, column, where)
    values = list(dataset[picked])
    return Records(values, "row", list(range(1, len(values) + 1)), picked)
