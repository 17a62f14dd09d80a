"""The benchmark scripts stand on the installed packages: no ``sys.path`` edits, nothing from the test suite; and
no module of the packages or the benchmarks is over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_does_not_edit_the_import_path(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    edits = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"
    ]
    assert not edits, (
        f"{path.name} uses sys.path on lines {edits}: run it with the package installed (pip install -e .)"
    )


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_nothing_from_the_tests(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in {"conftest", "tests"}}, path.name


#: The longest a module of the packages and benchmarks may be (issue 27): one concept per file.
MAX_LINES = 600
SOURCES = sorted(
    path
    for folder in ("agents", "mara_env", "benchmarks")
    for path in (Path(__file__).resolve().parent.parent / folder).rglob("*.py")
)


def test_no_module_is_over_the_line_limit() -> None:
    root = Path(__file__).resolve().parent.parent
    long = {
        str(path.relative_to(root)): count
        for path in SOURCES
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concept into sibling modules): {long}"
