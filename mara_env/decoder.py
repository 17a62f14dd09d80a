"""Accept/reject decoding of many sequences at once: the rules of MARA's MDP, shared by the
environment and by aligned generation.

Each row (one sequence) moves through these phases::

    NEED_LOGITS --candidate set--> NEED_FORWARD --chunk of candidate hidden states--> READY
         ^                              ^                                             |
         |                              +--------- reject past the chunk -------------+
         +---- accept (the candidate's hidden state gives the next logits) -----------+

- A candidate set of one token, and the last candidate of a set, are taken without a decision.
  A forced token that is not in an already computed chunk needs one forward (``NEED_FORWARD``
  with a pending token); its hidden state then gives the next logits.
- Candidates' hidden states are computed ``chunk_size`` at a time ("tree" forwards), batched
  across all rows of a replica that need them. An accepted candidate's keys/values are kept from
  that forward, so acceptance costs no further forward.
- A row is ``DONE`` when it commits an EOS token or reaches ``max_new_tokens``.

By default every call leaves *all* its rows READY or DONE, which an environment needs (each
sub-environment returns an observation every step). With ``lockstep=False`` (aligned generation)
a call returns after the first forward that leaves some row READY; rows still waiting for a forward
(a forced token, a rejection past the chunk) join the next call's forward instead of costing
forwards of their own while the others wait. A row's decisions and tokens are the same either way.

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
from mara_env.engine import ReplicaEngine
from mara_env.llm import LLMReplica


class Phase(enum.Enum):
    NEED_LOGITS = "need_logits"  # last committed token's hidden state known; candidate set not built
    NEED_FORWARD = "need_forward"  # a forced token or the next candidate chunk must go through the LLM
    READY = "ready"  # waiting for the agent's decision on candidate ``index``
    DONE = "done"


@dataclass
class RowState:
    """Everything the decoder knows about one sequence."""

    prompt: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    prompt_truncated: bool = False
    response: list[int] = field(default_factory=list)
    phase: Phase = Phase.DONE
    cands: CandidateSet | None = None
    index: int = 0  # the candidate under decision
    chunk_start: int = 0
    chunk_hidden: torch.Tensor | None = None  # (chunk, hidden) on the replica's device
    last_hidden: torch.Tensor | None = None  # hidden state of the last committed token
    pending: int | None = None  # forced token awaiting its forward
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
        (:meth:`ReplicaEngine.forward_packed`) instead of padding every row to the widest.
    """

    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    max_new_tokens: int = 512
    chunk_size: int = 1
    chunk_coverage: float | None = None
    packed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(
                f"chunk_size must be an integer >= 1 (or 'auto'/'all' in the env), got {self.chunk_size!r}."
            )
        if self.chunk_coverage is not None:
            make_chunk_rule(self.chunk_size, self.chunk_coverage)  # checks the coverage


