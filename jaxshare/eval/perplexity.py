"""Perplexity under the protocol of METHODS.md: join documents with "\\n\\n", tokenize once
without special tokens, non-overlapping windows of seq_len (ragged tail dropped), each window
of T tokens scores its T-1 next-token predictions, PPL = exp(mean NLL)."""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.core.config import ModelConfig
from jaxshare.core.model import decoder_layer, next_token_nll
from jaxshare.data.tokens import token_windows, tokenize_corpus

PROTOCOL = ("documents joined with '\\n\\n', tokenized once without special tokens, non-overlapping "
            "windows of seq_len tokens (ragged tail dropped), T-1 scored predictions per window, "
            "ppl = exp(mean token NLL)")


class EvalError(ValueError):
    """Evaluation input that cannot give a meaningful number."""


def check_seq_len(cfg: ModelConfig, seq_len: int) -> None:
    if seq_len < 2:
        raise EvalError(f"--seq-len must be at least 2, got {seq_len}")
    if seq_len > cfg.max_seq_len:
        raise EvalError(f"--seq-len {seq_len} is above the model's maximum of {cfg.max_seq_len} positions")


@partial(jax.jit, static_argnames=("cfg", "dtype", "layer_fn"))
def window_nll(params, cfg: ModelConfig, tokens_BT, dtype=jnp.float32, layer_fn=None):
    """Summed NLL [B] of the T-1 next-token predictions of each window."""
    return jnp.sum(next_token_nll(params, cfg, tokens_BT, dtype, layer_fn or decoder_layer), axis=-1)


def perplexity_of_windows(params, cfg: ModelConfig, windows: np.ndarray, batch_size: int = 8,
                          dtype=jnp.float32, desc: str = "ppl", layer_fn=None) -> dict:
    if batch_size < 1:
        raise EvalError(f"batch_size must be at least 1, got {batch_size}")
    n, T = windows.shape
    batch_size = max(1, min(batch_size, n))  # a batch larger than the windows would only score padding
    pad = (-n) % batch_size
    padded = np.concatenate([windows, np.zeros((pad, T), np.int32)]) if pad else windows
    sums = []
    for i in tqdm(range(0, len(padded), batch_size), desc=desc, unit="batch", leave=False):
        sums.append(np.asarray(window_nll(params, cfg, jnp.asarray(padded[i:i + batch_size]), dtype, layer_fn)))
    per_window = np.concatenate(sums)[:n].astype(np.float64)
    tokens = n * (T - 1)
    nll = float(per_window.sum() / tokens)
    return {"ppl": math.exp(nll), "nll": nll, "tokens": tokens, "windows": n, "seq_len": T, "protocol": PROTOCOL}


def perplexity(params, cfg: ModelConfig, tokenizer, docs: list[str], seq_len: int, max_windows: int | None = None,
               batch_size: int = 8, dtype=jnp.float32, layer_fn=None) -> dict:
    """PPL of docs (a list of documents) under the protocol; dtype: anything `as_dtype` takes."""
    check_seq_len(cfg, seq_len)
    return perplexity_of_windows(params, cfg, token_windows(tokenize_corpus(tokenizer, docs), seq_len, max_windows),
                                 batch_size, dtype, layer_fn=layer_fn)
