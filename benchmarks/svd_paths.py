"""Spectrum of one batch-averaged attention map, four ways (why the degeneration analysis cannot be
10x a numpy loop on a CPU: the per-map LAPACK work is about the same on both sides).

Maps: 18 causal softmax maps of random scores (T = 512), each the mean over 8 sequences, float32.
Per map: numpy's values-only SVD (the naive loop), numpy eigvalsh(A A^T), jax's batched values-only
SVD (the jit analysis), jax eigvalsh(A A^T). Also the largest singular-value difference from numpy's.

  python -m benchmarks.svd_paths [--json]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result


def maps(n: int = 18, t: int = 512, batch: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty((n, t, t), np.float32)
    causal = np.tril(np.ones((t, t), bool))
    for i in range(n):
        s = np.where(causal, rng.normal(size=(batch, t, t)).astype(np.float32) * 3, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[i] = (p / p.sum(-1, keepdims=True)).mean(0)
    return out


def per_map_ms(f, a, reps: int = 2) -> tuple[float, np.ndarray]:
    r = f(a)  # warm-up (and compilation on the jax side)
    t0 = time.perf_counter()
    for _ in range(reps):
        r = f(a)
    return (time.perf_counter() - t0) / reps / len(a) * 1e3, np.asarray(r)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    a = maps()
    ref_ms, ref = per_map_ms(lambda x: np.stack([np.linalg.svd(m, compute_uv=False) for m in x]), a)
    sv = lambda e: np.sqrt(np.clip(e[..., ::-1], 0, None))  # ascending eigenvalues -> singular values
    res = {"maps": list(a.shape), "ms_per_map": {"numpy_svd": ref_ms}, "max_sv_diff": {}}
    ms, e = per_map_ms(lambda x: np.stack([np.linalg.eigvalsh(m @ m.T) for m in x]), a)
    res["ms_per_map"]["numpy_eigvalsh_aat"], res["max_sv_diff"]["numpy_eigvalsh_aat"] = ms, float(np.abs(sv(e) - ref).max())
    aj = jnp.asarray(a)
    svd = jax.jit(lambda x: jnp.linalg.svd(x, compute_uv=False))
    ms, s = per_map_ms(lambda x: jax.block_until_ready(svd(x)), aj)
    res["ms_per_map"]["jax_svd"], res["max_sv_diff"]["jax_svd"] = ms, float(np.abs(s - ref).max())
    eig = jax.jit(lambda x: jnp.linalg.eigvalsh(x @ jnp.swapaxes(x, -1, -2)))
    ms, e = per_map_ms(lambda x: jax.block_until_ready(eig(x)), aj)
    res["ms_per_map"]["jax_eigvalsh_aat"], res["max_sv_diff"]["jax_eigvalsh_aat"] = ms, float(np.abs(sv(e) - ref).max())
    res["ratio_numpy_svd_over_jax_svd"] = ref_ms / res["ms_per_map"]["jax_svd"]
    write_result("svd_paths", res, args.json)
    if not args.json:
        for k, v in res["ms_per_map"].items():
            print(f"{k:20s} {v:6.1f} ms/map  max |sv diff| {res['max_sv_diff'].get(k, 0.0):.1e}")
        print(f"numpy SVD / jax SVD: {res['ratio_numpy_svd_over_jax_svd']:.2f}x")


if __name__ == "__main__":
    main()
