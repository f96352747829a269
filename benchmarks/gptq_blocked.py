"""GPTQ as a careful numpy user would write it: the benchmark's baseline and the tests' independent
reference. Written from the paper (Frantar et al. 2022, Algorithm 1: the Cholesky form of H^-1 and
lazy batch updates in blocks of 128 rows) and METHODS.md §5's quantizer; it shares no code with
jaxshare.quant.

W [d_in, d_out] with y = x @ W, so GPTQ's "columns" are W's rows here. H = 2 X^T X; inputs that never
fire (zero diagonal) get H_ii = 1 and weight 0; act-order visits rows by decreasing diag(H); the
damping adds `damp` x mean(diag H) to the diagonal. Lazy batch updates on two levels, the same
arrangement the jit path uses: a row's rounding error updates only the later rows of its
sub-block of 16 (a rank-1 update), a sub-block's errors reach the rest of its block of 128 in one
matmul, and a block's the rows after it in one matmul. Same-shaped weights are processed together
by numpy broadcasting (the jit path vmaps them).

Quantizer: symmetric: scale = max|w| / (2^(b-1) - 1), zero = 2^(b-1); asymmetric: the range
[min(w, 0), max(w, 0)] over 2^b - 1 steps, zero = round(-lo / scale); a zero scale becomes 1.
Codes clip(round(w / scale) + zero, 0, 2^b - 1). Groups of `group` input rows: without act-order a
group's scale and zero come from its rows as they stand when the group starts; with act-order (and
for one group per channel) from the original weights.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg

BLOCK = 128
SUB = 16


def _scale_zero(rows: np.ndarray, bits: int, sym: bool) -> tuple[np.ndarray, np.ndarray]:
    if sym:
        half = 2 ** (bits - 1)
        scale = np.abs(rows).max(axis=-2) / (half - 1)
        zero = np.full_like(scale, half)
    else:
        lo, hi = np.minimum(rows.min(axis=-2), 0), np.maximum(rows.max(axis=-2), 0)
        scale = (hi - lo) / (2 ** bits - 1)
        zero = np.round(-lo / np.where(scale > 0, scale, 1))
    return np.where(scale > 0, scale, 1).astype(np.float32), zero.astype(np.float32)


def setup(w_IO, gram_II, damp: float = 0.01, act_order: bool = False):
    """(W with dead inputs zeroed [d_in, d_out], U [d_in, d_in] upper with H^-1 = U^T U in processing
    order, the processing order [d_in], the dead inputs [d_in] bool)."""
    w = np.array(w_IO, np.float32)
    d = len(w)
    h = 2 * np.asarray(gram_II, np.float32)
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[dead] = 0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(d)
    h = h[np.ix_(order, order)]
    h[np.diag_indices(d)] += damp * np.mean(np.diag(h))
    hinv = scipy.linalg.cho_solve(scipy.linalg.cho_factor(h), np.eye(d, dtype=np.float32))
    return w, scipy.linalg.cholesky(hinv, lower=False).astype(np.float32), order, dead


def gptq_blocked(w_IO, gram_II, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
                 act_order: bool = False):
    """(codes int32 [d_in, d_out] in natural row order, scale [G, d_out], zero [G, d_out])."""
    q, s, z = gptq_blocked_many(np.asarray(w_IO)[None], np.asarray(gram_II)[None], bits, group, sym, damp, act_order)
    return q[0], s[0], z[0]


def gptq_blocked_many(w_NIO, gram_NII, bits: int, group: int | None, sym: bool = True, damp: float = 0.01,
                      act_order: bool = False, block: int = BLOCK, sub: int = SUB):
    """GPTQ of N same-shaped weights at once, numpy broadcasting over N (as the jit path vmaps):
    (codes int32 [N, d_in, d_out], scale [N, G, d_out], zero [N, G, d_out])."""
    parts = [setup(w, h, damp, act_order) for w, h in zip(w_NIO, gram_NII)]
    w, u, order = (np.stack([p[i] for p in parts]) for i in range(3))
    n, d, d_out = w.shape
    g = d if group is None else group
    n_groups = d // g
    static = act_order or group is None
    scale = np.zeros((n, n_groups, d_out), np.float32)
    zero = np.zeros((n, n_groups, d_out), np.float32)
    if static:  # every group's parameters from the original weights, in natural order
        for k in range(n_groups):
            scale[:, k], zero[:, k] = _scale_zero(w[:, k * g:(k + 1) * g], bits, sym)
    w = np.take_along_axis(w, order[:, :, None], axis=1)
    top = 2 ** bits - 1
    q = np.zeros_like(w)
    step = block if static else max(block // g, 1) * g  # a group never straddles two blocks
    sub = math.gcd(step, sub, step if static else g)  # a lazy group starts on a sub-block boundary
    every = np.arange(n)
    for b0 in range(0, d, step):
        b1 = min(b0 + step, d)
        wb, err = w[:, b0:b1].copy(), np.zeros((n, b1 - b0, d_out), np.float32)
        # Two levels, as the jit path: a row's rank-1 update touches only its sub-block; a
        # sub-block's errors reach the rest of the block, and a block's the later rows, in matmuls.
        for s0 in range(0, b1 - b0, sub):
            s1 = min(s0 + sub, b1 - b0)
            for i in range(s0, s1):
                row = b0 + i
                if not static and row % g == 0:
                    scale[:, row // g], zero[:, row // g] = _scale_zero(wb[:, i:i + g], bits, sym)
                k = order[:, row] // g if static else np.full(n, row // g)
                s, z = scale[every, k], zero[every, k]
                q[:, row] = np.clip(np.round(wb[:, i] / s) + z, 0, top)
                err[:, i] = (wb[:, i] - s * (q[:, row] - z)) / u[:, row, row][:, None]
                wb[:, i + 1:s1] -= u[:, row, row + 1:b0 + s1][:, :, None] * err[:, i][:, None, :]
            wb[:, s1:] -= np.swapaxes(u[:, b0 + s0:b0 + s1, b0 + s1:b1], 1, 2) @ err[:, s0:s1]
        w[:, b1:] -= np.swapaxes(u[:, b0:b1, b1:], 1, 2) @ err
    codes = np.empty_like(q)
    np.put_along_axis(codes, order[:, :, None], q, axis=1)
    return codes.astype(np.int32), scale, zero
