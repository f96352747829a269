"""The PostShare weight penalty (paper Eq. 4, docs/methods.md §1):

    L_w = (1/N) * sum over selected pairs (i, j) of sum over m in {q, k, v} of ||W^m_i - W^m_j||_F

with the non-squared Frobenius norm. Pairs are (selected unit, its DirectShare partner), fixed
on the starting model. The pair rows are gathered in one shot per matrix (no Python loop over
pairs inside the step), so the cost is one gather + one reduction per matrix type.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.headshare.sharing import FIELDS, MATRICES


def pairs_from_plan(decision: dict) -> dict[str, np.ndarray]:
    """{m: int32 [N, 2]} of flat unit ids (unit, partner) per matrix type, from `directshare.plan`.

    The pair is the unit and its own partner (the paper's pairing), not its forest root: after
    tying both read the root, and chains converge through the intermediate units.
    """
    out = {}
    for m in MATRICES:
        d = decision["by_matrix"][m]
        sel = np.asarray(d["selected"]).ravel()
        partner = np.asarray(d["partner"]).ravel()
        units = np.flatnonzero(sel).astype(np.int32)
        out[m] = np.stack([units, partner[units].astype(np.int32)], axis=1) if len(units) else np.zeros((0, 2), np.int32)
    return out


def safe_norm(sq: jax.Array) -> jax.Array:
    """sqrt(sq) with gradient 0 at sq == 0. ||x|| has no derivative at x = 0 (the naive one is
    0/0 = NaN, which would poison every weight once a pair is exactly tied); 0 is a valid
    subgradient. The double `where` keeps the NaN branch out of the backward pass."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def pair_distances(params, pairs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{m: [N]} Frobenius distances ||W^m_i - W^m_j||_F of each pair, in fp32, from dense params
    (wq [L,K,G,D,d], wk/wv [L,K,D,d])."""
    attn = params.layers.attn
    out = {}
    for m in MATRICES:
        w = getattr(attn, FIELDS[m][0])
        flat = w.reshape((-1,) + w.shape[2:]).astype(jnp.float32)  # [L*K, ...]: unit rows
        p = jnp.asarray(pairs[m])
        diff = flat[p[:, 0]] - flat[p[:, 1]]  # one gather per side for all pairs at once
        out[m] = safe_norm(jnp.sum(jnp.square(diff.reshape(diff.shape[0], -1)), axis=-1))
    return out


def weight_penalty(params, pairs: dict[str, jax.Array]) -> jax.Array:
    """L_w (a scalar): mean over the N pairs of the summed q, k, v distances. 0 without pairs."""
    n = int(np.asarray(pairs[MATRICES[0]]).shape[0])
    if n == 0:
        return jnp.zeros((), jnp.float32)
    d = pair_distances(params, pairs)
    return sum(jnp.sum(d[m]) for m in MATRICES) / n
