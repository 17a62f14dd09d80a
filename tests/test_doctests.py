"""The examples in the docstrings run: every ``>>>`` line of the package modules, as a test.

Examples that need real model weights or a trained agent are marked ``# doctest: +SKIP`` where they
stand; everything else runs here (on numpy, a classic-control task or the committed fixtures).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
from pathlib import Path

import pytest

import agents
import mara_env

ROOT = Path(__file__).resolve().parents[1]
#: Entry points that run a command when imported, and old import paths that alias another module.
NOT_LIBRARY = {"agents.cli.__main__", "mara_env.demo"}


def _modules() -> list[str]:
    names = []
    for package in (agents, mara_env):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name not in NOT_LIBRARY:
                names.append(info.name)
    return sorted(names)


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        if any(test.examples for test in finder.find(module, name)):
            found.append(name)
    return found


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    cwd = os.getcwd()
    os.chdir(ROOT)  # examples name files relative to the repository (tests/fixtures/...)
    try:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    finally:
        os.chdir(cwd)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see the output above)"
