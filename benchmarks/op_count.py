"""What a GPU pays for, counted on any device: aten ops, LLM forwards and host syncs.

Eager PyTorch on a GPU spends ~10-15 us of host time per aten op (each one a kernel launch), so small
and medium models are bound by op count and forward count, not FLOPs. These counts are exact on a CPU,
so a CPU run predicts where the GPU time goes:

- **aten ops**: counted with a ``TorchDispatchMode`` that sees every op below autograd;
- **LLM forwards**: calls of the model's decoder stack (``model.base_model``), counted with a hook;
- **host syncs**: device-to-host copies the decoder makes (``decoder.num_syncs``; plain ``generate``
  does one per token too, not counted here).

Example::

    >>> import torch
    >>> with OpCounter() as ops:
    ...     _ = torch.ones(3) + 1
    >>> ops.count >= 2
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run inside its ``with`` block (``count``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


class ForwardCounter:
    """Counts calls of ``model.base_model`` (one per LLM forward) while it is attached (``count``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self._handle = model.base_model.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


@torch.no_grad()
def plain_forward_ops(model: torch.nn.Module, batch: int, past: int = 20) -> int:
    """aten ops of one plain one-token forward at ``batch`` rows after a ``past``-token prefill (the
    reference each decoding forward is compared with)."""
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    prefill = model(input_ids=torch.randint(0, vocab, (batch, past), device=device), use_cache=True)
    step = torch.randint(0, vocab, (batch, 1), device=device)
    with OpCounter() as ops:
        model(input_ids=step, past_key_values=prefill.past_key_values, use_cache=True)
    return ops.count


class CapturedOps:
    """Counts the aten ops run inside static-shape bucket forwards (:mod:`mara_env.capture`) in its ``with`` block:
    ``count`` ops in ``steps`` bucket forwards, of any decoder built with ``capture=True``.

    On a CUDA device each bucket forward is one graph replay, so of the ops a step runs, ``total - count`` still
    launch one by one and each bucket forward launches once: ``total - count + steps`` is what a captured step
    launches. On a CPU the buckets run eagerly, so these counts are exact here too.
    """

    def __init__(self) -> None:
        self.count = 0
        self.steps = 0
        self._step: Any = None

    def __enter__(self) -> CapturedOps:
        from mara_env import capture

        self._step = step = capture._Bucket.step
        counter = self

        def counted(bucket: Any, call: Any) -> None:
            with OpCounter() as ops:
                step(bucket, call)
            counter.count += ops.count
            counter.steps += 1

        capture._Bucket.step = counted
        return self

    def __exit__(self, *exc: Any) -> None:
        from mara_env import capture

        capture._Bucket.step = self._step
