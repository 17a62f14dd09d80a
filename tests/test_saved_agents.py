"""Agents saved before ``agents/`` was reorganised (issue 12) still load, safely, and still decide the same.

``tests/fixtures/*-v1-tiny.zip`` were written by the code of main before the move
(``tests/fixtures/make_saved_agents.py``); their pickled policy classes name the module paths of
that time, which the safe unpickler must still resolve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.accept import accept_probabilities
from agents.loading import load_algorithm

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "saved_agents.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("algo", sorted(EXPECTED))
def test_agent_saved_before_the_move_loads_and_decides_the_same(algo: str) -> None:
    saved = EXPECTED[algo]
    model = load_algorithm(FIXTURES / saved["file"], device="cpu")  # algorithm detected from the file
    obs = np.asarray(saved["observations"], dtype=np.float32)
    np.testing.assert_allclose(accept_probabilities(model, obs), saved["accept_probabilities"], rtol=1e-6)


def test_saved_agents_name_the_old_module_paths() -> None:
    # What makes these files a test of old pickles: the module paths they were saved with.
    assert {saved["policy_module"] for saved in EXPECTED.values()} == {
        "agents.sac_discrete.policies",
        "agents.reference_anchor",
    }
