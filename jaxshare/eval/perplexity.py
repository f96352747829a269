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
from jaxshare.core.model import hidden_states, token_nll, unembed

PROTOCOL = ("documents joined with '\\n\\n', tokenized once without special tokens, non-overlapping "
            "windows of seq_len tokens (ragged tail dropped), T-1 scored predictions per window, "
            "ppl = exp(mean token NLL)")


class EvalError(ValueError):
    """Evaluation input that cannot give a meaningful number."""


def tokenize_corpus(tokenizer, text: str) -> np.ndarray:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int32)


def make_windows(ids: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """[N, seq_len] non-overlapping windows, the first max_windows of them."""
    if max_windows is not None and max_windows < 1:
        raise EvalError(f"max_windows must be at least 1 (or None for all), got {max_windows}")
    n = len(ids) // seq_len
    if n == 0:
        raise EvalError(f"the corpus has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seq_len].reshape(n, seq_len)


def check_seq_len(cfg: ModelConfig, seq_len: int) -> None:
    if seq_len < 2:
        raise EvalError(f"--seq-len must be at least 2, got {seq_len}")
    if seq_len > cfg.max_seq_len:
        raise EvalError(f"--seq-len {seq_len} is above the model's maximum of {cfg.max_seq_len} positions")


@partial(jax.jit, static_argnames=("cfg", "dtype", "layer_fn"))
def window_nll(params, cfg: ModelConfig, tokens_BT, dtype=jnp.float32, layer_fn=None):
    """Summed NLL [B] of the T-1 next-token predictions of each window."""
    kw = {} if layer_fn is None else {"layer_fn": layer_fn}
    x, _ = hidden_states(params, cfg, tokens_BT, dtype=dtype, **kw)
    logits = unembed(params, cfg, x[:, :-1])
    return jnp.sum(token_nll(logits, tokens_BT[:, 1:]), axis=-1)


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
    from jaxshare.data.corpora import join_documents

    check_seq_len(cfg, seq_len)
    windows = make_windows(tokenize_corpus(tokenizer, join_documents(docs)), seq_len, max_windows)
    return perplexity_of_windows(params, cfg, windows, batch_size, dtype, layer_fn=layer_fn)
