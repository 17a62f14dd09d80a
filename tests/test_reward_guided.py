"""ARGS, reward-guided decoding (agents.reward_guided), on the tiny model: greedy at w = 0, reward-maximising
at large w, exact scorer-call counts, the sampling variant and refused input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, WORDS

from agents.generation import MARAGenerator
from agents.reward_guided import ARGSGenerator, args_name, top_k_sets
from mara_env.candidates import CandidateConfig, candidate_sets
from mara_env.scoring import TerminalReward

MAX_NEW = 8
#: A distinct value per word, spaced 1 / len(WORDS) apart.
WORD_VALUE = dict(zip(WORDS, np.random.default_rng(0).permutation(len(WORDS)) / len(WORDS)))


def last_word_value(prompts: list[str], responses: list[str]) -> list[float]:
    """Reward of an answer: the table value of its last word (0 for an empty answer)."""
    return [WORD_VALUE.get(r.split()[-1], 0.0) if r.split() else 0.0 for r in responses]


@pytest.fixture(scope="module")
def gen(tiny_llm) -> MARAGenerator:
    return MARAGenerator(tiny_llm, None, top_k=8, devices=["cpu"], batch_size=4)


@torch.no_grad()
def _greedy(model, gen: MARAGenerator, prompt: str, max_new: int) -> list[int]:
    """Greedy decoding by hand: one unpadded full forward per token, argmax of the next-token logits."""
    ids, _ = gen.session.prompt_format.token_ids(prompt, None)
    out: list[int] = []
    eos = gen.session.eos_token_ids
    for _ in range(max_new):
        token = int(model(torch.tensor([list(ids) + out])).logits[0, -1].argmax())
        out.append(token)
        if token in eos:
            break
    return out


@torch.no_grad()
def _next_logits(model, gen: MARAGenerator, prompt: str, answer: list[int]) -> torch.Tensor:
    ids, _ = gen.session.prompt_format.token_ids(prompt, None)
    return model(torch.tensor([list(ids) + answer])).logits[0, -1]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_args_with_zero_weight_is_greedy_decoding(tiny_llm, gen, k) -> None:
    model, _ = tiny_llm
    args = ARGSGenerator(gen, TerminalReward("length", None), weight=0.0, k=k)
    answers = args.generate(TINY_PROMPTS, MAX_NEW)  # two batches of four, left-padded
    assert [a.token_ids for a in answers] == [_greedy(model, gen, p, MAX_NEW) for p in TINY_PROMPTS]
    assert all(rank == 0 for a in answers for rank in a.accepted_ranks)
    assert args.last_stats.extra["scorer_calls"] == 0  # nothing to score: w = 0 cannot change the choice


def test_args_with_large_weight_picks_the_highest_reward_candidate(tiny_llm, gen) -> None:
    model, tok = tiny_llm
    k = 5
    args = ARGSGenerator(gen, TerminalReward(last_word_value, None), weight=1e6, k=k)
    answers = args.generate(TINY_PROMPTS, MAX_NEW)
    greedy = [_greedy(model, gen, p, MAX_NEW) for p in TINY_PROMPTS]
    assert [a.token_ids for a in answers] != greedy  # the reward changed the answers
    steps = 0
    for prompt, answer in zip(TINY_PROMPTS, answers):
        for t, token in enumerate(answer.token_ids):
            top = torch.topk(_next_logits(model, gen, prompt, answer.token_ids[:t]), k).indices.tolist()
            texts = [tok.decode([*answer.token_ids[:t], v], skip_special_tokens=True) for v in top]
            values = last_word_value([prompt] * k, texts)
            assert token in top and values[top.index(token)] == max(values), (prompt, t)
            assert answer.accepted_ranks[t] == top.index(token)
            steps += 1
    assert steps == sum(a.num_tokens for a in answers) > len(TINY_PROMPTS)
    assert all(a.set_sizes == [k] * a.num_tokens for a in answers)
    assert all(math.isnan(a.kl) for a in answers)


def test_args_counts_scorer_calls_exactly(gen) -> None:
    seen: list[str] = []

    def counting(prompts: list[str], responses: list[str]) -> list[float]:
        seen.extend(responses)
        return last_word_value(prompts, responses)

    k = 4
    args = ARGSGenerator(gen, TerminalReward(counting, "length", alpha_c=0.5), weight=2.0, k=k)
    answers = args.generate(TINY_PROMPTS[:6], 6)
    answer_tokens = sum(a.num_tokens for a in answers)
    # k pairs per answer token (the ending EOS too), finished rows of a batch are not scored
    assert args.last_stats.extra["scorer_calls"] == len(seen) == k * answer_tokens
    assert args.last_stats.answer_tokens == answer_tokens
    # one LLM forward per answer token, as plain decoding: prompt widths + steps per row, no candidates
    assert args.last_stats.llm_forwards <= 2 * 6


def test_args_sampling_variant_is_seeded_and_stays_in_the_top_k(gen) -> None:
    k = 3
    args = ARGSGenerator(gen, TerminalReward(last_word_value, None), weight=1.0, k=k, sample=True)
    first = [a.token_ids for a in args.generate(TINY_PROMPTS, MAX_NEW, seed=1)]
    assert [a.token_ids for a in args.generate(TINY_PROMPTS, MAX_NEW, seed=1)] == first
    other = args.generate(TINY_PROMPTS, MAX_NEW, seed=2)
    assert [a.token_ids for a in other] != first
    assert all(0 <= r < k for a in other for r in a.accepted_ranks)
    assert any(r > 0 for a in other for r in a.accepted_ranks)
    assert not args.deterministic and ARGSGenerator(gen, TerminalReward("length"), k=k).deterministic
    assert args.name == args_name(1.0, 3, True) == "args-w1-k3-sample"


def test_args_names_the_scorer_that_fails_on_a_partial_answer(gen) -> None:
    def whole_answers_only(prompts: list[str], responses: list[str]) -> list[float]:
        if any(len(r.split()) < 2 for r in responses):
            raise RuntimeError("needs at least two words")
        return [1.0] * len(responses)

    args = ARGSGenerator(gen, TerminalReward("length", whole_answers_only), weight=1.0, k=3)
    with pytest.raises(
        ValueError, match=r"ARGS: the cost scorer 'test_args_names.*whole_answers_only' failed on partial"
    ):
        args.generate(TINY_PROMPTS[:2], 4)

    def nan_on_one_word(prompts: list[str], responses: list[str]) -> list[float]:
        return [float("nan") if len(r.split()) == 1 else 1.0 for r in responses]

    args = ARGSGenerator(gen, TerminalReward(nan_on_one_word, None), weight=1.0, k=3)
    with pytest.raises(ValueError, match=r"reward scorer '.*nan_on_one_word'.*returned nan"):
        args.generate(TINY_PROMPTS[:2], 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": -1.0}, r"ARGS weight must be a finite number >= 0"),
        ({"weight": float("inf")}, r"ARGS weight must be a finite number >= 0"),
        ({"k": 0}, r"ARGS k must be an integer >= 1"),
        ({"k": 2.5}, r"ARGS k must be an integer >= 1"),
        ({"sample": "yes"}, r"ARGS sample must be True or False"),
    ],
)
def test_args_refuses_bad_settings(gen, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ARGSGenerator(gen, TerminalReward("length"), **kwargs)


def test_args_needs_a_terminal_reward(gen) -> None:
    with pytest.raises(TypeError, match=r"reward must be a mara_env.scoring.TerminalReward"):
        ARGSGenerator(gen, "sentiment")  # type: ignore[arg-type]


def test_top_k_sets_keep_k_tokens_even_when_the_tail_mass_rounds_away() -> None:
    logits = torch.tensor([[30.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    sets = top_k_sets(logits, 5)
    assert [len(s) for s in sets] == [5, 5]
    assert sets[0].tokens.tolist() == [0, 1, 2, 3, 4] and sets[1].tokens.tolist() == [7, 6, 5, 4, 3]
    np.testing.assert_allclose(sets[1].probs.sum(), 1.0)
    np.testing.assert_allclose(np.diff(sets[1].logq), -1.0)  # log q differences are the logit differences
    # MARA's candidate sets with top_p=1.0 keep all k as well (a float32 cumulative sum used to drop the tail)
    assert [len(s) for s in candidate_sets(logits, CandidateConfig(top_k=5, top_p=1.0))] == [5, 5]
