"""Batched continuation scoring and greedy generation on our jit forward, for the lm-eval backend
(jaxshare.eval.harness) but free of lm-eval, so that it is tested without the optional extra.

Shapes are bucketed: rows and tokens pad up to powers of two (tokens to at least MIN_BUCKET), so
an evaluation compiles a handful of programs, not one per request length.
"""
from __future__ import annotations

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.errors import InputError
from jaxshare.core.model import KVCache, forward_cached, hidden_states, unembed

MIN_BUCKET = 8


def bucket(n: int, cap: int | None = None) -> int:
    """The padded size of n: the next power of two (at least MIN_BUCKET), at most cap (if cap >= n)."""
    b = max(MIN_BUCKET, 1 << max(0, n - 1).bit_length())
    return min(b, cap) if cap is not None and cap >= n else b


def pow2_rows(n: int, batch_size: int) -> int:
    return min(batch_size, 1 << max(0, n - 1).bit_length())


@partial(jax.jit, static_argnames=("cfg", "dtype"))
def score_positions(params, cfg, tokens_BT, pos_BK, target_BK, mask_BK, dtype=jnp.float32):
    """Sum of log p(target) over the masked positions [B], and whether every target is the argmax [B].

    pos_BK are the input positions whose next-token distributions score target_BK; only those rows
    of the hidden states go through the (vocabulary-sized) unembedding."""
    x_BTD, _ = hidden_states(params, cfg, tokens_BT, dtype=dtype)
    x_BKD = jnp.take_along_axis(x_BTD, pos_BK[..., None], axis=1)
    logp_BKV = jax.nn.log_softmax(unembed(params, cfg, x_BKD), axis=-1)
    lp_BK = jnp.take_along_axis(logp_BKV, target_BK[..., None], axis=-1)[..., 0]
    greedy_BK = jnp.argmax(logp_BKV, axis=-1) == target_BK
    return jnp.sum(jnp.where(mask_BK, lp_BK, 0.0), axis=-1), jnp.all(greedy_BK | ~mask_BK, axis=-1)


def score_continuations(params, cfg, pairs, *, batch_size: int, max_length: int, dtype=jnp.float32,
                        desc: str = "jaxshare loglikelihood", disable_tqdm: bool = False, on_result=None):
    """[(log p(continuation | context), continuation is greedy)] for (context ids, continuation ids)
    pairs, in order. As lm-eval's hf backend: the sequence is left-truncated to max_length + 1 tokens
    and its last token dropped from the input. on_result(i, result) is called as each one is known."""
    items = []
    for i, (ctx, cont) in enumerate(pairs):
        if len(ctx) == 0 or len(cont) == 0:
            raise InputError("an empty context or continuation cannot be scored")
        whole = (list(ctx) + list(cont))[-(max_length + 1):]
        items.append((i, whole[:-1], whole[-len(cont):]))  # the input, the scored targets
    # longest first: a batch pads to its first row, and time estimates err on the long side
    items.sort(key=lambda it: (-len(it[1]), it[0]))
    out: list = [None] * len(items)
    bar = tqdm(total=len(items), desc=desc, disable=disable_tqdm, file=sys.stderr)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        B = pow2_rows(len(chunk), batch_size)
        T = bucket(len(chunk[0][1]), max_length)
        K = bucket(max(len(c[2]) for c in chunk), T)
        tokens = np.zeros((B, T), np.int32)
        pos, tgt, mask = np.zeros((B, K), np.int32), np.zeros((B, K), np.int32), np.zeros((B, K), bool)
        for r, (_, inp, cont) in enumerate(chunk):
            n, k = len(inp), len(cont)
            tokens[r, :n] = inp  # right padding: causal attention keeps it out of the real rows
            pos[r, :k] = np.arange(n - k, n)  # the logits at input position p predict token p + 1
            tgt[r, :k], mask[r, :k] = cont, True
        lp, greedy = score_positions(params, cfg, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(tgt),
                                     jnp.asarray(mask), dtype)
        lp, greedy = np.asarray(lp, np.float64), np.asarray(greedy)
        for r, (i, _, _) in enumerate(chunk):
            out[i] = (float(lp[r]), bool(greedy[r]))
            if on_result is not None:
                on_result(i, out[i])
        bar.update(len(chunk))
    bar.close()
    return out


def _prefill(params, cfg, ids: list[int], cache: KVCache, dtype):
    """The prompt through the cache in power-of-two chunks (its binary digits, largest first):
    exact, and jit sees at most log2(max_length) prompt shapes instead of one per length."""
    logits, at = None, 0
    for bit in reversed(range(len(ids).bit_length())):
        size = 1 << bit
        if len(ids) & size:
            chunk = jnp.asarray([ids[at:at + size]], jnp.int32)
            logits, cache = forward_cached(params, cfg, chunk, cache, dtype)
            at += size
    return logits[:, -1], cache


def greedy_until(params, cfg, ids: list[int], decode, until: list[str], max_new_tokens: int, *,
                 stop_ids=(), dtype=jnp.float32) -> str:
    """Greedy text after prompt `ids`, cut before the first of the `until` strings; stops as soon
    as one appears, at a stop id (EOS), or after max_new_tokens. decode: token ids -> text."""
    if not ids:
        raise InputError("generation needs at least one prompt token")
    cache = KVCache.empty(cfg, 1, bucket(len(ids) + max_new_tokens), dtype)
    last, cache = _prefill(params, cfg, list(ids), cache, dtype)
    new: list[int] = []
    text = ""
    for _ in range(max_new_tokens):
        tok = int(jnp.argmax(last[0]))
        if tok in stop_ids:
            break
        new.append(tok)
        text = decode(new)
        if any(u and u in text for u in until):
            break
        logits, cache = forward_cached(params, cfg, jnp.asarray([[tok]], jnp.int32), cache, dtype)
        last = logits[:, -1]
    for u in until:  # the text before the first stop string
        if u:
            text = text.split(u)[0]
    return text
