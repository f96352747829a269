"""GPTQ (Frantar et al. 2022; METHODS.md §5): codes chosen with the calibration gram X^T X.

W [d_in, d_out] with y = x @ W. H = 2 X^T X + lambda I (lambda = `damp` times the mean diagonal).
Input rows are quantized one at a time, in order or by decreasing diag(H) (act-order); each row's
rounding error is spread over the rows not yet quantized through U, the upper Cholesky factor of
H^-1 (H^-1 = U^T U). Rows are processed in blocks: inside a block the update is a rank-1 step per
row on the block alone, and the block's accumulated error reaches the later rows in one matmul.

Group scales: without act-order, a group's scale and zero are computed from its rows as they stand
when the group starts (after the earlier rows' error has landed); with act-order the rows of a
group are not visited together, so every group's scale comes from the original weights (the
reference code's `static_groups`). Per-channel int8 (one group) always uses the original weights.
With H = I nothing is spread and GPTQ returns exactly round-to-nearest's codes.

`gptq` runs the row loop jit-compiled (`lax.fori_loop` over blocks and over the rows of a block);
`gptq_numpy` is the same algorithm as a plain numpy loop (the benchmark's baseline).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.quant.pack import QuantError, codes_of, groups_view, params_of, qmax

BLOCK = 128
CHUNK_ELEMS = 1 << 25  # d_in^2 elements per chunk of the vmapped setup (128 MiB per float32 array)


def block_size(d_in: int, group: int | None) -> int:
    """The largest block <= 128 rows that divides d_in and holds whole groups."""
    g = 1 if group is None else group
    for b in range(min(BLOCK, d_in), 0, -1):
        if d_in % b == 0 and b % g == 0:
            return b
    return d_in  # group > 128: one group is one block


def prepare(w_IO: np.ndarray, gram_II: np.ndarray, damp: float = 0.01, act_order: bool = False):
    """(W in processing order [d_in, O], U [d_in, d_in], perm [d_in]) in float32 numpy (gptq_numpy's
    setup; `_prepare` is the same in jax). Inputs that never fire (zero diagonal) get weight 0, as in GPTQ."""
    w = np.asarray(w_IO, np.float32).copy()
    h = 2.0 * np.asarray(gram_II, np.float32)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(len(h))
    w, h = w[perm], h[perm][:, perm]
    h += np.float32(damp * float(np.mean(np.diag(h)))) * np.eye(len(h), dtype=np.float32)
    low = np.linalg.cholesky(h)
    hinv = np.linalg.solve(low.T, np.linalg.solve(low, np.eye(len(h), dtype=np.float32)))
    u = np.linalg.cholesky(hinv).T  # upper: H^-1 = U^T U
    return w, u, perm


def _prepare(w_IO, gram_II, damp: float, act_order: bool):
    """`prepare` in jax (float32, as the reference implementation computes it)."""
    d_in = w_IO.shape[0]
    h = 2.0 * gram_II.astype(jnp.float32)
    diag = jnp.diag(h)
    dead = diag == 0
    h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
    w = jnp.where(dead[:, None], 0.0, w_IO.astype(jnp.float32))
    diag = jnp.diag(h)
    perm = jnp.argsort(-diag, stable=True) if act_order else jnp.arange(d_in)
    w, h = w[perm], h[perm][:, perm]
    h = h + damp * jnp.mean(diag) * jnp.eye(d_in, dtype=jnp.float32)
    low = jnp.linalg.cholesky(h)
    hinv = jax.scipy.linalg.cho_solve((low, True), jnp.eye(d_in, dtype=jnp.float32))
    return w, jnp.linalg.cholesky(hinv).T, perm.astype(jnp.int32)


def _static_params(w0_IO, bits, group, sym, perm):
    """Scale/zero per group from the original weights, and each processed row's group id."""
    d_in = w0_IO.shape[0]
    orig = w0_IO[jnp.argsort(perm)]  # back to the natural row order
    scale, zero = params_of(groups_view(orig, group), bits, sym)
    g = d_in if group is None else group
    return scale, zero, perm // g


