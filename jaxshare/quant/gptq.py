"""GPTQ (Frantar et al. 2022; docs/methods.md §5): codes chosen with the calibration gram X^T X.

W [d_in, d_out] with y = x @ W. H = 2 X^T X + lambda I (lambda = `damp` times the mean diagonal).
Input rows are quantized one at a time, in order or by decreasing diag(H) (act-order); each row's
rounding error is spread over the rows not yet quantized through U, the upper Cholesky factor of
H^-1 (H^-1 = U^T U). Rows are processed in blocks of sub-blocks: a row's rank-1 update touches only
its sub-block (16 rows), a sub-block's error reaches the rest of its block in one matmul, and a
block's error reaches the later rows in one matmul.

Group scales: without act-order, a group's scale and zero are computed from its rows as they stand
when the group starts (after the earlier rows' error has landed); with act-order the rows of a
group are not visited together, so every group's scale comes from the original weights (the
reference code's `static_groups`). Per-channel int8 (one group) always uses the original weights.
With H = I nothing is spread and GPTQ returns exactly round-to-nearest's codes.

`gptq` runs the row loop (`lax.fori_loop` over blocks, sub-blocks and rows) jit-compiled, vmapped
over same-shaped weights. The setup (U) reads only the grams: on CPU it is LAPACK's potrf and trtri
called directly, elsewhere a jit of jax's Cholesky and triangular solve. The benchmark's baseline and
the tests' independent reference is a blocked numpy GPTQ written apart from this module
(benchmarks/gptq_blocked.py).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

from jaxshare.quant.pack import QuantError, codes_of, groups_view, params_of

BLOCK = 128  # rows per block of the row loop
SUB = 16  # rows per sub-block: the rank-1 updates stay on these (a few KiB per matrix)
CHUNK_ELEMS = 1 << 25  # d_in^2 elements per chunk of the vmapped setup (128 MiB per float32 array)


def _factor(gram_II, damp: float, act_order: bool):
    """(U, perm, dead) in jax (float32, as the reference implementation computes it); it
    reads only the gram, so one compile (and one factorization) serves every weight reading the same
    input. U comes from one Cholesky factorization: reversing the row order, flip(H) = L L^T gives
    H = V V^T with V = flip(L) upper, so H^-1 = U^T U with U = V^-1 = flip(L^-1) (the same factor,
    by uniqueness, without inverting H and factoring it again)."""
    d_in = gram_II.shape[0]
    h = 2.0 * gram_II.astype(jnp.float32)
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
    diag = jnp.diag(h)
    perm = jnp.argsort(-diag, stable=True) if act_order else jnp.arange(d_in)
    if act_order:
        h = h[perm][:, perm]
    h = h + damp * jnp.mean(diag) * jnp.eye(d_in, dtype=jnp.float32)
    rev = jnp.arange(d_in - 1, -1, -1)  # a gather: XLA's simplifier aborts on some reverses of this
    low = jnp.linalg.cholesky(h[rev][:, rev])
    x = jax.scipy.linalg.solve_triangular(low, jnp.eye(d_in, dtype=jnp.float32), lower=True)
    return x[rev][:, rev], perm.astype(jnp.int32), dead


def _static_params(w0_IO, bits, group, sym, perm):
    """Scale/zero per group from the original weights, and each processed row's group id."""
    d_in = w0_IO.shape[0]
    orig = w0_IO[jnp.argsort(perm)]  # back to the natural row order
    scale, zero = params_of(groups_view(orig, group), bits, sym)
    g = d_in if group is None else group
    return scale, zero, perm // g


