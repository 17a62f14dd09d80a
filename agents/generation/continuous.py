"""Continuous batching: answers join and leave a running decoder between steps.

:class:`ContinuousBatch` is the loop of aligned generation (:meth:`agents.generation.MARAGenerator.generate`
runs it over a list of prompts) and of ``mara serve`` (which feeds it from concurrent HTTP requests).
A step lets every row decide until it waits for a forward, then runs one round of forwards for all of
them (:meth:`mara_env.decoder.AcceptRejectDecoder.run_round`): decisions inside a computed chunk cost no forward,
and rows waiting for a forced token, a new chunk or a new prompt share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from agents.accept import kl_increment
from agents.generation.answers import Generation
from mara_env.decoder import AcceptRejectDecoder
from mara_env.row_state import Phase

if TYPE_CHECKING:
    from agents.generation.generator import MARAGenerator

__all__ = ["ContinuousBatch", "RowRequest"]


@dataclass
class RowRequest:
    """One answer to decode on a row of a :class:`ContinuousBatch`.

    :param prompt: the prompt's text (kept in the :class:`Generation`).
    :param prompt_ids: the formatted prompt's token ids (see :meth:`mara_env.session.DecodingSession.encode`).
    :param rng: the row's own random stream for the decisions (one per answer, so an answer does not
        depend on which others share the batch).
    :param deterministic: decide without sampling: the agent accepts when ``pi(accept | s) >= 0.5``; a
        reference row (``aligned=False``) accepts every first candidate, which is greedy decoding.
    :param aligned: decide with the generator's agent (``False``: with the reference's ``p_ref(accept | k)``,
        i.e. plain sampling of the LLM's candidate-set distribution ``q``).
    :param max_new_tokens: this answer's length limit (``None``: the decoder's).
    :param prompt_truncated: whether the prompt was cut to fit the context (reported in the result).
    """

    prompt: str
    prompt_ids: list[int]
    rng: np.random.Generator
    deterministic: bool = False
    aligned: bool = True
    max_new_tokens: int | None = None
    prompt_truncated: bool = False


@dataclass
class _Active:
    request: RowRequest
    kl: float = 0.0  # running sum of log pi(a|s) - log p_ref(a|k)


class ContinuousBatch:
    """A running decoder batch that answers join and leave between steps: continuous batching.

    Each of the decoder's rows holds one answer. :meth:`start` puts new answers on free rows (their
    prefill runs with the next step's forwards), :meth:`step` lets every row decide until it waits for a
    forward, runs one round of forwards, and returns the answers that ended, whose rows are free at once;
    :meth:`cancel` drops an answer mid-way. Rows decide with the generator's agent, or with the
    reference's own accept probabilities (``RowRequest.aligned=False``: the base LLM's sampling through
    the same machinery), both in one step.

    :param generator: supplies the agent, the observation layout and the decoding session.
    :param decoder: a decoder of the generator's session (:meth:`MARAGenerator.continuous_batch` makes one).

    Example::

        >>> batch = gen.continuous_batch(num_rows=4, max_new_tokens=64)  # doctest: +SKIP
        >>> ids, _ = gen.session.encode("Tell me a joke", 64)  # doctest: +SKIP
        >>> batch.start([0], [RowRequest("Tell me a joke", ids, np.random.default_rng(0))])  # doctest: +SKIP
        >>> while batch.active_rows:  # doctest: +SKIP
        ...     for row, answer in batch.step():
        ...         print(answer.text)
    """

    def __init__(self, generator: MARAGenerator, decoder: AcceptRejectDecoder) -> None:
        self.generator = generator
        self.decoder = decoder
        self._active: dict[int, _Active] = {}  # row -> its answer, in start order
        #: batches of decisions taken, and decisions over all of them (their ratio: rows per batch)
        self.num_steps = 0
        self.num_decisions = 0

    @property
    def num_rows(self) -> int:
        return self.decoder.num_rows

    @property
    def active_rows(self) -> list[int]:
        """Rows holding an answer, in the order they started."""
        return list(self._active)

    @property
    def free_rows(self) -> list[int]:
        """Rows a new answer can start on."""
        return [r for r in range(self.decoder.num_rows) if r not in self._active]

    @property
    def ready_rows(self) -> list[int]:
        """Active rows waiting for a decision."""
        return self.decoder.ready(list(self._active))

    def response(self, row: int) -> list[int]:
        """The answer's token ids so far on an active ``row`` (within its length limit)."""
        return self.decoder.rows[row].response[: self._limit(row)]

    def start(self, rows: Sequence[int], requests: Sequence[RowRequest]) -> None:
        """Begin ``requests`` on free ``rows``; their prefill and first candidates run with the next step."""
        rows = list(rows)
        if len(rows) != len(requests):
            raise ValueError(f"start: {len(rows)} rows for {len(requests)} requests.")
        busy = [r for r in rows if r in self._active or not 0 <= r < self.num_rows]
        if busy:
            raise ValueError(f"start: rows {busy} are not free (free rows: {self.free_rows}).")
        if not rows:
            return
        self.decoder.start(rows, [q.prompt for q in requests], [q.prompt_ids for q in requests])
        for row, request in zip(rows, requests):
            self._active[row] = _Active(request)

    def step(self) -> list[tuple[int, Generation]]:
        """Decide on every active row until each waits for a forward, then one round of forwards.

        :return: the answers that ended in this step, as ``(row, answer)``; their rows are free.
        """
        ended: list[tuple[int, Generation]] = []
        while ready := self.ready_rows:
            self._decide(ready)
            ended += self._collect(ready)
        if self.decoder.waiting(list(self._active)):
            self.decoder.run_round()
            ended += self._collect(list(self._active))  # a forced EOS, or a limit reached by forced tokens
        return ended

    def cancel(self, row: int) -> None:
        """Drop the answer on ``row`` (a client that went away); the row is free and no longer decoded."""
        if self._active.pop(row, None) is not None:
            self.decoder.release(row)

    def end(self, row: int) -> Generation:
        """End the answer on ``row`` as it stands (a stop text reached, say) and free the row."""
        return self._finish(row, len(self.decoder.rows[row].response))

    def close(self) -> None:
        self.decoder.close()

    # ----------------------------------------------------------------------------------- internals

    def _decide(self, ready: list[int]) -> None:
        """One batch of decisions on the READY rows ``ready``, each with its own random stream."""
        requests = [self._active[r].request for r in ready]
        p_accept = np.empty(len(ready))
        agent = [i for i, q in enumerate(requests) if q.aligned and self.generator.has_agent]
        ref = [i for i, q in enumerate(requests) if not (q.aligned and self.generator.has_agent)]
        if agent:
            p_accept[agent] = self.generator.accept_probs(self.decoder, [ready[i] for i in agent])
        if ref:
            p_accept[ref] = self.decoder.reference_accept_probs([ready[i] for i in ref])
        det = np.array([q.deterministic for q in requests])
        # a deterministic reference row accepts every first candidate (greedy); a sampled row draws its own u
        greedy = det & np.array([not q.aligned for q in requests])
        u = np.array([np.nan if q.deterministic else q.rng.random() for q in requests])
        actions = np.where(det, np.where(greedy, 1, p_accept >= 0.5), u < p_accept).astype(np.int64)
        # a deterministic decision has probability 1 under the policy that took it
        p_taken = np.where(det, actions.astype(np.float64), p_accept)
        logp_ref = self.decoder.decide(ready, actions)
        for row, term in zip(ready, kl_increment(p_taken, actions, logp_ref)):
            self._active[row].kl += float(term)
        self.num_steps += 1
        self.num_decisions += len(ready)

    def _limit(self, row: int) -> int:
        own = self._active[row].request.max_new_tokens
        return self.decoder.config.max_new_tokens if own is None else min(own, self.decoder.config.max_new_tokens)

    def _collect(self, rows: list[int]) -> list[tuple[int, Generation]]:
        """Finish the answers on ``rows`` that ended: an EOS, the decoder's limit or their own."""
        ended = []
        for row in rows:
            if row not in self._active:
                continue
            st = self.decoder.rows[row]
            limit = self._limit(row)
            if st.phase is Phase.DONE or len(st.response) >= limit:
                ended.append((row, self._finish(row, limit)))
        return ended

    def _finish(self, row: int, limit: int) -> Generation:
        st = self.decoder.rows[row]
        active = self._active.pop(row)
        # Tokens past a row's own limit can only be forced ones (single-candidate sets, log q = 0), taken in
        # the same round as the token that reached it; they are dropped.
        over = len(st.response) > limit or (st.phase is not Phase.DONE and len(st.response) >= limit)
        ids = list(st.response[:limit])
        generation = Generation(
            prompt=st.prompt,
            text=self.generator.session.decode(ids),
            token_ids=ids,
            finish_reason="length" if over else (st.finish_reason or "length"),
            num_decisions=st.num_decisions,
            accepted_ranks=list(st.accepted_ranks[:limit]),
            set_sizes=list(st.set_sizes[:limit]),
            ref_logprob=st.ref_logprob,
            kl=active.kl,
            prompt_truncated=active.request.prompt_truncated,
        )
        if st.phase is not Phase.DONE:
            self.decoder.release(row)
        return generation
