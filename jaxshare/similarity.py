"""Unit similarity for head-wise sharing (paper Table 12), as normalized Gram matrices.

Every match function is a cosine of flattened unit weights. Cosines of concatenations are
sums of per-matrix dot products over sums of squared norms, so three raw Grams (q, k, v)
give all six functions: `qk` = (P_q + P_k) / sqrt(n_i n_j) with n = |q|^2 + |k|^2, and so on.
The combination is vmapped over match functions; the Grams are computed in row blocks (and
the blocks sharded over the devices of a mesh) so that only [rows, U] is live at a time.
The search keeps, per unit, its best partner among units of earlier layers.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxshare.bank import materialize
from jaxshare.params import Params

MATCHES = ("qk", "q", "k", "v", "qkv", "separate")
# Which raw Grams (q, k, v) each scored function sums.
COEF = {"qk": (1, 1, 0), "q": (1, 0, 0), "k": (0, 1, 0), "v": (0, 0, 1), "qkv": (1, 1, 1)}


class MatchError(ValueError):
    pass


def check_match(match: str) -> None:
    if match not in MATCHES:
        raise MatchError(f"unknown match function {match!r}; choose one of {', '.join(MATCHES)}")


def scored_functions(match: str) -> tuple[str, ...]:
    """The cosine functions a match needs: `separate` scores q, k and v on their own."""
    check_match(match)
    return ("q", "k", "v") if match == "separate" else (match,)


def unit_features(params: Params) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Flattened unit weights [U, F_m] of q, k, v, with U = L*K in (layer, group) order."""
    attn = materialize(params).layers.attn
    L, K = attn.wk.shape[:2]
    return tuple(w.reshape(L * K, -1) for w in (attn.wq, attn.wk, attn.wv))


def _needed(funcs) -> tuple[bool, bool, bool]:
    return tuple(any(COEF[f][i] for f in funcs) for i in range(3))


def _block_scores(rows_idx_R, feats, coef_M3, layer_of_U, precision):
    """Masked cosine scores [M, R, U] of R rows against all U units."""
    U = layer_of_U.shape[0]
    grams, norms = [], []
    for F in feats:  # the needed matrices only; absent ones contribute zeros
        if F is None:
            grams.append(jnp.zeros((rows_idx_R.shape[0], U), jnp.float32))
            norms.append(jnp.zeros((U,), jnp.float32))
            continue
        Fr = F[rows_idx_R]
        grams.append(jnp.einsum("rf,uf->ru", Fr, F, precision=precision, preferred_element_type=jnp.float32))
        norms.append(jnp.einsum("uf,uf->u", F, F, precision=precision, preferred_element_type=jnp.float32))
    G_3RU, n_3U = jnp.stack(grams), jnp.stack(norms)

    def one(coef_3):
        dot = jnp.einsum("c,cru->ru", coef_3, G_3RU)
        n_U = jnp.einsum("c,cu->u", coef_3, n_3U)
        return dot * jax.lax.rsqrt(jnp.maximum(n_U[rows_idx_R][:, None] * n_U[None, :], 1e-30))

    S_MRU = jax.vmap(one)(coef_M3)
    earlier = layer_of_U[None, :] < layer_of_U[rows_idx_R][:, None]  # partners sit in earlier layers only
    return jnp.where(earlier[None], S_MRU, -jnp.inf)


def _search_rows(feats, coef_M3, layer_of_U, rows_R, block: int, precision: str):
    """(score [M, R], partner [M, R]) of the given rows, one block of rows at a time."""
    def one_block(idx_B):
        S = _block_scores(idx_B, feats, coef_M3, layer_of_U, precision)
        return jnp.max(S, axis=-1), jnp.argmax(S, axis=-1).astype(jnp.int32)

    score, partner = jax.lax.map(one_block, rows_R.reshape(-1, block))  # [nb, M, B]
    M = coef_M3.shape[0]
    return score.transpose(1, 0, 2).reshape(M, -1), partner.transpose(1, 0, 2).reshape(M, -1)


