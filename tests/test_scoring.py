"""Tests for mara_env.scoring: built-in scorers, output checks, reward models and the terminal reward.

Reward models are tiny Llama models built from a config and saved to tmp folders, with a byte-level
BPE tokenizer trained in code: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from mara_env.scoring import BEAVER_TEMPLATE, LOGIT_EPS, Scorer, TerminalReward, make_scorer, scale_cost

PROMPTS = ["How do I boil an egg?", "Tell me about the Moon.", "Hi"]
RESPONSES = [
    "Put it in boiling water for seven minutes, then cool it in cold water.",
    "The Moon is Earth's only natural satellite.",
    "Hello! How can I help you today? " * 3,
]
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


# --------------------------------------------------------------------------- built-in scorers


def test_sentiment_scores_a_refusal_below_a_helpful_answer() -> None:
    scorer = make_scorer("sentiment", role="reward")
    refusal, helpful = scorer(
        ["How do I bake bread?"] * 2,
        [
            "I'm sorry, but I can't help with that request.",
            "Sure! Here is a simple, reliable recipe that works great: mix flour, water, salt and yeast.",
        ],
    )
    assert refusal < 0 < helpful
    assert -1 <= refusal <= 1 and -1 <= helpful <= 1


def test_toxicity_ranks_a_profane_response_above_a_clean_one() -> None:
    scorer = make_scorer("toxicity", role="cost")
    profane, clean = scorer(["Q", "Q"], ["Shut up, you fucking idiot.", "Here is a recipe for lentil soup."])
    assert 0 <= clean < 0.5 < profane <= 1


def test_length_zero_and_none() -> None:
    assert make_scorer("length")(["a", "b"], ["one two  three", ""]).tolist() == [3.0, 0.0]
    assert make_scorer(None)(["a"], ["anything"]).tolist() == [0.0]
    assert make_scorer(" Zero ")(["a"], ["x"]).tolist() == [0.0]


# --------------------------------------------------------------------------- checked output


def test_callables_are_wrapped_and_converted_to_float64() -> None:
    def n_chars(prompts: list[str], responses: list[str]) -> list[int]:
        return [len(r) for r in responses]

    scorer = make_scorer(n_chars, role="reward")
    assert isinstance(scorer, Scorer) and make_scorer(scorer) is scorer
    scores = scorer(["p", "q"], ["abc", "de"])
    assert scores.dtype == np.float64 and scores.tolist() == [3.0, 2.0]
    column = make_scorer(lambda p, r: torch.tensor([[1.5], [2.5]], dtype=torch.bfloat16))
    assert column(["p", "q"], ["a", "b"]).tolist() == [1.5, 2.5]
    assert make_scorer(n_chars)([], []).shape == (0,)


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ([1.0, 2.0], r"reward scorer '.*bad' returned 2 scores for 3 pairs; it must return 3 scores"),
        ([[1.0, 2.0]] * 3, r"returned an array of shape \(3, 2\) for 3 pairs"),
        (1.0, r"returned an array of shape \(\) for 3 pairs"),
        (["1", "2", "3"], r"returned non-numeric scores \(dtype <U1\); it must return 3 numbers"),
        ([1.0, None, 2.0], r"returned non-numeric scores \(dtype object\)"),
        ([[1.0], [2.0, 3.0], [4.0]], r"returned list output that is not an array of numbers"),
        (
            [0.0, float("nan"), 1.0],
            r"returned nan for pair 1 \(prompt 'Tell me about the Moon.', response \"The Moon is",
        ),
        (
            np.array([0.0, 1.0, -np.inf]),
            r"returned -inf for pair 2 \(prompt 'Hi', response 'Hello! .*\.\.\.'\)",
        ),
    ],
    ids=["short", "2d", "scalar", "strings", "none", "ragged", "nan", "inf"],
)
def test_bad_scorer_output_raises_a_clear_error(output: object, match: str) -> None:
    def bad(prompts: list[str], responses: list[str]) -> object:
        return output

    with pytest.raises(ValueError, match=match):
        make_scorer(bad, role="reward")(PROMPTS, RESPONSES)


def test_mismatched_batch_and_bad_specs() -> None:
    with pytest.raises(ValueError, match=r"got 2 prompts but 1 responses"):
        make_scorer("length", role="cost")(["a", "b"], ["x"])
    with pytest.raises(ValueError, match=r"reward='sentimnt' is not a built-in scorer .* Did you mean 'sentiment'\?"):
        make_scorer("sentimnt", role="reward")
    with pytest.raises(FileNotFoundError, match=r"cost='\./no/such/model': no such model folder"):
        make_scorer("./no/such/model", role="cost")
    with pytest.raises(ValueError, match=r"reward: expected None, a built-in scorer name .* got a int"):
        make_scorer(3, role="reward")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- terminal reward


def test_terminal_reward_combines_reward_and_cost() -> None:
    terminal = TerminalReward(
        reward=lambda p, r: [len(x) for x in r],
        cost=lambda p, r: [len(x) for x in p],
        alpha_r=2.0,
        alpha_c=0.5,
    )
    scores = terminal(["ab", "abcd"], ["xyz", "x"])
    assert scores.reward_score.tolist() == [3.0, 1.0]
    assert scores.cost_score.tolist() == [2.0, 4.0]
    assert scores.reward.tolist() == [2 * 3 - 0.5 * 2, 2 * 1 - 0.5 * 4]
    without_cost = TerminalReward(reward="length")(["p"], ["a b"])
    assert without_cost.cost_score.tolist() == [0.0] and without_cost.reward.tolist() == [2.0]


def test_cost_on_the_logit_scale() -> None:
    cost = np.array([0.5, 0.1, 0.001, 0.0, 1.0])
    np.testing.assert_array_equal(scale_cost(cost, "linear"), cost)
    logit = scale_cost(cost, "logit")
    np.testing.assert_allclose(logit[:3], np.log(cost[:3] / (1 - cost[:3])))
    # 0 and 1 are clipped to [eps, 1 - eps]: finite, and in the order of the costs
    np.testing.assert_allclose(logit[3:], [np.log(LOGIT_EPS / (1 - LOGIT_EPS)), -np.log(LOGIT_EPS / (1 - LOGIT_EPS))])
    assert np.all(np.diff(logit[[3, 2, 1, 0, 4]]) > 0)
    # halving a small cost counts as much as halving a larger one
    halving = scale_cost(np.array([0.002, 0.001, 0.02, 0.01]), "logit")
    assert halving[0] - halving[1] == pytest.approx(halving[2] - halving[3], abs=0.01)
    with pytest.raises(ValueError, match=r"cost scorer 'length' gave 3.0 \(1 score\(s\) outside \[0, 1\]\).*'linear'"):
        scale_cost(np.array([0.2, 3.0]), "logit", "length")
    with pytest.raises(ValueError, match=r"cost_scale must be 'linear' .* got 'logits'. Did you mean 'logit'\?"):
        scale_cost(cost, "logits")


def test_terminal_reward_with_a_logit_cost() -> None:
    terminal = TerminalReward(
        reward=lambda p, r: [1.0] * len(r), cost=lambda p, r: [0.2, 0.05], alpha_c=0.5, cost_scale="logit"
    )
    scores = terminal(["a", "b"], ["x", "y"])
    assert scores.cost_score.tolist() == [0.2, 0.05]  # reported unscaled
    np.testing.assert_allclose(scores.reward, 1.0 - 0.5 * np.log(np.array([0.2, 0.05]) / np.array([0.8, 0.95])))
    assert "cost_scale='logit'" in repr(terminal) and "cost_scale" not in repr(TerminalReward("length"))
    with pytest.raises(ValueError, match=r"cost_scale='logit' needs a cost model"):
        TerminalReward("length", None, cost_scale="logit")
    with pytest.raises(ValueError, match=r"cost_scale must be 'linear'"):
        TerminalReward("length", "length", cost_scale="log-odds")
    with pytest.raises(ValueError, match=r"cost scorer 'length' gave 2.0 .* outside \[0, 1\]"):
        TerminalReward("zero", "length", cost_scale="logit")(["p"], ["a b"])


def test_terminal_reward_rejects_bad_input() -> None:
    assert TerminalReward(reward="zero", alpha_r=np.float32(2), alpha_c=0).alpha_r == 2.0
    for alpha in (float("nan"), float("inf"), "1", None):
        with pytest.raises(ValueError, match="alpha_c must be a finite number"):
            TerminalReward(reward="zero", alpha_c=alpha)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="responses must be a sequence of strings"):
        TerminalReward(reward="zero")(["p"], [None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"cost scorer '.*<lambda>' returned nan for pair 0"):
        TerminalReward(reward="zero", cost=lambda p, r: [float("nan")])(["p"], ["r"])


# --------------------------------------------------------------------------- tiny reward models


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text is encodable) that prepends <s> like Llama's."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(PROMPTS + RESPONSES + [BEAVER_TEMPLATE], trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(tokenizer: PreTrainedTokenizerFast, **overrides: object) -> LlamaConfig:
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return LlamaConfig(**(settings | overrides))


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path, chat_template: str | None = None) -> None:
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    tokenizer.chat_template = None


@pytest.mark.parametrize("chat_template", [CHAT_TEMPLATE, None], ids=["chat-template", "plain"])
def test_sequence_classifier_matches_the_model_called_directly(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, chat_template: str | None
) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(tokenizer, num_labels=1)).eval()
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path, chat_template)

    expected = []
    for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
        if chat_template:  # the template writes <s> itself, so the tokenizer must not add another
            text = f"<s>user: {prompt}</s><s>assistant: {response}</s>"
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            ids = tokenizer(f"User: {prompt}\n\nAssistant: {response}", return_tensors="pt")
        with torch.no_grad():
            expected.append(model(**ids).logits[0, 0].item())

    scorer = make_scorer(tmp_path, role="reward", device="cpu", batch_size=2)
    np.testing.assert_allclose(scorer(PROMPTS, RESPONSES), expected, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(expected, 5))) == 3, "the pairs must get different scores for the test to mean much"


def test_inputs_are_truncated_to_the_model_length(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = tiny_config(tokenizer, num_labels=1, max_position_embeddings=64)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)
    long_response = "The Moon is Earth's only natural satellite. " * 20
    ids = tokenizer(f"User: Q\n\nAssistant: {long_response}", truncation=True, max_length=64, return_tensors="pt")
    assert ids["input_ids"].shape[1] == 64
    with torch.no_grad():
        expected = model(**ids).logits[0, 0].item()
    score = make_scorer(str(tmp_path), device="cpu")(["Q", "Q"], [long_response, "short"])[0]
    assert score == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_classifier_with_several_labels_scores_one_class_probability(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    torch.manual_seed(2)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    config = tiny_config(tokenizer, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)
    with torch.no_grad():
        ids = tokenizer(f"User: {PROMPTS[0]}\n\nAssistant: {RESPONSES[0]}", return_tensors="pt")
        expected = model(**ids).logits.softmax(-1)[0, 2].item()
    for label in (2, "positive"):
        score = make_scorer(tmp_path, device="cpu", label=label)(PROMPTS[:1], RESPONSES[:1])[0]
        assert score == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match=r"has 3 labels \(0='negative', 1='neutral', 2='positive'\); pass label="):
        make_scorer(tmp_path, device="cpu")


def write_beaver_folder(
    folder: Path, tokenizer: PreTrainedTokenizerFast, layout: str, seed: int = 0
) -> tuple[LlamaModel, torch.Tensor, torch.Tensor | None]:
    """Write a checkpoint laid out like PKU-Alignment/beaver-7b-v1.0-*: ``model.*`` + ``score_head.*``."""
    torch.manual_seed(seed)
    config = tiny_config(tokenizer)
    backbone = LlamaModel(config).eval()
    weight = torch.randn(1, config.hidden_size)
    bias = torch.randn(1) if layout == "sharded" else None
    body = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    head = {"score_head.weight": weight} | ({"score_head.bias": bias} if bias is not None else {})
    config_dict = config.to_dict()
    if layout == "safetensors":  # as on the hub: the architecture names the score model
        config_dict |= {"architectures": ["LlamaModelForScore"], "score_dim": 1, "bias": False}
        save_file(body | head, folder / "model.safetensors", metadata={"format": "pt"})
    elif layout == "sharded":
        config_dict |= {"architectures": ["LlamaForScore"]}
        save_file(body, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
        save_file(head, folder / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
        weight_map = dict.fromkeys(body, "model-00001-of-00002.safetensors")
        weight_map |= dict.fromkeys(head, "model-00002-of-00002.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:  # only the weights tell: a plain architecture name and a .bin checkpoint
        config_dict |= {"architectures": ["LlamaModel"]}
        torch.save(body | head, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config_dict))
    save_tokenizer(tokenizer, folder)
    return backbone, weight, bias


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_beaver_score_model_matches_a_manual_end_score(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, layout: str
) -> None:
    backbone, weight, bias = write_beaver_folder(tmp_path, tokenizer, layout)
    expected = []
    for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
        text = f"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}</s>"
        with torch.no_grad():
            last = backbone(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
        expected.append((last @ weight.T + (0 if bias is None else bias)).item())

    scorer = make_scorer(tmp_path, role="cost", device="cpu", batch_size=3)
    np.testing.assert_allclose(scorer(PROMPTS, RESPONSES), expected, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(expected, 5))) == 3


def test_beaver_errors(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    torch.manual_seed(0)
    LlamaModel(tiny_config(tokenizer)).save_pretrained(plain)
    save_tokenizer(tokenizer, plain)
    with pytest.raises(ValueError, match=r"has no score_head weights .* not a score model"):
        make_scorer(plain, kind="beaver", device="cpu")

    head_only = tmp_path / "head_only"
    head_only.mkdir()
    config = tiny_config(tokenizer).to_dict() | {"architectures": ["LlamaModelForScore"]}
    (head_only / "config.json").write_text(json.dumps(config))
    save_file({"score_head.weight": torch.randn(1, 32)}, head_only / "model.safetensors")
    save_tokenizer(tokenizer, head_only)
    with pytest.raises(ValueError, match=r"the checkpoint lacks the backbone weights \["):
        make_scorer(head_only, device="cpu")

    write_beaver_folder(tmp_path, tokenizer, "safetensors")
    with pytest.raises(ValueError, match=r"template must contain \{response\}"):
        make_scorer(tmp_path, template="USER: {prompt}", device="cpu")
    with pytest.raises(ValueError, match=r"template must be a format string using only"):
        make_scorer(tmp_path, template="{prompt} {reply}", device="cpu")
    with pytest.raises(ValueError, match=r"kind must be 'auto', 'sequence_classification' or 'beaver'"):
        make_scorer(tmp_path, kind="score")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"is a file; give the folder"):
        make_scorer(tmp_path / "config.json")


# --------------------------------------------------------------------------- placement


def test_scorer_devices_and_dtype_place_each_model_and_are_reported(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(tokenizer, num_labels=1)).eval()
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)
    exact = TerminalReward(tmp_path, tmp_path, device=["cpu", "cpu"], dtype="float32")
    half = TerminalReward(tmp_path, "toxicity", device="cpu", dtype="bfloat16")
    assert exact.placement == {
        "reward": {"device": "cpu", "dtype": "float32"},
        "cost": {"device": "cpu", "dtype": "float32"},
    }
    assert half.placement == {"reward": {"device": "cpu", "dtype": "bfloat16"}}  # built-in scorers are not placed
    assert next(half.reward_scorer.fn.causal.backbone.parameters()).dtype == torch.bfloat16
    # "auto" is float32 on a CPU; bfloat16 scores the same pairs within its precision
    auto = TerminalReward(tmp_path, None, device="cpu")
    assert auto.placement["reward"]["dtype"] == "float32"
    full, approx = exact(PROMPTS, RESPONSES).reward_score, half(PROMPTS, RESPONSES).reward_score
    np.testing.assert_allclose(approx, full, atol=0.05 * np.abs(full).max() + 0.02)
    assert TerminalReward("sentiment", "toxicity", device="cuda:99").placement == {}  # nothing to place, no error
    with pytest.raises(ValueError, match=r"scorer_devices must be None .* \[reward device, cost device\]"):
        TerminalReward(tmp_path, device=["cpu", "cpu", "cpu"])
    with pytest.raises(ValueError, match=r"devices: 'cuda:99' does not exist on this machine"):
        TerminalReward(tmp_path, device="cuda:99")


def test_scorer_settings_are_checked_and_recorded_in_the_run_config(tmp_path: Path) -> None:
    from agents.training.run_config import RunConfig
    from agents.training.runner import with_scorer_placement
    from mara_env import MARAConfig

    with pytest.raises(ValueError, match=r"scorer_devices must be None .* got 3"):
        MARAConfig(scorer_devices=3)
    with pytest.raises(ValueError, match=r"scorer_dtype: 'bf32' is not one of"):
        MARAConfig(scorer_dtype="bf32")
    config = RunConfig.from_sections({"env": {"reward_model": "org/reward", "scorer_devices": None}})
    assert with_scorer_placement(config, {}) is config  # built-in or callable scorers: nothing recorded
    both = {"reward": {"device": "cuda:1", "dtype": "bfloat16"}, "cost": {"device": "cuda:2", "dtype": "bfloat16"}}
    placed = with_scorer_placement(config, both)
    assert placed.env["scorer_devices"] == ["cuda:1", "cuda:2"] and placed.env["scorer_dtype"] == "bfloat16"
    one = with_scorer_placement(config, {"reward": {"device": "cuda:1", "dtype": "float32"}})
    assert one.env["scorer_devices"] == "cuda:1" and one.env["scorer_dtype"] == "float32"
    placed.dump(tmp_path / "config.yaml")
    assert RunConfig.from_file(tmp_path / "config.yaml").env["scorer_devices"] == ["cuda:1", "cuda:2"]
    # a run written when the setting was scorer_device still reads
    (tmp_path / "old.yaml").write_text("env:\n  scorer_device: cpu\n")
    assert RunConfig.from_file(tmp_path / "old.yaml").env["scorer_devices"] == "cpu"
