"""Shared fixtures: tiny causal LMs built in code, with a real (small) tokenizer and chat template."""

from __future__ import annotations

import os

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
