"""Accept/reject decoding of many sequences at once: the rules of MARA's MDP, shared by the
environments and by aligned generation.

Each row (one sequence) moves through these phases::

    PREFILL --prompt--> NEED_LOGITS --candidate set--> NEED_FORWARD --chunk of candidate hidden states--> READY
                             ^                              ^                                             |
                             |                              +--------- reject past the chunk -------------+
                             +---- accept (the candidate's hidden state gives the next logits) -----------+

- A candidate set of one token, and the last candidate of a set, are taken without a decision.
  A forced token that is not in an already computed chunk needs one forward (``NEED_FORWARD``
  with a pending token); its hidden state then gives the next logits.
- Candidates' hidden states are computed ``chunk_size`` at a time ("tree" tokens), batched across all
  rows of a replica that need them. An accepted candidate's keys/values are kept from that forward,
  so acceptance costs no further forward.
- A row is ``DONE`` when it commits an EOS token or reaches ``max_new_tokens``.

The caller drives two things separately: :meth:`AcceptRejectDecoder.decide` applies decisions (no
forward), and :meth:`AcceptRejectDecoder.run_round` runs one *round*: the candidate sets of rows that
need one (one output-head call), a prefill forward for rows that :meth:`~AcceptRejectDecoder.start`\\ ed
a prompt, then one forward for every row that needs hidden states (forced tokens, new prompts' first
candidates and candidate chunks alike). An environment needs every row READY or DONE after each step
(:meth:`~AcceptRejectDecoder.advance` runs rounds until then, and the environment core restarts ended
episodes between rounds so that their first candidates share the step's forward); aligned generation lets rows
decide until each waits for a forward, then runs one round, so that a row's decisions inside a chunk
cost no forward and rows waiting for a forward share it.

With ``lookahead`` the decoder works ahead of each READY row's decision in the forwards that run anyway:
forced tokens, next candidates and guessed chains (:mod:`mara_env.work_ahead`), so that an accept or a
reject finds the forwards it needs done. Decisions, tokens and observations are the same without it.

Prompts are prefilled ahead too: an environment tells the decoder each row's next prompt
(:meth:`AcceptRejectDecoder.prepare`, drawn when the row's episode starts), and a prefill forward that runs
anyway, for a row starting on a prompt nobody prefilled, also runs the next prompts of the rows past half
their answer limit (:meth:`ReplicaEngine.prefill`, packed on a CPU). A row that later starts on its
prefilled prompt copies its keys/values in (:meth:`ReplicaEngine.adopt`) and needs no forward of its own,
so a prefill forward runs now and then, not in every step that restarts an episode.

With several replicas, rows are split into contiguous blocks, one per replica, and the replicas'
forwards run in parallel threads (torch releases the GIL inside its kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mara_env.candidates import candidate_sets
from mara_env.chunking import AdaptiveChunks, FixedChunks, make_chunk_rule
from mara_env.config import DecoderConfig
from mara_env.drafting import Drafter, RowIndex
from mara_env.engine import ReplicaEngine, RoundOutput
from mara_env.llm import LLMReplica
from mara_env.row_state import WAITING, HiddenRef, Lookahead, Phase, Prompt, RowState, gather_hidden
from mara_env.work_ahead import WorkAhead


class AcceptRejectDecoder(WorkAhead):
    """Runs ``num_rows`` sequences through accept/reject decoding on one or more replicas.

    :param replicas: the LLM replicas (same model); rows are split evenly across them.
    :param num_rows: number of sequences.
    :param config: decoding rules.
    :param chunk_rule: the rule sizing each row's chunk, to share what an adaptive rule has learnt about
        an agent across decoders (default: a new one from ``config``).
    """

    def __init__(
        self,
        replicas: Sequence[LLMReplica],
        num_rows: int,
        config: DecoderConfig,
        chunk_rule: FixedChunks | AdaptiveChunks | None = None,
    ) -> None:
        if num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {num_rows}")
        self.config = config
        self.replicas = list(replicas)
        self.num_rows = num_rows
        self.rows = [RowState() for _ in range(num_rows)]
        self.chunks = (
            chunk_rule if chunk_rule is not None else make_chunk_rule(config.chunk_size, config.chunk_coverage)
        )
        self.eos = self.replicas[0].eos_token_ids
        self.ahead_forwarded = 0  # tokens forwarded ahead of a decision (statistics for benchmarks)
        self.ahead_used = 0  # of those, tokens later taken (each saved a forward of its own)
        self.drafter = Drafter(config.draft_tokens if config.lookahead else 0)
        self.guessed = 0  # tokens forwarded on a guess (counted in ahead_forwarded too)
        self.num_syncs = 0  # copies from the device to the host (each waits for the device)
        #: work ahead on both branches of a decision (the accept branch's next candidate and the reject
        #: branch's too). On an accelerator a forward costs its launches whatever its tokens, so every
        #: saved round counts; on a CPU each token costs its compute (measured: a 32-row forward of two
        #: tokens per row takes twice one of one), so there only forced tokens and a set's last candidate
        #: (taken without a decision) are worked ahead.
        self.ahead_both = any(r.device.type != "cpu" for r in self.replicas)
        # Contiguous blocks: row -> (replica, local row); more replicas than rows leaves some idle.
        n_rep = min(len(self.replicas), num_rows)
        bounds = np.linspace(0, num_rows, n_rep + 1).round().astype(int)
        self._blocks = [list(range(bounds[i], bounds[i + 1])) for i in range(n_rep)]
        self.engines = [
            ReplicaEngine(self.replicas[i], len(b), capture=config.capture) for i, b in enumerate(self._blocks)
        ]
        self._where = {row: (i, j) for i, block in enumerate(self._blocks) for j, row in enumerate(block)}
        self._pool = ThreadPoolExecutor(max_workers=n_rep) if n_rep > 1 else None
        self._next: dict[int, Prompt] = {}  # each row's next prompt, prefilled ahead (:meth:`prepare`)

    # ----------------------------------------------------------------------------------- statistics

    @property
    def num_forwards(self) -> int:
        """LLM forwards run so far, over all replicas."""
        return sum(e.num_forwards for e in self.engines)

    @property
    def capture_stats(self) -> dict[str, object] | None:
        """Static-shape forwards over all replicas (:mod:`mara_env.capture`): graphs ``captured``, forwards
        ``replayed`` and run ``eager`` in a bucket, the first capture ``failure``; ``None`` without capture."""
        static = [e.static for e in self.engines if e.static is not None]
        if not static:
            return None
        failures = [s.failure for s in static if s.failure]
        return {
            "captured": sum(s.captured for s in static),
            "replayed": sum(s.replayed for s in static),
            "eager": sum(s.eager for s in static),
            "failure": failures[0] if failures else None,
        }

    @property
    def num_tokens(self) -> int:
        """New tokens run through the LLM so far (prompts, candidates, forced tokens, work ahead)."""
        return sum(e.num_tokens for e in self.engines)

    # ----------------------------------------------------------------------------------- public

    def start(self, rows: Sequence[int], prompts: Sequence[str], prompt_ids: Sequence[list[int]]) -> None:
        """Begin new sequences on ``rows``; the next round prefills them and forms their first candidates."""
        for row, text, ids in zip(rows, prompts, prompt_ids):
            if not ids:
                raise ValueError(f"prompt {text!r} tokenizes to nothing; remove empty prompts from the prompt set.")
            seen = RowIndex(ids if self.guessing else ())
            prompt = self._next.pop(row, None)
            if prompt is None or prompt.ids != list(ids):
                prompt = Prompt(list(ids))
            self.rows[row] = RowState(prompt=text, prompt_ids=list(ids), phase=Phase.PREFILL, seen=seen, prefill=prompt)
            if self.guessing:
                self.drafter.read(ids)

    def prepare(self, rows: Sequence[int], prompt_ids: Sequence[list[int] | None]) -> None:
        """Tell the decoder the prompt each of ``rows`` will :meth:`start` next (``None`` forgets it).

        The next forward that prefills prompts anyway (a row starting on a prompt nobody prefilled) runs these
        too, for the rows past half their answer limit; a row starting on its prefilled prompt later needs no
        prefill forward of its own. So an environment whose episodes restart at different steps runs a
        prefill forward now and then, not in most steps. Costs the prefilled prompts' keys/values in memory
        until their rows start.
        """
        for row, ids in zip(rows, prompt_ids):
            if ids is None:
                self._next.pop(row, None)
            elif not ids:
                raise ValueError("prepare: a prompt tokenizes to nothing; remove empty prompts from the prompt set.")
            else:
                self._next[row] = Prompt(list(ids))

    def release(self, row: int) -> None:
        """End ``row``'s sequence where it is (a cancelled answer): it takes part in no further round."""
        st = self.rows[row]
        st.phase = Phase.DONE
        st.chunk = st.last_hidden = st.cands = None
        st.pending = st.ahead = st.after = st.sibling = None

    def decide(self, rows: Sequence[int], actions: Sequence[int]) -> np.ndarray:
        """Apply the agent's decisions (1 = accept, 0 = reject) on READY ``rows``; no forward runs.

        A row that rejects into a computed candidate is READY again at once; others wait for
        :meth:`run_round`.

        :return: ``log p_ref(a | k)`` of each decision, the per-decision KL reward before ``kl_coef``.
        """
        logp = np.empty(len(rows), dtype=np.float64)
        for i, (row, action) in enumerate(zip(rows, actions)):
            st = self.rows[row]
            if st.phase is not Phase.READY:
                raise RuntimeError(f"row {row} is not waiting for a decision (phase {st.phase.value}).")
            k = st.index
            st.num_decisions += 1
            if action == 1:
                logp[i] = st.cands.log_accept[k]
                self.chunks.record(st.cands.probs, k)
                self._take(row, k)
                continue
            logp[i] = st.cands.log_reject[k]
            st.index = k + 1
            if st.index == len(st.cands) - 1:
                self.chunks.record(st.cands.probs, st.index)
                self._take(row, st.index)  # the last candidate is taken without asking
            elif not st.in_chunk(st.index):
                sibling, st.sibling = st.sibling, None
                if sibling is not None:
                    self.ahead_used += 1
                    st.use_chunk(st.index, 1, sibling[1], sibling[0])
                else:
                    st.phase = Phase.NEED_FORWARD
        return logp

    def waiting(self, rows: Sequence[int] | None = None) -> list[int]:
        """Rows (of ``rows``, default all) that need a round before their next decision."""
        return [r for r in (range(self.num_rows) if rows is None else rows) if self.rows[r].phase in WAITING]

    def ready(self, rows: Sequence[int] | None = None) -> list[int]:
        """Rows (of ``rows``, default all) waiting for a decision."""
        return [r for r in (range(self.num_rows) if rows is None else rows) if self.rows[r].phase is Phase.READY]

    def run_round(self) -> None:
        """One round over every waiting row: candidate sets, prefills, then one forward per replica."""
        replicas = {self._where[row][0] for row in self.waiting()}
        self._run_per_replica([row for rep in sorted(replicas) for row in self._blocks[rep]], self._round)

    def advance(self) -> None:
        """Run rounds until every row is READY or DONE."""
        while self.waiting():
            self.run_round()

    def observations(self, rows: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """Hidden states of the candidates under decision, shape ``(len(rows), hidden)``."""
        if not rows:
            return np.zeros((0, self.replicas[0].hidden_size), dtype=dtype)
        for row in rows:
            if self.rows[row].phase is not Phase.READY:
                raise RuntimeError(f"row {row} has no observation (phase {self.rows[row].phase.value}).")
        # One gather and one copy to the host per device, not one per row.
        by_device: dict[torch.device, list[int]] = {}
        for i, row in enumerate(rows):
            by_device.setdefault(self.rows[row].chunk[0].device, []).append(i)
        out = np.empty((len(rows), self.replicas[0].hidden_size), dtype=dtype)
        for where in by_device.values():
            hidden = gather_hidden([self.rows[rows[i]].candidate_hidden for i in where])
            self.num_syncs += 1
            with np.errstate(over="ignore"):  # an overflow is reported below, by name
                out[where] = hidden.to("cpu", torch.float32).numpy()
        # Checked here, before any network sees them: a NaN or inf would surface much later as a
        # non-finite loss that points at the agent
        if not np.isfinite(out).all():
            self._raise_non_finite(rows, out, dtype)
        return out

    def reference_accept_probs(self, rows: Sequence[int]) -> np.ndarray:
        """``p_ref(accept | k)`` of each READY row's candidate: sampling with it draws ``q`` exactly."""
        return np.array([np.exp(self.rows[r].cands.log_accept[self.rows[r].index]) for r in rows])

    def _raise_non_finite(self, rows: Sequence[int], out: np.ndarray, dtype: np.dtype) -> None:
        i = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        st = self.rows[rows[i]]
        hidden = gather_hidden([st.candidate_hidden]).to("cpu", torch.float32).numpy()
        if np.isfinite(hidden).all():
            limit = np.finfo(dtype).max
            raise ValueError(
                f"hidden states reach {np.abs(hidden).max():.4g}, beyond {np.dtype(dtype).name}'s largest value "
                f"{limit:.0f}, so obs_dtype={np.dtype(dtype).name!r} would turn them into inf: use "
                "obs_dtype='float32'."
            )
        raise ValueError(
            f"the LLM returned non-finite hidden states (NaN or inf) for the prompt {st.prompt[:60]!r} at response "
            f"position {len(st.response)}. Load the LLM in another precision (dtype='float32' or 'bfloat16'); "
            "float16 overflows in many models."
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # ----------------------------------------------------------------------------------- internals

    def _run_per_replica(self, rows: Sequence[int], work: Callable[[ReplicaEngine, list], None]) -> None:
        groups: dict[int, list[tuple[int, int]]] = {}
        for row in rows:
            rep, local = self._where[row]
            groups.setdefault(rep, []).append((row, local))
        if self._pool is None or len(groups) == 1:
            for rep, items in groups.items():
                work(self.engines[rep], items)
            return
        futures = [self._pool.submit(work, self.engines[rep], items) for rep, items in groups.items()]
        for f in futures:
            f.result()  # re-raise a replica's error here

    def _take(self, row: int, k: int) -> None:
        """Commit candidate ``k`` of ``row`` as its next response token."""
        st = self.rows[row]
        token = int(st.cands.tokens[k])
        st.response.append(token)
        if self.guessing:
            st.seen.extend((token,))
        st.ref_logprob += float(np.log(st.cands.probs[k]))
        st.accepted_ranks.append(k)
        ahead, after, sibling = st.ahead, st.after, st.sibling
        st.ahead = st.after = st.sibling = None
        if token in self.eos or len(st.response) >= self.config.max_new_tokens:
            st.finish_reason = "eos" if token in self.eos else "length"
            st.phase = Phase.DONE
            st.chunk = st.last_hidden = None
            return
        rep, local = self._where[row]
        if st.in_chunk(k):
            tensor, first = st.chunk
            self.engines[rep].commit(local, st.slot_of(k))
            st.last_hidden = (tensor, first + k - st.chunk_start)
            st.after = ahead if ahead is not None and ahead.candidate == k else None
            st.phase = Phase.NEED_LOGITS
        elif sibling is not None and k == st.index:  # the last candidate, forwarded ahead
            self.ahead_used += 1
            self.engines[rep].commit(local, sibling[0])
            st.last_hidden = sibling[1]
            st.phase = Phase.NEED_LOGITS
        elif after is not None and after.taken < len(after.hidden):
            # a forced token forwarded ahead; the accepted candidate and ``taken`` forced tokens are
            # committed since, so its slot has moved ``taken + 1`` places towards the prefix
            m = after.taken
            self.ahead_used += 1
            self.engines[rep].commit(local, after.slots[m] - (m + 1))
            st.last_hidden = after.hidden[m]
            after.taken += 1
            st.after = after
            st.phase = Phase.NEED_LOGITS
        else:
            st.pending = token
            st.phase = Phase.NEED_FORWARD
        st.chunk = None

    def _round(self, engine: ReplicaEngine, items: list[tuple[int, int]]) -> None:
        """One round over the rows ``items`` (all rows of one replica): the waiting ones advance, READY ones
        may work ahead."""
        self._resolve_sets(engine, items)
        prefill = [(r, loc) for r, loc in items if self.rows[r].phase is Phase.PREFILL]
        if prefill:
            self._prefill(engine, prefill, items)
            self._resolve_sets(engine, items)  # the new prompts' first candidates join this round's forward
        need = [(r, loc) for r, loc in items if self.rows[r].phase is Phase.NEED_FORWARD]
        if need:
            self._forward(engine, need, items)
            self._resolve_sets(engine, items)  # rows that forwarded a forced token get their next set

    def _prefill(self, engine: ReplicaEngine, rows: list[tuple[int, int]], rows_here: list[tuple[int, int]]) -> None:
        """Start ``rows`` (PREFILL) on their prompts' keys/values. A prompt prefilled ahead costs no forward; the
        others run in one forward, with the prepared next prompts (:meth:`prepare`) of the other rows here that
        are past half their answer limit."""
        prompts = [self.rows[r].prefill for r, _ in rows]
        todo = [p for p in prompts if p.prefilled is None]
        if todo:
            starting = {r for r, _ in rows}
            # rows past half their answer limit: likely to restart before the next prefill forward (a prompt
            # prefilled for a row that ends much later would hold memory, and compute at the end of a run)
            half = self.config.max_new_tokens / 2
            late = [r for r, _ in rows_here if r not in starting and len(self.rows[r].response) >= half]
            todo += [p for r in late if (p := self._next.get(r)) is not None and p.prefilled is None]
            out = engine.prefill([p.ids for p in todo])
            for i, p in enumerate(todo):
                p.prefilled, p.index = out, i
        engine.adopt([loc for _, loc in rows], [(p.prefilled, p.index) for p in prompts])
        for (row, _), p in zip(rows, prompts):
            st = self.rows[row]
            st.last_hidden = p.prefilled.last_hidden(p.index)
            st.phase, st.prefill = Phase.NEED_LOGITS, None

    def _forward(self, engine: ReplicaEngine, need: list[tuple[int, int]], rows_here: list[tuple[int, int]]) -> None:
        """One forward: every row of ``need`` gets its forced token or candidate chunk, READY rows work ahead."""
        chain, tree = [], []
        for row, _ in need:
            st = self.rows[row]
            if st.pending is not None:
                chain.append([st.pending])
                tree.append([])
            else:
                size = self.chunks.size(st.cands.probs, st.index)
                chain.append([])
                tree.append(st.cands.tokens[st.index : st.index + size].tolist())
        locals_ = [loc for _, loc in need]
        widths = [len(c) + len(t) for c, t in zip(chain, tree)]
        if self.config.packed and max(widths) * len(widths) > sum(widths):
            out = engine.run(locals_, chain, tree, packed=True)  # no padding to the widest row
            self._assign(need, chain, tree, [[]] * len(need), out, list(range(len(need))))
            return
        ahead = self._work_ahead(rows_here) if self.config.lookahead else []
        guesses = self._guesses(need, chain, tree, ahead)
        ahead = [item for item in ahead if item[2]]
        # Each row's guesses follow the token they continue and each other: after a forced token (a chain),
        # tree slots 0, 1, ...; after a chunk's first candidate (slot 0), the slots past the chunk.
        follows = []
        for c, t, g in zip(chain, tree, guesses):
            base = [] if c else [0]
            first = 0 if c else len(t)
            follows.append([[]] * len(t) + [base + list(range(first, first + i)) for i in range(len(g))])
        # one batch row per cache row, in cache order (every row taking part runs on the storage in place)
        entries = sorted(
            [(loc, c, t + g, 0, f) for loc, c, t, g, f in zip(locals_, chain, tree, guesses, follows)]
            + [
                (loc, [], [tok for tok, _ in work], self.rows[row].scratch_end, [f for _, f in work])
                for row, loc, work in ahead
            ]
        )
        order = {loc: i for i, (loc, *_) in enumerate(entries)}
        out = engine.run(
            [e[0] for e in entries],
            [e[1] for e in entries],
            [e[2] for e in entries],
            offsets=[e[3] for e in entries],
            follow=[e[4] for e in entries],
        )
        self._assign(need, chain, tree, guesses, out, [order[loc] for loc in locals_])
        for row, loc, work in ahead:
            st = self.rows[row]
            for t, (token, follow_slots) in enumerate(work):
                ref, slot = (out.hidden, out.start[order[loc]] + t), st.scratch_end
                if follow_slots:  # the accept branch: a token after the candidate and the tokens before it
                    st.ahead.tokens.append(token)
                    st.ahead.hidden.append(ref)
                    st.ahead.slots.append(slot)
                else:  # the reject branch: the next candidate
                    st.sibling = (slot, ref)
                st.scratch_end += 1
                self.ahead_forwarded += 1

    def _assign(
        self, need: list[tuple[int, int]], chain: list, tree: list, guesses: list, out: RoundOutput, at: list[int]
    ) -> None:
        """Rows of ``need`` after a forward in which their tokens were batch rows ``at``."""
        for i, (row, _) in enumerate(need):
            st = self.rows[row]
            st.ahead = st.sibling = st.after = None
            st.scratch_end = 0  # a new chunk or a forced token: nothing of this position is in scratch
            first = out.start[at[i]]
            drafted = [(out.hidden, first + len(chain[i]) + len(tree[i]) + g) for g in range(len(guesses[i]))]
            self.ahead_forwarded += len(drafted)
            if chain[i]:  # the forced token, committed by the forward; guesses after it in slots 0, 1, ...
                st.pending = None
                st.last_hidden = (out.hidden, first)
                st.phase = Phase.NEED_LOGITS
                if drafted:  # slots counted from before the forced token, as for work past a candidate
                    st.after = Lookahead(-1, [], list(guesses[i]), drafted, list(range(1, 1 + len(drafted))))
            else:
                st.use_chunk(st.index, len(tree[i]), (out.hidden, first), 0)
                if drafted:  # guesses past the chunk's first candidate
                    size = len(tree[i])
                    slots = list(range(size, size + len(drafted)))
                    st.ahead = Lookahead(st.index, [], list(guesses[i]), drafted, slots)
                    st.scratch_end = size + len(drafted)

    def _resolve_sets(self, engine: ReplicaEngine, items: list[tuple[int, int]]) -> None:
        """Give every NEED_LOGITS row of ``items`` its candidate set (taking single-token sets), one
        output-head call per pass; with ``lookahead`` the same call computes the sets wanted by READY
        rows' work ahead and checks every guess forwarded ahead."""
        while True:
            need_logits = [r for r, _ in items if self.rows[r].phase is Phase.NEED_LOGITS]
            if not need_logits:
                return
            known = {r: self._known_set(self.rows[r]) for r in need_logits}
            own = [r for r, cands in known.items() if cands is None]
            if own:
                chains: list[tuple[Lookahead | None, int]] = []  # (chain, how many sets), in ``refs``' order
                refs: list[HiddenRef] = []
                for r in own:
                    st = self.rows[r]
                    a = st.after
                    if a is not None and len(a.tokens) > a.taken:  # guesses past the last committed token
                        # (past position 0, ``hidden[taken - 1]`` is the last committed token's own)
                        sources = a.sources(st.last_hidden)
                        refs += sources
                        chains.append((a, len(sources)))
                    else:
                        st.after = None  # its work ahead, if any, is used up
                        refs.append(st.last_hidden)
                        chains.append((None, 1))
                wanted = self._sets_wanted(items) if self.config.lookahead else []
                for st, sources in wanted:
                    refs += sources
                    chains.append((st.ahead, len(sources)))
                sets = candidate_sets(engine.logits(gather_hidden(refs)), self.config.candidates)
                self.num_syncs += 1
                at = 0
                for i, (a, count) in enumerate(chains):
                    part, at = sets[at : at + count], at + count
                    if i < len(own):  # a row waiting for its set (learnt below, as the row takes it)
                        if a is not None:
                            a.absorb(part)
                        known[own[i]] = part[0] if a is None else a.sets[a.taken]
                    else:  # a READY row's work ahead
                        since = len(a.sets)
                        a.absorb(part)
                        self._learn_chain(wanted[i - len(own)][0], a, since)
            for row in need_logits:
                st = self.rows[row]
                cands = known[row]
                if self.guessing:
                    self.drafter.learn(st.seen.tokens, cands.top)
                st.cands, st.index, st.chunk, st.last_hidden = cands, 0, None, None
                st.set_sizes.append(len(cands))
                if len(cands) == 1:
                    self._take(row, 0)  # may find the forced token forwarded ahead (NEED_LOGITS again)
                    continue
                after, st.after = st.after, None
                if after is not None and after.taken < len(after.hidden):
                    # the set's first candidate, forwarded ahead after the taken candidate and forced tokens:
                    # ``taken + 1`` tokens are committed since, so its slot has moved that many places
                    self.ahead_used += 1
                    st.scratch_end = 0
                    st.use_chunk(0, 1, after.hidden[after.taken], after.slots[after.taken] - (after.taken + 1))
                else:
                    st.phase = Phase.NEED_FORWARD
