"""Basis Sharing (arXiv 2410.03765, docs/methods.md §2): whitening, group SVD, rank, representation.

A compressed weight type (q, k, v, o, up, gate, down) becomes `Factored(basis, coef)`: one basis
B [d_in, k] per group of consecutive layers, held in a `Bank` (rows [groups, d_in, k], index
[L] layer -> group) and gathered inside the layer scan, and per-layer coefficients C_l
[L, k, d_out]. A layer computes y = (x @ B) @ C_l. Weights are handled as W (d_in, d_out) with
y = x @ W, so the calibration loss ||X W - X B C||_F is what the whitening minimizes.
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.basis.names import METHODS
from jaxshare.errors import JaxshareError
from jaxshare.core.axes import layout_axes
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import axes_of, dense_of, frozen_of
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import TYPES, dims, from_2d, get_type, matmul_2d, set_types, to_2d  # noqa: F401 (re-exported)
from jaxshare.core.params import replace_leaves

Array = jax.Array


class BasisError(JaxshareError, ValueError):
    """Bad Basis Sharing input (ratio, type names, group size)."""


def default_types(cfg: ModelConfig) -> tuple[list[str], list[str]]:
    """(shared, private) per family, as the authors' code chooses them (docs/methods.md §2)."""
    present = [t for t in TYPES if t != "gate" or cfg.gated_mlp]
    if cfg.family == "gpt2":  # c_attn -> q, k, v (split in our params), c_fc -> up, attn.c_proj -> o
        shared = ["q", "k", "v", "up", "o"]
    elif cfg.n_kv_heads < cfg.n_heads:  # GQA: k and v are too narrow to share well
        shared = ["q", "up", "gate"]
    else:
        shared = ["q", "k", "v", "up", "gate"]
    shared = [t for t in shared if t in present]
    return shared, [t for t in present if t not in shared]


# ---------------------------------------------------------------- representation

@jax.tree_util.register_dataclass
@dataclass
class Factored:
    """W_l = B[index_l] @ C_l for a weight leaf. Before the scan basis is a Bank and coef [L, k, d_out];
    inside it (after split_banks' rebuild) basis is [d_in, k] and coef [k, d_out].
    A `Compressed` kind (jaxshare.core.compressed) with manifest `basis` (jaxshare.basis.io)."""
    basis: Bank | Array
    coef: Array
    layout: str = field(metadata=dict(static=True))  # the type name: how heads fold into d_in/d_out
    leaf_shape: tuple = field(metadata=dict(static=True))  # the dense per-layer leaf shape

    def logical_axes(self, dense_axes: tuple) -> "Factored":
        """basis (units or layers, d_in, rank), coef (layers, rank, d_out); d_in / d_out named by
        the type's layout (core.matrices.TYPES)."""
        d_in, d_out = layout_axes(self.layout, dense_axes)
        return dataclasses.replace(self, basis=axes_of(self.basis, ("layers", d_in, "rank")),
                                   coef=axes_of(self.coef, ("layers", "rank", d_out)))

    def frozen(self) -> "Factored":
        return dataclasses.replace(self, basis=frozen_of(self.basis), coef=frozen_of(self.coef))

    def dense(self) -> Array:
        return from_2d(self.layout, dense_of(self.basis) @ dense_of(self.coef), self.leaf_shape)

    def apply(self, x, dense_fn=None) -> Array:
        """y = (x @ B) @ C for one layer, in the type's 2-D view (core.matrices.matmul_2d)."""
        return matmul_2d(self.layout, x, lambda x2: (x2 @ dense_of(self.basis).astype(x.dtype))
                         @ dense_of(self.coef).astype(x.dtype), self.leaf_shape)


# ---------------------------------------------------------------- rank and groups

def rank(n: int, d_in: int, d_out: int, ratio: float) -> int:
    """The authors' rank for a group of n layers at compression ratio CR."""
    return int(math.floor(n * d_in * d_out * (1 - ratio) / (d_in + n * d_out)))


def type_rank(n_layers: int, n_groups: int, d_in: int, d_out: int, ratio: float) -> int:
    """One rank for every group of a type so that the type's stored size meets the budget:
    n_groups * d_in * k + n_layers * k * d_out <= (1 - CR) * n_layers * d_in * d_out.
    Equals `rank(n, ...)` when n divides n_layers; with a remainder group it keeps the ratio."""
    return int(math.floor((1 - ratio) * n_layers * d_in * d_out / (n_groups * d_in + n_layers * d_out)))


def groups_of(n_layers: int, n: int) -> list[list[int]]:
    """Consecutive groups of n layers; the remainder forms a last, smaller group."""
    return [list(range(i, min(i + n, n_layers))) for i in range(0, n_layers, n)]


def validate(cfg: ModelConfig, ratio: float, group_size: int, method: str,
             shared: list[str] | None, private: list[str] | None) -> tuple[list[str], list[str]]:
    """Check the request before any compute; (shared, private) type lists."""
    if method not in METHODS:
        raise BasisError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not (0.0 < ratio < 1.0):
        raise BasisError(f"--ratio must be strictly between 0 and 1, got {ratio}")
    if group_size < 1:
        raise BasisError(f"--group-size must be at least 1, got {group_size}")
    d_shared, d_private = default_types(cfg)
    present = set(d_shared) | set(d_private)
    for name, lst in (("--shared", shared), ("--private", private)):
        for t in lst or []:
            if t not in present:
                raise BasisError(f"{name}: unknown matrix type {t!r} for {cfg.family}; "
                                 f"known: {', '.join(x for x in TYPES if x in present)}")
    if shared is None and private is None:
        shared, private = d_shared, d_private
    elif shared is None:
        shared = [t for t in TYPES if t in present and t not in private]
    elif private is None:
        private = [t for t in TYPES if t in present and t not in shared]
    both = set(shared) & set(private)
    if both:
        raise BasisError(f"types both shared and private: {', '.join(sorted(both))}")
    if method != "basis":  # SVD-LLM and plain SVD: every type alone (n = 1)
        private, shared = [t for t in TYPES if t in set(shared) | set(private)], []
    return shared, private