class AcceptRejectDecoder:
    """Runs ``num_rows`` sequences through accept/reject decoding on one or more replicas.

    :param replicas: the LLM replicas (same model); rows are split evenly across them.
    :param num_rows: number of sequences.
    :param config: decoding rules.
    :param lockstep: ``True``: every call advances all its rows to READY or DONE; ``False``: a call may
        leave rows waiting for a forward (see the module docstring), which saves forwards in batches.
    :param chunk_rule: the rule sizing each row's chunk, to share what an adaptive rule has learnt about
        an agent across decoders (default: a new one from ``config``).
    """

    def __init__(
        self,
        replicas: Sequence[LLMReplica],
        num_rows: int,
        config: DecoderConfig,
        lockstep: bool = True,
        chunk_rule: FixedChunks | AdaptiveChunks | None = None,
    ) -> None:
        if num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {num_rows}")
        self.config = config
        self.lockstep = lockstep
        self.replicas = list(replicas)
        self.num_rows = num_rows
        self.rows = [RowState() for _ in range(num_rows)]
        self.chunks = (
            chunk_rule if chunk_rule is not None else make_chunk_rule(config.chunk_size, config.chunk_coverage)
        )
        self.eos = self.replicas[0].eos_token_ids
        # Contiguous blocks: row -> (replica, local row); more replicas than rows leaves some idle.
        n_rep = min(len(self.replicas), num_rows)
        bounds = np.linspace(0, num_rows, n_rep + 1).round().astype(int)
        self._blocks = [list(range(bounds[i], bounds[i + 1])) for i in range(n_rep)]
        self.engines = [ReplicaEngine(self.replicas[i], len(b)) for i, b in enumerate(self._blocks)]
        self._where = {row: (i, j) for i, block in enumerate(self._blocks) for j, row in enumerate(block)}
        self._pool = ThreadPoolExecutor(max_workers=n_rep) if n_rep > 1 else None

    # ----------------------------------------------------------------------------------- public

    def start(self, rows: Sequence[int], prompts: Sequence[str], prompt_ids: Sequence[list[int]]) -> None:
        """Begin new sequences on ``rows`` and advance each to its first decision (or to DONE)."""
        for row, text, ids in zip(rows, prompts, prompt_ids):
            if not ids:
                raise ValueError(f"prompt {text!r} tokenizes to nothing; remove empty prompts from the prompt set.")
            self.rows[row] = RowState(prompt=text, prompt_ids=list(ids))

        def work(engine: ReplicaEngine, items: list[tuple[int, int]]) -> None:
            engine.reset_rows([local for _, local in items])
            hidden = engine.forward([local for _, local in items], [self.rows[r].prompt_ids for r, _ in items], "chain")
            for i, (row, _) in enumerate(items):
                st = self.rows[row]
                st.last_hidden = hidden[i, len(st.prompt_ids) - 1]
                st.phase = Phase.NEED_LOGITS
            self._advance(engine, items)

        self._run_per_replica(rows, work)

    def decide(self, rows: Sequence[int], actions: Sequence[int]) -> np.ndarray:
        """Apply the agent's decisions (1 = accept, 0 = reject) on READY ``rows``, then advance them.

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
            elif st.index >= st.chunk_start + st.chunk_hidden.shape[0]:
                st.phase = Phase.NEED_FORWARD

        def work(engine: ReplicaEngine, items: list[tuple[int, int]]) -> None:
            self._advance(engine, items)

        # sorted: when every row of a replica takes part, its forward runs on the cache storage in place
        self._run_per_replica(sorted([*rows, *self._waiting(exclude=rows)]), work)
        return logp

    def _waiting(self, exclude: Sequence[int] = ()) -> list[int]:
        """Rows left waiting for a forward by an earlier call (only without lockstep)."""
        if self.lockstep:
            return []
        skip = set(exclude)
        return [
            r for r, st in enumerate(self.rows) if r not in skip and st.phase in (Phase.NEED_LOGITS, Phase.NEED_FORWARD)
        ]

    def observations(self, rows: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """Hidden states of the candidates under decision, shape ``(len(rows), hidden)``."""
        if not rows:
            return np.zeros((0, self.replicas[0].hidden_size), dtype=dtype)
        # Stack on each replica's device and copy to the host once per device, not once per row.
        by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
        for i, row in enumerate(rows):
            st = self.rows[row]
            if st.phase is not Phase.READY:
                raise RuntimeError(f"row {row} has no observation (phase {st.phase.value}).")
            hidden = st.chunk_hidden[st.index - st.chunk_start]
            by_device.setdefault(hidden.device, []).append((i, hidden))
        out = np.empty((len(rows), self.replicas[0].hidden_size), dtype=dtype)
        for items in by_device.values():
            host = torch.stack([h for _, h in items]).to("cpu", torch.float32).numpy()
            with np.errstate(over="ignore"):  # an overflow is reported below, by name
                out[[i for i, _ in items]] = host
        # Checked here, before any network sees them: a NaN or inf would surface much later as a
        # non-finite loss that points at the agent
        if not np.isfinite(out).all():
            self._raise_non_finite(rows, out, dtype)
        return out

    def _raise_non_finite(self, rows: Sequence[int], out: np.ndarray, dtype: np.dtype) -> None:
        i = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        st = self.rows[rows[i]]
        hidden = st.chunk_hidden[st.index - st.chunk_start].to("cpu", torch.float32).numpy()
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
        st.ref_logprob += float(np.log(st.cands.probs[k]))
        st.accepted_ranks.append(k)
        if token in self.eos or len(st.response) >= self.config.max_new_tokens:
            st.finish_reason = "eos" if token in self.eos else "length"
            st.phase = Phase.DONE
            st.chunk_hidden = st.last_hidden = None
            return
        slot = k - st.chunk_start
        if st.chunk_hidden is not None and 0 <= slot < st.chunk_hidden.shape[0]:
            rep, local = self._where[row]
            self.engines[rep].commit(local, slot)
            st.last_hidden = st.chunk_hidden[slot]
            st.phase = Phase.NEED_LOGITS
        else:
            st.pending = token
            st.phase = Phase.NEED_FORWARD
        st.chunk_hidden = None

    def _advance(self, engine: ReplicaEngine, items: list[tuple[int, int]]) -> None:
        """Move rows forward until each is READY or DONE, batching every forward across them."""
        forwards = 0
        while True:
            need_logits = [(r, loc) for r, loc in items if self.rows[r].phase is Phase.NEED_LOGITS]
            if need_logits:
                hidden = torch.stack([self.rows[r].last_hidden for r, _ in need_logits])
                sets = candidate_sets(engine.logits(hidden), self.config.candidates)
                for (row, _), cands in zip(need_logits, sets):
                    st = self.rows[row]
                    st.cands, st.index, st.chunk_hidden, st.last_hidden = cands, 0, None, None
                    st.set_sizes.append(len(cands))
                    if len(cands) == 1:
                        self._take(row, 0)
                    else:
                        st.phase = Phase.NEED_FORWARD
            need_forward = [(r, loc) for r, loc in items if self.rows[r].phase is Phase.NEED_FORWARD]
            if not need_forward:
                return
            if not self.lockstep and forwards and any(self.rows[r].phase is Phase.READY for r, _ in items):
                return  # the waiting rows join the next call's forward
            forwards += 1
            tokens = []
            for row, _ in need_forward:
                st = self.rows[row]
                if st.pending is not None:
                    tokens.append([st.pending])
                else:
                    size = self.chunks.size(st.cands.probs, st.index)
                    tokens.append(st.cands.tokens[st.index : st.index + size].tolist())
            locals_ = [loc for _, loc in need_forward]
            widths = [len(t) for t in tokens]
            if self.config.packed and max(widths) * len(widths) > sum(widths):
                hidden = engine.forward_packed(locals_, tokens)  # no padding to the widest row
            else:
                hidden = engine.forward(locals_, tokens, "tree")
            for i, (row, local) in enumerate(need_forward):
                st = self.rows[row]
                if st.pending is not None:
                    engine.commit(local, 0)
                    st.pending = None
                    st.last_hidden = hidden[i][0]
                    st.phase = Phase.NEED_LOGITS
                else:
                    st.chunk_start = st.index
                    st.chunk_hidden = hidden[i][: len(tokens[i])]
                    st.phase = Phase.READY
