"""Shared fixtures: tiny causal LMs built in code, with a real (small) tokenizer and chat template."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Tests never reach a model hub; fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mara_env.tiny import (  # noqa: F401  (the tests import them from here)
    CHAT_TEMPLATE,
    TINY_PROMPTS,
    WORDS,
    build_tiny_llm,
    build_tokenizer,
    save_tiny_files,
)

#: benchmarks/ holds scripts, not a package
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, loaded as running the script would: its siblings importable, and the
    module registered under its own name while it runs (dataclasses look their module up); both undone with
    ``monkeypatch``."""
    script = BENCHMARKS / f"{name}.py"
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def make_actor(hidden: int):
    """A small untrained DiscreteActor (16x8, input LayerNorm, seeded) on ``hidden``-dim observations."""
    import numpy as np
    from gymnasium import spaces
    from stable_baselines3.common.torch_layers import FlattenExtractor

    from agents.sac_discrete.policies import DiscreteActor

    space = spaces.Box(-np.inf, np.inf, shape=(hidden,), dtype=np.float32)
    torch.manual_seed(1)
    return DiscreteActor(
        space,
        spaces.Discrete(2),
        net_arch=[16, 8],
        features_extractor=FlattenExtractor(space),
        features_dim=hidden,
        input_layer_norm=True,
    )


@pytest.fixture(scope="session")
def tiny_llm():
    return build_tiny_llm()


@pytest.fixture
def tiny_kwargs(tiny_llm):
    """Keyword arguments for a fast MARA-v0 on the tiny model."""
    return dict(
        llm=tiny_llm,
        prompts=TINY_PROMPTS,
        prompt_split="all",
        reward_model="length",
        cost_model=None,
        max_new_tokens=12,
        top_k=8,
        top_p=0.95,
        devices=["cpu"],
    )
