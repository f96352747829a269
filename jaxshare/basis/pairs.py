"""Which layers share a basis well: the Frobenius loss of sharing one basis between two layers
(paper Fig. 4), per matrix type, from the whitened eigen-spectrum of the pair.

For layers i, j of a type: Sxx = X_i^T X_i + X_j^T X_j, S = whitening(Sxx), M = S (W_i W_i^T +
W_j W_j^T) S^T. The best shared rank-k basis leaves the eigenvalues of M beyond the top k, so the
loss ||X (W - B C)||_F over the pair is sqrt(sum of the discarded eigenvalues) (no SVD needed).
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
from tqdm.auto import tqdm

from jaxshare.basis.factor import TYPES, to_2d, dims, get_type, rank, whitening
from jaxshare.plots import heatmap
from jaxshare.storage.atomic import atomic_output


def pair_losses(params, cfg, grams: dict, ratio: float = 0.2, types=None, progress: bool = True) -> dict:
    """{type: {"rank", "loss" [L, L], "rel_loss" [L, L]}} (lists; the diagonal is the n = 1 loss)."""
    L = cfg.n_layers
    types = [t for t in (types or TYPES) if get_type(params.layers, t) is not None]
    pairs = list(itertools.combinations_with_replacement(range(L), 2))
    out = {}
    bar = tqdm(total=len(types) * len(pairs), desc="basis pairs", unit="pair", disable=not progress)
    for t in types:
        d_in, d_out = dims(cfg, t)
        w = np.asarray(to_2d(t, get_type(params.layers, t)), np.float64)
        g = np.asarray(grams[TYPES[t][1]], np.float64)
        k2, k1 = rank(2, d_in, d_out, ratio), rank(1, d_in, d_out, ratio)
        loss, rel = np.zeros((L, L)), np.zeros((L, L))
        for i, j in pairs:
            layers = [i] if i == j else [i, j]
            s, _ = whitening(sum(g[x] for x in layers))
            m = sum((s @ w[x]) @ (s @ w[x]).T for x in layers)
            lam = np.clip(np.linalg.eigvalsh(m)[::-1], 0.0, None)  # descending
            k = k1 if i == j else k2
            tail, total = float(lam[k:].sum()), float(lam.sum())
            loss[i, j] = loss[j, i] = math.sqrt(tail)
            rel[i, j] = rel[j, i] = math.sqrt(tail / total) if total > 0 else 0.0
            bar.update()
        out[t] = {"rank_pair": k2, "rank_single": k1, "loss": loss.tolist(), "rel_loss": rel.tolist()}
    bar.close()
    return out


def summarize(res: dict) -> dict:
    """Mean relative loss per type: adjacent pairs (i, i+1), all pairs i < j, and alone (i, i)."""
    out = {}
    for t, r in res.items():
        a = np.asarray(r["rel_loss"])
        iu = np.triu_indices(len(a), 1)
        out[t] = {"adjacent": float(np.mean(np.diag(a, 1))), "all_pairs": float(np.mean(a[iu])),
                  "alone": float(np.mean(np.diag(a)))}
    return out


def write_pairs(out_dir, res: dict, info: dict, overwrite: bool = False) -> dict:
    """basis_pairs.json + basis_pairs.png, written atomically into out_dir."""
    obj = {**info, "summary": summarize(res), "types": res}
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "basis_pairs.json").write_text(json.dumps(obj))
        heatmap({f"{t} (pair rank {r['rank_pair']})": r["rel_loss"] for t, r in res.items()}, tmp / "basis_pairs.png",
                f"{info.get('model', '')}: relative whitened Frobenius loss of sharing one basis between two layers",
                label="relative loss")
    return obj
