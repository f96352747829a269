"""Batched continuation scoring and greedy generation on our jit forward, for the lm-eval backend
(jaxshare.eval.harness) but free of lm-eval, so that it is tested without the optional extra.

Shapes are bucketed: rows and tokens pad up to powers of two (tokens to at least MIN_BUCKET), so
an evaluation compiles a handful of programs, not one per request length.

Multiple choice asks for one (context, continuation) pair per choice, all with the same context.
`score_continuations` runs each such context through the model once (`score_groups`): the context
fills a KV cache, the first token of every continuation is scored from the context's last position,
and the rest of all continuations run as one batch behind the cached context.
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


def fine_bucket(n: int, cap: int | None = None) -> int:
    """The padded size of n >= 1 on a finer grid than `bucket`: powers of two and 1.5x powers of
    two (1, 2, 3, 4, 6, 8, 12, 16, 24, ...), at most cap (if cap >= n). At most a third is
    padding where powers of two waste up to half, for at most twice the programs."""
    p = 1 << max(0, n - 1).bit_length()
    b = 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p
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


def _score_group(params, cfg, ctx_T, n, cont_GK, tgt_GJ, mask_GJ, dtype):
    """One context, its G continuations: (sum of log p [G], all greedy [G]).

    ctx_T: the context right-padded to T, n of it real. cont_GK: each continuation's input tokens
    (all but its last), right-padded to K (K may be 0: one-token continuations need no second pass).
    tgt_GJ/mask_GJ (J = K + 1): the continuation tokens, the first scored from the context's last
    position, the others from cont_GK's positions.

    Exactness: the context goes through the cache once (causal, so its real positions never see
    the padding after them); the cache's length is then set back to n, so the continuations are
    written over the padded slots at their true positions n, n + 1, ... and the slots past them
    count as unwritten (masked). The cache keeps every position (no ring buffer) and masks by
    absolute position, so sliding windows (cfg.windows: Mistral, Gemma3) and per-layer RoPE bases
    are exact too; learned positions read the same rows as in one whole-sequence forward."""
    T, (G, K) = ctx_T.shape[0], cont_GK.shape
    cache = KVCache.empty(cfg, 1, T + K, dtype)
    x_1TD, cache = hidden_states(params, cfg, ctx_T[None], dtype=dtype, cache=cache)
    last_D = jax.lax.dynamic_index_in_dim(x_1TD[0], n - 1, axis=0, keepdims=False)
    h_GJD = jnp.broadcast_to(last_D, (G, 1, last_D.shape[-1]))
    if K:
        shared = KVCache(jnp.broadcast_to(cache.k, (cache.k.shape[0], G, *cache.k.shape[2:])),
                         jnp.broadcast_to(cache.v, (cache.v.shape[0], G, *cache.v.shape[2:])), n)
        y_GKD, _ = hidden_states(params, cfg, cont_GK, dtype=dtype, cache=shared)
        h_GJD = jnp.concatenate([h_GJD, y_GKD.astype(h_GJD.dtype)], axis=1)
    logp_GJV = jax.nn.log_softmax(unembed(params, cfg, h_GJD), axis=-1)
    lp_GJ = jnp.take_along_axis(logp_GJV, tgt_GJ[..., None], axis=-1)[..., 0]
    greedy_GJ = jnp.argmax(logp_GJV, axis=-1) == tgt_GJ
    return jnp.sum(jnp.where(mask_GJ, lp_GJ, 0.0), axis=-1), jnp.all(greedy_GJ | ~mask_GJ, axis=-1)


@partial(jax.jit, static_argnames=("cfg", "dtype"))
def score_groups(params, cfg, ctx_IT, n_I, cont_IGK, tgt_IGJ, mask_IGJ, dtype=jnp.float32):
    """`_score_group` over I contexts at once ([I, G] results). vmap gives each context its own
    cache length, so contexts of different lengths share one call (and one read of the weights)."""
    return jax.vmap(partial(_score_group, params, cfg, dtype=dtype))(ctx_IT, n_I, cont_IGK, tgt_IGJ, mask_IGJ)


# at most this many unembedded rows (contexts x choices x continuation positions) per grouped call:
# their logits are rows x vocabulary floats (49k for SmolLM2: 0.8 GB at 4096 rows)
MAX_UNEMBED_ROWS = 4096


def score_continuations(params, cfg, pairs, *, batch_size: int, max_length: int, dtype=jnp.float32,
                        desc: str = "jaxshare loglikelihood", disable_tqdm: bool = False, on_result=None,
                        share_context: bool = True):
    """[(log p(continuation | context), continuation is greedy)] for (context ids, continuation ids)
    pairs, in order. As lm-eval's hf backend: the sequence is left-truncated to max_length + 1 tokens
    and its last token dropped from the input. on_result(i, result) is called as each one is known.

    share_context: pairs with the same context and no truncation are scored as a group, the context
    run once (`score_groups`, up to batch_size contexts a call); False scores every pair as its own
    sequence (the path that pairs with a unique context, or a truncated one, always take)."""
    single, groups = [], {}
    for i, (ctx, cont) in enumerate(pairs):
        if len(ctx) == 0 or len(cont) == 0:
            raise InputError("an empty context or continuation cannot be scored")
        if share_context and len(ctx) + len(cont) <= max_length + 1:  # not truncated
            groups.setdefault(tuple(ctx), []).append((i, list(cont)))
        else:
            single.append((i, ctx, cont))
    shared = []
    for ctx, members in groups.items():
        if len(members) > 1:
            shared.append((list(ctx), members))
        else:
            single.append((members[0][0], ctx, members[0][1]))
    out: list = [None] * len(pairs)
    bar = tqdm(total=len(pairs), desc=desc, disable=disable_tqdm, file=sys.stderr)

    def done(i, result):
        out[i] = result
        if on_result is not None:
            on_result(i, result)

    _score_shared(params, cfg, shared, batch_size, max_length, dtype, done, bar)
    _score_single(params, cfg, single, batch_size, max_length, dtype, done, bar)
    bar.close()
    return out


def _score_single(params, cfg, pairs, batch_size, max_length, dtype, done, bar):
    """Each (index, context, continuation) as its own sequence, batch_size rows a call."""
    items = []
    for i, ctx, cont in pairs:
        whole = (list(ctx) + list(cont))[-(max_length + 1):]
        items.append((i, whole[:-1], whole[-len(cont):]))  # the input, the scored targets
    # longest first: a batch pads to its first row, and time estimates err on the long side
    items.sort(key=lambda it: (-len(it[1]), it[0]))
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
            done(i, (float(lp[r]), bool(greedy[r])))
        bar.update(len(chunk))


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _score_shared(params, cfg, groups, batch_size, max_length, dtype, done, bar):
    """Each (context, [(index, continuation)]) group with its context run once, up to batch_size
    groups a call. Every call has the same number of contexts (the last is padded with empty ones:
    cheaper than compiling another program). Contexts and continuations pad to the `fine_bucket`
    grid and the choices to the chunk's most: the tokens run are nearly all real, which is what
    this CPU-bound scoring costs (powers of two everywhere ran ~1.5x the real tokens)."""
    if not groups:
        return

    def k_bucket(kmax):  # 0: one-token continuations only, all scored from the context's last position
        return fine_bucket(kmax) if kmax else 0

    # longest contexts first, and within a context bucket the longest continuations first, so that
    # few calls pad every continuation to the bucket of a rare long one
    groups = sorted(groups, key=lambda g: (-fine_bucket(len(g[0]), max_length), -k_bucket(max(len(c) for _, c in g[1]) - 1),
                                           -len(g[0]), g[1][0][0]))
    I = pow2_rows(len(groups), batch_size)

    def shape(chunk):  # (T, G, K): context bucket, choices, continuation-input bucket
        return (fine_bucket(max(len(c) for c, _ in chunk), max_length), max(len(m) for _, m in chunk),
                k_bucket(max(len(c) - 1 for _, m in chunk for _, c in m)))

    chunks, cur = [], []
    for g in groups:
        _, G, K = shape(cur + [g])
        if cur and (len(cur) == I or (len(cur) + 1) * G * (K + 1) > MAX_UNEMBED_ROWS):
            chunks.append(cur)
            cur = []
        cur.append(g)
    chunks.append(cur)
    for chunk in chunks:
        T, G, K = shape(chunk)
        n_rows = I if I * G * (K + 1) <= MAX_UNEMBED_ROWS else _pow2(len(chunk))
        ctx = np.zeros((n_rows, T), np.int32)
        n = np.ones((n_rows,), np.int32)
        cont = np.zeros((n_rows, G, K), np.int32)
        tgt, mask = np.zeros((n_rows, G, K + 1), np.int32), np.zeros((n_rows, G, K + 1), bool)
        for r, (c, members) in enumerate(chunk):
            ctx[r, :len(c)], n[r] = c, len(c)
            for j, (_, cn) in enumerate(members):
                cont[r, j, :len(cn) - 1] = cn[:-1]
                tgt[r, j, :len(cn)], mask[r, j, :len(cn)] = cn, True
        lp, greedy = score_groups(params, cfg, jnp.asarray(ctx), jnp.asarray(n), jnp.asarray(cont),
                                  jnp.asarray(tgt), jnp.asarray(mask), dtype)
        lp, greedy = np.asarray(lp, np.float64), np.asarray(greedy)
        for r, (_, members) in enumerate(chunk):
            for j, (i, _) in enumerate(members):
                done(i, (float(lp[r, j]), bool(greedy[r, j])))
            bar.update(len(members))


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
