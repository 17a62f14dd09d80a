"""The budgets of ``benchmarks/algorithms.py``: how much every (algorithm, seed) pair gets, and the
hyperparameters that let each algorithm's MARA defaults fit in it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agents.registry import get_spec, resolve_kwargs

__all__ = ["BUDGETS", "Budget", "fit_to_budget"]


@dataclass(frozen=True)
class Budget:
    """How much every (algorithm, seed) pair gets.

    :param decisions: environment decisions of training per pair (SB3 timesteps over all sub-environments).
    :param seeds: seeds; each algorithm trains once per seed.
    :param num_envs: sub-environments batched through the LLM (also the evaluation batch size).
    :param eval_every: decisions between evaluations of the learning curve (plus one at 0 and one at the end).
    :param eval_prompts: held-out prompts decoded at each evaluation (the first ones, the same every time).
    :param compare_prompts: held-out prompts of the final comparison with the base LLM (``None``: all).
    :param max_new_tokens: response limit for training and evaluation (``None``: the variant's).
    :param log_every: decisions between rows of each pair's ``progress.csv``.
    """

    decisions: int
    seeds: tuple[int, ...]
    num_envs: int
    eval_every: int
    eval_prompts: int
    compare_prompts: int | None
    max_new_tokens: int | None
    log_every: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for name in ("decisions", "num_envs", "eval_every", "eval_prompts", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"budget {name} must be an integer >= 1, got {value!r}.")
        for name in ("compare_prompts", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"budget {name} must be None or an integer >= 1, got {value!r}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"budget seeds must be distinct and at least one, got {self.seeds!r}.")


#: The ``--budget`` presets (see the module docstring for the time each takes).
BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        decisions=96,
        seeds=(0,),
        num_envs=8,
        eval_every=96,
        eval_prompts=4,
        compare_prompts=4,
        max_new_tokens=8,
        log_every=32,
    ),
    "standard": Budget(
        decisions=6_000,
        seeds=(0, 1),
        num_envs=16,
        eval_every=3_000,
        eval_prompts=16,
        compare_prompts=32,
        max_new_tokens=None,
        log_every=500,
    ),
    "full": Budget(
        decisions=200_000,
        seeds=(0, 1, 2, 3, 4),
        num_envs=64,
        eval_every=10_000,
        eval_prompts=64,
        compare_prompts=None,
        max_new_tokens=256,
        log_every=2_000,
    ),
}


# --------------------------------------------------------------------------------------------- algorithms


def fit_to_budget(algo: str, decisions: int, num_envs: int) -> dict[str, Any]:
    """Hyperparameter overrides that let an algorithm's MARA defaults work within ``decisions``.

    Only schedules longer than a quarter of the budget are shortened, so every algorithm spends at
    most a quarter of its decisions before its first update: an on-policy rollout
    (``n_steps * num_envs``; ``n_steps`` becomes the largest power of two that fits, and the
    mini-batch at most the rollout), an off-policy warm-up (``learning_starts``) and a DQN target
    period (``target_update_interval``). The replay buffer is cut to the budget (it would never
    wrap, so this saves memory only). With the ``standard`` budget this shortens PPO's rollout
    (2,048 -> 1,024 decisions), the warm-ups (2,000 -> 1,500) and nothing else.

    :param algo: registry name.
    :param decisions: training decisions per run.
    :param num_envs: sub-environments.
    :return: overrides for :func:`agents.registry.make_algorithm` (empty when the defaults fit).
    """
    spec = get_spec(algo)
    defaults = resolve_kwargs(algo)
    quarter = max(decisions // 4, 1)
    out: dict[str, Any] = {}
    if spec.on_policy:
        n_steps = int(defaults["n_steps"])
        if n_steps * num_envs > quarter:
            n_steps = 2 ** int(math.log2(max(quarter // num_envs, 1)))
            out["n_steps"] = n_steps
        rollout = n_steps * num_envs
        if "batch_size" in defaults and defaults["batch_size"] > rollout:
            out["batch_size"] = max(rollout, 2)  # PPO needs mini-batches of at least 2
    else:
        for key in ("learning_starts", "target_update_interval"):
            if key in defaults and defaults[key] > quarter:
                out[key] = quarter
        if "buffer_size" in defaults and defaults["buffer_size"] > decisions + num_envs:
            out["buffer_size"] = decisions + num_envs
    return out
