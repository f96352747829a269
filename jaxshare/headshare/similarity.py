"""Unit similarity for head-wise sharing (paper Table 12), as normalized Gram matrices.

Every match function is a cosine of flattened unit weights. Cosines of concatenations are
sums of per-matrix dot products over sums of squared norms, so three raw Grams (q, k, v)
give all six functions: `qk` = (P_q + P_k) / sqrt(n_i n_j) with n = |q|^2 + |k|^2, and so on.
The combination is vmapped over match functions; the Grams are computed in row blocks (and
the blocks sharded over the devices of a mesh) so that only [rows, U] is live at a time. On
one device a row block only meets the columns of earlier units: half the flops of the Gram.
The search keeps, per unit, its best partner among units of earlier layers.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxshare.errors import JaxshareError
from jaxshare.core.bank import materialize
from jaxshare.core.params import Params
from jaxshare.headshare.names import MATCHES

# Which raw Grams (q, k, v) each scored function sums.
COEF = {"qk": (1, 1, 0), "q": (1, 0, 0), "k": (0, 1, 0), "v": (0, 0, 1), "qkv": (1, 1, 1)}


class MatchError(JaxshareError, ValueError):
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


def _sq_norms(feats, U: int) -> jax.Array:
    """[3, U] squared norms of each matrix's unit weights (zeros for matrices not needed)."""
    return jnp.stack([jnp.zeros((U,), jnp.float32) if F is None else
                      jnp.einsum("uf,uf->u", F, F, precision="highest", preferred_element_type=jnp.float32)
                      for F in feats])


def _block_scores(rows_feats, cols_feats, n_3R, n_3C, layer_R, layer_C, coef_M3, precision):
    """Masked cosine scores [M, R, C] of R row units against C column units."""
    R, C = layer_R.shape[0], layer_C.shape[0]
    G_3RC = jnp.stack([jnp.zeros((R, C), jnp.float32) if Fr is None else
                       jnp.einsum("rf,cf->rc", Fr, Fc, precision=precision, preferred_element_type=jnp.float32)
                       for Fr, Fc in zip(rows_feats, cols_feats)])

    def one(coef_3):  # one match function: sums of dot products over sums of squared norms
        dot = jnp.einsum("z,zrc->rc", coef_3, G_3RC)
        nr, nc = coef_3 @ n_3R, coef_3 @ n_3C
        return dot * jax.lax.rsqrt(jnp.maximum(nr[:, None] * nc[None, :], 1e-30))

    S_MRC = jax.vmap(one)(coef_M3)
    earlier = layer_C[None, :] < layer_R[:, None]  # partners sit in earlier layers only
    return jnp.where(earlier[None], S_MRC, -jnp.inf)


def _reduce(S_MRC):
    return jnp.max(S_MRC, axis=-1), jnp.argmax(S_MRC, axis=-1).astype(jnp.int32)


def _row_blocks(feats, U: int, block: int):
    """[(rows [s, e), prefix [0, e)) per matrix] for each row block, as slices of the features."""
    return [(tuple(None if F is None else F[s:min(U, s + block)] for F in feats),
             tuple(None if F is None else F[:min(U, s + block)] for F in feats)) for s in range(0, U, block)]


def _search_triangular(blocks, coef_M3, layer_of_U, precision: str):
    """One device: row block [s, e) only multiplies the columns [0, e), since its partners sit
    in earlier layers; that is about half the flops of the full Gram."""
    n_3U = jnp.concatenate([_sq_norms(rows, next(F for F in rows if F is not None).shape[0])
                            for rows, _ in blocks], axis=1)
    scores, partners, s = [], [], 0
    for rows, cols in blocks:
        e = next(F for F in cols if F is not None).shape[0]
        sc, pa = _reduce(_block_scores(rows, cols, n_3U[:, s:e], n_3U[:, :e], layer_of_U[s:e], layer_of_U[:e],
                                       coef_M3, precision))
        scores.append(sc)
        partners.append(pa)
        s = e
    return jnp.concatenate(scores, axis=1), jnp.concatenate(partners, axis=1)


# Host memory: the row blocks and prefixes come in as zero-copy views of the features, because
# XLA:CPU copies a slice that feeds a dot (at 7B shapes that is gigabytes per block).
_search_views = jax.jit(_search_triangular, static_argnames=("precision",))


