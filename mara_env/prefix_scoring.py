"""Scoring every prefix of growing answers: the potential of ``reward_shaping="potential"``.

Potential-based shaping scores each row's answer so far after every committed token. Re-scoring every
prefix from scratch costs a full prefill per row per step, so a whole episode costs the square of its
length. A score model on a causal backbone (a safe-rlhf score model such as beaver-7b, an
``AutoModelForSequenceClassification`` over a decoder-only model) need not: the hidden state at a token
depends only on the tokens before it, so :class:`IncrementalScorer` keeps each row's keys/values in a
:class:`~mara_env.engine.ReplicaEngine` and runs only the tokens that changed since the row's last call.

Which tokens changed is found by comparing token ids, not text: the pair is formatted and tokenized
exactly as full scoring does it, and the row's cached tokens are kept up to the first id that differs.
After a committed token that is the new token plus the template's tail (``eos`` of beaver's template, the
end of the assistant turn of a chat template), whose keys/values are dropped at the next call. Where the
tokenizer merges across the template's boundary or across two answer tokens, the first differing id comes
earlier and more tokens run again, down to full scoring of the row (a new prompt, a merge into the prompt's
last token): the ids, and so the scores, are always those of full scoring.

:class:`ShapingPotential` combines the reward and cost scorers into the potential
``Phi = alpha_r R - alpha_c g(C)``, scoring incrementally where it can and in full elsewhere, optionally only
every ``interval`` tokens.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from mara_env.engine import ReplicaEngine
from mara_env.llm import LLMReplica
from mara_env.score_models import CausalScore, ModelScoreFn
from mara_env.scoring import BUILTIN_SCORERS, Scorer, TerminalReward

__all__ = ["IncrementalScorer", "PrefixScorer", "ShapingPotential", "incremental_scorer"]

#: Full scoring that took less than this in a step (seconds) is not worth a warning (a cheap callable).
WARN_SECONDS = 0.02

# Probe ids for the causality check: two texts that differ only in their last token.
_PROBE = ([1, 2, 3], [1, 2, 4])


class IncrementalScorer:
    """Scores ``(prompt, answer so far)`` of ``num_rows`` rows, each keeping its score model's keys/values.

    Equal to full scoring of the same pairs (same ids, same score position); see the module docstring.
    Build it with :func:`incremental_scorer`, which checks that the model can be scored so.

    :param scorer: a checked scorer over a :class:`~mara_env.score_models.ModelScoreFn` whose ``causal`` is set.
    :param num_rows: rows (sub-environments) scored; a row's cache is reused by its next call.
    """

    def __init__(self, scorer: Scorer, num_rows: int) -> None:
        fn = scorer.fn
        if not isinstance(fn, ModelScoreFn) or fn.causal is None:
            raise ValueError(f"{scorer} has no causal score model; score it in full.")
        self.scorer = scorer
        self.fn: ModelScoreFn = fn
        self.causal: CausalScore = fn.causal
        self.engine = ReplicaEngine(LLMReplica(fn.causal.backbone, fn.tokenizer, scorer.name), num_rows)
        self._ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * num_rows
        #: Tokens run through the model, and the tokens full re-scoring of the same pairs would have run.
        self.tokens_run = 0
        self.tokens_full = 0

    @torch.no_grad()
    def __call__(self, rows: Sequence[int], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The scores of each row's pair, checked (:meth:`~mara_env.scoring.Scorer.check`).

        :param rows: the rows scored (distinct); each row's previous call's tokens are reused.
        :param prompts: each row's prompt.
        :param responses: each row's answer so far.
        """
        n = len(rows)
        if n == 0:
            return np.zeros(0)
        texts = [self.fn.format(p, r) for p, r in zip(prompts, responses, strict=True)]
        new = self.fn.tokenize(texts)["input_ids"]
        new_grid, new_len = _grid(new, fill=-2)
        old_grid, _ = _grid([self._ids[r] for r in rows], fill=-1)
        width = max(new_grid.shape[1], old_grid.shape[1])
        new_grid, old_grid = _widen(new_grid, width, -2), _widen(old_grid, width, -1)
        differ = new_grid != old_grid
        common = np.where(differ.any(axis=1), differ.argmax(axis=1), width)  # <= both lengths: the fills differ
        pos = self._score_positions(new_grid, new_len)
        # run from the first changed token, and at least the score's own token (one token or more per row)
        start = np.minimum(common, pos)
        self.engine.truncate(rows, start.tolist())  # drops the keys/values past the shared prefix
        chains = [ids[s:] for ids, s in zip(new, start.tolist())]
        counts = new_len - start
        # On a CPU a padded token costs its compute, but the packed layout gathers every row's cache: pack only
        # when padding would at least triple the tokens (a restarted row's prompt beside a few tokens per row;
        # 135M model, 16 rows of 200 tokens, 12 rows of 3 tokens and one of 5: rows 2.6 s, packed 4.6 s)
        packed = bool(self.engine.device.type == "cpu" and n * counts.max() > 3 * counts.sum())
        order, slot = list(rows), np.arange(n)
        idle = sorted(set(range(self.engine.num_rows)) - set(rows))
        if not packed and idle and all(len(self._ids[r]) for r in idle):
            # With every row taking part the forward runs on the cache storage itself: re-running an idle row's
            # last token (its keys/values rewritten unchanged) costs less than gathering the other rows' caches
            # (135M model, 16 rows of 200 tokens: 12 rows gathered 2.6 s, 16 rows in place 2.3 s)
            self.engine.truncate(idle, [len(self._ids[r]) - 1 for r in idle])
            by_row = dict(zip(rows, chains)) | {r: self._ids[r][-1:].tolist() for r in idle}
            order, chains, slot = (
                list(range(self.engine.num_rows)),
                [by_row[r] for r in range(self.engine.num_rows)],
                np.asarray(rows),
            )
        out = self.engine.run(order, chain=chains, packed=packed)
        index = torch.as_tensor(np.asarray(out.start)[slot] + pos - start, device=out.hidden.device)
        scores = self.causal.head(out.hidden[index]).float().cpu()
        for i, r in enumerate(rows):
            self._ids[r] = new_grid[i, : new_len[i]].copy()
        self.tokens_run += int(counts.sum())
        self.tokens_full += int(new_len.sum())
        return self.scorer.check(scores, prompts, responses)

    def _score_positions(self, grid: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Where each row's score is read: its last token, or its last token that is not ``skip_id``."""
        if self.causal.skip_id is None:
            return lengths - 1
        # a sequence classifier's rule: the rightmost token that is not the pad id (position 0 if none)
        keep = (grid != self.causal.skip_id) & (np.arange(grid.shape[1])[None, :] < lengths[:, None])
        last = grid.shape[1] - 1 - keep[:, ::-1].argmax(axis=1)
        return np.where(keep.any(axis=1), last, 0)


@runtime_checkable
class PrefixScorer(Protocol):
    """Scores rows' growing answers, keeping what it likes per row between calls (a key/value cache).

    ``scorer(rows, prompts, responses)`` returns one checked score per row (a float64 array, as
    :meth:`~mara_env.scoring.Scorer.check` gives); ``rows`` are distinct row numbers below the ``num_rows``
    it was made for, and a row's next call sees its answer grown (or a new episode's).
    """

    def __call__(self, rows: Sequence[int], prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


def incremental_scorer(scorer: Scorer, num_rows: int) -> PrefixScorer | None:
    """A :class:`PrefixScorer` for ``scorer``, or ``None`` when it must score in full.

    A score function may offer its own: ``scorer.fn.prefix_scorer(num_rows)`` (e.g. a score model served
    by another process, which keeps the rows' caches there). Otherwise an :class:`IncrementalScorer` for a
    causal score model, and ``None`` for built-in scorers, callables and models that are not causal score
    models. A causal one is probed first: two texts that differ in their last token must give the same
    hidden states before it, and the batched cache must give the hidden states of a plain forward; a model
    that fails (an encoder with a causal-LM class, an
    attention that ignores the cache's masks) is scored in full, with a warning.
    """
    fn = scorer.fn
    offered = getattr(fn, "prefix_scorer", None)
    if callable(offered):
        return offered(num_rows)
    if not isinstance(fn, ModelScoreFn) or fn.causal is None:
        return None
    problem = _probe(fn.causal)
    if problem is not None:
        warnings.warn(f"{scorer} will score every prefix in full: {problem}", stacklevel=2)
        return None
    return IncrementalScorer(scorer, num_rows)


@torch.no_grad()
def _probe(causal: CausalScore) -> str | None:
    """What stops incremental scoring of ``causal``'s backbone; ``None`` when its hidden states match."""
    model = causal.backbone
    device = next(model.parameters()).device
    ids = torch.tensor(_PROBE, device=device)
    try:
        plain = model.base_model(input_ids=ids).last_hidden_state.float()
        engine = ReplicaEngine(LLMReplica(model, None, "probe"), 2)
        first = engine.run([0, 1], chain=[ids[0, :2].tolist(), ids[1, :2].tolist()])
        last = engine.run([0, 1], chain=[ids[0, 2:].tolist(), ids[1, 2:].tolist()])
    except Exception as error:  # a model the batched cache cannot drive
        return f"its backbone cannot run with a batched key/value cache ({type(error).__name__}: {error})."
    cached = torch.stack([first.row(0)[:2], first.row(1)[:2]], 1).float()  # (2 positions, 2 rows, hidden)
    cached = torch.cat([cached, torch.stack([last.row(0)[:1], last.row(1)[:1]], 1).float()]).transpose(0, 1)
    tol = 1e-3 if model.dtype == torch.float32 else 5e-2
    scale = float(plain.abs().max()) or 1.0
    if not torch.allclose(plain[0, :2], plain[1, :2], rtol=tol, atol=tol * scale):
        return "its backbone is not causal (a token's hidden state depends on later tokens)."
    if not torch.allclose(cached, plain, rtol=tol, atol=tol * scale):
        return "its hidden states with a key/value cache differ from a plain forward's."
    return None


def _grid(rows: Sequence[Sequence[int]], fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists as one ``(rows, longest)`` array padded with ``fill``, and their lengths."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    grid = np.full((len(rows), int(lengths.max(initial=0))), fill, dtype=np.int64)
    if lengths.sum():
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        row = np.repeat(np.arange(len(rows)), lengths)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        grid[row, col] = flat
    return grid, lengths


def _widen(grid: np.ndarray, width: int, fill: int) -> np.ndarray:
    if grid.shape[1] == width:
        return grid
    return np.pad(grid, ((0, 0), (0, width - grid.shape[1])), constant_values=fill)


class ShapingPotential:
    """``Phi = alpha_r R(x, y_<=m) - alpha_c g(C(x, y_<=m))`` of rows' answers so far, ``m = t - t % interval``
    (``g``: the terminal reward's cost scale, :meth:`TerminalReward.combine`).

    Scorers on causal score models score incrementally (:class:`IncrementalScorer`), and so do score functions
    that offer a :class:`PrefixScorer` (:func:`incremental_scorer`); the others (built-in
    scorers, callables, bidirectional encoders) score every prefix in full, and for those that are not
    built in a one-line warning gives the measured cost of a step's scoring, once (from
    :data:`WARN_SECONDS` a step).

    :param terminal: the reward and cost scorers and their weights.
    :param num_rows: rows (sub-environments).
    :param interval: score every ``interval`` committed tokens (the potential of ``t`` tokens is that of
        the first ``t - t % interval``, a function of the state, so the shaped optimum is kept).
    """

    def __init__(self, terminal: TerminalReward, num_rows: int, interval: int = 1) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"shaping_interval must be an integer >= 1, got {interval!r}.")
        self.interval = interval
        # Phi combines the scores as the terminal reward does, so Phi of a whole answer is its terminal reward
        self.terminal = terminal
        self.parts: list[tuple[Scorer, PrefixScorer | None]] = [
            (scorer, incremental_scorer(scorer, num_rows)) for scorer in (terminal.reward_scorer, terminal.cost_scorer)
        ]
        self._calls = 0
        self._warned = False

    def scored_length(self, length: int) -> int:
        """How many tokens of an answer of ``length`` tokens the potential scores."""
        return length - length % self.interval

    @property
    def incremental(self) -> dict[str, bool]:
        """Whether each scorer (by role) scores incrementally."""
        return {scorer.role: inc is not None for scorer, inc in self.parts}

    def __call__(self, rows: Sequence[int], prompts: Sequence[str], prefixes: Sequence[str]) -> np.ndarray:
        """``Phi`` of each row's pair (the prefixes already cut to :meth:`scored_length`), float64."""
        scores = []
        full_seconds = 0.0
        for scorer, inc in self.parts:
            if inc is not None:
                scores.append(inc(rows, prompts, prefixes))
                continue
            began = time.perf_counter()
            scores.append(scorer(prompts, prefixes))
            if scorer.name not in BUILTIN_SCORERS:
                full_seconds += time.perf_counter() - began
        self._calls += 1
        # the second call: the first pays one-off warm-up
        if full_seconds >= WARN_SECONDS and self._calls >= 2 and not self._warned:
            self._warned = True
            warnings.warn(self._cost_line(full_seconds, len(rows)), stacklevel=3)
        return self.terminal.combine(*scores)

    def _cost_line(self, seconds: float, n: int) -> str:
        slow = [s for s, inc in self.parts if inc is None and s.name not in BUILTIN_SCORERS]
        names = ", ".join(f"{s.role} {s.name!r}" for s in slow)
        return (
            f"reward_shaping='potential': {names} cannot score prefixes incrementally (not a causal score model), "
            f"so each step re-scores every grown answer in full: {1000 * seconds:.0f} ms for {n} prefixes in this "
            f"step, growing with the answer's length; set shaping_interval (score every k tokens) or "
            "reward_shaping='none' if that is too slow."
        )

    def stats(self) -> dict[str, Any]:
        """Tokens each incremental scorer ran, beside those full re-scoring would have run."""
        return {
            s.role: {"tokens_run": inc.tokens_run, "tokens_full": inc.tokens_full}
            for s, inc in self.parts
            if isinstance(inc, IncrementalScorer)
        }