def _block(w_b, u_b, scale, zero, gid_b, b0, *, bits, group, sym, lazy, sub):
    """Quantize one block's rows (already holding the earlier blocks' error): (codes, error rows
    scaled by 1/U_ii, scale, zero). A fori_loop over sub-blocks of `sub` rows, and inside one a
    fori_loop over its rows whose rank-1 updates touch only the sub-block; a sub-block's error
    reaches the rest of the block in one matmul. A lazy group starts on a sub-block boundary, so its
    parameters are computed once per sub-block (not per row)."""
    bl, d_out = w_b.shape
    g = group if lazy else None

    def step(k, c):
        w_b, q_b, e_b, scale, zero = c
        j0 = k * sub
        if lazy:  # a group's parameters from its rows as they stand when it starts (b0 % g == 0)
            gi = (b0 + j0) // g

            def fresh(sz):
                s, z = params_of(jax.lax.dynamic_slice_in_dim(w_b, j0, g, 0)[None], bits, sym)
                return (jax.lax.dynamic_update_slice_in_dim(sz[0], s, gi, 0),
                        jax.lax.dynamic_update_slice_in_dim(sz[1], z, gi, 0))

            scale, zero = jax.lax.cond(j0 % g == 0, fresh, lambda sz: sz, (scale, zero))
            s_r = jnp.broadcast_to(jax.lax.dynamic_index_in_dim(scale, gi, 0), (sub, d_out))
            z_r = jnp.broadcast_to(jax.lax.dynamic_index_in_dim(zero, gi, 0), (sub, d_out))
        else:
            ids = jax.lax.dynamic_slice_in_dim(gid_b, j0, sub)
            s_r, z_r = scale[ids], zero[ids]
        us = jax.lax.dynamic_slice(u_b, (j0, j0), (sub, sub))

        def row(r, c):
            ws, q_s, e_s = c
            wr, s, z = ws[r], s_r[r], z_r[r]
            q = codes_of(wr, s, z, bits)
            e = (wr - s * (q - z)) / us[r, r]
            # U is upper triangular: rows before r get a zero update (row r itself is done)
            ws = ws - us[r][:, None] * e[None, :]
            return ws, q_s.at[r].set(q), e_s.at[r].set(e)

        ws = jax.lax.dynamic_slice_in_dim(w_b, j0, sub, 0)
        _, q_s, e_s = jax.lax.fori_loop(0, sub, row, (ws, jnp.zeros_like(ws), jnp.zeros_like(ws)))
        strip = jax.lax.dynamic_slice_in_dim(u_b, j0, sub, 0)  # [sub, bl]: onto the rows after the sub-block
        strip = jnp.where(jnp.arange(bl)[None, :] >= j0 + sub, strip, 0.0)
        w_b = w_b - strip.T @ e_s
        return (w_b, jax.lax.dynamic_update_slice_in_dim(q_b, q_s, j0, 0),
                jax.lax.dynamic_update_slice_in_dim(e_b, e_s, j0, 0), scale, zero)

    init = (w_b, jnp.zeros_like(w_b), jnp.zeros_like(w_b), scale, zero)
    _, q_b, e_b, scale, zero = jax.lax.fori_loop(0, bl // sub, step, init)
    return q_b, e_b, scale, zero


def block_size(d_in: int, group: int | None) -> int:
    """The largest block <= 128 rows that divides d_in and holds whole groups."""
    g = 1 if group is None else group
    return next((b for b in range(min(BLOCK, d_in), 0, -1) if d_in % b == 0 and b % g == 0), d_in)


def _gptq_loop(w_IO, u_II, scale, zero, gid_I, *, bits, group, sym, lazy):
    """A fori_loop over blocks; a block's error reaches the rows after it in one matmul. The matmul
    spans all d_in rows (the rows already done masked out of U): twice the flops of the triangle,
    but one loop body to compile instead of one per block (compiling is most of this path's time)."""
    d_in = w_IO.shape[0]
    blk = block_size(d_in, group)
    sub = math.gcd(blk, group if lazy else blk, SUB)  # a lazy group starts on a sub-block boundary

    def body(b, c):
        w, q, scale, zero = c
        b0 = b * blk
        q_b, e_b, scale, zero = _block(jax.lax.dynamic_slice_in_dim(w, b0, blk, 0),
                                       jax.lax.dynamic_slice(u_II, (b0, b0), (blk, blk)), scale, zero,
                                       jax.lax.dynamic_slice_in_dim(gid_I, b0, blk), b0,
                                       bits=bits, group=group, sym=sym, lazy=lazy, sub=sub)
        u_rows = jax.lax.dynamic_slice_in_dim(u_II, b0, blk, 0)
        u_rows = jnp.where(jnp.arange(d_in)[None, :] >= b0 + blk, u_rows, 0.0)
        return w - u_rows.T @ e_b, jax.lax.dynamic_update_slice_in_dim(q, q_b, b0, 0), scale, zero

    _, q, scale, zero = jax.lax.fori_loop(0, d_in // blk, body, (w_IO, jnp.zeros_like(w_IO), scale, zero))
    return q, scale, zero


@partial(jax.jit, static_argnames=("damp", "act_order"))
def _setup_many(gram_NII, *, damp, act_order):
    """(U, perm, dead), vmapped: keyed by the grams' shape only, so every weight type with the same
    input width shares one compile."""
    return jax.vmap(lambda g: _factor(g, damp, act_order))(gram_NII)


@partial(jax.jit, static_argnames=("bits", "group", "sym", "act_order", "lazy"))
def _loop_many(w, u, perm, dead, *, bits, group, sym, act_order, lazy):
    def one(w, u, perm, dead):
        w = jnp.where(dead[:, None], 0.0, w.astype(jnp.float32))  # inputs that never fire: weight 0
        if act_order:
            w = w[perm]
            scale, zero, gid = _static_params(w, bits, group, sym, perm)
        else:  # natural order: no permutation gathers
            g = w.shape[0] if group is None else group
            scale, zero = params_of(groups_view(w, group), bits, sym)
            gid = perm // g
        q, scale, zero = _gptq_loop(w, u, scale, zero, gid, bits=bits, group=group, sym=sym, lazy=lazy)
        return (q[jnp.argsort(perm)] if act_order else q), scale, zero  # codes in the natural row order

    return jax.vmap(one)(w, u, perm, dead)


def _factor_host(gram_NII: np.ndarray, damp: float, act_order: bool):
    """`_factor` with LAPACK called directly (CPU backends): potrf, then trtri inverts the triangle
    in n^3/3 flops where a triangular solve against I (all jax offers) takes n^3; at d_in 1536 that
    was most of GPTQ's time. One BLAS thread: the factors are small, more threads only wait."""
    from scipy.linalg import lapack  # deferred: ~0.1 s to import; the method registry imports this module

    n, d, _ = gram_NII.shape
    u, perm, dead = np.empty((n, d, d), np.float32), np.empty((n, d), np.int32), np.empty((n, d), bool)
    with threadpool_limits(1, user_api="blas"):
        for i in range(n):
            h = 2.0 * np.asarray(gram_NII[i], np.float32)
            dead[i] = np.diag(h) == 0
            h[dead[i], dead[i]] = 1.0
            diag = np.diag(h).copy()
            perm[i] = np.argsort(-diag, kind="stable") if act_order else np.arange(d)
            if act_order:
                h = h[perm[i]][:, perm[i]]
            h[np.diag_indices(d)] += np.float32(damp) * np.mean(diag, dtype=np.float32)
            low, info = lapack.spotrf(np.ascontiguousarray(h[::-1, ::-1]), lower=1, clean=1)
            if info == 0:
                x, info = lapack.strtri(low, lower=1)
            if info != 0:
                raise QuantError(f"GPTQ: the damped gram of matrix {i} is not positive definite (raise --damp)")
            u[i] = x[::-1, ::-1]
    return u, perm, dead


def _run_many(w, g, *, bits, group, sym, damp, act_order, lazy):
    if jax.default_backend() == "cpu":
        ready = _factor_host(np.asarray(g), damp, act_order)
    else:
        ready = _setup_many(jnp.asarray(g), damp=damp, act_order=act_order)
    return _loop_many(w, *ready, bits=bits, group=group, sym=sym, act_order=act_order, lazy=lazy)


def chunk_size(n: int, d_in: int) -> int:
    """Matrices per vmapped chunk for n weights of d_in inputs: chunks of equal size (the last one
    padded with repeats) bound the memory of the vmapped setup (a few [N, d_in, d_in] float32
    arrays) and keep one compile per shape. The chunking is part of the result: XLA's batched
    matmuls round differently at another batch size (a scale may move by an ulp), so it stays as is."""
    chunks = -(-n // max(1, CHUNK_ELEMS // (d_in * d_in)))
    return -(-n // chunks)


def gptq_chunks(n: int, shape: tuple, get, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
                act_order: bool = False):
    """GPTQ of n weights of shape [d_in, d_out], one vmapped chunk at a time: `get(indices)` gives
    (weights [k, d_in, O], grams [k, d_in, d_in]) of those items, read only when their chunk runs.
    Yields (start, stop, codes int32 [stop - start, d_in, O] in natural row order, scale, zero)."""
    d_in = shape[0]
    if group is not None and d_in % group:
        raise QuantError(f"group {group} does not divide the {d_in} input rows")
    lazy = group is not None and group < d_in and not act_order
    size = chunk_size(n, d_in)
    for c0 in range(0, n, size):
        w, g = get([min(i, n - 1) for i in range(c0, c0 + size)])
        q, s, z = _run_many(jnp.asarray(np.asarray(w, np.float32)), np.asarray(g, np.float32), bits=bits, group=group,
                            sym=sym, damp=float(damp), act_order=bool(act_order), lazy=lazy)
        del w, g
        k = min(size, n - c0)
        yield c0, c0 + k, q[:k].astype(jnp.int32), s[:k], z[:k]


def gptq_many(ws_NIO, grams_NII, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
              act_order: bool = False):
    """GPTQ of N same-shaped weights at once (setup and row loop vmapped over them, one compile per
    shape): (codes int32 [N, d_in, O] in natural row order, scale [N, G, O], zero [N, G, O])."""
    get = lambda idx: (np.stack([np.asarray(ws_NIO[i], np.float32) for i in idx]),
                       np.stack([np.asarray(grams_NII[i], np.float32) for i in idx]))
    outs = list(gptq_chunks(len(ws_NIO), np.shape(ws_NIO[0]), get, bits, group, sym, damp, act_order))
    return tuple(jnp.concatenate([o[i] for o in outs]) for i in (2, 3, 4))


def gptq(w_IO, gram_II, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
         act_order: bool = False):
    """(codes int32 [d_in, O] in natural row order, scale [G, O], zero [G, O]) of W."""
    q, s, z = gptq_many([w_IO], [gram_II], bits, group, sym, damp, act_order)
    return q[0], s[0], z[0]
