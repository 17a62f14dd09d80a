"""Incremental prefix scoring (mara_env.prefix_scoring) equals full re-scoring, on tiny score models built in code.

Both kinds of causal score model: a safe-rlhf-style score model (``model.*`` backbone + ``score_head``,
score at the last token) and an ``AutoModelForSequenceClassification`` over a decoder-only model (score
at the last token that is not the pad id). Nothing is downloaded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CHAT_TEMPLATE, TINY_PROMPTS, build_tokenizer
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
)

import mara_env  # noqa: F401  (registers MARA-v1)
from mara_env import prefix_scoring
from mara_env.prefix_scoring import ShapingPotential, incremental_scorer
from mara_env.scoring import TerminalReward, make_scorer

PROMPTS = ["How do I boil an egg?", "Tell me about the Moon.", "Hi"]
ANSWERS = [
    "Put it in boiling water for seven minutes, then cool it in cold water.",
    "The Moon is Earth's only natural satellite; it has no air.",
    "Hello! How can I help you today?",
]


def bpe_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``: merges make ids change as text grows."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def llama_config(tokenizer: PreTrainedTokenizerFast, **overrides: object) -> LlamaConfig:
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaConfig(**(settings | overrides))


def classifier_folder(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides: object) -> Path:
    torch.manual_seed(seed)
    config = llama_config(tokenizer, num_labels=1, **overrides)
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def beaver_folder(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """A checkpoint laid out like PKU-Alignment/beaver-7b-v1.0-*: ``model.*`` + ``score_head.*``."""
    torch.manual_seed(seed)
    config = llama_config(tokenizer)
    body = {f"model.{k}": v.contiguous() for k, v in LlamaModel(config).state_dict().items()}
    head = {"score_head.weight": torch.randn(1, config.hidden_size), "score_head.bias": torch.randn(1)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(body | head, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config.to_dict() | {"architectures": ["LlamaModelForScore"]}))
    tokenizer.save_pretrained(folder)
    return folder


def grow(answer: str, steps: int) -> list[str]:
    """``steps`` prefixes of ``answer``, growing by a few characters (cuts inside words: ids merge and split)."""
    cuts = np.linspace(0, len(answer), steps).astype(int)
    return [answer[:c] for c in cuts]


@pytest.mark.parametrize("kind", ["beaver", "classifier"])
def test_incremental_scores_equal_full_scoring(tmp_path: Path, kind: str) -> None:
    tokenizer = bpe_tokenizer(PROMPTS + ANSWERS)
    folder = (beaver_folder if kind == "beaver" else classifier_folder)(tmp_path / kind, tokenizer)
    full = make_scorer(folder, role="reward", device="cpu", dtype=torch.float32)
    inc = incremental_scorer(full, num_rows=4)
    assert inc is not None, "a causal score model must score incrementally"
    prefixes = [grow(a, 25) for a in ANSWERS]
    seen = []
    for t in range(25):
        # rows 1..3 score every step; row 0 only every other step and with a new prompt half-way
        rows = [1, 2, 3] + ([0] if t % 2 == 0 else [])
        prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2]] + ([PROMPTS[2] if t > 12 else PROMPTS[1]] if t % 2 == 0 else [])
        answers = [prefixes[0][t], prefixes[1][t], prefixes[2][t]] + ([prefixes[1][t]] if t % 2 == 0 else [])
        got = inc(rows, prompts, answers)
        expected = full(prompts, answers)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        seen += expected.tolist()
    assert len(set(np.round(seen, 4))) > 50, "the prefixes must score differently for the test to mean much"
    # about a few tokens per row per call instead of the whole text
    assert inc.tokens_run < 0.3 * inc.tokens_full


def test_chat_template_and_a_pad_id_at_the_end_read_the_score_where_the_classifier_does(tmp_path: Path) -> None:
    # the conftest tokenizer pads with <|im_end|>, which also ends each chat turn: the classifier reads its
    # score at the last token that is not <|im_end|>, before the template's tail
    tokenizer = build_tokenizer(CHAT_TEMPLATE)
    full = make_scorer(classifier_folder(tmp_path, tokenizer, seed=3), device="cpu", dtype=torch.float32)
    assert full.fn.template is None  # the chat template formats the pairs
    inc = incremental_scorer(full, num_rows=2)
    words = "here is a simple plan for a good day in the city with some music".split()
    for t in range(len(words) + 1):
        answers = [" ".join(words[:t]), " ".join(words[: t // 2])]
        prompts = [TINY_PROMPTS[0], TINY_PROMPTS[1]]
        np.testing.assert_allclose(inc([0, 1], prompts, answers), full(prompts, answers), rtol=1e-4, atol=1e-4)


def test_a_merge_across_the_template_boundary_falls_back_to_full_scoring(tmp_path: Path) -> None:
    # "{prompt}{response}": the prompt's last word and the answer's first characters merge into one token,
    # so the prompt's own last token changes as the answer starts
    tokenizer = bpe_tokenizer(["The Moon is bright. Moonlight. The Moon."] * 20)
    folder = classifier_folder(tmp_path, tokenizer, seed=1)
    full = make_scorer(folder, device="cpu", dtype=torch.float32, template="{prompt}{response}{eos}")
    inc = incremental_scorer(full, num_rows=1)
    prompt = "The Mo"
    alone = tokenizer(prompt + "</s>")["input_ids"]
    merged = tokenizer("The Moon</s>")["input_ids"]
    assert merged[: len(alone) - 2] == alone[: len(alone) - 2] and merged[len(alone) - 2] != alone[len(alone) - 2]
    reused = []
    for answer in ["", "on", "on is", "on is bright."]:
        before = inc.tokens_run
        np.testing.assert_allclose(inc([0], [prompt], [answer]), full([prompt], [answer]), rtol=1e-4, atol=1e-4)
        reused.append(len(tokenizer(prompt + answer + "</s>")["input_ids"]) - (inc.tokens_run - before))
    # "on" re-ran from the prompt's last token, which it merged into: one token fewer reused than the prompt's
    assert reused[1] == len(alone) - 2 and reused[2] >= len(merged) - 1


def test_scorers_that_cannot_be_incremental_score_in_full_and_say_what_it_costs(tmp_path: Path, monkeypatch) -> None:
    tokenizer = bpe_tokenizer(PROMPTS + ANSWERS)
    torch.manual_seed(0)
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
        pad_token_id=0,
    )
    BertForSequenceClassification(bert).eval().save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    encoder = make_scorer(tmp_path / "bert", role="reward", device="cpu")
    assert encoder.fn.causal is None and incremental_scorer(encoder, 2) is None
    callable_scorer = make_scorer(lambda p, r: [len(x) for x in r], role="cost")
    assert incremental_scorer(callable_scorer, 2) is None and incremental_scorer(make_scorer("length"), 2) is None

    cheap = ShapingPotential(TerminalReward(None, callable_scorer), num_rows=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a callable that costs nothing is not worth a warning
        for t in range(3):
            cheap([0, 1], PROMPTS[:2], [a[: 5 * t] for a in ANSWERS[:2]])

    monkeypatch.setattr(prefix_scoring, "WARN_SECONDS", 0.0)  # the tiny encoder is fast too
    potential = ShapingPotential(TerminalReward(encoder, callable_scorer, alpha_c=0.5), num_rows=2)
    assert potential.incremental == {"reward": False, "cost": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(3):
            answers = [a[: 5 * t] for a in ANSWERS[:2]]
            phi = potential([0, 1], PROMPTS[:2], answers)
            expected = encoder(PROMPTS[:2], answers) - 0.5 * np.array([len(a) for a in answers])
            np.testing.assert_allclose(phi, expected)
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1, lines  # once, after the second step
    assert "cannot score prefixes incrementally" in lines[0] and " ms for 2 prefixes" in lines[0]
    assert "reward" in lines[0] and "shaping_interval" in lines[0]

    # a logit cost enters Phi on the terminal reward's scale: Phi of a whole answer is its terminal reward
    probability = make_scorer(lambda p, r: [1 / (2 + len(x)) for x in r], role="cost")
    terminal = TerminalReward(encoder, probability, alpha_c=0.5, cost_scale="logit")
    logit = ShapingPotential(terminal, num_rows=2)
    np.testing.assert_allclose(logit([0, 1], PROMPTS[:2], ANSWERS[:2]), terminal(PROMPTS[:2], ANSWERS[:2]).reward)
    cost = np.array([1 / (2 + len(a)) for a in ANSWERS[:2]])
    np.testing.assert_allclose(
        terminal(PROMPTS[:2], ANSWERS[:2]).reward, encoder(PROMPTS[:2], ANSWERS[:2]) - 0.5 * np.log(cost / (1 - cost))
    )

    with pytest.raises(ValueError, match=r"shaping_interval must be an integer >= 1, got 0"):
        ShapingPotential(TerminalReward("length"), 1, interval=0)


def test_a_backbone_that_is_not_causal_is_caught_by_the_probe() -> None:
    from mara_env.prefix_scoring import _probe
    from mara_env.score_models import CausalScore

    tokenizer = bpe_tokenizer(PROMPTS)
    torch.manual_seed(0)
    bidirectional = LlamaModel(llama_config(tokenizer)).eval()
    bidirectional.config.is_causal = False  # a bidirectional backbone (an encoder) claiming a causal-LM type
    for layer in bidirectional.layers:
        layer.self_attn.is_causal = False
    causal = LlamaModel(llama_config(tokenizer)).eval()
    assert _probe(CausalScore(causal, lambda h: h[:, 0])) is None
    problem = _probe(CausalScore(bidirectional, lambda h: h[:, 0]))
    assert problem is not None and "not causal" in problem


# --------------------------------------------------------------------------- in the environment


@pytest.mark.parametrize("kind", ["beaver", "classifier"])
def test_shaping_rewards_with_incremental_scoring_equal_full_scoring(tiny_kwargs, tmp_path: Path, kind: str) -> None:
    tokenizer = build_tokenizer(None)
    folder = (beaver_folder if kind == "beaver" else classifier_folder)(tmp_path / kind, tokenizer, seed=5)
    full = make_scorer(folder, device="cpu", dtype=torch.float32)
    settings = dict(tiny_kwargs, max_new_tokens=10, cost_model=None, reward_shaping="potential")
    runs = {}
    for name, reward in (("incremental", str(folder)), ("full", lambda p, r: full(p, r))):
        envs = gym.make_vec("MARA-v1", num_envs=3, **(settings | {"reward_model": reward}))
        _, info = envs.reset(seed=0)
        rng = np.random.default_rng(0)
        shaping, potentials = [], []
        for _ in range(40):
            actions = (rng.random(3) < info["ref_accept_prob"]).astype(np.int64)
            _, _, _, _, info = envs.step(actions)
            shaping.append(info["shaping_reward"])
            potentials.append(info["potential"])
        runs[name] = (np.array(shaping), np.array(potentials))
        if name == "incremental":
            stats = envs.unwrapped.core.shaping_potential.stats()["reward"]
            assert 0 < stats["tokens_run"] < 0.5 * stats["tokens_full"]
        envs.close()
    np.testing.assert_allclose(runs["incremental"][0], runs["full"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(runs["incremental"][1], runs["full"][1], rtol=1e-4, atol=1e-4)
    assert np.abs(runs["full"][0]).max() > 1e-3, "the shaping terms must not all be zero for the test to mean much"


def test_shaping_interval_scores_every_k_tokens(tiny_kwargs) -> None:
    env = gym.make("MARA-v1", **tiny_kwargs, shaping_interval=4, shaping_gamma=1.0)
    core = env.unwrapped.core
    _, info = env.reset(seed=1)
    phi0, total, done = info["potential"], 0.0, False
    while not done:
        _, _, done, _, info = env.step(1)
        total += info["shaping_reward"]
        if not done:
            response = env.unwrapped.row.response
            kept = len(response) - len(response) % 4
            # the potential is the score (here: word count) of the answer cut to a multiple of 4 tokens
            assert info["potential"] == float(len(core.decode(response[:kept]).split()))
    assert total == pytest.approx(-phi0, abs=1e-9)  # still potential-based: the terms telescope
    with pytest.raises(ValueError, match=r"shaping_interval must be an integer >= 1, got 0"):
        gym.make("MARA-v1", **tiny_kwargs, shaping_interval=0)
