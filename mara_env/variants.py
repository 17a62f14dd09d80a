"""Named task variants of ``MARA-v1`` and ``MARA-v0``, so that a published number can say which task it was measured on.

A variant is an id and a complete set of the environment settings that define the task (the LLM,
the prompt set and its train/test split, the reward and cost signals and their weights, the
candidate-set rules, the KL weight and the response limit). Every task setting is written out,
not left to :class:`~mara_env.config.MARAConfig`'s defaults, so a variant means the same task even
if a default changes later. Settings that change only speed or memory (``devices``, ``dtype``,
``chunk_size``, ``obs_dtype``) are not part of a variant, nor is the version: a variant is the same
task on either version (``gym.make("MARA-v1", **variant_settings("harmful"))``), and the version adds
its observation and shaping. Report results as "MARA-v1 / <id>" (or "MARA-v0 / <id>") and name
anything changed on top of it (a benchmark budget's shorter ``max_new_tokens``, another LLM).

Every variant trains on the ``"train"`` part of its prompt set (``test_fraction=0.2``,
``split_seed=0``); the ``"test"`` part is the held-out evaluation set
(:func:`agents.evaluation.pipeline.held_out_prompts` with the same split). All use the embedded
SmolLM2-135M-Instruct (``llm=None``), ``temperature=1.0``, ``alpha_r = alpha_c = 1`` (``cost_scale="linear"``), no
system prompt, and truncate over-long prompts from the left.

=======  ============  ==================  =====  =====  =======  ==============  ==================================
id       prompts       reward / cost       top_k  top_p  kl_coef  max_new_tokens  what it tests
=======  ============  ==================  =====  =====  =======  ==============  ==================================
default  default       sentiment/toxicity  50     0.95   0.1      48              the default run's task (mara train)
harmful  strongreject  sentiment/toxicity  50     0.95   0.1      48              harmful requests only (313 prompts)
benign   benign        sentiment/toxicity  50     0.95   0.1      48              harmless requests only (270)
topk10   default       sentiment/toxicity  10     0.95   0.1      48              small sets: fewer decisions
topk40   default       sentiment/toxicity  40     0.95   0.1      48              the authors' code's top-k
topp08   default       sentiment/toxicity  50     0.8    0.1      48              a tighter nucleus
kl001    default       sentiment/toxicity  50     0.95   0.01     48              weak pull to the reference LLM
kl1      default       sentiment/toxicity  50     0.95   1.0      48              strong pull to the reference LLM
=======  ============  ==================  =====  =====  =======  ==============  ==================================

Prompt sets are the built-in ones of :mod:`mara_env.prompts`: ``default`` is StrongREJECT +
HarmBench + the project's benign set (783 prompts, interleaved), ``strongreject`` the StrongREJECT
forbidden prompts. A built-in name selects one set only (a list given as ``prompts=`` is a list of
prompt texts), so the harmful variant uses StrongREJECT, the larger of the two harmful parts of
``default``.

There is no ``authors`` variant: the authors' code applies its temperature of 0.8 *after* forming
the candidate set (it reshapes the distribution within the set but not the set), while ``MARA-v0``
applies ``temperature`` before the top-k/top-p cuts, as ``transformers`` does, which also changes
which tokens the nucleus keeps. ``topk40`` reproduces the part of the authors' setting that the
environment can express.

Example::

    >>> import gymnasium as gym
    >>> import mara_env
    >>> env = gym.make("MARA-v0", **mara_env.variant_settings("kl1"))  # doctest: +SKIP
    >>> mara_env.variant_settings("kl1")["kl_coef"]
    1.0
"""

from __future__ import annotations

import copy
from typing import Any

from mara_env.hints import did_you_mean

__all__ = ["VARIANTS", "variant_settings"]

# The settings every variant shares; each variant below states only what it changes. The values
# are written out (not read from MARAConfig) so a variant stays the same task if a default changes.
_BASE: dict[str, Any] = dict(
    llm=None,  # the embedded SmolLM2-135M-Instruct
    system_prompt=None,
    prompts="default",
    prompt_split="train",
    test_fraction=0.2,
    split_seed=0,
    reward_model="sentiment",
    cost_model="toxicity",
    alpha_r=1.0,
    alpha_c=1.0,
    cost_scale="linear",
    kl_coef=0.1,
    top_k=50,
    top_p=0.95,
    temperature=1.0,
    max_new_tokens=48,
    max_prompt_tokens=None,
    prompt_overflow="truncate",
)

#: Variant id -> the ``MARA-v0`` keyword arguments of that task (see the table in the module docstring).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": dict(_BASE),
    "harmful": {**_BASE, "prompts": "strongreject"},
    "benign": {**_BASE, "prompts": "benign"},
    "topk10": {**_BASE, "top_k": 10},
    "topk40": {**_BASE, "top_k": 40},
    "topp08": {**_BASE, "top_p": 0.8},
    "kl001": {**_BASE, "kl_coef": 0.01},
    "kl1": {**_BASE, "kl_coef": 1.0},
}


def variant_settings(variant_id: str) -> dict[str, Any]:
    """The ``MARA-v0`` keyword arguments of a named variant, as a fresh dict the caller may change.

    Example::

        >>> settings = variant_settings("harmful")  # doctest: +SKIP
        >>> envs = gym.make_vec("MARA-v0", num_envs=16, **settings, devices=["cuda:0"])  # doctest: +SKIP

    :param variant_id: a key of :data:`VARIANTS`.
    :return: a copy of the variant's settings.
    :raises ValueError: an unknown id; the message lists the ids and the closest one.
    """
    if variant_id not in VARIANTS:
        hint = did_you_mean(variant_id, list(VARIANTS))
        raise ValueError(f"Unknown MARA-v0 variant {variant_id!r}.{hint} Variants: {', '.join(VARIANTS)}.")
    return copy.deepcopy(VARIANTS[variant_id])
