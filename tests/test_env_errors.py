"""Bad input to MARA-v0 gets a clear error (which argument, what was expected, what to do)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_PROMPTS, build_tiny_llm, build_tokenizer

from mara_env import TokenAcceptRejectEnv, TokenAcceptRejectVectorEnv
from mara_env.llm import PLAIN_PROMPT_TEMPLATE, load_replicas, resolve_device


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"llm: could not load 'no-such-org/no-such-model'.*local folder"):
        load_replicas("no-such-org/no-such-model")
    with pytest.raises(ValueError, match=r"unknown embedded model"):
        load_replicas("embedded:GPT-5")


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"is not a model: it has no config.json"):
        load_replicas(str(tmp_path))
    with pytest.raises(ValueError, match=r"is a file, not a model folder"):
        load_replicas(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match=r"does not exist"):
        load_replicas(str(tmp_path / "missing" / "model"))


def test_local_folder_loads(tmp_path, tiny_kwargs):
    """The hub-loading path (from_pretrained) on a local folder gives the same model."""
    model, tok = build_tiny_llm(seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": str(tmp_path)})
    live = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": (model, tok)})
    a, _ = env.reset(seed=0)
    b, _ = live.reset(seed=0)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_model_without_chat_template_falls_back_with_warning(tiny_kwargs):
    model, _ = build_tiny_llm()
    tok = build_tokenizer(chat_template=None)
    with pytest.warns(UserWarning, match="no chat template"):
        env = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": (model, tok)})
    env.reset(seed=0, options={"prompt": "tell me a story"})
    expected = tok(PLAIN_PROMPT_TEMPLATE.format(prompt="tell me a story"))["input_ids"]
    assert env.unwrapped.row.prompt_ids == expected


def test_invalid_actions(tiny_kwargs):
    env = TokenAcceptRejectEnv(**tiny_kwargs)
    env.reset(seed=0)
    for bad in (2, -1, 0.5, "1", None, True, np.array([1, 0])):
        with pytest.raises(ValueError, match=r"action must be"):
            env.step(bad)
    env.step(np.int64(1))
    env.step(np.array(0))
    envs = TokenAcceptRejectVectorEnv(3, **tiny_kwargs)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(3,\)"):
        envs.step(np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match=r"integers 0 \(reject\) or 1 \(accept\)"):
        envs.step(np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"integers 0 \(reject\) or 1 \(accept\)"):
        envs.step(np.array([0, 1, 3]))


def test_step_before_reset_and_after_done(tiny_kwargs):
    env = TokenAcceptRejectEnv(**tiny_kwargs)
    with pytest.raises(RuntimeError, match=r"call env.reset\(\) first"):
        env.step(1)
    env.reset(seed=0)
    while not env.step(1)[2]:
        pass
    with pytest.raises(RuntimeError, match=r"after the episode ended"):
        env.step(1)
    envs = TokenAcceptRejectVectorEnv(2, **tiny_kwargs)
    with pytest.raises(RuntimeError, match=r"before reset"):
        envs.step(np.ones(2, dtype=np.int64))


def test_empty_or_missing_prompt_set(tmp_path, tiny_kwargs):
    with pytest.raises(ValueError, match=r"prompts"):
        TokenAcceptRejectEnv(**{**tiny_kwargs, "prompts": []})
    with pytest.raises(FileNotFoundError, match=r"prompts"):
        TokenAcceptRejectEnv(**{**tiny_kwargs, "prompts": str(tmp_path / "nope.txt")})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match=r"prompts"):
        TokenAcceptRejectEnv(**{**tiny_kwargs, "prompts": str(empty)})
    with pytest.raises(ValueError, match=r"built-in|unknown"):
        TokenAcceptRejectEnv(**{**tiny_kwargs, "prompts": "no_such_set"})


def test_long_prompt_truncated_from_left_or_refused(tiny_kwargs):
    long_prompt = " ".join(["one two three"] * 100) + " tell me a story"
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "max_prompt_tokens": 40})
    with pytest.warns(UserWarning, match=r"exceeds max_prompt_tokens=40; its start was cut off"):
        env.reset(seed=0, options={"prompt": long_prompt})
    row = env.unwrapped.row
    assert len(row.prompt_ids) <= 40 and row.prompt_truncated
    # the end of the request (the instruction) and the template's generation prompt survive
    text = env.unwrapped.core.tokenizer.decode(row.prompt_ids)
    assert "tell me a story" in text and text.rstrip().endswith("assistant")
    strict = TokenAcceptRejectEnv(**{**tiny_kwargs, "max_prompt_tokens": 40, "prompt_overflow": "error"})
    with pytest.raises(ValueError, match=r"exceeds max_prompt_tokens=40.*prompt_overflow='truncate'"):
        strict.reset(seed=0, options={"prompt": long_prompt})
    # the default limit comes from the model's context (512 here) minus max_new_tokens
    default = TokenAcceptRejectEnv(**{**tiny_kwargs, "max_new_tokens": 480})
    with pytest.warns(UserWarning, match=r"exceeds max_prompt_tokens"):
        default.reset(seed=0, options={"prompt": long_prompt})
    assert len(default.unwrapped.row.prompt_ids) <= 512 - 480


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, r"top_k must be an integer >= 1"),
        ({"top_k": -3}, r"top_k must be an integer >= 1"),
        ({"top_k": 1}, r"top_k=1 .* never act"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"temperature": 0}, r"temperature must be > 0"),
        ({"kl_coef": -1.0}, r"kl_coef must be"),
        ({"chunk_size": 0}, r"chunk_size must be"),
        ({"obs_dtype": "int8"}, r"obs_dtype must be"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be"),
        ({"topk": 5}, r"unknown argument 'topk'. Did you mean 'top_k'"),
        ({"devices": []}, r"devices must be None .* or a non-empty list of device names .*; got \[\]"),
        ({"devices": ["cpu", 0]}, r"devices must be .* got \['cpu', 0\]"),
        ({"dtype": "float8"}, r"dtype: 'float8' is not one of .* or 'auto'"),
        ({"alpha_r": float("nan")}, r"alpha_r must be a finite number, got nan"),
        ({"alpha_c": "1"}, r"alpha_c must be a number, got '1' \(str\)"),
        ({"cost_scale": "log"}, r"cost_scale must be 'linear' .* or 'logit' .* got 'log'. Did you mean 'logit'\?"),
        ({"cost_scale": "logit", "cost_model": None}, r"cost_scale='logit' needs a cost model \(cost_model is None\)"),
        ({"test_fraction": 1.0}, r"test_fraction must be strictly between 0 and 1, got 1.0"),
        ({"split_seed": 1.5}, r"split_seed must be an integer, got 1.5"),
        ({"trust_remote_code": "yes"}, r"trust_remote_code must be true or false, got 'yes'"),
        ({"system_prompt": 3}, r"system_prompt must be a string or none, got 3"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens must be an integer, got 2.5"),
    ],
)
def test_bad_settings(tiny_kwargs, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TokenAcceptRejectEnv(**{**tiny_kwargs, **kwargs})


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        (lambda n: [1.0] * (n + 1), r"bad_reward.* returned 2 scores for 1 pairs"),
        (lambda n: [float("nan")] * n, r"bad_reward.* returned nan for pair 0 .*must be finite"),
        (lambda n: [float("inf")] * n, r"bad_reward.* returned inf for pair 0"),
    ],
)
def test_reward_callable_with_wrong_output(tiny_kwargs, scores, match):
    def bad_reward(prompts, responses):
        return scores(len(prompts))

    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "reward_model": bad_reward, "max_new_tokens": 3})
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        for _ in range(100):
            env.step(1)


def test_device_names_that_do_not_exist(tiny_kwargs):
    with pytest.raises(ValueError, match=r"devices: 'cuda:7' does not exist on this machine"):
        TokenAcceptRejectEnv(**{**tiny_kwargs, "devices": ["cuda:7"]})
    with pytest.raises(ValueError, match=r"devices: 'gpu0' is not a device name"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match=r"a list must hold device names"):
        load_replicas(["cpu", "banana"])


def test_live_model_without_tokenizer():
    model, _ = build_tiny_llm()
    with pytest.raises(TypeError, match=r"llm=\(model, tokenizer\)"):
        load_replicas(model)


def test_empty_device_list_for_the_loader():
    model, tok = build_tiny_llm()
    with pytest.raises(ValueError, match=r"devices must be None .* non-empty list"):
        load_replicas((model, tok), devices=[])


def test_prompt_choice_options(tiny_kwargs):
    env = TokenAcceptRejectEnv(**tiny_kwargs)
    env.reset(options={"prompt_index": 2})
    assert env.unwrapped.row.prompt == TINY_PROMPTS[2]
    with pytest.raises(ValueError, match=r"prompt_index"):
        env.reset(options={"prompt_index": 99})
    with pytest.raises(ValueError, match=r"'prompt' must be a non-empty string"):
        env.reset(options={"prompt": ""})
    # A misspelt option is an error, not a silently random prompt
    with pytest.raises(ValueError, match=r"unknown reset option 'promt'. Did you mean 'prompt'\? Options: prompt"):
        env.reset(options={"promt": "tell me a story"})
    with pytest.raises(ValueError, match=r"either 'prompt' or 'prompt_index', not both"):
        env.reset(options={"prompt": "hi", "prompt_index": 1})
    envs = TokenAcceptRejectVectorEnv(2, **tiny_kwargs)
    with pytest.raises(ValueError, match=r"unknown reset option 'prompt_idx'"):
        envs.reset(options={"prompt_idx": 1})


def _loud_model():
    """The tiny model with hidden states scaled past float16's range and logits unchanged."""
    model, tok = build_tiny_llm()
    with torch.no_grad():
        model.model.norm.weight.mul_(1e5)
        model.lm_head.weight.mul_(1e-5)
    return model, tok


