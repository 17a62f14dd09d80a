"""The per-forward KV cache a :class:`mara_env.engine.ReplicaEngine` hands to the model: one layer object per
decoder layer over the engine's own buffers, so that the model writes new keys and values in place."""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicLayer


def cache_argument(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` (transformers >= 5.24) or the
    older ``past_key_values`` (now deprecated, with a warning on every call)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class BufferLayer(DynamicLayer):
    """A cache layer over a buffer sized for this forward: ``past`` cached slots, then the new tokens' slots.

    The update is one ``index_copy_`` per keys and values, as many ops as ``DynamicLayer``'s concatenation.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, new_slots: torch.Tensor, past: int) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._new_slots = new_slots
        self._past = past

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys.index_copy_(-2, self._new_slots, key_states)
        self.values.index_copy_(-2, self._new_slots, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._past
