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

A row that takes a candidate followed by a forced token needs two forwards in a row (the forced
token's, then the next candidate's), so in an environment with many rows almost every step runs
extra rounds of a few rows each. With ``lookahead`` the decoder works ahead of each READY row's
decision, one token per branch per forward, in the forwards that run anyway:

- the *accept* branch: the set after the candidate (computed with the other rows' output head), then
  the token that follows it, forwarded after the candidate in scratch (``follow`` in
  :meth:`ReplicaEngine.run`): a forced token, whose own set then comes with the next head call, and so
  on, until the chain reaches a set of several candidates, whose first candidate is forwarded last;
- the *reject* branch: the next candidate of the set, when the chunk does not hold it.

On a CPU (``ahead_both`` false) only forced tokens and a set's last candidate are worked ahead: there a
token costs its compute, and forwarding a first candidate or a next candidate for every waiting row
doubles the forwards that carry them.

Known tokens advance a chain by one token per round, since each forced token is known only from the
logits of the one before. Guesses go further (:mod:`mara_env.drafting`, ``draft_tokens``): a row forwards
a drafted chain after its forced token, after its chunk's first candidate, or after its work ahead,
each guess following the ones before it in the same forward, and the next output-head call checks
them all at once (:meth:`Lookahead.absorb`); a right guess is a forced token or first candidate already
forwarded. Only on accelerators (``ahead_both``): on a CPU, measured at N=32 with the embedded model,
guessing cut forwards per step from 2.58 to 2.17 but ran 0.57x the steps/s (each guessed token costs its
compute there), and guessing only into a forward's padding still ran 0.92x (the bookkeeping) for 2.50.

Prompts are prefilled ahead too: an environment tells the decoder each row's next prompt
(:meth:`AcceptRejectDecoder.prepare`, drawn when the row's episode starts), and a prefill forward that runs
anyway, for a row starting on a prompt nobody prefilled, also runs the next prompts of the rows past half
their answer limit (:meth:`ReplicaEngine.prefill`, packed on a CPU). A row that later starts on its
prefilled prompt copies its keys/values in (:meth:`ReplicaEngine.adopt`) and needs no forward of its own,
so a prefill forward runs now and then, not in every step that restarts an episode.

An accept (or a reject) then finds the forwards it needs done, and a row whose work ahead covers its
next decision needs no forward at all in that step (a step in which every row finds its forwards done
runs none). Decisions, tokens and observations are the same as without lookahead.

With several replicas, rows are split into contiguous blocks, one per replica, and the replicas'
forwards run in parallel threads (torch releases the GIL inside its kernels).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from mara_env.candidates import CandidateConfig, CandidateSet, candidate_sets
from mara_env.chunking import AdaptiveChunks, FixedChunks, make_chunk_rule
from mara_env.drafting import Drafter, RowIndex
from mara_env.engine import Prefilled, ReplicaEngine, RoundOutput
from mara_env.llm import LLMReplica

#: A hidden state kept where a forward left it: (that forward's flat hidden states, index).
HiddenRef = tuple[torch.Tensor, int]


class Phase(enum.Enum):
    PREFILL = "prefill"  # a new prompt waits for its prefill forward
    NEED_LOGITS = "need_logits"  # last committed token's hidden state known; candidate set not built
    NEED_FORWARD = "need_forward"  # a forced token or the next candidate chunk must go through the LLM
    READY = "ready"  # waiting for the agent's decision on candidate ``index``
    DONE = "done"


#: Phases of rows that need a round (an output-head call or a forward) before their next decision.
WAITING = (Phase.PREFILL, Phase.NEED_LOGITS, Phase.NEED_FORWARD)


@dataclass
class Lookahead:
    """Work done past candidate ``candidate`` in case it is accepted (decoders with ``lookahead``).

    Chain position ``m`` is the token after the candidate and ``m`` forced tokens. ``sets[m]`` is the
    candidate set there, once an output-head call gave it. ``tokens[m]`` is the token forwarded ahead at
    position ``m`` (into scratch slot ``slots[m]``, after the candidate and the tokens before it; hidden
    state ``hidden[m]``): the single token of a forced set, a set's first candidate (which ends the chain),
    or, past the known sets, a guess (:mod:`mara_env.drafting`). :meth:`absorb` checks guesses against sets
    as they come and drops every token past the first wrong one, so tokens at positions with a known set
    are always the ones the rules take. ``taken`` counts the forced tokens committed since the candidate
    was accepted.
    """

    candidate: int
    sets: list[CandidateSet] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    hidden: list[HiddenRef] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    taken: int = 0

    def wanted(self) -> range:
        """Chain positions whose sets the hidden states at hand give (position 0's comes from the
        candidate's hidden state, position ``m``'s from ``hidden[m - 1]``); none once the chain reached a
        set of several candidates."""
        if self.sets and len(self.sets[-1]) > 1:
            return range(0)
        return range(len(self.sets), len(self.tokens) + 1)

    def absorb(self, sets: Sequence[CandidateSet]) -> None:
        """Take the sets of the :meth:`wanted` positions, in order; keep the tokens forwarded ahead that the
        rules take there and drop the rest (a wrong guess, and everything forwarded after it)."""
        for cands in sets:
            m = len(self.sets)
            if m and (len(self.sets[m - 1]) > 1 or m > len(self.tokens) or self.tokens[m - 1] != self.sets[m - 1].top):
                break  # computed after a wrong guess: not this chain's set
            self.sets.append(cands)
        keep = len(self.tokens)
        for m in range(min(len(self.tokens), len(self.sets))):
            if self.tokens[m] != self.sets[m].top:
                keep = m
                break
            if len(self.sets[m]) > 1:
                keep = m + 1  # a first candidate ends the chain
                break
        del self.tokens[keep:], self.hidden[keep:], self.slots[keep:]

    def sources(self, first: HiddenRef) -> list[HiddenRef]:
        """The hidden states whose output head gives the :meth:`wanted` sets: ``first`` (the candidate's, or
        the last committed token's once the candidate is taken) for position 0, ``hidden[m - 1]`` for ``m``."""
        return [first if m == 0 else self.hidden[m - 1] for m in self.wanted()]

    @property
    def complete(self) -> bool:
        """Whether the chain reached a set of several candidates and forwarded its first one."""
        return bool(self.sets) and len(self.sets[-1]) > 1 and len(self.tokens) == len(self.sets)


@dataclass
class Prompt:
    """A prompt's token ids and, once a forward ran them, where its keys/values wait (:meth:`ReplicaEngine.prefill`)."""

    ids: list[int]
    prefilled: Prefilled | None = None
    index: int = 0


@dataclass
class RowState:
    """Everything the decoder knows about one sequence."""

    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    prompt_truncated: bool = False
    prefill: Prompt | None = None  # the prompt, until the row starts on its prefilled keys/values
    response: list[int] = field(default_factory=list)
    phase: Phase = Phase.DONE
    cands: CandidateSet | None = None
    index: int = 0  # the candidate under decision
    chunk_start: int = 0  # the chunk's first candidate
    chunk_len: int = 0  # candidates in the chunk
    chunk: HiddenRef | None = None  # hidden state of the chunk's first candidate; the others follow it
    last_hidden: HiddenRef | None = None  # hidden state of the last committed token
    pending: int | None = None  # forced token awaiting its forward
    seen: RowIndex = field(default_factory=RowIndex)  # prompt and response tokens, indexed for guesses
    scratch_end: int = 0  # first scratch slot not holding this position's chunk or work done ahead
    ahead: Lookahead | None = None  # work done past the candidate under decision
    after: Lookahead | None = None  # the same, for the candidate just taken
    chunk_slot: int = 0  # the scratch slot of the chunk's first candidate
    sibling: tuple[int, HiddenRef] | None = None  # candidate ``index + 1`` forwarded ahead: (slot, hidden)
    finish_reason: str | None = None  # "eos" or "length"
    num_decisions: int = 0
    # sum over response tokens of log q(token): the episode's total reference log-probability,
    # which the per-decision KL rewards add up to (times kl_coef).
    ref_logprob: float = 0.0
    accepted_ranks: list[int] = field(default_factory=list)  # 0-based rank of each response token
    set_sizes: list[int] = field(default_factory=list)

    @property
    def candidate(self) -> int:
        """Token id of the candidate under decision."""
        return int(self.cands.tokens[self.index])

    @property
    def candidate_hidden(self) -> HiddenRef:
        """Where the hidden state of the candidate under decision is (READY rows)."""
        tensor, first = self.chunk
        return tensor, first + self.index - self.chunk_start

    def in_chunk(self, k: int) -> bool:
        """Whether candidate ``k``'s hidden state is in the computed chunk."""
        return self.chunk is not None and self.chunk_start <= k < self.chunk_start + self.chunk_len

    def slot_of(self, k: int) -> int:
        """The scratch slot of candidate ``k`` of the chunk."""
        return self.chunk_slot + k - self.chunk_start

    def use_chunk(self, start: int, length: int, ref: HiddenRef, slot: int) -> None:
        """Candidates ``start .. start + length - 1`` are computed (hidden states from ``ref`` on, scratch slots
        from ``slot`` on): the row is READY on candidate ``start``."""
        self.index, self.chunk_start, self.chunk_len, self.chunk, self.chunk_slot = start, start, length, ref, slot
        self.scratch_end = max(self.scratch_end, slot + length)
        self.phase = Phase.READY


@dataclass(frozen=True)
class DecoderConfig:
    """Rules shared by training and generation.

    :param candidates: how candidate sets are formed.
    :param max_new_tokens: response-length limit (the paper's 512).
    :param chunk_size: candidates whose hidden states are computed per forward (``>= 1``); with
        ``chunk_coverage``, the largest chunk.
    :param chunk_coverage: ``None``: every chunk has ``chunk_size`` candidates; a probability in (0, 1]:
        each row's chunk is sized to hold the candidate the agent takes with that probability
        (:class:`mara_env.chunking.AdaptiveChunks`).
    :param packed: run a forward whose rows have different token counts without padding
        (:meth:`ReplicaEngine.run` with ``packed=True``) instead of padding every row to the widest.
    :param lookahead: in forwards that run anyway, forward the forced token after each candidate under
        decision (and a set's last candidate) ahead of the decision (module docstring); it pays where
        every call must leave all rows READY (environments). Packed forwards do no work ahead.
    :param draft_tokens: with ``lookahead``, the longest chain of guessed tokens (:mod:`mara_env.drafting`)
        a row forwards ahead in one forward; ``0`` guesses nothing.
    """

    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    max_new_tokens: int = 512
    chunk_size: int = 1
    chunk_coverage: float | None = None
    packed: bool = False
    lookahead: bool = False
    draft_tokens: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(
                f"chunk_size must be an integer >= 1 (or 'auto'/'all' in the env), got {self.chunk_size!r}."
            )
        if self.chunk_coverage is not None:
            make_chunk_rule(self.chunk_size, self.chunk_coverage)  # checks the coverage
        if isinstance(self.draft_tokens, bool) or not isinstance(self.draft_tokens, int) or self.draft_tokens < 0:
            raise ValueError(
                f"draft_tokens must be an integer >= 0 (0 guesses nothing, 4 by default), got {self.draft_tokens!r}."
            )


def gather_hidden(refs: Sequence[HiddenRef]) -> torch.Tensor:
    """The hidden states ``refs`` point at, stacked ``(len(refs), hidden)``: one index per source forward."""
    groups: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
    for i, (tensor, index) in enumerate(refs):
        groups.setdefault(id(tensor), (tensor, [], []))[1].append(index)
        groups[id(tensor)][2].append(i)
    if len(groups) == 1:
        tensor, idx, _ = next(iter(groups.values()))
        return tensor[torch.as_tensor(idx, device=tensor.device)]
    parts, order = [], []
    for tensor, idx, where in groups.values():
        parts.append(tensor[torch.as_tensor(idx, device=tensor.device)])
        order.extend(where)
    stacked = torch.cat(parts)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order)] = np.arange(len(order))
    return stacked[torch.as_tensor(inverse, device=stacked.device)]


