"""Tiny causal LMs built in code, with a real (small) word-level tokenizer and chat template.

For the test suite and the benchmarks that exercise the machinery offline in seconds (``benchmarks/faults.py``
drives ``mara train`` on one): a random model over about 150 words, nothing to align. :func:`build_tiny_llm`
returns the model and tokenizer that ``llm=`` accepts; :func:`save_tiny_files` writes them as a local
folder with a prompts file, for the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Each word once: a repeated word leaves a hole in the ids and pushes the last id past the model's vocabulary.
# "system" takes the slot of a duplicate "is" that was here, so every other word keeps the id tests rely on.
WORDS = (
    "the a an and or but if then so of to in on at for with by from system are was be it this that i you "
    "he she we they me my your our their what how why when where who which can could would should "
    "will do does did not no yes please help write tell explain make give list story poem code "
    "recipe water fire cat dog house tree sun moon star city river book music good bad happy sad "
    "kind safe danger harm weapon money time day night year people world one two three four five "
    "first last new old big small hot cold fast slow red blue green sure sorry cannot here is some "
    "steps idea plan answer question simple short long user assistant"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A word-level tokenizer over :data:`WORDS` with ChatML-style special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    from tokenizers import decoders

    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.chat_template = chat_template
    return tok


def build_tiny_llm(
    seed: int = 0, hidden_size: int = 32, layers: int = 2, sharpness: float = 12.0, arch: str = "llama"
) -> tuple[Any, Any]:
    """A random tiny causal LM over :func:`build_tokenizer`'s vocabulary.

    ``sharpness`` scales the output head so next-token distributions are peaked like a real
    model's (a few likely tokens), giving candidate sets of varied size under top-p.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    tok = build_tokenizer()
    vocab = len(tok)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
            tie_word_embeddings=False,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden_size,
            n_layer=layers,
            n_head=4,
            n_positions=512,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.eos_token_id,
        )
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}.")
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.mul_(sharpness)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


TINY_PROMPTS = [
    "tell me a story about a cat",
    "write a poem about the moon",
    "how do i make a recipe with water",
    "explain why the sun is hot",
    "give me a list of five city names",
    "what is a good book about music",
    "help me plan a day in the city",
    "why is the river cold at night",
]


def save_tiny_files(folder: Path) -> tuple[Path, Path]:
    """Save the tiny model as a local folder and :data:`TINY_PROMPTS` as a prompts file, for the CLI."""
    model, tokenizer = build_tiny_llm()
    model.save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(TINY_PROMPTS) + "\n")
    return folder / "llm", prompts