# ---------------------------------------------------------------- whitening and SVD

def whitening(sxx: np.ndarray) -> tuple[np.ndarray, bool]:
    """(S, fell_back): S = cholesky(Sxx)^T (upper), so S^T S = Sxx and ||X D||_F = ||S D||_F.
    A non-PD Sxx gets (max(-lambda_min, 0) + eps) I added, eps = 1e-6 of the mean diagonal."""
    sxx = np.asarray(sxx, np.float64)
    low = _cholesky(sxx)
    if low is not None:
        return low.T, False
    eps = 1e-6 * max(float(np.mean(np.abs(np.diag(sxx)))), 1e-30)
    # A gram of fewer tokens than its width (a 1.5B model's 8960-wide MLP input from 2k
    # calibration tokens) is PSD but singular: eps alone makes it PD, one Cholesky (6 s at
    # 8960) instead of an eigvalsh (40 s) per layer. Only a gram with a truly negative
    # eigenvalue pays for the eigvalsh.
    low = _cholesky(sxx + eps * np.eye(len(sxx)))
    if low is not None:
        return low.T, True
    shift = -float(np.linalg.eigvalsh(sxx)[0]) + eps
    for _ in range(20):  # rounding can leave it just short of PD; grow the shift until it holds
        low = _cholesky(sxx + shift * np.eye(len(sxx)))
        if low is not None:
            return low.T, True
        shift = 2 * shift + eps
    raise BasisError("could not whiten: Sxx stays non-positive-definite after shifting")


def _cholesky(a: np.ndarray) -> np.ndarray | None:
    try:
        low = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return None
    return low if np.all(np.isfinite(low)) else None


def group_factor(ws: list[np.ndarray], s: np.ndarray | None, k: int, path: str = "auto", error: bool = False):
    """Shared basis B [d_in, k] and coefficients [C_l (k, d_out)] of W_l (d_in, d_out), in float64.
    error: also return (||S (W - B C)||^2, ||S W||^2) over the group, read off the spectrum the
    factorization already computed (the discarded and all squared singular values): with
    S^T S = Sxx that is whitened_loss's pair without its two d_in^2 d_out products per layer.

    concat: svd(S [W_1 .. W_n]) = U Sig V^T, B = S^-1 U_k Sig_k, C = V_k^T split by layer.
    eig: eigh(S (sum W_l W_l^T) S^T) = U Sig^2 U^T gives the same U_k, Sig_k without the
    [d_in, n d_out] concatenation; then C_l = Sig_k^-1 U_k^T S W_l.
    """
    d_in, d_out = ws[0].shape
    n = len(ws)
    if path == "auto":
        path = "eig" if n * d_out > 2 * d_in else "concat"
    sw = (lambda w: w) if s is None else (lambda w: s @ w)
    if path == "concat":
        u, sig, vt = np.linalg.svd(np.concatenate([sw(np.asarray(w, np.float64)) for w in ws], axis=1),
                                   full_matrices=False)
        u_k, sig_k, coef = u[:, :k], sig[:k], vt[:k]
        energy = sig ** 2
        coefs = [coef[:, i * d_out:(i + 1) * d_out] for i in range(n)]
    else:
        m = np.zeros((d_in, d_in))
        for w in ws:  # one layer at a time: never the concatenation
            a = sw(np.asarray(w, np.float64))
            m += a @ a.T
        lam, u = np.linalg.eigh(m)
        order = np.argsort(lam)[::-1]
        energy = np.clip(lam[order], 0.0, None)
        order = order[:k]
        u_k, sig_k = u[:, order], np.sqrt(np.clip(lam[order], 0.0, None))
        inv = np.where(sig_k > sig_k[:1] * 1e-12, 1.0 / np.maximum(sig_k, 1e-300), 0.0)
        coefs = [inv[:, None] * (u_k.T @ sw(np.asarray(w, np.float64))) for w in ws]
    b = u_k * sig_k
    if s is not None:
        # deferred: scipy.linalg costs ~0.2 s to import, and the CLI's parser imports this module
        from scipy.linalg import solve_triangular

        # S^-1 U_k Sig_k; S is upper triangular: a triangular solve (n^2 k) instead of an LU
        # (2/3 n^3: 0.5 TFLOP at a 1.5B model's MLP width 8960, per group)
        b = solve_triangular(s, b, lower=False)
    if error:
        return b, coefs, (float(np.sum(energy[k:])), float(np.sum(energy)))
    return b, coefs


def whitened_loss(ws, sxx, b, coefs) -> float:
    """||X (W - B C)||_F over a group, from Sxx = X^T X."""
    tot = 0.0
    for w, c in zip(ws, coefs):
        d = np.asarray(w, np.float64) - b @ c
        tot += float(np.sum(d * (np.asarray(sxx, np.float64) @ d)))
    return math.sqrt(max(tot, 0.0))