def _gptq_loop(w_IO, u_II, scale, zero, gid_I, *, bits, group, sym, lazy, blk):
    d_in, d_out = w_IO.shape
    g = d_in if group is None else group
    rows_b = jnp.arange(blk)

    def block(b, carry):
        w, q_all, scale, zero = carry
        b0 = b * blk
        w_b = jax.lax.dynamic_slice_in_dim(w, b0, blk, 0)
        u_b = jax.lax.dynamic_slice(u_II, (b0, b0), (blk, blk))

        def row(j, c):
            w_b, err_b, q_b, scale, zero = c
            i = b0 + j
            if lazy:  # a group's parameters from its rows as they stand now
                def fresh(sz):
                    rows = jax.lax.dynamic_slice_in_dim(w_b, j, g, 0)
                    s, z = params_of(rows[None], bits, sym)
                    return (jax.lax.dynamic_update_slice_in_dim(sz[0], s, i // g, 0),
                            jax.lax.dynamic_update_slice_in_dim(sz[1], z, i // g, 0))
                scale, zero = jax.lax.cond(i % g == 0, fresh, lambda sz: sz, (scale, zero))
                s, z = scale[i // g], zero[i // g]
            else:
                s, z = scale[gid_I[i]], zero[gid_I[i]]
            wr = w_b[j]
            q = codes_of(wr, s, z, bits)
            err = (wr - s * (q - z)) / u_b[j, j]
            later = jnp.where(rows_b > j, u_b[j], 0.0)
            w_b = w_b - later[:, None] * err[None, :]
            return w_b, err_b.at[j].set(err), q_b.at[j].set(q), scale, zero

        init = (w_b, jnp.zeros_like(w_b), jnp.zeros_like(w_b), scale, zero)
        _, err_b, q_b, scale, zero = jax.lax.fori_loop(0, blk, row, init)
        u_rows = jax.lax.dynamic_slice_in_dim(u_II, b0, blk, 0)  # [blk, d_in]
        u_rows = jnp.where(jnp.arange(d_in)[None, :] >= b0 + blk, u_rows, 0.0)
        w = w - u_rows.T @ err_b
        return w, jax.lax.dynamic_update_slice_in_dim(q_all, q_b, b0, 0), scale, zero

    q0 = jnp.zeros((d_in, d_out), jnp.float32)
    _, q, scale, zero = jax.lax.fori_loop(0, d_in // blk, block, (w_IO, q0, scale, zero))
    return q, scale, zero


@partial(jax.jit, static_argnames=("bits", "group", "sym", "damp", "act_order", "lazy", "blk"))
def _run_many(w_NIO, gram_NII, *, bits, group, sym, damp, act_order, lazy, blk):
    def one(w, gram):
        w, u, perm = _prepare(w, gram, damp, act_order)
        scale, zero, gid = _static_params(w, bits, group, sym, perm)
        q, scale, zero = _gptq_loop(w, u, scale, zero, gid, bits=bits, group=group, sym=sym, lazy=lazy, blk=blk)
        return q[jnp.argsort(perm)], scale, zero  # codes back in the natural row order

    return jax.vmap(one)(w_NIO, gram_NII)


def gptq_many(ws_NIO, grams_NII, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
              act_order: bool = False):
    """GPTQ of N same-shaped weights at once (setup and row loop vmapped over them, one compile per
    shape): (codes int32 [N, d_in, O] in natural row order, scale [N, G, O], zero [N, G, O])."""
    d_in = np.shape(ws_NIO[0])[0]
    if group is not None and d_in % group:
        raise QuantError(f"group {group} does not divide the {d_in} input rows")
    lazy = group is not None and group < d_in and not act_order
    n = len(ws_NIO)
    # Chunks of equal size (the last one padded with repeats) bound the memory of the vmapped setup
    # (a few [N, d_in, d_in] float32 arrays) and keep one compile per shape.
    chunks = -(-n // max(1, CHUNK_ELEMS // (d_in * d_in)))
    size = -(-n // chunks)
    outs = []
    for c in range(chunks):
        idx = [min(i, n - 1) for i in range(c * size, (c + 1) * size)]
        w = jnp.asarray(np.stack([np.asarray(ws_NIO[i], np.float32) for i in idx]))
        g = jnp.asarray(np.stack([np.asarray(grams_NII[i], np.float32) for i in idx]))
        outs.append(_run_many(w, g, bits=bits, group=group, sym=sym, damp=float(damp), act_order=bool(act_order),
                              lazy=lazy, blk=block_size(d_in, group)))
    q, scale, zero = (jnp.concatenate([o[i] for o in outs])[:n] for i in range(3))
    return q.astype(jnp.int32), scale, zero


def gptq(w_IO, gram_II, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
         act_order: bool = False):
    """(codes int32 [d_in, O] in natural row order, scale [G, O], zero [G, O]) of W."""
    q, s, z = gptq_many([w_IO], [gram_II], bits, group, sym, damp, act_order)
    return q[0], s[0], z[0]


def gptq_numpy(w_IO, gram_II, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
               act_order: bool = False):
    """The same algorithm, one row at a time in a Python loop with numpy (float32)."""
    d_in, d_out = np.shape(w_IO)
    w, u, perm = prepare(w_IO, gram_II, damp, act_order)
    g = d_in if group is None else group
    lazy = group is not None and group < d_in and not act_order
    scale, zero, gid = (np.array(a) for a in _static_params(jnp.asarray(w), bits, group, sym, jnp.asarray(perm)))
    q = np.zeros((d_in, d_out), np.float32)
    top = qmax(bits)
    for i in range(d_in):
        if lazy and i % g == 0:
            grp = w[i:i + g]
            if sym:
                half = 1 << (bits - 1)
                s = np.max(np.abs(grp), axis=0) / (half - 1)
                z = np.full_like(s, half)
            else:
                lo, hi = np.minimum(grp.min(0), 0.0), np.maximum(grp.max(0), 0.0)
                s = (hi - lo) / top
                z = np.round(-lo / np.where(s > 0, s, 1.0))
            scale[i // g], zero[i // g] = np.where(s > 0, s, 1.0), z
        gi = i // g if lazy else gid[i]
        s, z = scale[gi], zero[gi]
        q[i] = np.clip(np.round(w[i] / s) + z, 0, top)
        err = (w[i] - s * (q[i] - z)) / u[i, i]
        w[i + 1:] -= np.outer(u[i, i + 1:], err)
    inv = np.argsort(perm)
    return q[inv].astype(np.int32), scale, zero
