"""Compress a model with Basis Sharing / SVD-LLM / plain SVD; manifest, accounting, native structure.

Every listed type is factorized at the same ratio: shared types in consecutive groups of n
layers (one basis per group), private types alone (n = 1, SVD-LLM style whitened SVD), as the
authors' code does for o and down. The manifest (ranks, groups, method) is enough to rebuild
the abstract tree that orbax restores (`basis.io.abstract_structure`, through `Factored.abstract`).
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.errors import UsageError
from jaxshare.core.bank import Bank
from jaxshare.basis.factor import (TYPES, Factored, to_2d, dims, get_type, group_factor, groups_of, set_types,
                            type_rank, validate, whitened_loss, whitening)
from jaxshare.core.config import ModelConfig
from jaxshare.core.params import count_params, param_bytes
from jaxshare.core import host


def compress(params, cfg: ModelConfig, grams: dict | None, ratio: float, group_size: int = 2,
             method: str = "basis", shared=None, private=None, path: str = "auto",
             ranks: dict | None = None, progress: bool = True, consume: bool = False):
    """(compressed params, manifest, report). grams: calibrate.calibrate's {input: [L, d, d]}
    (unused by method "svd"); only the layers of one group are read at a time. ranks: {type: k}
    overrides the ratio's rank (tests: full rank). Float64 is used for one group at a time.
    consume: delete each dense leaf's buffer once its type is factorized (the caller's `params`
    become unusable), so the dense and the factorized weights of a type never coexist."""
    t0 = time.perf_counter()
    dense_counts = {"params_before": count_params(params), "bytes_before": param_bytes(params)}
    shared, private = validate(cfg, ratio, group_size, method, shared, private)
    if method != "svd" and grams is None:
        raise UsageError(f"method {method!r} needs calibration grams")
    L = cfg.n_layers
    new, types, fallbacks = {}, {}, 0
    todo = [t for t in TYPES if t in shared or t in private]
    for t in tqdm(todo, desc="group SVD", unit="type", leave=False, disable=not progress):
        leaf = get_type(params.layers, t)
        d_in, d_out = dims(cfg, t)
        n = group_size if t in shared else 1
        groups = groups_of(L, n)
        k = (ranks or {}).get(t) or type_rank(L, len(groups), d_in, d_out, ratio)
        k = max(1, min(k, d_in, min(len(g) for g in groups) * d_out))
        dt = leaf.dtype
        rows = host.empty((len(groups), d_in, k), dt)  # filled a group at a time, already in the params' dtype
        coefs = host.empty((L, k, d_out), dt)
        loss2, ref2 = 0.0, 0.0
        for gi, g in enumerate(groups):
            w_g = [np.asarray(to_2d(t, leaf[i]), np.float64) for i in g]  # [d_in, d_out] per layer, this group only
            s = sxx = None
            fell = False
            if method != "svd":
                sxx = np.sum(np.asarray(grams[TYPES[t][1]][g], np.float64), axis=0)
                s, fell = whitening(sxx)
                fallbacks += int(fell)
            b, cs, (l2, r2) = group_factor(w_g, s, k, path, error=True)
            rows[gi] = b
            for i, c in zip(g, cs):
                coefs[i] = c
            if sxx is not None:  # calibration loss ||X (W - BC)|| relative to ||X W||
                if fell:  # S^T S = Sxx + shift I: the spectrum's pair would be in the shifted metric
                    l2 = whitened_loss(w_g, sxx, b, cs) ** 2
                    r2 = whitened_loss(w_g, sxx, np.zeros((d_in, 1)), [np.zeros((1, d_out))] * len(g)) ** 2
                loss2, ref2 = loss2 + l2, ref2 + r2
            del w_g, s, sxx, b, cs
        index = np.concatenate([np.full(len(g), gi, np.int32) for gi, g in enumerate(groups)])
        new[t] = Factored(Bank(host.adopt(rows), jnp.asarray(index)), host.adopt(coefs), t, tuple(leaf.shape[1:]))
        if consume:
            leaf.delete()
        before, after = L * d_in * d_out, len(groups) * d_in * k + L * k * d_out
        types[t] = {"shared": t in shared, "group_size": n, "groups": groups, "rank": k, "d_in": d_in, "d_out": d_out,
                    "params_before": before, "params_after": after, "ratio": 1 - after / before,
                    "rel_calib_error": float(np.sqrt(loss2 / ref2)) if ref2 > 0 else None}
    out = set_types(params, new)
    manifest = {"method": method, "ratio": ratio, "group_size": group_size,
                "types": {t: {k: v for k, v in r.items() if k in ("shared", "group_size", "groups", "rank",
                                                                  "d_in", "d_out")} for t, r in types.items()},
                "fallbacks": fallbacks}
    report = accounting(params, out, types, dense_counts)
    report.update(method=method, group_size=group_size, requested_ratio=ratio, fallbacks=fallbacks,
                  shared=shared, private=private, seconds=time.perf_counter() - t0)
    return out, manifest, report


def accounting(dense, compressed, types: dict, dense_counts: dict | None = None) -> dict:
    """dense_counts: {params_before, bytes_before} taken before the dense leaves were consumed."""
    cb = sum(r["params_before"] for r in types.values())
    ca = sum(r["params_after"] for r in types.values())
    counts = dense_counts or {"params_before": count_params(dense), "bytes_before": param_bytes(dense)}
    return {"params_before": counts["params_before"], "params_after": count_params(compressed),
            "bytes_before": counts["bytes_before"], "bytes_after": param_bytes(compressed),
            "compressible_params_before": cb, "compressible_params_after": ca,
            "achieved_ratio": 1 - ca / cb if cb else 0.0,
            "model_ratio": 1 - count_params(compressed) / counts["params_before"],
            "per_type": {t: {k: v for k, v in r.items() if k != "groups"} for t, r in types.items()}}
