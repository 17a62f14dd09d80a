"""The state of one sequence under accept/reject decoding: its phase, where its hidden states are kept, its
prompt and what was forwarded ahead of its decisions (:mod:`mara_env.decoder` moves rows through the phases).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mara_env.candidates import CandidateSet
from mara_env.drafting import RowIndex
from mara_env.engine import Prefilled

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
