"""Continuous batching for the server: one decoding thread owns the decoder; requests join it between steps.

HTTP handlers run on an asyncio event loop; decoding is synchronous torch work. The
:class:`ContinuousBatcher` runs a :class:`~agents.generation.ContinuousBatch` on a thread of its own:

- :meth:`~ContinuousBatcher.submit` puts a request's answers (one :class:`Job` per choice) in a bounded
  waiting queue, or raises :class:`QueueFull` (the server answers 503) when it has no room for them all;
- between two decision steps the thread moves waiting jobs onto free rows (one batched prefill), so a
  request never waits for the running answers to end (no lockstep);
- a finished answer's row is free for the next step; a cancelled job (its client went away) is dropped
  from the batch before the next step;
- each job gets its events on its own event loop: ``("tokens", ids)`` after every step that changed its
  answer (streaming jobs only), then ``("done", Generation)`` or ``("error", message)``.

Each job's decisions draw from its own random stream (:class:`~agents.generation.RowRequest`), so an answer
depends on its seed, not on which other requests share its steps.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.generation import ContinuousBatch, Generation, MARAGenerator, RowRequest

__all__ = ["BatcherStats", "ContinuousBatcher", "Job", "QueueFull"]


class QueueFull(Exception):
    """The waiting queue has no room for a request's answers."""


@dataclass
class Job:
    """One answer being decoded for a client.

    :param request: what to decode (prompt ids, random stream, limit, aligned or base model).
    :param loop: the event loop of the handler waiting for it.
    :param stream: send ``("tokens", ids)`` events while decoding.
    :param stop: ends the answer as it stands, after any step, when it returns ``True`` for the answer's
        token ids so far (OpenAI's ``stop`` sequences; called on the decoding thread).
    """

    request: RowRequest
    loop: asyncio.AbstractEventLoop
    stream: bool = False
    stop: Callable[[list[int]], bool] | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    _sent: int = 0  # answer tokens already sent as a "tokens" event

    def _post(self, event: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


@dataclass
class BatcherStats:
    """Counters of a :class:`ContinuousBatcher` (served at ``GET /health``).

    :param requests: jobs (answers) accepted.
    :param completed: answers finished.
    :param cancelled: answers dropped because their client went away.
    :param rejected: jobs refused because the queue was full.
    :param steps: decision steps run.
    :param decisions: decisions over all steps (``decisions / steps``: rows per step).
    :param max_rows_per_step: the most rows that took a decision in one step.
    :param shared_steps: steps in which answers of two or more different requests decided together.
    """

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    steps: int = 0
    decisions: int = 0
    max_rows_per_step: int = 0
    shared_steps: int = 0


class ContinuousBatcher:
    """The decoding thread and its bounded queue.

    :param generator: the LLM, agent and decoding rules.
    :param max_batch: rows decoded at once (concurrent answers).
    :param queue_size: answers that may wait for a row; more are refused with :class:`QueueFull`.
    :param max_new_tokens: the longest answer a job may ask for.
    """

    def __init__(self, generator: MARAGenerator, max_batch: int, queue_size: int, max_new_tokens: int) -> None:
        for name, value, low in (("max_batch", max_batch, 1), ("queue_size", queue_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.stats = BatcherStats()
        self._batch: ContinuousBatch = generator.continuous_batch(max_batch, max_new_tokens)
        self._pending: deque[Job] = deque()
        self._rows: dict[int, Job] = {}
        self._groups: dict[int, int] = {}  # id(job) -> request number, to count steps shared across requests
        self._request_no = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="mara-decoder", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------- public

    @property
    def queued(self) -> int:
        """Jobs waiting for a row."""
        return len(self._pending)

    @property
    def active(self) -> int:
        """Rows decoding an answer."""
        return len(self._rows)

    def submit(self, jobs: list[Job]) -> None:
        """Queue one request's jobs, all or none.

        :raises QueueFull: fewer than ``len(jobs)`` places are left in the waiting queue.
        """
        with self._cond:
            if self._stopped:
                raise RuntimeError("the decoding thread has stopped.")
            # Jobs that take a free row at once do not wait: only the rest count against queue_size
            free_rows = self.max_batch - len(self._rows)
            if len(self._pending) + len(jobs) - free_rows > self.queue_size:
                self.stats.rejected += len(jobs)
                raise QueueFull
            self._request_no += 1
            for job in jobs:
                self._groups[id(job)] = self._request_no
            self._pending.extend(jobs)
            self.stats.requests += len(jobs)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop ``job`` (its client went away): it leaves the queue or its row before the next step."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread (answers in progress get an error event) and free the decoder."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._batch.close()

    # ----------------------------------------------------------------------------------- thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._pending and not self._rows:
                    self._cond.wait()
                if self._stopped:
                    break
                incoming = self._take_pending()
            try:
                self._drop_cancelled()
                if incoming:
                    rows = self._batch.free_rows[: len(incoming)]
                    self._rows.update(zip(rows, incoming))
                    self._batch.start(rows, [job.request for job in incoming])
                if self._rows:
                    self._step()
            except Exception as exc:  # a failure of the model: fail the answers in progress, keep serving
                for row, job in list(self._rows.items()):
                    self._batch.cancel(row)
                    job._post(("error", f"decoding failed: {type(exc).__name__}: {exc}"))
                self._rows.clear()
        for job in [*self._rows.values(), *self._pending]:
            job._post(("error", "the server is shutting down."))

    def _take_pending(self) -> list[Job]:
        free = self.max_batch - len(self._rows)
        taken: list[Job] = []
        while self._pending and len(taken) < free:
            job = self._pending.popleft()
            if job.cancelled:
                self._cancelled(job)
            else:
                taken.append(job)
        return taken

    def _drop_cancelled(self) -> None:
        for row, job in list(self._rows.items()):
            if job.cancelled:
                self._batch.cancel(row)
                del self._rows[row]
                self._cancelled(job)

    def _cancelled(self, job: Job) -> None:
        self.stats.cancelled += 1
        self._groups.pop(id(job), None)

    def _step(self) -> None:
        before = self._batch.num_decisions
        deciding = {self._groups.get(id(self._rows[r])) for r in self._batch.ready_rows}
        ended = self._batch.step()
        decided = self._batch.num_decisions - before
        if decided:
            self.stats.steps += 1
            self.stats.decisions += decided
            self.stats.max_rows_per_step = max(self.stats.max_rows_per_step, decided)
            if decided > 1 and len(deciding) > 1:
                self.stats.shared_steps += 1
        self._finish(ended)
        self._finish(self._ended_by_stop())
        for row, job in self._rows.items():
            if job.stream:
                ids = self._batch.response(row)
                if len(ids) > job._sent:
                    job._sent = len(ids)
                    job._post(("tokens", list(ids)))

    def _ended_by_stop(self) -> list[tuple[int, Generation]]:
        """The answers whose job's ``stop`` test passes, ended now as they stand (their rows are free)."""
        ended = []
        for row, job in list(self._rows.items()):
            if job.stop is not None:
                ids = self._batch.response(row)
                if job.stop(ids):
                    ended.append((row, self._batch.end(row)))
        return ended

    def _finish(self, ended: list[tuple[int, Generation]]) -> None:
        for row, generation in ended:
            job = self._rows.pop(row)
            self._groups.pop(id(job), None)
            self.stats.completed += 1
            job._post(("done", generation))
