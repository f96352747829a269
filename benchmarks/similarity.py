"""Best-partner search (DirectShare's similarity step): jit Gram search vs the paper's
Algorithm 1 as a Python loop over unit pairs, and vs the floor (one GEMM of the same Gram).

Two scales:
  smollm2  the real SmolLM2-135M weights (90 units): the naive loop runs in full.
  llama7b  Llama-2-7B shapes (32 layers x 32 heads, D=4096), random fp32 q and k (4 GiB):
           the naive loop runs over the first layers only and is extrapolated by pair count.

  python -m benchmarks.similarity [--json] [--scale smollm2,llama7b] [--naive-layers 3]
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import timeit_interleaved, write_result

from jaxshare.headshare.similarity import search_features, unit_features


def naive_algorithm1(q: np.ndarray, k: np.ndarray, L: int, K: int, layers: int) -> tuple[float, int, np.ndarray]:
    """The paper's loop: for each unit of layers 1..layers-1, the cosine of concat(Wq, Wk) with
    every unit of earlier layers, one pair at a time. Returns (seconds, pairs, best partners)."""
    t0 = time.perf_counter()
    pairs, best = 0, []
    for u in range(K, layers * K):
        a = np.concatenate([q[u], k[u]])
        top, arg = -np.inf, -1
        for v in range((u // K) * K):
            b = np.concatenate([q[v], k[v]])
            c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            pairs += 1
            if c > top:
                top, arg = c, v
        best.append(arg)
    return time.perf_counter() - t0, pairs, np.asarray(best)


def total_pairs(L: int, K: int) -> int:
    return K * K * L * (L - 1) // 2


def bench(name: str, q, k, L: int, K: int, naive_layers: int, reps: int) -> dict:
    U = L * K
    F = q.shape[1] + k.shape[1]
    jax_search = lambda: search_features((q, k, None), L, K, "qk")  # noqa: E731 (returns numpy: blocks)
    X = jnp.concatenate([q, k], axis=1)  # the floor: one [U, F] x [F, U] GEMM, nothing else
    gemm = jax.jit(lambda x: jnp.einsum("uf,vf->uv", x, x, precision="highest"))
    # the search and its floor take turns in every repetition, so machine load falls on both alike
    got = timeit_interleaved({"jit": jax_search, "gemm": lambda x=X: gemm(x).block_until_ready()}, reps)
    t_jit, t_gemm = got["jit"], got["gemm"]
    del X
    res = jax_search()

    qn, kn = np.asarray(q), np.asarray(k)
    layers = min(naive_layers, L)
    t_naive, pairs, best = naive_algorithm1(qn, kn, L, K, layers)
    agree = bool(np.array_equal(best, res["qk"]["partner"].ravel()[K:layers * K]))
    full = total_pairs(L, K)
    t_naive_full = t_naive * full / pairs
    out = {"units": U, "features": F, "gram_flops": 2 * U * U * F, "jit_search": t_jit, "gemm_floor": t_gemm,
           "naive": {"layers_timed": layers, "pairs_timed": pairs, "seconds_timed": t_naive, "pairs_total": full,
                     "seconds_total": t_naive_full, "extrapolated": layers < L, "agrees_with_jit": agree},
           "speedup_vs_naive": t_naive_full / t_jit["median_s"], "ratio_to_gemm_floor": t_jit["median_s"] / t_gemm["median_s"],
           # each repetition's search over the floor timed right after it: the target holds in every one
           "ratio_to_gemm_floor_per_rep": [a / b for a, b in zip(t_jit["times_s"], t_gemm["times_s"])]}
    out["ratio_to_gemm_floor_worst_rep"] = max(out["ratio_to_gemm_floor_per_rep"])
    print(f"[{name}] U={U} F={F}: jit {t_jit['median_s']:.3f}s, GEMM floor {t_gemm['median_s']:.3f}s "
          f"(x{out['ratio_to_gemm_floor']:.2f}, worst rep x{out['ratio_to_gemm_floor_worst_rep']:.2f}), naive {'~' if layers < L else ''}{t_naive_full:.1f}s "
          f"({pairs} of {full} pairs timed) -> {out['speedup_vs_naive']:.0f}x faster; partners agree: {agree}",
          file=sys.stderr)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--scale", default="smollm2,llama7b")
    ap.add_argument("--naive-layers", type=int, default=3, help="layers the naive loop runs at 7B scale")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    results = {}
    if "smollm2" in args.scale:
        from jaxshare.io.load import load_model

        m = load_model("smollm2-135m")
        q, k, _ = unit_features(m.params)
        results["smollm2"] = bench("smollm2", q, k, m.cfg.n_layers, m.cfg.n_kv_heads, m.cfg.n_layers, args.reps)
        del m, q, k
    if "llama7b" in args.scale:
        L, K, D, d = 32, 32, 4096, 128
        key_q, key_k = jax.random.split(jax.random.key(0))
        q = jax.jit(lambda key: 0.02 * jax.random.normal(key, (L * K, D * d), jnp.float32))(key_q)
        k = jax.jit(lambda key: 0.02 * jax.random.normal(key, (L * K, D * d), jnp.float32))(key_k)
        results["llama7b"] = bench("llama7b", q, k, L, K, args.naive_layers, args.reps)
        results["llama7b"]["gib_of_weights"] = (q.nbytes + k.nbytes) / 2**30
    write_result("similarity", {"results": results,
                                "targets": {"speedup_vs_naive_7b": ">= 30", "ratio_to_gemm_floor_worst_rep": "<= 1.0"}},
                 args.json)


if __name__ == "__main__":
    main()
