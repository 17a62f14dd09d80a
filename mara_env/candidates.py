"""Candidate sets: the sorted top-k / top-p tokens the agent accepts or rejects one at a time.

For one position with next-token logits ``z``:

1. ``pi_ref = softmax(z / temperature)``;
2. keep the ``top_k`` most probable tokens, sorted by descending probability;
3. keep the shortest prefix of those whose mass (renormalised over the top-k) reaches ``top_p``;
4. ``q`` = ``pi_ref`` renormalised over the kept set.

This is the order ``transformers``' samplers apply temperature, top-k and top-p, so accepting
candidate ``k`` with the reference's own probability

    p_ref(accept | k) = q_k / sum_{j >= k} q_j

samples exactly from ``q``, i.e. reproduces top-k/top-p sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CandidateConfig:
    """How a candidate set is chosen.

    :param top_k: number of most probable tokens considered (>= 1; 1 leaves the agent no decision).
    :param top_p: nucleus mass in (0, 1]; 1.0 keeps all ``top_k`` tokens.
    :param temperature: > 0, applied to the logits before both cuts.
    """

    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}. Typical values: 40-50.")
        if self.top_k == 1:
            raise ValueError(
                "top_k=1 makes every candidate set a single token, which is taken without a decision: "
                "the agent would never act. Use top_k >= 2 (the paper uses 50)."
            )
        if not (isinstance(self.top_p, (int, float)) and 0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}. Use 1.0 to disable the nucleus cut.")
        if not (isinstance(self.temperature, (int, float)) and float(self.temperature) > 0.0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}.")


@dataclass(frozen=True)
class CandidateSet:
    """The candidates of one position, most probable first.

    :param tokens: token ids, shape ``(n,)``.
    :param probs: ``q``, the reference probabilities renormalised over the set (sum to 1).
    :param log_accept: ``log p_ref(accept | k)`` for each candidate; the last one is exactly 0.
    :param log_reject: ``log p_ref(reject | k) = log(1 - p_ref(accept | k))``; ``-inf`` for the last.
    :param mass: the set's probability mass under the untruncated reference, ``Z``.
    """

    tokens: np.ndarray
    probs: np.ndarray
    log_accept: np.ndarray
    log_reject: np.ndarray
    mass: float

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def top(self) -> int:
        """The most probable candidate's token id (the token taken when the set is a single token)."""
        return int(self.tokens[0])

    @property
    def accept_probs(self) -> np.ndarray:
        """``p_ref(accept | k) = q_k / sum_{j >= k} q_j``."""
        return np.exp(self.log_accept)


@torch.no_grad()
def candidate_sets(logits: torch.Tensor, config: CandidateConfig) -> list[CandidateSet]:
    """Build the candidate set of each row of ``logits`` (shape ``(batch, vocab)``).

    The sort and the cuts run on the logits' device; only the (at most ``top_k``) kept entries are
    copied to the host, where the accept/reject log-probabilities are formed in float64.
    """
    logprobs = torch.log_softmax(logits.float() / config.temperature, dim=-1)
    k = min(config.top_k, logprobs.shape[-1])
    top_logp, top_idx = torch.topk(logprobs, k, dim=-1, sorted=True)
    # Nucleus over the renormalised top-k (as transformers does): keep token i while the mass
    # *before* it is below top_p, so the first token is always kept.
    renorm = torch.softmax(top_logp, dim=-1)
    mass_before = renorm.cumsum(-1) - renorm
    sizes = (mass_before < config.top_p).sum(-1)
    if config.top_p >= 1.0:
        # No nucleus cut: a float32 cumulative sum can reach 1.0 before the last token and drop it.
        sizes = torch.full_like(sizes, k)

    top_idx, top_logp, sizes = top_idx.cpu().numpy(), top_logp.double().cpu().numpy(), sizes.cpu().numpy()
    out = []
    for row in range(top_idx.shape[0]):
        n = int(sizes[row])
        logp = top_logp[row, :n]
        log_mass = np.logaddexp.reduce(logp)
        logq = logp - log_mass
        # log of the tail masses T_k = sum_{j>=k} q_j, accumulated from the end in log space, so a
        # rejection of a dominant candidate keeps a finite log(1 - p) = log T_{k+1} - log T_k.
        log_tail = np.logaddexp.accumulate(logq[::-1])[::-1]
        log_accept = logq - log_tail
        log_reject = np.append(log_tail[1:] - log_tail[:-1], -np.inf)
        log_accept[-1] = 0.0
        out.append(
            CandidateSet(
                tokens=top_idx[row, :n].astype(np.int64),
                probs=np.exp(logq),
                log_accept=log_accept,
                log_reject=log_reject,
                mass=float(np.exp(log_mass)),
            )
        )
    return out