def _on_host(feats) -> bool:
    return all(F is None or isinstance(F, np.ndarray) or
               (len(F.devices()) == 1 and next(iter(F.devices())).platform == "cpu") for F in feats)


def _search_rows(feats, coef_M3, layer_of_U, rows_R, block: int, precision: str):
    """(score [M, R], partner [M, R]) of the given rows against all units, block by block.
    Full-width blocks keep the work equal across devices."""
    n_3U = _sq_norms(feats, layer_of_U.shape[0])

    def one_block(idx_B):
        rows = tuple(None if F is None else F[idx_B] for F in feats)
        return _reduce(_block_scores(rows, feats, n_3U[:, idx_B], n_3U, layer_of_U[idx_B], layer_of_U,
                                     coef_M3, precision))

    score, partner = jax.lax.map(one_block, rows_R.reshape(-1, block))  # [nb, M, B]
    M = coef_M3.shape[0]
    return score.transpose(1, 0, 2).reshape(M, -1), partner.transpose(1, 0, 2).reshape(M, -1)


@partial(jax.jit, static_argnames=("block", "precision", "mesh"))
def _best_partners(feats, coef_M3, layer_of_U, rows_U, block: int, precision: str, mesh=None):
    if mesh is None:
        return _search_triangular(_row_blocks(feats, layer_of_U.shape[0], block), coef_M3, layer_of_U, precision)
    # Each device scores its own row blocks against all (replicated) unit features.
    axes = mesh.axis_names
    search = partial(_search_rows, block=block, precision=precision)
    sharded = jax.shard_map(search, mesh=mesh, in_specs=(P(), P(), P(), P(axes)),
                            out_specs=(P(None, axes), P(None, axes)))
    return sharded(feats, coef_M3, layer_of_U, rows_U)


def best_partners(params: Params, match: str = "qk", block: int = 512, precision: str = "highest",
                  mesh: Mesh | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per scored function f: {"score": [L, K], "partner": [L, K]} (flat unit id of the best
    unit in an earlier layer; layer-0 units have score -inf and partner -1)."""
    L, K = materialize(params).layers.attn.wk.shape[:2]
    return search_features(unit_features(params), L, K, match, block, precision, mesh)


def search_features(feats, L: int, K: int, match: str = "qk", block: int = 512, precision: str = "highest",
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
    if mesh is None and _on_host(feats):
        views = tuple(None if F is None else np.asarray(F) for F in feats)
        score, partner = _search_views(jax.device_put(_row_blocks(views, U, block)), coef, layer_of, precision)
    else:
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


@partial(jax.jit, static_argnames=("precision",))
def cosine(x_NF: jax.Array, precision: str = "highest") -> jax.Array:
    """Cosine similarity [..., N, N] of the rows of x [..., N, F] (leading axes batch)."""
    x = x_NF / jnp.maximum(jnp.linalg.norm(x_NF, axis=-1, keepdims=True), 1e-30)
    return jnp.einsum("...nf,...mf->...nm", x, x, precision=precision)


def head_features(params: Params, matrix: str = "q") -> jax.Array:
    """Flattened weights of every head [L, N, F]: N = H query heads for q and o (one per query head,
    not per KV group), N = K KV heads for k and v."""
    attn = materialize(params).layers.attn
    w = {"q": attn.wq, "k": attn.wk, "v": attn.wv, "o": attn.wo}.get(matrix)
    if w is None:
        raise MatchError(f"unknown matrix {matrix!r}; choose one of q, k, v, o")
    L, K = w.shape[:2]
    heads = K * w.shape[2] if matrix in ("q", "o") else K  # q, o: [L, K, G, ...]; k, v: [L, K, ...]
    return w.reshape(L, heads, -1)


def head_similarity(params: Params, matrix: str = "q") -> jax.Array:
    """Cosine [L*N, L*N] between the weights of every pair of heads (see head_features), in
    (layer, head) order: entry (l*N + i, m*N + j) compares head i of layer l with head j of layer m."""
    f = head_features(params, matrix)
    return cosine(f.reshape(-1, f.shape[-1]))


def numpy_reference(params: Params, func: str) -> np.ndarray:
    """Cosines by the definition, for tests: concatenate the flattened matrices, normalize, dot."""
    q, k, v = (np.asarray(F, np.float64) for F in unit_features(params))
    parts = [F for c, F in zip(COEF[func], (q, k, v)) if c]
    X = np.concatenate(parts, axis=1)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return X @ X.T
