"""Least-squares compensation of an output projection on the kept input channels (FLAP, SlimGPT).

With X the calibration inputs of a projection W [n, D] (y = X W) and K the kept channels, the W'
[|K|, D] that makes X_K W' closest to X W over the calibration tokens solves the normal equations
G_KK W' = G_K: W, G = X^T X the calibration gram: the removed channels' contribution is carried by
the kept channels they correlate with. The ridge is relative to the mean eigenvalue of G_KK, as
data-aware head sharing does (headshare/datashare.py): it conditions the solve and changes the fit
at ~1e-6 relative. The same gram gives the relative reconstruction error of any W' in closed form.
"""
from __future__ import annotations

import numpy as np

RIDGE = 1e-6  # relative to the mean eigenvalue of G_KK (datashare's choice)


def _ridge_(a: np.ndarray) -> np.ndarray:
    """a + lam I, in place on a's diagonal: the same numbers as a + lam * np.eye(n) (the
    off-diagonal adds 0.0) without two more n x n float64 arrays (0.8 GB at 7168 kept channels)."""
    lam = RIDGE * max(float(np.trace(a)) / a.shape[0], np.finfo(np.float64).tiny)
    a.flat[::a.shape[0] + 1] += lam
    return a


def refit(w_ND: np.ndarray, gram_NN: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[|keep|, D] float64: the least-squares W' on the kept rows (one layer)."""
    g = np.asarray(gram_NN, np.float64)
    w = np.asarray(w_ND, np.float64)
    return np.linalg.solve(_ridge_(g[np.ix_(keep, keep)]), g[keep] @ w)


def rel_error(w_ND: np.ndarray, gram_NN: np.ndarray, keep: np.ndarray, w_KD: np.ndarray) -> float:
    """||X W - X_K W'||^2 / ||X W||^2 on the calibration tokens, from the gram alone (one layer)."""
    g = np.asarray(gram_NN, np.float64)
    w, wk = np.asarray(w_ND, np.float64), np.asarray(w_KD, np.float64)
    full = float(np.sum(w * (g @ w)))
    cross = float(np.sum(wk * (g[keep] @ w)))
    kept = float(np.sum(wk * (g[np.ix_(keep, keep)] @ wk)))
    return max(full - 2 * cross + kept, 0.0) / max(full, np.finfo(np.float64).tiny)
