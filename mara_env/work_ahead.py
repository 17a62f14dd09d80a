"""Working ahead of a decision: tokens forwarded, in forwards that run anyway, before the agent decides.

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

An accept (or a reject) then finds the forwards it needs done, and a row whose work ahead covers its
next decision needs no forward at all in that step (a step in which every row finds its forwards done
runs none). Decisions, tokens and observations are the same as without lookahead.
"""

from __future__ import annotations

from mara_env.candidates import CandidateSet
from mara_env.config import DecoderConfig
from mara_env.drafting import Drafter
from mara_env.row_state import HiddenRef, Lookahead, Phase, RowState


class WorkAhead:
    """What :class:`mara_env.decoder.AcceptRejectDecoder` forwards ahead of its rows' decisions, and the guesses
    among it (module docstring). A part of the decoder: it reads and updates the decoder's rows and counters."""

    rows: list[RowState]
    config: DecoderConfig
    drafter: Drafter
    eos: frozenset[int] | set[int]
    ahead_both: bool
    guessed: int

    @property
    def guessing(self) -> bool:
        """Whether rows forward guessed chains (:mod:`mara_env.drafting`): with ``draft_tokens`` and work ahead
        on both branches (accelerators). On a CPU every guessed token costs its compute, and measured at
        N=32 guessing cost more time than the rounds it saved (module docstring)."""
        return self.ahead_both and self.drafter.max_tokens > 0

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

    def _learn_chain(self, st: RowState, a: Lookahead, since: int) -> None:
        """Teach the drafter the greedy tokens of the sets a READY row's work ahead just took (positions
        ``since`` on); a taken chain's sets are learnt as the row takes them."""
        if not self.guessing:
            return
        # position m's context: the row's tokens, the candidate under decision, the chain's tokens before m
        base = [*st.seen.tokens, st.candidate]
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