class AcceptRejectDecoder:
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
        self.engines = [ReplicaEngine(self.replicas[i], len(b)) for i, b in enumerate(self._blocks)]
        self._where = {row: (i, j) for i, block in enumerate(self._blocks) for j, row in enumerate(block)}
        self._pool = ThreadPoolExecutor(max_workers=n_rep) if n_rep > 1 else None
        self._next: dict[int, Prompt] = {}  # each row's next prompt, prefilled ahead (:meth:`prepare`)

    # ----------------------------------------------------------------------------------- statistics

    @property
    def guessing(self) -> bool:
        """Whether rows forward guessed chains (:mod:`mara_env.drafting`): with ``draft_tokens`` and work ahead
        on both branches (accelerators). On a CPU every guessed token costs its compute, and measured at
        N=32 guessing cost more time than the rounds it saved (module docstring)."""
        return self.ahead_both and self.drafter.max_tokens > 0

    @property
    def num_forwards(self) -> int:
        """LLM forwards run so far, over all replicas."""
        return sum(e.num_forwards for e in self.engines)

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

    def _guesses(
        self,
        need: list[tuple[int, int]],
        chain: list,
        tree: list,
        ahead: list[tuple[int, int, list[tuple[int, list[int]]]]],
    ) -> list[list[int]]:
        """Guessed tokens each row of ``need`` forwards after its forced token or its chunk's first candidate;
        READY rows' guesses (past the candidate under decision and the tokens forwarded after it) are added
        to their ``ahead`` work in place.

        Every row guesses up to ``draft_tokens`` (on an accelerator a forward costs its launches, whatever its
        tokens; :attr:`guessing` is off on a CPU).
        """
        guesses: list[list[int]] = [[] for _ in need]
        if not self.guessing:
            return guesses
        base = [len(c) + len(t) for c, t in zip(chain, tree)] + [len(w) for _, _, w in ahead]
        width = max(max(base), 1 + self.drafter.max_tokens)
        for i, (row, _) in enumerate(need):
            if width > base[i]:
                guesses[i] = self._guess(self.rows[row], [] if chain[i] else [tree[i][0]], width - base[i])
                self.guessed += len(guesses[i])
        for j, (row, _, work) in enumerate(ahead):
            st, room = self.rows[row], width - base[len(need) + j]
            a = st.ahead
            if room <= 0 or a is None or a.candidate != st.index:
                continue
            accept = [tok for tok, f in work if f]
            m = len(a.tokens) + len(accept)  # the chain position of the first guess
            if m < len(a.sets):  # known there: a first candidate (or a token that ends the episode)
                if len(a.sets[m]) > 1 and self._continues(st, m + 1, a.tokens[-1] if a.tokens else st.candidate):
                    guessed = [a.sets[m].top]  # forwarded as it is known, not guessed
                else:
                    continue
            elif m and m - 1 < len(a.sets) and len(a.sets[m - 1]) > 1:
                continue  # the last token forwarded is a first candidate: the chain ends there
            else:
                guessed = self._guess(st, [st.candidate, *a.tokens, *accept], room)
                self.guessed += len(guessed)
            if not guessed:
                continue
            slots = [st.slot_of(st.index), *a.slots]
            at = st.scratch_end + len(accept)  # the guesses' first slot, before the sibling's
            new = [(tok, slots + list(range(st.scratch_end, at + i))) for i, tok in enumerate(guessed)]
            work[:] = [w for w in work if w[1]] + new + [w for w in work if not w[1]]
        return guesses

    def _guess(self, st: RowState, extra: list[int], count: int) -> list[int]:
        """Up to ``count`` guesses after the row's tokens and ``extra`` (tokens past them, not committed),
        while the episode would go on after them: none after an EOS or the length limit, none past a guessed
        EOS."""
        room = self.config.max_new_tokens - len(st.response) - len(extra)
        if room <= 0 or any(t in self.eos for t in extra):
            return []
        out = self.drafter.draft(st.seen, extra, min(count, room))
        for i, token in enumerate(out):
            if token in self.eos:
                return out[: i + 1]
        return out

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

    def _learn_chain(self, st: RowState, a: Lookahead, since: int) -> None:
        """Teach the drafter the greedy tokens of the sets a READY row's work ahead just took (positions
        ``since`` on); a taken chain's sets are learnt as the row takes them."""
        if not self.guessing:
            return
        # position m's context: the row's tokens, the candidate under decision, the chain's tokens before m
        base = [*st.seen.tokens[-3:], st.candidate]
        for m in range(since, len(a.sets)):
            self.drafter.learn(base + a.tokens[:m], a.sets[m].top)

    @staticmethod
    def _known_set(st: RowState) -> CandidateSet | None:
        """The set after a row's last committed token, if work ahead computed it."""
        if st.after is not None and st.after.taken < len(st.after.sets):
            return st.after.sets[st.after.taken]
        return None

    def _continues(self, st: RowState, nth: int, token: int) -> bool:
        """Whether a row's episode goes on after committing ``token`` as its ``nth`` token from now."""
        return token not in self.eos and len(st.response) + nth < self.config.max_new_tokens

    def _ahead(self, st: RowState) -> Lookahead | None:
        """A READY row's work past its candidate under decision (started if new), or None when the episode
        would end with the candidate."""
        if st.ahead is None or st.ahead.candidate != st.index:
            st.ahead = Lookahead(candidate=st.index) if self._continues(st, 1, st.candidate) else None
        return st.ahead

    def _sets_wanted(self, items: list[tuple[int, int]]) -> list[tuple[RowState, list[HiddenRef]]]:
        """READY rows whose work ahead waits for candidate sets, with the hidden states that give them (the
        candidate's for the set after it, each token's forwarded ahead for the set after that token)."""
        wanted = []
        for row, _ in items:
            st = self.rows[row]
            if st.phase is not Phase.READY or (a := self._ahead(st)) is None:
                continue
            sources = a.sources(st.candidate_hidden)
            if sources:
                wanted.append((st, sources))
        return wanted

    def _work_ahead(self, items: list[tuple[int, int]]) -> list[tuple[int, int, list[tuple[int, list[int]]]]]:
        """What READY rows forward ahead in this round, at most one known token per branch (guesses are added
        by :meth:`_guesses`): ``(row, local row, [(token, followed slots), ...])``, the tokens going to the
        row's scratch from ``scratch_end`` on (module docstring).

        The accept branch's next token follows the candidate's scratch slot and those of the tokens forwarded
        after it; the reject branch's next candidate follows nothing (it is one more alternative for the
        position).
        """
        work = []
        for row, local in items:
            st = self.rows[row]
            if st.phase is not Phase.READY:
                continue
            tokens: list[tuple[int, list[int]]] = []
            a = self._ahead(st)
            if a is not None and len(a.sets) == len(a.tokens) + 1:
                m = len(a.tokens)  # tokens forwarded ahead so far, all forced
                nxt = a.sets[m]
                token = nxt.top
                # a forced token would be the row's (m + 2)-th token from now: forward it only if the episode
                # goes on after it (its hidden state gives the next set); a first candidate is a decision
                if (len(nxt) > 1 and self.ahead_both) or (len(nxt) == 1 and self._continues(st, m + 2, token)):
                    tokens.append((token, [st.slot_of(st.index), *a.slots]))
            k, n = st.index + 1, len(st.cands)
            if (
                st.sibling is None
                and k < n
                and not st.in_chunk(k)
                and (
                    (k < n - 1 and self.ahead_both) or (k == n - 1 and self._continues(st, 1, int(st.cands.tokens[k])))
                )
            ):
                tokens.append((int(st.cands.tokens[k]), []))
            if tokens or (a is not None and self.guessing):  # a row with no known token may still guess
                work.append((row, local, tokens))
        return work
