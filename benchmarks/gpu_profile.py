"""What ``benchmarks/gpu_suite.py`` observes beside its timings: how busy the GPU is (``torch.profiler``), the
candidate sets the environments' rows take, and the capture statistics of the decoders a generator builds.

- :func:`busy_share`: the share of the wall time in which the GPU runs anything (the union of its kernels',
  copies' and memsets' intervals over the wall time of a few steps), with ``torch.profiler``'s CUDA activity
  only (no CPU ops recorded: the host is slowed as little as possible). On other devices: recorded as
  skipped, with the reason.
- :class:`SetSizes`: every candidate set the rows of a decoder took, read off ``decoder.rows[i].set_sizes``
  after each step (a row's state is replaced when its episode ends: the old one is read to its end first).
- :class:`CaptureTap`: ``decoder.capture_stats`` summed over the decoders a :class:`agents.MARAGenerator`
  builds (one per ``generate`` call, closed after it), read as each is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals in microseconds, in seconds.

    >>> union_seconds([(0, 2e6), (1e6, 3e6), (5e6, 6e6)])
    4.0
    """
    total, end = 0.0, -np.inf
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total / 1e6


def device_time(events: Sequence[Any], device_type: Any) -> tuple[float, float, int]:
    """Busy seconds (union of intervals), summed seconds and count of the profiler ``events`` run on
    ``device_type`` (a ``torch.autograd.DeviceType``)."""
    spans = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == device_type]
    summed = sum(hi - lo for lo, hi in spans) / 1e6
    return union_seconds(spans), summed, len(spans)


def busy_share(
    step: Callable[[], None], steps: int, device: torch.device, watch: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """GPU-busy share of ``steps`` calls of ``step`` (module docstring); ``{"skipped": reason}`` off CUDA.

    :param watch: returns capture statistics before and after the profiled steps (graphs recorded inside the
        window are reported: their warm-ups and recording are part of what was profiled).
    """
    if device.type != "cuda":
        return dict(skipped=f"no CUDA device ({device}): torch.profiler's CUDA activity records GPU kernels")
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    before = watch() if watch is not None else None
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    busy, summed, count = device_time(prof.events(), DeviceType.CUDA)
    if count == 0:  # no figure rather than a false 0%
        return dict(skipped="the profiler recorded no GPU activity (CUPTI unavailable?)", wall_seconds=wall)
    out = dict(
        busy_share=busy / max(wall, 1e-9),
        kernel_sum_share=summed / max(wall, 1e-9),
        busy_seconds=busy,
        wall_seconds=wall,
        steps=steps,
        device_events=count,
    )
    if before is not None:
        after = watch()
        out["graphs_captured_in_window"] = after["captured"] - before["captured"]
    return out


class SetSizes:
    """The sizes of every candidate set taken by the rows of the decoders passed to :meth:`observe` (after
    each step; see the module docstring). An episode that starts and ends within one step is missed."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._seen: dict[int, list[tuple[Any, int] | None]] = {}  # id(decoder) -> each row's (state, sets read)

    def observe(self, decoder: Any) -> None:
        seen = self._seen.setdefault(id(decoder), [None] * len(decoder.rows))
        for i, state in enumerate(decoder.rows):
            old = seen[i]
            read = 0
            if old is not None:
                if old[0] is state:
                    read = old[1]
                else:  # a new episode: the ended one's last sets first
                    self.sizes.extend(old[0].set_sizes[old[1] :])
            sizes = state.set_sizes
            if len(sizes) > read:
                self.sizes.extend(sizes[read:])
            seen[i] = (state, len(sizes))

    def summary(self, top_k: int) -> dict[str, Any] | None:
        """Mean, median, 90th percentile, the share of single-candidate sets (taken without a decision) and
        of sets at the top-k cap; ``None`` before any set."""
        if not self.sizes:
            return None
        sizes = np.asarray(self.sizes)
        return dict(
            sets=int(sizes.size),
            mean=float(sizes.mean()),
            p50=float(np.percentile(sizes, 50)),
            p90=float(np.percentile(sizes, 90)),
            single_share=float(np.mean(sizes == 1)),
            top_k_share=float(np.mean(sizes == top_k)),
        )


def add_stats(total: dict[str, Any] | None, stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two ``capture_stats`` added (the first failure kept)."""
    if stats is None:
        return total
    if total is None:
        return dict(stats)
    return {
        "captured": total["captured"] + stats["captured"],
        "replayed": total["replayed"] + stats["replayed"],
        "eager": total["eager"] + stats["eager"],
        "failure": total["failure"] or stats["failure"],
    }


class CaptureTap:
    """``capture_stats`` summed over the decoders that ``session.decoder`` builds from now on (``totals``, and
    ``calls``: decoders closed), read as each is closed: the session's ``decoder`` method is wrapped on the
    instance, nothing else changes."""

    def __init__(self, session: Any) -> None:
        self.totals: dict[str, Any] | None = None
        self.calls = 0
        make = session.decoder

        def decoder(*args: Any, **kwargs: Any) -> Any:
            built = make(*args, **kwargs)
            close = built.close

            def closing() -> None:
                self.totals = add_stats(self.totals, built.capture_stats)
                self.calls += 1
                del built.close  # the class's own close from now on (and no reference cycle)
                close()

            built.close = closing
            return built

        session.decoder = decoder

    def reset(self) -> None:
        self.totals, self.calls = None, 0


def capture_check(replica: Any, args: Any, steps: int = 8) -> dict[str, Any]:
    """Captured against eager forwards on the same seeded decisions: two vector envs at the largest N (the env
    section's settings), stepped together until their tokens differ or ``steps`` have run. Reports the largest
    relative difference of a step's observations (``||captured - eager|| / ||eager||``) while the episodes agree,
    and the step at
    which the tokens first differ (a low-precision dtype can tip a near tie of the sampler; the captured forward
    attends over the whole storage, so its sums run in another order). ``{"skipped": reason}`` without
    ``--capture``."""
    from mara_env import TokenAcceptRejectVectorEnv

    if args.capture == "off":
        return dict(skipped="--capture off")
    n = max(args.envs)
    envs = [
        TokenAcceptRejectVectorEnv(
            n,
            llm=(replica.model, replica.tokenizer),
            reward_model="zero",
            cost_model=None,
            chunk_size=args.chunk,
            max_new_tokens=args.max_new_tokens,
            devices=[str(replica.device)],
            prompts=args.prompt_source,
            capture=capture,
        )
        for capture in (False, True)
    ]
    obs = [env.reset(seed=0)[0] for env in envs]
    rng = np.random.default_rng(0)
    worst, agreed, first_difference = 0.0, 0, None
    try:
        for step in range(steps):
            # ||captured - eager|| / ||eager|| over the step's observations (one outlier element of a bf16
            # hidden state says little; the norm says how far the states moved)
            norm = max(float(np.linalg.norm(obs[0])), 1e-9)
            worst = max(worst, float(np.linalg.norm(obs[0] - obs[1])) / norm)
            actions = (rng.random(n) < 0.7).astype(np.int64)
            out = [env.step(actions) for env in envs]
            if not np.array_equal(out[0][4]["token_id"], out[1][4]["token_id"]):
                first_difference = step
                break
            agreed += 1
            obs = [o[0] for o in out]
        stats = envs[1].core.decoder.capture_stats
    finally:
        for env in envs:
            env.close()
    return dict(
        n=n,
        steps_agreed=agreed,
        steps=steps,
        first_token_difference=first_difference,
        max_relative_obs_difference=worst,
        capture_stats=stats,
    )
