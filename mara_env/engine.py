"""Batched forwards of many sequences through one LLM replica, with a ragged per-row KV cache.

Each row of the batch is one sequence (a sub-environment's, or one answer's). Its cache holds,
left-aligned, the keys and values of the tokens *committed* so far (prompt + response), ``length[row]``
of them; the slots after them are the row's *scratch*. A forward (:meth:`ReplicaEngine.run`) gives each
taking-part row new tokens in two parts:

- a *chain* (prompt prefill, forced tokens): consecutive tokens, committed at once; token j sees the
  prefix and chain tokens <= j, at position ``length + j``;
- a *tree* after the chain (candidate tokens): *alternatives* for one position; each sees the prefix, the
  chain and itself, all at position ``length + len(chain)``, and lands in scratch until
  :meth:`ReplicaEngine.commit` keeps one of them (an accepted candidate costs no second forward).

A tree can also be placed further into the row's scratch (``offsets``; the slots below are kept), and each
of its tokens can *follow* scratch tokens of earlier forwards (``follow``): a token that follows scratch
slots ``s_1 .. s_m`` sees the prefix, those slots and itself, at position ``length + m``, as if they had
been committed; a followed slot may also be that of another new token of the row in the same forward
(a drafted chain of guesses, :mod:`mara_env.drafting`). The decoder uses it to work ahead of a decision
(:mod:`mara_env.decoder`): the token after a candidate under decision follows the candidate's slot, the
next candidate of the set follows nothing, both in one row of the batch; committing the candidate and
then the follower's slot gives the same cache as the usual order.

Keys are stored after the model applies rotary embeddings, so a slot can move without changing its
meaning: only the position ids passed to the forward matter.

**What a forward costs besides the model's own ops.** The cache of every layer lives in one tensor per
keys and values, ``(layers, rows, kv_heads, capacity, head_dim)``, so gathering the taking-part rows,
writing their new slots back and moving committed scratch slots are one indexed copy each for all
layers; each layer's cache update is one ``index_copy_`` into a view made once per forward, the op
count of the model's own cache. Masks, position ids and write-back indices are built on the host with
NumPy and copied over once. Two layouts:

- *rows* (the default): the taking-part rows form the batch, each row's new tokens padded to the widest;
  when every row takes part the forward runs on the cache storage itself (no gather), its new slots
  written past every row's prefix and kept scratch, then moved to their own slots;
- *packed* (:meth:`ReplicaEngine.run` with ``packed=True``): all rows' new tokens form one sequence after
  all their prefixes, and a block mask lets each token see its own row only. No padding, at the price of
  a gather of every prefix and a wider attention: it pays where the rows' token counts differ a lot and
  a padded token costs as much compute as a real one (CPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from transformers import DynamicCache

from mara_env.buffer_cache import BufferLayer, cache_argument
from mara_env.capture import MAX_CAPTURED_WIDTH, StaticForwards, bucket_width
from mara_env.llm import LLMReplica


class RoundOutput(NamedTuple):
    """Last-layer hidden states (after the final norm) of one forward's new tokens.

    :param hidden: shape ``(slots, hidden)``; row ``i``'s new tokens (its chain, then its tree) are
        ``hidden[start[i] : start[i] + count[i]]``. Other entries are padding.
    :param start: where each taking-part row's tokens begin, in the order of the forward's ``rows``.
    :param width: each row's slots (padding included) where rows are not consecutive (a captured forward,
        in which every cache row has its slots); ``0``: up to the next row's start.
    """

    hidden: torch.Tensor
    start: list[int]
    width: int = 0

    def row(self, i: int) -> torch.Tensor:
        """The hidden states of row ``i``'s new tokens (a view; padding included for the ``rows`` layout)."""
        if self.width:
            end = self.start[i] + self.width
        else:
            end = self.start[i + 1] if i + 1 < len(self.start) else self.hidden.shape[0]
        return self.hidden[self.start[i] : end]


