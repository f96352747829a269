"""Perplexity under the protocol of docs/methods.md: join documents with "\\n\\n", tokenize once
without special tokens, non-overlapping windows of seq_len (ragged tail dropped), each window
of T tokens scores its T-1 next-token predictions, PPL = exp(mean NLL)."""
from __future__ import annotations

import math
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.errors import JaxshareError
from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.model import decoder_layer, hidden_states, norm
from jaxshare.data.tokens import check_token_range, token_windows, tokenize_corpus

PROTOCOL = ("documents joined with '\\n\\n', tokenized once without special tokens, non-overlapping "
            "windows of seq_len tokens (ragged tail dropped), T-1 scored predictions per window, "
            "ppl = exp(mean token NLL)")


class EvalError(JaxshareError, ValueError):
    """Evaluation input that cannot give a meaningful number."""


def check_seq_len(cfg: ModelConfig, seq_len: int) -> None:
    if seq_len < 2:
        raise EvalError(f"--seq-len must be at least 2, got {seq_len}")
    if seq_len > cfg.max_seq_len:
        raise EvalError(f"--seq-len {seq_len} is above the model's maximum of {cfg.max_seq_len} positions")


VOCAB_CHUNK = 8192  # logits are made [B, T, 8192] at a time, never [B, T, V]


def chunked_token_nll(params, cfg: ModelConfig, x_BTD, targets_BT, chunk: int = VOCAB_CHUNK):
    """Per-token NLL [B, T] (float32) of targets from final hidden states (before the final norm),
    as `token_nll(unembed(...))` computes it, but the vocabulary is visited in chunks with an
    online log-sum-exp, so the fp32 logits never exist whole (151,936 x T x B x 4 bytes at 1.5B)."""
    x = norm(x_BTD, params.final_norm, cfg)
    w = params.embed if params.lm_head is None else params.lm_head  # [V, D] tied, [D, V] untied
    tied = params.lm_head is None
    V = w.shape[0] if tied else w.shape[1]
    C = min(chunk, V)
    n = -(-V // C)
    B, T = targets_BT.shape
    neg = jnp.full((B, T), -jnp.inf, jnp.float32)

    def body(carry, i):
        m, s, tgt = carry
        start = jnp.minimum(i * C, V - C)  # the last chunk is shifted back inside V ...
        w_c = jax.lax.dynamic_slice_in_dim(w, start, C, axis=0 if tied else 1)
        w_DC = (w_c.T if tied else w_c).astype(x.dtype)
        logits = jnp.einsum("btD,DC->btC", x, w_DC, preferred_element_type=jnp.float32)
        if cfg.final_logit_softcap is not None:  # as model.unembed does
            logits = cfg.final_logit_softcap * jnp.tanh(logits / cfg.final_logit_softcap)
        cols = start + jnp.arange(C)
        logits = jnp.where(cols >= i * C, logits, -jnp.inf)  # ... and its overlap with the one before is masked
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[..., None]), axis=-1)
        hit = (targets_BT >= i * C) & (targets_BT < start + C)
        picked = jnp.take_along_axis(logits, jnp.clip(targets_BT - start, 0, C - 1)[..., None], axis=-1)[..., 0]
        return (m_new, s, jnp.where(hit, picked, tgt)), None

    (m, s, tgt), _ = jax.lax.scan(body, (neg, jnp.zeros((B, T), jnp.float32), neg), jnp.arange(n))
    return m + jnp.log(s) - tgt


@partial(jax.jit, static_argnames=("cfg", "dtype", "layer_fn"))
def window_nll(params, cfg: ModelConfig, tokens_BT, dtype=jnp.float32, layer_fn=None):
    """Summed NLL [B] of the T-1 next-token predictions of each window (vocabulary in chunks)."""
    x, _ = hidden_states(params, cfg, tokens_BT, dtype=dtype, layer_fn=layer_fn or decoder_layer)
    return jnp.sum(chunked_token_nll(params, cfg, x[:, :-1], tokens_BT[:, 1:]), axis=-1)


def window_bytes(cfg: ModelConfig, seq_len: int, dtype=jnp.float32) -> int:
    """Rough peak activation bytes of one window in window_nll: the residual stream and one layer's
    q/k/v, MLP and attention scores (the scan keeps one layer's at a time), plus a logits chunk."""
    T, D, F = seq_len, cfg.d_model, cfg.d_ff
    item = np.dtype(as_dtype(dtype)).itemsize
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    per_layer = item * T * (4 * D + 2 * qkv + 3 * F) + 4 * 2 * cfg.n_heads * T * T  # scores + probs in fp32
    return int(per_layer + 4 * T * (2 * min(VOCAB_CHUNK, cfg.vocab_size) + 2 * D))


