"""Generating answers: aligned decoding under an agent, plain decoding, and continuous batching.

One concept per module:

- :mod:`agents.generation.generator`: :class:`MARAGenerator`, answers under a trained accept/reject agent,
  on a :class:`mara_env.session.DecodingSession` (the environments' LLM set-up and decoding rules);
- :mod:`agents.generation.continuous`: :class:`ContinuousBatch` and :class:`RowRequest`, the running batch
  that answers join and leave between steps (the generator's loop and ``mara serve``'s);
- :mod:`agents.generation.plain`: :func:`batched_generate`, the LLM alone through ``model.generate`` (the
  base system of every comparison, best-of-N draws, and reward-guided decoding through its
  :data:`Rescore` hook);
- :mod:`agents.generation.answers`: :class:`Generation` and :class:`GenerationStats`, the results of all three.
"""

from agents.generation.answers import Generation, GenerationStats, check_prompts
from agents.generation.continuous import ContinuousBatch, RowRequest
from agents.generation.generator import MARAGenerator
from agents.generation.plain import Rescore, batched_generate

__all__ = [
    "ContinuousBatch",
    "Generation",
    "GenerationStats",
    "MARAGenerator",
    "Rescore",
    "RowRequest",
    "batched_generate",
    "check_prompts",
]
