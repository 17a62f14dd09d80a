"""Static-shape forwards of a :class:`mara_env.engine.ReplicaEngine`, replayed as CUDA graphs.

Eager PyTorch pays ~10-15 us of host time per aten op on a GPU, and one forward of a 30-layer LLM is
~2,200 ops: a decode step waits on Python, not on the card. A CUDA graph records a forward's kernels
once and replays them with one launch, but only for fixed shapes and fixed tensor addresses. So with
``capture`` on, every forward of the engine's *rows* layout runs in a *bucket*:

- every cache row takes part (rows without new tokens get one padding token that sees only itself);
- the new tokens per row are padded to a power of two (1, 2, 4, ... :data:`MAX_CAPTURED_WIDTH`);
- the attended past is the whole cache storage (its capacity ``C``), and the new tokens' keys and values
  land in its last ``width`` slots, ``C - width .. C``, before the engine moves them to their own slots;
- ids, position ids and the additive mask are copied into tensors that the bucket owns.

A bucket is then ``(width, C)``: a few per run, since the storage grows by doubling. The same closure
runs the model in every case: on a CUDA device it is captured once per bucket (after a warm-up on a
side stream) and replayed; elsewhere, and where capture fails (a model whose forward syncs with the
host or branches on tensor values), it runs eagerly on the same buffers. A CPU thus runs the exact data
flow that a GPU captures, which is what the tests check against the engine's eager layouts.

What stays eager: building the mask on the host, the copies in and out, moving the new slots to their
places (one indexed copy for all layers), the output head and the candidate sets, prompt prefills and
the *packed* layout.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

#: The widest forward (new tokens per row, after padding) that runs in a bucket; wider ones run eagerly.
MAX_CAPTURED_WIDTH = 64

#: The model call a bucket runs: ``(ids, positions, mask, new_slots, past) -> last hidden states``, over the
#: engine's whole cache storage.
ModelCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def bucket_width(width: int) -> int:
    """The padded width of a forward of ``width`` new tokens per row: the next power of two.

    Example::

        >>> [bucket_width(w) for w in (1, 2, 3, 5, 16, 17)]
        [1, 2, 4, 8, 16, 32]
    """
    if width < 1:
        raise ValueError(f"a forward needs at least one new token per row, got width {width}.")
    return 1 << (width - 1).bit_length()


class _Bucket:
    """The input, output and (on CUDA) graph of one ``(rows, width, capacity)`` shape."""

    def __init__(self, rows: int, width: int, capacity: int, hidden_size: int, device: torch.device, dtype) -> None:
        self.width, self.capacity = width, capacity
        self.ids = torch.zeros((rows, width), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, width), dtype=torch.long, device=device)
        self.mask = torch.zeros((rows, 1, width, capacity), dtype=dtype, device=device)
        self.new_slots = torch.arange(capacity - width, capacity, device=device)
        self.hidden = torch.zeros((rows, width, hidden_size), dtype=dtype, device=device)
        self.graph: Any = None

    def step(self, call: ModelCall) -> None:
        """The forward on this bucket's tensors only (what a graph records)."""
        out = call(self.ids, self.positions, self.mask, self.new_slots, self.capacity - self.width)
        self.hidden.copy_(out)


class StaticForwards:
    """The buckets of one engine (module docstring).

    :param call: the engine's model call over its cache storage.
    :param device: the engine's device.
    :param dtype: the model's dtype (the mask's).
    :param hidden_size: the model's hidden size.
    :param graphs: capture CUDA graphs (ignored on other devices, which run the buckets eagerly).
    """

    def __init__(
        self, call: ModelCall, device: torch.device, dtype: torch.dtype, hidden_size: int, graphs: bool = True
    ) -> None:
        self.call = call
        self.device = device
        self.dtype = dtype
        self.hidden_size = hidden_size
        self.graphs = graphs and device.type == "cuda"
        self._buckets: dict[tuple[int, int, int], _Bucket] = {}
        self._storage: tuple[int, int] | None = None
        self._pool: Any = None
        self.captured = 0  # graphs recorded (statistics)
        self.replayed = 0  # forwards run as a graph replay
        self.eager = 0  # forwards run eagerly in a bucket
        self.failure: str | None = None  # why capture was given up, if it was

    def forward(
        self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, storage: tuple[int, int]
    ) -> torch.Tensor:
        """Run one padded forward; returns the last hidden states ``(rows, width, hidden)`` (a copy).

        :param ids: ``(rows, width)`` token ids; ``positions`` the same shape.
        :param mask: ``(rows, width, capacity)`` the additive attention mask, float32 (0 where a new token sees a
            slot; the last ``width`` slots are the new tokens').
        :param storage: the cache storage's identity ``(data pointer, capacity)``: a new storage (it grew)
            drops the buckets recorded over the old one.
        """
        rows, width = ids.shape
        capacity = mask.shape[2]
        if storage != self._storage:
            self._buckets.clear()
            self._storage = storage
        key = (rows, width, capacity)
        bucket = self._buckets.get(key)
        new = bucket is None
        if new:
            bucket = self._buckets[key] = _Bucket(rows, width, capacity, self.hidden_size, self.device, self.dtype)
        bucket.ids.copy_(torch.from_numpy(ids))
        bucket.positions.copy_(torch.from_numpy(positions))
        bucket.mask.copy_(torch.from_numpy(mask)[:, None])
        if bucket.graph is not None:
            bucket.graph.replay()
            self.replayed += 1
        elif new and self.graphs:
            self._capture(bucket)  # the warm-up computes this forward
        else:
            bucket.step(self.call)
            self.eager += 1
        return bucket.hidden.clone()

    def _capture(self, bucket: _Bucket) -> None:
        """Warm the bucket up on a side stream (twice: lazy initialisations happen on a first call), then record
        it. Running the step again writes the same keys and values to the same free slots, so the warm-up's
        output stands for this forward. A failed capture leaves this engine eager, with a warning."""
        dev = self.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            bucket.step(self.call)
            bucket.step(self.call)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.eager += 1
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: replicas on other devices decode in other threads at the same time
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                bucket.step(self.call)
        except Exception as error:  # any capture failure falls back to eager, said once
            self.graphs = False
            self.failure = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"capture: recording this model's forward as a CUDA graph failed ({self.failure}); its forwards "
                "run eagerly in the same static shapes. Pass capture=False to use the eager layouts.",
                RuntimeWarning,
                stacklevel=4,
            )
            torch.cuda.synchronize(dev)
            return
        self._pool = graph.pool()
        bucket.graph = graph
        self.captured += 1