class Prefilled(NamedTuple):
    """Prompts run through the LLM before any row takes them (:meth:`ReplicaEngine.prefill`).

    Their keys/values stay in a buffer of their own until :meth:`ReplicaEngine.adopt` copies one into a row.

    :param keys: shape ``(layers, buffer rows, kv_heads, slots, head_dim)``.
    :param values: the same for values.
    :param hidden: shape ``(buffer rows * slots, hidden)``, the last-layer hidden states.
    :param lengths: each prompt's token count.
    :param where: each prompt's first slot ``(buffer row, slot)``; its tokens follow on that buffer row.
    """

    keys: torch.Tensor
    values: torch.Tensor
    hidden: torch.Tensor
    lengths: list[int]
    where: list[tuple[int, int]]

    def last_hidden(self, i: int) -> tuple[torch.Tensor, int]:
        """Where the hidden state of prompt ``i``'s last token is (it gives the first candidate set)."""
        row, slot = self.where[i]
        return self.hidden, row * self.keys.shape[3] + slot + self.lengths[i] - 1


#: The most prompt tokens a packed prefill (:meth:`ReplicaEngine.prefill` on a CPU) runs as one sequence: its
#: mask grows with the square of that (4,096 tokens: 64 MiB of float32).
PACKED_PREFILL_TOKENS = 4096


