"""A tiny llama with a word-level tokenizer, saved as an HF directory: enough for every CLI command
(eval, generate, share, basis) to run end to end in about a second."""
from pathlib import Path

from conftest import random_hf_model


def save_tiny_model(path: Path, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    random_hf_model("llama", num_hidden_layers=layers, max_position_embeddings=128).save_pretrained(path)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1, 256)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def save_text(path: Path, words: int = 2000) -> Path:
    path.write_text(" ".join(f"w{1 + i * 7 % 255}" for i in range(words)))
    return path
