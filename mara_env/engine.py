"""Batched forwards of many sequences through one LLM replica, with a ragged per-row KV cache.

Each row of the batch is one sub-environment's sequence. Its cache holds, left-aligned, the keys
and values of the tokens *committed* so far (prompt + accepted response tokens), ``length[row]``
of them. A forward appends new tokens after that prefix in one of two shapes:

- ``"chain"``: the tokens follow each other (prompt prefill): token j sees the prefix and tokens <= j;
- ``"tree"``: the tokens are *alternatives* for the same position (candidate tokens): each sees the
  prefix and itself only, and all get the same position id.

Both are one ``transformers`` forward with a custom 4D attention mask and explicit position ids.
Rows of different lengths share the forward: the gathered prefix is padded to the longest and the
mask hides the padding. The new keys/values land in the row's *scratch* slots right after its
prefix; :meth:`ReplicaEngine.commit` keeps one of them (the accepted candidate) by moving it to the
end of the prefix, so an accepted candidate costs no second forward. Rejected candidates are simply
overwritten by the next forward.

Keys are stored after the model applies rotary embeddings, so a slot can move without changing
its meaning: only the position ids passed to the forward matter.

A ``"tree"`` forward can also place a row's tokens further into its scratch (``offsets``) and let them
*follow* scratch tokens of earlier forwards (``follow``): a token that follows scratch slots ``s_1 ..
s_m`` sees the prefix, those slots and itself, at position ``length + m``, as if ``s_1 .. s_m`` had been
committed. The decoder uses it to run the forced token after a candidate under decision ahead of the
decision (:mod:`mara_env.decoder`); committing the candidate and then that token's slot gives the same
cache as the usual order.

A "tree" forward of rows with different token counts pads every row to the widest, and a padded
token costs as much compute as a real one. :meth:`ReplicaEngine.forward_packed` runs such a forward
without padding: all rows' tokens form one sequence (batch 1), the rows' prefixes are gathered side by
side, and a block mask lets each token see its own row's prefix and itself only. It costs one copy
of the prefixes and a wider attention; where rows' widths differ a lot, it saves most of the padding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from mara_env.llm import LLMReplica


class ReplicaEngine:
    """The KV cache and forwards of ``num_rows`` sequences on one replica.

    :param replica: the LLM replica.
    :param num_rows: number of sequences (sub-environments) served by this replica.
    """

    def __init__(self, replica: LLMReplica, num_rows: int) -> None:
        self.replica = replica
        self.model = replica.model
        self._cache_arg = cache_argument(self.model.base_model)
        self.device = replica.device
        self.num_rows = num_rows
        self.length = [0] * num_rows  # committed tokens per row
        self.num_forwards = 0  # forwards run so far (a statistic for benchmarks)
        self.num_tokens = 0  # new tokens run through the model so far (the compute cost)
        self._keys: list[torch.Tensor] = []  # per layer: (rows, kv_heads, capacity, head_dim)
        self._values: list[torch.Tensor] = []
        self._capacity = 0
        self._dtype = self.model.dtype
        self._mask_min = torch.finfo(self._dtype).min
        self._head = self.model.get_output_embeddings()
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)

    # ----------------------------------------------------------------------------------- public

    def reset_rows(self, rows: Sequence[int]) -> None:
        """Forget the sequences of ``rows`` (their slots are reused by the next forward)."""
        for r in rows:
            self.length[r] = 0

    @torch.no_grad()
    def forward(
        self,
        rows: Sequence[int],
        tokens: Sequence[Sequence[int]],
        mode: str,
        offsets: Sequence[int] | None = None,
        follow: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """Run the new ``tokens`` of each row in one batched forward.

        :param rows: the rows taking part (distinct).
        :param tokens: for each row, its new token ids (at least one).
        :param mode: ``"chain"`` (consecutive tokens, committed at once) or ``"tree"`` (alternatives
            for one position, kept in scratch until :meth:`commit`).
        :param offsets: ``"tree"`` only: for each row, the scratch slot of its first new token (default 0,
            right after the prefix); scratch slots below it keep what earlier forwards put there.
        :param follow: ``"tree"`` only: for each row, scratch slots of earlier forwards that its tokens
            follow, in order (default none): the tokens see the prefix, those slots and themselves, at
            position ``length + len(follow)``.
        :return: last-layer hidden states after the final norm, shape ``(len(rows), max_new, hidden)``;
            entries past a row's own token count are padding.
        """
        self.num_forwards += 1
        n_new = [len(t) for t in tokens]
        self.num_tokens += sum(n_new)
        width = max(n_new)
        offs = [0] * len(rows) if offsets is None else [int(o) for o in offsets]
        follows = [[] for _ in rows] if follow is None else [[int(s) for s in f] for f in follow]
        if mode == "chain" and (any(offs) or any(follows)):
            raise ValueError("offsets and follow apply to 'tree' forwards only.")
        # the gathered past reaches the furthest followed slot; new slots may lie beyond it
        past_len = max(self.length[r] + (max(f) + 1 if f else 0) for r, f in zip(rows, follows))
        end = max(self.length[r] + o + n for r, o, n in zip(rows, offs, n_new))
        self._ensure_capacity(max(past_len + width, end))
        dev = self.device
        row_idx = torch.tensor(rows, device=dev)
        lengths = torch.tensor([self.length[r] for r in rows], device=dev)
        counts = torch.tensor(n_new, device=dev)

        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, t in enumerate(tokens):
            ids[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        ids = ids.to(dev)

        if mode == "chain":
            positions = lengths[:, None] + torch.arange(width, device=dev)[None, :]
        elif mode == "tree":
            shift = torch.tensor([len(f) for f in follows], device=dev)
            positions = (lengths + shift)[:, None].expand(-1, width)
        else:
            raise ValueError(f"mode must be 'chain' or 'tree', got {mode!r}")
        mask = self._build_mask(lengths, counts, past_len, width, mode, follows)

        # The model's cache update writes the new keys/values in place after ``past_len`` instead of
        # concatenating. When every row takes part, the storage itself is that buffer (no copy);
        # otherwise the taking-part rows' prefixes are gathered into one (one copy).
        cache = DynamicCache()
        in_place = list(rows) == list(range(self.num_rows)) and not any(offs) and not any(follows)
        if in_place:
            cache.layers = [_BufferLayer(k, v, past_len) for k, v in zip(self._keys, self._values)]
        else:
            cache.layers = [
                _BufferLayer(
                    self._gather(k, row_idx, past_len, width),
                    self._gather(v, row_idx, past_len, width),
                    past_len,
                )
                for k, v in zip(self._keys, self._values)
            ]
        out = self.model.base_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{self._cache_arg: cache},
            use_cache=True,
            cache_position=torch.arange(past_len, past_len + width, device=dev),
        )
        starts = lengths + torch.tensor(offs, device=dev)
        self._write_back(cache, row_idx, starts, counts, past_len, width, in_place)
        if mode == "chain":
            for r, n in zip(rows, n_new):
                self.length[r] += n
        return out.last_hidden_state

    @torch.no_grad()
    def forward_packed(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """A ``"tree"`` forward of the new ``tokens`` of each row, packed into one sequence (no padding).

        Same result as ``forward(rows, tokens, "tree")``; the new keys/values land in the same scratch
        slots.

        :return: for each row, the hidden states of its tokens, shape ``(len(tokens[i]), hidden)``.
        """
        self.num_forwards += 1
        n_new = [len(t) for t in tokens]
        total = sum(n_new)
        self.num_tokens += total
        dev = self.device
        lengths = [self.length[r] for r in rows]
        self._ensure_capacity(max(length + n for length, n in zip(lengths, n_new)))
        past = sum(lengths)
        # Flat (row, position) index of every row's prefix, rows side by side.
        row_of = torch.tensor([r for r, length in zip(rows, lengths) for _ in range(length)], dtype=torch.long)
        pos_of = torch.cat([torch.arange(length) for length in lengths]) if past else torch.zeros(0, dtype=torch.long)
        row_of, pos_of = row_of.to(dev), pos_of.to(dev)
        ids = torch.tensor([[t for row_tokens in tokens for t in row_tokens]], dtype=torch.long, device=dev)
        positions = torch.tensor([[length for length, n in zip(lengths, n_new) for _ in range(n)]], device=dev)

        # Token t of row i sees row i's prefix (columns offset_i .. offset_i + length_i) and itself.
        token_row = torch.repeat_interleave(torch.arange(len(rows), device=dev), torch.tensor(n_new, device=dev))
        starts = torch.tensor([sum(lengths[:i]) for i in range(len(rows))], device=dev)
        ends = starts + torch.tensor(lengths, device=dev)
        cols = torch.arange(past, device=dev)
        allow_past = (cols[None, :] >= starts[token_row][:, None]) & (cols[None, :] < ends[token_row][:, None])
        allow = torch.cat([allow_past, torch.eye(total, dtype=torch.bool, device=dev)], dim=-1)
        mask = torch.zeros(allow.shape, dtype=self._dtype, device=dev)
        mask.masked_fill_(~allow, self._mask_min)

        cache = DynamicCache()
        layers = []
        for k, v in zip(self._keys, self._values):
            kbuf = k.new_empty(1, k.shape[1], past + total, k.shape[3])
            vbuf = v.new_empty(1, v.shape[1], past + total, v.shape[3])
            if past:
                kbuf[0, :, :past] = k[row_of, :, pos_of].transpose(0, 1)
                vbuf[0, :, :past] = v[row_of, :, pos_of].transpose(0, 1)
            layers.append(_BufferLayer(kbuf, vbuf, past))
        cache.layers = layers
        out = self.model.base_model(
            input_ids=ids,
            attention_mask=mask[None, None],
            position_ids=positions,
            **{self._cache_arg: cache},
            use_cache=True,
            cache_position=torch.arange(past, past + total, device=dev),
        )
        # Each row's new keys/values go to its scratch slots right after its prefix.
        dest_rows = torch.tensor([r for r, n in zip(rows, n_new) for _ in range(n)], device=dev)
        dest_cols = torch.tensor([length + j for length, n in zip(lengths, n_new) for j in range(n)], device=dev)
        for layer, (k_store, v_store) in enumerate(zip(self._keys, self._values)):
            # (heads, total, dim) -> (total, heads, dim), the shape of the indexed destination
            k_store[dest_rows, :, dest_cols] = cache.layers[layer].keys[0, :, past:].transpose(0, 1)
            v_store[dest_rows, :, dest_cols] = cache.layers[layer].values[0, :, past:].transpose(0, 1)
        return list(out.last_hidden_state[0].split(n_new))

    @torch.no_grad()
    def commit(self, row: int, slot: int) -> None:
        """Keep scratch token ``slot`` of the last ``"tree"`` forward of ``row`` as its next token."""
        pos = self.length[row]
        if slot:
            src = pos + slot
            for k, v in zip(self._keys, self._values):
                k[row, :, pos] = k[row, :, src]
                v[row, :, pos] = v[row, :, src]
        self.length[row] = pos + 1

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from final hidden states (the model's output head, with soft-capping if any)."""
        out = self._head(hidden)
        if self._softcap:
            out = torch.tanh(out / self._softcap) * self._softcap
        return out

    # ----------------------------------------------------------------------------------- internals

    def _build_mask(
        self,
        lengths: torch.Tensor,
        counts: torch.Tensor,
        past_len: int,
        width: int,
        mode: str,
        follow: Sequence[Sequence[int]] = (),
    ) -> torch.Tensor:
        """Additive mask ``(rows, 1, width, past_len + width)``: 0 where attention is allowed."""
        dev = self.device
        cols = torch.arange(past_len, device=dev)
        allow_past = cols[None, :] < lengths[:, None]  # (rows, past)
        pairs = [(i, s) for i, slots in enumerate(follow) for s in slots]
        if pairs:  # the followed scratch slots, as if committed
            i_idx = torch.tensor([i for i, _ in pairs], device=dev)
            slot = torch.tensor([s for _, s in pairs], device=dev)
            allow_past[i_idx, lengths[i_idx] + slot] = True
        allow_past = allow_past[:, None, :].expand(-1, width, -1)
        q = torch.arange(width, device=dev)
        if mode == "chain":
            allow_new = q[None, :] <= q[:, None]  # causal among the new tokens
        else:
            allow_new = torch.eye(width, dtype=torch.bool, device=dev)  # each candidate sees itself
        allow_new = allow_new[None].expand(lengths.shape[0], -1, -1).clone()
        # Padding queries beyond a row's own tokens attend to themselves only (no NaN rows);
        # real queries never attend to padding keys.
        real = q[None, :] < counts[:, None]  # (rows, width)
        allow_new &= real[:, None, :] | torch.eye(width, dtype=torch.bool, device=dev)[None]
        allow_past = allow_past & real[:, :, None]
        allow = torch.cat([allow_past, allow_new], dim=-1)
        mask = torch.zeros(allow.shape, dtype=self._dtype, device=dev)
        mask.masked_fill_(~allow, self._mask_min)
        return mask[:, None]

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self._capacity and self._keys:
            return
        new_cap = max(needed, 2 * self._capacity, 64)
        if not self._keys:
            self._init_storage(new_cap)
            return
        for store in (self._keys, self._values):
            for i, t in enumerate(store):
                grown = t.new_zeros(t.shape[0], t.shape[1], new_cap, t.shape[3])
                grown[:, :, : self._capacity] = t
                store[i] = grown
        self._capacity = new_cap

    def _init_storage(self, capacity: int) -> None:
        # Layer shapes come from a one-token probe forward, so models with unusual head layouts work.
        probe = DynamicCache()
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.model.base_model(input_ids=ids, use_cache=True, **{self._cache_arg: probe})
        for layer in probe.layers:
            k, v = layer.keys, layer.values
            self._keys.append(k.new_zeros(self.num_rows, k.shape[1], capacity, k.shape[3]))
            self._values.append(v.new_zeros(self.num_rows, v.shape[1], capacity, v.shape[3]))
        self._capacity = capacity

    @staticmethod
    def _gather(store: torch.Tensor, row_idx: torch.Tensor, past_len: int, width: int) -> torch.Tensor:
        buf = store.new_empty(row_idx.shape[0], store.shape[1], past_len + width, store.shape[3])
        torch.index_select(store[:, :, :past_len], 0, row_idx, out=buf[:, :, :past_len])
        return buf

    def _write_back(
        self,
        cache: DynamicCache,
        row_idx: torch.Tensor,
        starts: torch.Tensor,
        counts: torch.Tensor,
        past_len: int,
        width: int,
        in_place: bool,
    ) -> None:
        """Copy each row's new keys/values into its scratch slots from ``starts`` (prefix length plus offset).

        ``in_place``: the forward wrote into the storage itself (every row took part, no offsets), so
        rows already as long as the longest have their new slots where they belong.
        """
        dev = self.device
        j = torch.arange(width, device=dev)
        real = j[None, :] < counts[:, None]  # (rows, width)
        if in_place:  # only rows shorter than the longest need their new slots moved
            real &= starts[:, None] < past_len
        local_rows, local_j = real.nonzero(as_tuple=True)
        if local_rows.numel() == 0:
            return
        dest_rows = row_idx[local_rows]
        dest_cols = starts[local_rows] + local_j
        src_cols = past_len + local_j
        for layer, (k_store, v_store) in enumerate(zip(self._keys, self._values)):
            k_buf, v_buf = cache.layers[layer].keys, cache.layers[layer].values
            # the right-hand side is gathered before the write, so overlapping slots are safe
            k_store[dest_rows, :, dest_cols] = k_buf[local_rows, :, src_cols]
            v_store[dest_rows, :, dest_cols] = v_buf[local_rows, :, src_cols]


def cache_argument(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` (transformers >= 5.24) or the
    older ``past_key_values`` (now deprecated, with a warning on every call)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _BufferLayer(DynamicLayer):
    """A cache layer over a preallocated buffer: ``past_len`` cached slots, then room for the new tokens."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, past_len: int) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._past_len = past_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._past_len + key_states.shape[-2]
        self.keys[:, :, self._past_len : end] = key_states
        self.values[:, :, self._past_len : end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self._past_len
