"""Tiny models for tests: an HF directory with a word-level tokenizer (enough for every CLI command
to run end to end in about a second), and the native model + token streams the training tests share."""
from pathlib import Path

import jax
import numpy as np

from jaxshare.core.config import ModelConfig
from jaxshare.core.params import init_params
from jaxshare.io.native import save_native
from tests.conftest import random_hf_model

# SmolLM2's head layout (3 KV groups) at toy width; d_model = n_heads * head_dim so HF export works.
TRAIN_CFG = ModelConfig(family="llama", vocab_size=256, d_model=48, n_layers=4, n_heads=6, n_kv_heads=3, head_dim=8,
                        d_ff=64, max_seq_len=128, norm_eps=1e-5)


def save_run_files(d: Path, cfg: ModelConfig = TRAIN_CFG, model: str = "model") -> Path:
    """d/<model> (native, random weights of key 0), d/train.npy and d/eval.npy: a learnable stream
    (repeated random phrases, so the loss really moves) and held-out text of the same phrases."""
    save_native(d / model, cfg, init_params(cfg, jax.random.key(0)), None)
    rng = np.random.default_rng(0)
    phrases = rng.integers(0, cfg.vocab_size, (16, 8))
    np.save(d / "train.npy", phrases[rng.integers(0, 16, 4000)].ravel().astype(np.int32))
    np.save(d / "eval.npy", phrases[rng.integers(0, 16, 200)].ravel().astype(np.int32))
    return d


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