@partial(jax.jit, static_argnames=("block", "precision", "mesh"))
def _best_partners(feats, coef_M3, layer_of_U, rows_U, block: int, precision: str, mesh=None):
    search = partial(_search_rows, block=block, precision=precision)
    if mesh is None:
        return search(feats, coef_M3, layer_of_U, rows_U)
    # Each device scores its own row blocks against all (replicated) unit features.
    axes = mesh.axis_names
    sharded = jax.shard_map(search, mesh=mesh, in_specs=(P(), P(), P(), P(axes)),
                            out_specs=(P(None, axes), P(None, axes)))
    return sharded(feats, coef_M3, layer_of_U, rows_U)


def best_partners(params: Params, match: str = "qk", block: int = 256, precision: str = "highest",
                  mesh: Mesh | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per scored function f: {"score": [L, K], "partner": [L, K]} (flat unit id of the best
    unit in an earlier layer; layer-0 units have score -inf and partner -1)."""
    L, K = materialize(params).layers.attn.wk.shape[:2]
    return search_features(unit_features(params), L, K, match, block, precision, mesh)


def search_features(feats, L: int, K: int, match: str = "qk", block: int = 256, precision: str = "highest",
                    mesh: Mesh | None = None) -> dict[str, dict[str, np.ndarray]]:
    """`best_partners` over flattened unit weights (q, k, v), each [L*K, F_m]; entries a match
    does not need may be None (at scale, only the needed matrices are ever materialized)."""
    funcs = scored_functions(match)
    U = L * K
    feats = tuple(F if need else None for F, need in zip(feats, _needed(funcs)))
    coef = jnp.asarray([COEF[f] for f in funcs], jnp.float32)
    layer_of = jnp.repeat(jnp.arange(L, dtype=jnp.int32), K)
    block = max(1, min(block, U))
    n_dev = 1 if mesh is None else mesh.size
    padded = -(-U // (block * n_dev)) * block * n_dev
    rows = jnp.minimum(jnp.arange(padded, dtype=jnp.int32), U - 1)  # padding repeats the last row
    if mesh is not None:  # place inputs as the shard_map expects (works for Auto and Explicit meshes)
        rep = NamedSharding(mesh, P())
        rows = jax.device_put(rows, NamedSharding(mesh, P(mesh.axis_names)))
        feats, coef, layer_of = jax.device_put((feats, coef, layer_of), rep)
    score, partner = _best_partners(feats, coef, layer_of, rows, block, precision, mesh)
    score, partner = np.asarray(score)[:, :U], np.asarray(partner)[:, :U]
    return {f: {"score": score[i].reshape(L, K),
                "partner": np.where(np.isfinite(score[i]), partner[i], -1).reshape(L, K).astype(np.int32)}
            for i, f in enumerate(funcs)}


@partial(jax.jit, static_argnames=("func", "precision"))
def similarity_matrix(params: Params, func: str = "qk", precision: str = "highest") -> jax.Array:
    """The full cosine matrix [U, U] of one function (for plots and small models), unmasked."""
    feats = unit_features(params)
    coef = COEF[func]
    dot = sum(c * jnp.einsum("uf,vf->uv", F, F, precision=precision) for c, F in zip(coef, feats) if c)
    n = jnp.diagonal(dot)
    return dot * jax.lax.rsqrt(jnp.maximum(n[:, None] * n[None, :], 1e-30))


def numpy_reference(params: Params, func: str) -> np.ndarray:
    """Cosines by the definition, for tests: concatenate the flattened matrices, normalize, dot."""
    q, k, v = (np.asarray(F, np.float64) for F in unit_features(params))
    parts = [F for c, F in zip(COEF[func], (q, k, v)) if c]
    X = np.concatenate(parts, axis=1)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return X @ X.T