def test_float16_observations_that_overflow_are_refused(tiny_kwargs):
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": _loud_model(), "obs_dtype": "float16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy overflow warning on the way
        with pytest.raises(ValueError, match=r"hidden states reach .*, beyond float16's largest value 65504.*float32"):
            env.reset(seed=0)
    obs, _ = TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": _loud_model()}).reset(seed=0)
    assert np.isfinite(obs).all() and np.abs(obs).max() > 65504, "float32 holds them"


def test_non_finite_hidden_states_are_refused(tiny_kwargs, monkeypatch):
    env = TokenAcceptRejectEnv(**tiny_kwargs)
    env.reset(seed=0)
    st = env.unwrapped.row
    tensor, index = st.candidate_hidden
    poisoned = tensor.clone()
    poisoned[index, 3] = float("nan")
    st.chunk = (poisoned, st.chunk[1])
    with pytest.raises(ValueError, match=r"the LLM returned non-finite hidden states .* prompt .*dtype"):
        env.unwrapped.core.observations([0])


def test_sliding_window_model_warns(tiny_kwargs):
    model, tok = build_tiny_llm()
    model.config.sliding_window = 64
    with pytest.warns(UserWarning, match=r"sliding-window attention \(window 64\)"):
        TokenAcceptRejectEnv(**{**tiny_kwargs, "llm": (model, tok)})


def test_tokenizer_ids_must_fit_the_models_embeddings():
    model, tok = build_tiny_llm()
    tok.add_tokens(["zebra"])  # an id past the model's last embedding row
    with pytest.raises(ValueError, match=r"token ids up to 132, .* embedding has 132 rows .* tokenizer saved with"):
        load_replicas((model, tok))


def test_tiny_tokenizer_ids_are_dense():
    """Every word once, so the ids are 0 .. len - 1 and all fit the tiny model's embeddings."""
    tok = build_tokenizer()
    assert sorted(tok.get_vocab().values()) == list(range(len(tok)))


def test_system_prompt_on_the_tiny_model(tiny_kwargs):
    env = TokenAcceptRejectEnv(**{**tiny_kwargs, "system_prompt": "you are a kind and safe assistant"})
    env.reset(seed=0, options={"prompt": "tell me a story"})
    text = env.unwrapped.core.tokenizer.decode(env.unwrapped.row.prompt_ids)
    assert text.startswith("<|im_start|> system you are a kind and safe assistant <|im_end|>")
    while not env.step(1)[2]:
        pass