def rss_bytes() -> int:
    """What this process holds now (Linux /proc), else its peak so far (Unix: an upper bound of
    now), else 0. The one RSS reading of the library (the batch fit here, calibration's estimate,
    `jaxshare basis`'s gram budget)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource  # deferred: Unix-only (this fallback runs where /proc is missing)
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fit_batch(cfg: ModelConfig, seq_len: int, max_memory: int, dtype=jnp.float32, held: int | None = None) -> int:
    """The largest batch whose activations fit `max_memory` bytes beside what the process holds
    (`held`, default: its RSS now, the loaded params included); at least 1."""
    held = rss_bytes() if held is None else held
    return max(1, int((max_memory - held) // max(1, window_bytes(cfg, seq_len, dtype))))


def check_max_memory(cfg: ModelConfig, seq_len: int, max_memory: int | None, dtype=jnp.float32,
                     held: int | None = None) -> None:
    """Refuse a --max-memory below what the loaded model (the process's RSS now) and one window need:
    fit_batch would quietly run a batch of 1 anyway, over the limit the user set."""
    if max_memory is None:
        return
    held = rss_bytes() if held is None else held
    need = held + window_bytes(cfg, seq_len, dtype)
    if max_memory < need:
        mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
        raise EvalError(f"--max-memory {mib(max_memory)} is below what the loaded model and one window of "
                        f"{seq_len} tokens need ({mib(need)}); give at least --max-memory {-(-need // 2**20)}M, "
                        "or leave it out")


def perplexity_of_windows(params, cfg: ModelConfig, windows: np.ndarray, batch_size: int = 8,
                          dtype=jnp.float32, desc: str = "ppl", layer_fn=None, max_memory: int | None = None) -> dict:
    """max_memory: bytes the process may reach; the batch shrinks below batch_size to fit it."""
    if batch_size < 1:
        raise EvalError(f"batch_size must be at least 1, got {batch_size}")
    n, T = windows.shape
    check_token_range(windows, cfg.vocab_size, "the windows")  # before jnp.asarray casts them to int32
    if max_memory is not None:
        batch_size = min(batch_size, fit_batch(cfg, T, max_memory, dtype))
    batch_size = max(1, min(batch_size, n))  # a batch larger than the windows would only score padding
    pad = (-n) % batch_size
    padded = np.concatenate([windows, np.zeros((pad, T), np.int32)]) if pad else windows
    sums = []
    for i in tqdm(range(0, len(padded), batch_size), desc=desc, unit="batch", leave=False):
        sums.append(np.asarray(window_nll(params, cfg, jnp.asarray(padded[i:i + batch_size]), dtype, layer_fn)))
    per_window = np.concatenate(sums)[:n].astype(np.float64)
    tokens = n * (T - 1)
    nll = float(per_window.sum() / tokens)
    # a callback comparing candidates (budget sensitivity) may see inf/NaN; perplexity() refuses it
    return {"ppl": math.exp(nll) if nll < 709 else math.inf if nll == nll else math.nan, "nll": nll, "tokens": tokens, "windows": n, "seq_len": T, "batch_size": batch_size,
            "protocol": PROTOCOL}


def perplexity(params, cfg: ModelConfig, tokenizer, docs: list[str], seq_len: int, max_windows: int | None = None,
               batch_size: int = 8, dtype=jnp.float32, layer_fn=None, max_memory: int | None = None) -> dict:
    """PPL of docs (a list of documents) under the protocol; dtype: anything `as_dtype` takes."""
    check_seq_len(cfg, seq_len)
    res = perplexity_of_windows(params, cfg, token_windows(tokenize_corpus(tokenizer, docs), seq_len, max_windows),
                                batch_size, dtype, layer_fn=layer_fn, max_memory=max_memory)
    check_finite_ppl(res["ppl"], res["nll"])
    return res


def check_finite_ppl(ppl: float, nll: float, what: str = "perplexity") -> None:
    """A NaN/inf perplexity is no measurement: printing it with exit 0 would let a corrupt model
    or an overflowing dtype pass as a (very bad) result."""
    if not math.isfinite(ppl):
        raise EvalError(f"the {what} is not finite (mean NLL {nll}): the model's outputs overflow or are NaN; "
                        "check the model file (a corrupt download?), and with --compute-dtype bf16 try fp32")
