"""A tiny model (llama unless told) with a word-level tokenizer, saved as an HF directory: enough for
every CLI command (eval, generate, share, basis) to run end to end in about a second."""
from pathlib import Path

from tests.conftest import random_hf_model


def save_tiny_model(path: Path, layers: int = 2, model=None, byte_level: bool = False) -> Path:
    """`model`: a transformers model to save instead of a random tiny llama of `layers` layers.
    `byte_level`: a 256-byte BPE tokenizer without merges instead of the word-level one; transformers
    5 loads some families' tokenizers through their own class whatever tokenizer_config.json says
    (qwen2: Qwen2Tokenizer, byte-level BPE), which turns a word-level vocabulary into no tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if model is None:
        model = random_hf_model("llama", num_hidden_layers=layers, max_position_embeddings=128)
    model.save_pretrained(path)
    if byte_level:
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
        return path
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1, 256)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def save_text(path: Path, words: int = 2000) -> Path:
    path.write_text(" ".join(f"w{1 + i * 7 % 255}" for i in range(words)))
    return path
