"""GPTQ as a careful numpy user would write it: the benchmark's baseline and the tests' independent
reference. Written from the paper (Frantar et al. 2022, Algorithm 1: the Cholesky form of H^-1 and
lazy batch updates in blocks of 128 rows) and METHODS.md §5's quantizer; it shares no code with
jaxshare.quant.

W [d_in, d_out] with y = x @ W, so GPTQ's "columns" are W's rows here. H = 2 X^T X; inputs that never
fire (zero diagonal) get H_ii = 1 and weight 0; act-order visits rows by decreasing diag(H); the
damping adds `damp` x mean(diag H) to the diagonal. Within a block a row's rounding error updates
only the block's later rows (a rank-1 update of at most 127 rows); the block's errors reach the
rows after it in one matmul.

Quantizer: symmetric: scale = max|w| / (2^(b-1) - 1), zero = 2^(b-1); asymmetric: the range
[min(w, 0), max(w, 0)] over 2^b - 1 steps, zero = round(-lo / scale); a zero scale becomes 1.
Codes clip(round(w / scale) + zero, 0, 2^b - 1). Groups of `group` input rows: without act-order a
group's scale and zero come from its rows as they stand when the group starts; with act-order (and
for one group per channel) from the original weights.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

BLOCK = 128


def _scale_zero(rows: np.ndarray, bits: int, sym: bool) -> tuple[np.ndarray, np.ndarray]:
    if sym:
        half = 2 ** (bits - 1)
        scale = np.abs(rows).max(axis=0) / (half - 1)
        zero = np.full_like(scale, half)
    else:
        lo, hi = np.minimum(rows.min(axis=0), 0), np.maximum(rows.max(axis=0), 0)
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
                 act_order: bool = False, block: int = BLOCK):
    """(codes int32 [d_in, d_out] in natural row order, scale [G, d_out], zero [G, d_out])."""
    w, u, order, _ = setup(w_IO, gram_II, damp, act_order)
    d, d_out = w.shape
    g = d if group is None else group
    n_groups = d // g
    static = act_order or group is None
    scale = np.zeros((n_groups, d_out), np.float32)
    zero = np.zeros((n_groups, d_out), np.float32)
    if static:  # every group's parameters from the original weights, in natural order
        for k in range(n_groups):
            scale[k], zero[k] = _scale_zero(w[k * g:(k + 1) * g], bits, sym)
    w = w[order]
    top = 2 ** bits - 1
    q = np.zeros((d, d_out), np.float32)
    step = block if static else max(block // g, 1) * g  # a group never straddles two blocks
    for b0 in range(0, d, step):
        b1 = min(b0 + step, d)
        wb, err = w[b0:b1].copy(), np.zeros((b1 - b0, d_out), np.float32)
        for i in range(b1 - b0):
            row = b0 + i
            if not static and row % g == 0:
                scale[row // g], zero[row // g] = _scale_zero(wb[i:i + g], bits, sym)
            k = order[row] // g if static else row // g
            q[row] = np.clip(np.round(wb[i] / scale[k]) + zero[k], 0, top)
            err[i] = (wb[i] - scale[k] * (q[row] - zero[k])) / u[row, row]
            wb[i + 1:] -= np.outer(u[row, row + 1:b1], err[i])
        w[b1:] -= u[b0:b1, b1:].T @ err
    codes = np.empty_like(q)
    codes[order] = q
    return codes.astype(np.int32), scale, zero