class ReplicaEngine:
    """The KV cache and forwards of ``num_rows`` sequences on one replica.

    :param replica: the LLM replica.
    :param num_rows: number of sequences served by this replica.
    :param capture: run the *rows* layout's forwards in static shapes (:mod:`mara_env.capture`), as CUDA
        graphs on a CUDA device; elsewhere the same static shapes run eagerly (to test that path).
    """

    def __init__(self, replica: LLMReplica, num_rows: int, capture: bool = False) -> None:
        self.replica = replica
        self.model = replica.model
        self._cache_arg = cache_argument(self.model.base_model)
        self.device = replica.device
        self.num_rows = num_rows
        self.length = [0] * num_rows  # committed tokens per row
        self.num_forwards = 0  # forwards run so far (a statistic for benchmarks)
        self.num_tokens = 0  # new tokens run through the model so far (the compute cost)
        self._keys: torch.Tensor | None = None  # (layers, rows, kv_heads, capacity, head_dim)
        self._values: torch.Tensor | None = None
        self._capacity = 0
        self._moves: list[tuple[int, int, int]] = []  # commits not yet copied: (row, from slot, to slot)
        self._dtype = self.model.dtype
        self._mask_min = torch.finfo(self._dtype).min
        self._head = self.model.get_output_embeddings()
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)
        # the furthest slot each row may still read (committed tokens and scratch), so that a captured forward
        # can put its new tokens past every row's, taking part or not
        self._top = np.zeros(num_rows, dtype=np.int64)
        self.static: StaticForwards | None = None
        if capture:
            self.static = StaticForwards(self._model_call, self.device, self._dtype, replica.hidden_size)

    # ----------------------------------------------------------------------------------- public

    def reset_rows(self, rows: Sequence[int]) -> None:
        """Forget the sequences of ``rows`` (their slots are reused by the next forward)."""
        dropped = set(rows)
        self._moves = [m for m in self._moves if m[0] not in dropped]
        for r in rows:
            self.length[r] = 0
            self._top[r] = 0

    def truncate(self, rows: Sequence[int], lengths: Sequence[int]) -> None:
        """Keep only the first ``lengths[i]`` committed tokens of ``rows[i]`` (a row rolling back, e.g. a scorer whose
        text changed there); the next forward writes over the rest."""
        keep = dict(zip(rows, lengths))
        for r, n in keep.items():
            if not 0 <= n <= self.length[r]:
                raise ValueError(
                    f"truncate: row {r} holds {self.length[r]} tokens, cannot keep {n}; give 0..{self.length[r]}."
                )
        self._moves = [m for m in self._moves if m[2] < keep.get(m[0], m[2] + 1)]
        for r, n in keep.items():
            self.length[r] = n
            self._top[r] = n

    def commit(self, row: int, slot: int) -> None:
        """Keep scratch token ``slot`` of ``row`` as its next token (the copy runs with the next forward)."""
        pos = self.length[row]
        if slot:
            self._moves.append((row, pos + slot, pos))
        self.length[row] = pos + 1
        self._top[row] = max(self._top[row], pos + 1)

    @torch.no_grad()
    def run(
        self,
        rows: Sequence[int],
        chain: Sequence[Sequence[int]] | None = None,
        tree: Sequence[Sequence[int]] | None = None,
        *,
        offsets: Sequence[int] | None = None,
        follow: Sequence[Sequence[int]] | None = None,
        packed: bool = False,
    ) -> RoundOutput:
        """Run each row's new tokens in one forward (module docstring).

        :param rows: the rows taking part (distinct).
        :param chain: for each row, tokens committed in order (default none).
        :param tree: for each row, alternatives for the position after its chain (default none); every row
            has at least one new token in all.
        :param offsets: for each row, the scratch slot of its first tree token (default 0, right after the
            prefix); slots below it keep what earlier forwards put there. Rows with a chain take 0.
        :param follow: for each row, for each of its tree tokens, the scratch slots it follows, in order
            (default none): the token sees the prefix, those slots and itself, at position ``length +
            len(follow)`` (``length`` after the chain). A followed slot is an earlier forward's, or that of
            another tree token of the same row in this forward (a drafted chain: tree token ``i`` lands in
            slot ``offset + i``). Rows with a chain follow only their own new tree tokens.
        :param packed: the packed layout (one sequence, no padding; no ``offsets`` or ``follow``).
        """
        n = len(rows)
        chain = [()] * n if chain is None else chain
        tree = [()] * n if tree is None else tree
        n_chain = np.array([len(c) for c in chain], dtype=np.int64)
        n_new = n_chain + np.array([len(t) for t in tree], dtype=np.int64)
        offs = np.zeros(n, dtype=np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
        follows = [[()] * len(t) for t in tree] if follow is None else follow
        followed = np.array([any(len(f) for f in row_follow) for row_follow in follows], dtype=bool)
        if n == 0 or (n_new < 1).any():
            raise ValueError("every taking-part row needs at least one new token.")
        if any(len(f) != len(t) for f, t in zip(follows, tree)):
            raise ValueError("follow needs one list of followed slots per tree token.")
        if ((n_chain > 0) & (offs > 0)).any():
            raise ValueError("offsets apply to tree tokens after no chain only.")
        if packed and (offs.any() or followed.any()):
            raise ValueError("the packed layout takes no offsets or follow.")
        self.num_forwards += 1
        self.num_tokens += int(n_new.sum())
        lengths = np.array([self.length[r] for r in rows], dtype=np.int64)
        # Scratch slot of each new token: chain tokens right after the prefix, tree tokens after the chain.
        ids = np.concatenate([np.asarray([*c, *t], dtype=np.int64) for c, t in zip(chain, tree)])
        token_row = np.repeat(np.arange(n), n_new)
        j = np.arange(len(ids)) - np.repeat(np.cumsum(n_new) - n_new, n_new)  # index within its row
        dest = lengths[token_row] + offs[token_row] + j
        # each token's followed slots, flat (chain tokens follow nothing)
        token_follow: list[Sequence[int]] = []
        for c, row_follow in zip(chain, follows):
            token_follow += [()] * len(c) + list(row_follow)
        shift = np.array([len(f) for f in token_follow], dtype=np.int64)
        is_tree = j >= n_chain[token_row]
        positions = np.where(is_tree, lengths[token_row] + n_chain[token_row] + shift, lengths[token_row] + j)
        if packed:
            out = self._run_packed(rows, lengths, ids, token_row, j, n_chain, positions, dest)
        else:
            out = self._run_rows(rows, lengths, ids, token_row, j, n_chain, n_new, offs, token_follow, positions, dest)
        if self.static is not None:  # only captured forwards read it
            np.maximum.at(self._top, np.asarray(rows)[token_row], dest + 1)
        for r, c in zip(rows, n_chain):
            self.length[r] += int(c)
        return out

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> Prefilled:
        """Run ``prompts`` (token ids) through the LLM in one forward, into a buffer that no row owns yet.

        A row takes one with :meth:`adopt`; until then the prompts cost memory, not forwards. Each token sees
        its prompt up to itself, as in a forward of the prompts as rows' chains (:meth:`run`). On a CPU, where a
        padded token costs its compute, the prompts run packed as one sequence (a prompt set's lengths vary:
        32 prompts padded to the longest are about half padding); elsewhere each prompt is a batch row.
        """
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        if len(lengths) == 0 or (lengths < 1).any():
            raise ValueError("prefill needs at least one prompt, each of at least one token.")
        total = int(lengths.sum())
        packed = self.device.type == "cpu" and len(lengths) > 1 and total <= PACKED_PREFILL_TOKENS
        self._ensure_capacity(int(lengths.max()))  # the storage's layout gives the buffer's
        self.num_forwards += 1
        self.num_tokens += total
        flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts])
        prompt_of = np.repeat(np.arange(len(lengths)), lengths)
        j = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # index within its prompt
        if packed:  # one sequence; each token sees its own prompt's tokens up to itself
            ids, positions = flat[None], j[None]
            t = np.arange(total)
            allow = ((prompt_of[:, None] == prompt_of[None, :]) & (t[None, :] <= t[:, None]))[None]
            where = [(0, int(s)) for s in np.cumsum(lengths) - lengths]
        else:  # one batch row per prompt, padded; a padding slot sees only itself
            width = int(lengths.max())
            ids = np.zeros((len(lengths), width), dtype=np.int64)
            ids[prompt_of, j] = flat
            positions = np.tile(np.arange(width), (len(lengths), 1))
            q, k = np.arange(width)[None, :, None], np.arange(width)[None, None, :]
            allow = (k <= q) & ((q < lengths[:, None, None]) | (k == q))
            where = [(i, 0) for i in range(len(lengths))]
        n, width = ids.shape
        shape = (self._keys.shape[0], n, self._keys.shape[2], width)
        keys = self._keys.new_empty((*shape, self._keys.shape[4]))
        values = self._values.new_empty((*shape, self._values.shape[4]))
        hidden = self._forward(ids, positions, allow, keys, values, 0, width)
        return Prefilled(keys, values, hidden.reshape(n * width, -1), lengths.tolist(), where)

    def adopt(self, rows: Sequence[int], sources: Sequence[tuple[Prefilled, int]]) -> None:
        """Start each of ``rows`` on a prefilled prompt ``(prefilled, index)``: its keys/values are copied in
        (one indexed copy per source buffer, all layers at once) and become the row's committed prefix."""
        self.reset_rows(rows)
        lengths = [p.lengths[i] for p, i in sources]
        self._ensure_capacity(max(lengths))
        self._flush_moves()
        groups: dict[int, tuple[Prefilled, list[int], list[int]]] = {}
        for row, (p, i) in zip(rows, sources):
            groups.setdefault(id(p), (p, [], []))[1].append(i)
            groups[id(p)][2].append(row)
        for p, index, dest in groups.values():
            counts = [p.lengths[i] for i in index]
            cols = np.concatenate([np.arange(c) for c in counts])
            src_row = np.repeat([p.where[i][0] for i in index], counts)
            src_col = np.repeat([p.where[i][1] for i in index], counts) + cols
            self._write(p.keys, p.values, src_row, src_col, np.repeat(dest, counts), cols)
        for row, length in zip(rows, lengths):
            self.length[row] = length
            self._top[row] = length

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from final hidden states (the model's output head, with soft-capping if any)."""
        out = self._head(hidden)
        if self._softcap:
            out = torch.tanh(out / self._softcap) * self._softcap
        return out

    # ----------------------------------------------------------------------------------- layouts

    def _run_rows(
        self,
        rows: Sequence[int],
        lengths: np.ndarray,
        ids: np.ndarray,
        token_row: np.ndarray,
        j: np.ndarray,
        n_chain: np.ndarray,
        n_new: np.ndarray,
        offs: np.ndarray,
        token_follow: Sequence[Sequence[int]],
        positions: np.ndarray,
        dest: np.ndarray,
    ) -> RoundOutput:
        taking_part = np.asarray(rows, dtype=np.int64)
        static = self.static is not None and int(n_new.max()) <= MAX_CAPTURED_WIDTH
        if static:  # every cache row is a batch row (the others get padding), the width a power of two
            token_row = taking_part[token_row]
            full = np.zeros(self.num_rows, dtype=np.int64)
            lengths, n_chain, n_new, offs = (_spread(full, taking_part, a) for a in (lengths, n_chain, n_new, offs))
            rows = range(self.num_rows)
        n = len(rows)
        width = bucket_width(int(n_new.max())) if static else int(n_new.max())
        # Each followed slot is either a scratch slot of an earlier forward (a column of the attended past)
        # or one of this forward's new tree tokens of the same row (a column of the new block).
        new_slot = {
            (int(token_row[t]), int(offs[token_row[t]] + j[t] - n_chain[token_row[t]])): int(j[t])
            for t in np.flatnonzero(j >= n_chain[token_row])
        }
        old_pairs, new_pairs = [], []
        for t, f in enumerate(token_follow):
            r = int(token_row[t])
            for s in f:
                if (r, s) in new_slot:
                    new_pairs.append((t, new_slot[r, s]))
                elif n_chain[r]:
                    raise ValueError("a row with a chain can follow only its own new tree tokens.")
                else:
                    old_pairs.append((t, s))
        # the attended past reaches every row's prefix and the furthest earlier scratch slot its tokens follow
        reach = lengths.copy()
        for t, s in old_pairs:
            reach[token_row[t]] = max(reach[token_row[t]], lengths[token_row[t]] + s + 1)
        in_place = list(rows) == list(range(self.num_rows))
        # in place, the new slots are written past every row's kept scratch (the slots below its offset)
        past = int(np.maximum(reach, lengths + offs).max() if in_place else reach.max())
        if static:  # and past what the rows not taking part may still read
            idle = np.setdiff1d(np.arange(self.num_rows), taking_part)
            past = max(past, int(self._top[idle].max()) if len(idle) else 0)
        self._ensure_capacity(max(past + width, int(dest.max()) + 1))
        self._flush_moves()
        if static:  # the new slots are the storage's last ones: one shape per (width, capacity)
            past = self._capacity - width
        dev = self.device

        # Host-side inputs: ids and positions padded to (rows, width), the additive mask.
        grid_ids = np.zeros((n, width), dtype=np.int64)
        grid_pos = np.repeat(lengths[:, None], width, axis=1)
        grid_ids[token_row, j] = ids
        grid_pos[token_row, j] = positions
        allow = np.zeros((n, width, past + width), dtype=bool)
        allow[:, :, :past] = np.arange(past)[None, None, :] < lengths[:, None, None]
        if old_pairs:  # followed scratch slots of earlier forwards, as if committed
            pt, ps = np.array(old_pairs).T
            allow[token_row[pt], j[pt], lengths[token_row[pt]] + ps] = True
        q = np.arange(width)[None, :, None]
        k = np.arange(width)[None, None, :]
        nc, nn = n_chain[:, None, None], n_new[:, None, None]
        chain_q, real_q = q < nc, q < nn
        # chain tokens: causal among the chain; tree tokens: the chain and themselves; padding: itself only
        allow[:, :, past:] = (chain_q & (k <= q)) | (~chain_q & real_q & ((k < nc) | (k == q))) | (~real_q & (k == q))
        if new_pairs:  # followed tree tokens of this forward
            pt, pj = np.array(new_pairs).T
            allow[token_row[pt], j[pt], past + pj] = True
        allow[:, :, :past] &= real_q[:, :, 0][:, :, None]

        if static:
            keys, values = self._keys, self._values
            storage = (self._keys.data_ptr(), self._capacity)
            hidden = self.static.forward(grid_ids, grid_pos, self._additive_mask(allow), storage)
        elif in_place:  # the storage itself is the cache buffer: new slots land at past .. past + width
            keys = self._keys[:, :, :, : past + width]
            values = self._values[:, :, :, : past + width]
            hidden = self._forward(grid_ids, grid_pos, allow, keys, values, past, width)
        else:  # the taking-part rows' prefixes gathered into one buffer
            row_idx = torch.as_tensor(np.asarray(rows), device=dev)
            keys = self._gather_rows(self._keys, row_idx, past, width)
            values = self._gather_rows(self._values, row_idx, past, width)
            hidden = self._forward(grid_ids, grid_pos, allow, keys, values, past, width)

        # New keys/values from their buffer columns to their own scratch slots (one copy for all layers).
        src_col = past + j
        src_row = token_row if not in_place else np.asarray(rows)[token_row]
        dest_row = np.asarray(rows)[token_row]
        if in_place:  # tokens already in their own slots (the longest rows' first scratch) stay
            moved = dest != src_col
            src_row, src_col, dest_row, dest = src_row[moved], src_col[moved], dest_row[moved], dest[moved]
        self._write(keys, values, src_row, src_col, dest_row, dest)
        if static:
            return RoundOutput(hidden.reshape(n * width, -1), [int(r) * width for r in taking_part], width)
        return RoundOutput(hidden.reshape(n * width, -1), [i * width for i in range(n)])

    def _run_packed(
        self,
        rows: Sequence[int],
        lengths: np.ndarray,
        ids: np.ndarray,
        token_row: np.ndarray,
        j: np.ndarray,
        n_chain: np.ndarray,
        positions: np.ndarray,
        dest: np.ndarray,
    ) -> RoundOutput:
        total = len(ids)
        self._ensure_capacity(int(dest.max()) + 1)
        self._flush_moves()
        dev = self.device
        past = int(lengths.sum())
        starts = np.cumsum(lengths) - lengths  # each row's prefix inside the packed past
        allow = np.zeros((1, total, past + total), dtype=bool)
        cols = np.arange(past)
        allow[0, :, :past] = (cols[None, :] >= starts[token_row][:, None]) & (
            cols[None, :] < (starts + lengths)[token_row][:, None]
        )
        t = np.arange(total)
        same_row = token_row[:, None] == token_row[None, :]
        chain_q = j < n_chain[token_row]
        k_is_chain = j[None, :] < n_chain[token_row][:, None]
        # chain tokens: causal among their row's chain; tree tokens: their row's chain and themselves
        allow[0, :, past:] = same_row & (
            (chain_q[:, None] & (t[None, :] <= t[:, None]))
            | (~chain_q[:, None] & (k_is_chain | (t[None, :] == t[:, None])))
        )
        keys = self._keys.new_empty((self._keys.shape[0], 1, self._keys.shape[2], past + total, self._keys.shape[4]))
        values = self._values.new_empty(keys.shape)
        if past:
            row_of = torch.as_tensor(np.repeat(np.asarray(rows), lengths), device=dev)
            pos_of = torch.as_tensor(np.concatenate([np.arange(length) for length in lengths]), device=dev)
            # (prefix tokens, layers, heads, dim) -> (layers, heads, prefix tokens, dim)
            keys[:, 0, :, :past] = self._keys[:, row_of, :, pos_of].permute(1, 2, 0, 3)
            values[:, 0, :, :past] = self._values[:, row_of, :, pos_of].permute(1, 2, 0, 3)
        hidden = self._forward(ids[None], positions[None], allow, keys, values, past, total)
        self._write(keys, values, np.zeros(total, dtype=np.int64), past + t, np.asarray(rows)[token_row], dest)
        starts_new = np.cumsum(np.bincount(token_row, minlength=len(rows))) - np.bincount(
            token_row, minlength=len(rows)
        )
        return RoundOutput(hidden[0], [int(s) for s in starts_new])

    # ----------------------------------------------------------------------------------- internals

    def _forward(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        allow: np.ndarray,
        keys: torch.Tensor,
        values: torch.Tensor,
        past: int,
        width: int,
    ) -> torch.Tensor:
        """One model forward over the buffers ``keys``/``values`` ``(layers, batch, heads, past + width, dim)``."""
        dev = self.device
        mask = torch.from_numpy(self._additive_mask(allow)[:, None])
        new_slots = torch.arange(past, past + width, device=dev)
        return self._call(
            torch.from_numpy(ids).to(dev),
            torch.from_numpy(positions).to(dev),
            mask.to(dev, self._dtype),
            keys,
            values,
            new_slots,
            past,
        )

    def _additive_mask(self, allow: np.ndarray) -> np.ndarray:
        """The attention mask the model adds to its scores: 0 where ``allow``, the dtype's minimum elsewhere."""
        return np.where(allow, 0.0, self._mask_min).astype(np.float32)

    def _model_call(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, new_slots: torch.Tensor, past: int
    ) -> torch.Tensor:
        """A forward over the whole cache storage (a captured bucket's, :mod:`mara_env.capture`)."""
        return self._call(ids, positions, mask, self._keys, self._values, new_slots, past)

    def _call(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        new_slots: torch.Tensor,
        past: int,
    ) -> torch.Tensor:
        """The model on device tensors; each layer's new keys/values go to ``new_slots`` of ``keys``/``values``."""
        cache = DynamicCache()
        cache.layers = [
            BufferLayer(k, v, new_slots, past) for k, v in zip(keys.unbind(0), values.unbind(0), strict=True)
        ]
        out = self.model.base_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{self._cache_arg: cache},
            use_cache=True,
            cache_position=new_slots,
        )
        return out.last_hidden_state

    def _gather_rows(self, store: torch.Tensor, row_idx: torch.Tensor, past: int, width: int) -> torch.Tensor:
        """A buffer ``(layers, len(row_idx), heads, past + width, dim)`` holding those rows' first ``past`` slots."""
        buf = store.new_empty((store.shape[0], row_idx.shape[0], store.shape[2], past + width, store.shape[4]))
        if past:
            # one advanced-indexing copy; index_select on the sliced (strided) storage is ~30x slower on CPU
            buf[:, :, :, :past] = store[:, row_idx, :, :past]
        return buf

    def _write(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        src_row: np.ndarray,
        src_col: np.ndarray,
        dest_row: np.ndarray,
        dest_col: np.ndarray,
    ) -> None:
        """Copy buffer slots ``(src_row, src_col)`` to storage slots ``(dest_row, dest_col)``, all layers at once."""
        if len(dest_row) == 0:
            return
        dev = self.device
        sr, sc, dr, dc = (
            torch.as_tensor(np.asarray(a, dtype=np.int64), device=dev) for a in (src_row, src_col, dest_row, dest_col)
        )
        # the right-hand side is gathered before the write, so overlapping slots are safe
        self._keys[:, dr, :, dc] = keys[:, sr, :, sc]
        self._values[:, dr, :, dc] = values[:, sr, :, sc]

    def _flush_moves(self) -> None:
        """Copy the committed scratch slots to their places (every commit since the last forward, in one copy)."""
        if not self._moves:
            return
        rows, src, dst = (np.array(a, dtype=np.int64) for a in zip(*self._moves))
        self._moves = []
        # A later commit of a row reads a slot beyond every earlier commit's destination, so all moves can
        # read first and write after (what one indexed copy does).
        self._write(self._keys, self._values, rows, src, rows, dst)

    def _ensure_capacity(self, needed: int) -> None:
        if self._keys is None:
            self._init_storage(max(needed, 64))
            return
        if needed <= self._capacity:
            return
        self._flush_moves()
        new_cap = max(needed, 2 * self._capacity)
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            grown = old.new_zeros((*old.shape[:3], new_cap, old.shape[4]))
            grown[:, :, :, : self._capacity] = old
            setattr(self, name, grown)
        self._capacity = new_cap

    def _init_storage(self, capacity: int) -> None:
        # Layer shapes come from a one-token probe forward, so models with unusual head layouts work.
        probe = DynamicCache()
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.model.base_model(input_ids=ids, use_cache=True, **{self._cache_arg: probe})
        shapes = {(layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[3]) for layer in probe.layers}
        if len(shapes) != 1:
            raise ValueError(
                f"the LLM's layers cache keys/values of different shapes {sorted(shapes)} (heads, key dim, value dim); "
                "MARA's batched cache needs one shape for every layer. Use a model whose layers share a shape."
            )
        heads, key_dim, value_dim = shapes.pop()
        layers, k0 = len(probe.layers), probe.layers[0].keys
        self._keys = k0.new_zeros((layers, self.num_rows, heads, capacity, key_dim))
        self._values = k0.new_zeros((layers, self.num_rows, heads, capacity, value_dim))
        self._capacity = capacity


def _spread(full: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of ``full`` with ``values`` at indices ``at`` (per-row arrays of the taking-part rows, over all rows)."""
    out = full.copy()
    out[at] = values
    return out
