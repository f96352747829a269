"""Where the CPU time of SmolLM2's forward goes: the model's own matrix products alone, XLA vs torch,
beside the whole forward of each side, in one run (the two sides take turns in every repetition).

    python -m benchmarks.gemm_budget [--reps 5] [--json]

For each case the "GEMM set" is every matrix product one pass of the model does, at the model's
shapes, one distinct weight per layer (so a decode step streams 0.5 GB of weights as the real one
does): per layer q, k, v, o, gate, up, down, then the LM head. `x @ W` in a jitted jax function,
`torch.nn.functional.linear` (transformers' own call) on the torch side; each product's output is
reduced by a max (which no compiler can fold into the product) so that nothing is skipped.

- prefill B x 512 tokens, fp32 and bf16: the GEMM set's seconds beside the model's forward
  (jaxshare `forward` vs transformers), so `gemm_share` says how much of each forward the
  products are, and `gemm_ratio` (torch GEMM seconds / XLA GEMM seconds) is the ceiling the
  products alone put on the forward's ratio;
- decode rows (M = batch tokens, fp32): the products of one decode step; compare with
  benchmarks/results/decode.json's per-token times;
- train rows (batch 4 x 128, fp32): the forward products plus both backward ones (dX = dY W^T,
  dW = X^T dY) of every weight; compare with benchmarks/results/train_step.json.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import timeit_interleaved, write_result


def gemm_shapes(cfg) -> list[tuple[int, int]]:
    """(K, N) of every product of one layer, then the LM head's, in the model's order."""
    D, F, A, KV = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    layer = [(D, A), (D, KV), (D, KV), (A, D), (D, F), (D, F), (F, D)]
    return layer * cfg.n_layers + [(D, cfg.vocab_size)]


def gemm_flops(shapes, M: int, backward: bool) -> float:
    return 2.0 * M * sum(K * N for K, N in shapes) * (3 if backward else 1)


def make_sides(shapes, M: int, dtype: str, backward: bool, seed: int = 0):
    """(jax_fn, torch_fn), each running the GEMM set once and blocking until it is done."""
    rng = np.random.default_rng(seed)
    jdt, tdt = (jnp.float32, torch.float32) if dtype == "fp32" else (jnp.bfloat16, torch.bfloat16)
    ws = [(rng.standard_normal((K, N), np.float32) * 0.02) for K, N in shapes]
    ins = {K: rng.standard_normal((M, K), np.float32) for K in {K for K, _ in shapes}}
    gys = {N: rng.standard_normal((M, N), np.float32) for N in {N for _, N in shapes}} if backward else {}
    jw = [jnp.asarray(w, jdt) for w in ws]
    jin = {k: jnp.asarray(v, jdt) for k, v in ins.items()}
    jgy = {k: jnp.asarray(v, jdt) for k, v in gys.items()}
    # torch Linear keeps its weight as [out, in] and computes x W^T: the same layout here
    tw = [torch.as_tensor(np.ascontiguousarray(w.T)).to(tdt) for w in ws]
    tin = {k: torch.as_tensor(v).to(tdt) for k, v in ins.items()}
    tgy = {k: torch.as_tensor(v).to(tdt) for k, v in gys.items()}

    @jax.jit
    def jax_set(w_list, xin, gy):
        outs = []
        for (K, N), w in zip(shapes, w_list):
            outs.append(jnp.max(xin[K] @ w))
            if backward:
                outs.append(jnp.max(gy[N] @ w.T))  # dX
                outs.append(jnp.max(xin[K].T @ gy[N]))  # dW
        return jnp.stack(outs)

    def torch_set():
        outs = []
        with torch.inference_mode():
            for (K, N), w in zip(shapes, tw):
                outs.append(torch.nn.functional.linear(tin[K], w).amax())
                if backward:
                    outs.append((tgy[N] @ w).amax())  # dX = dY W (W is [out, in])
                    outs.append((tgy[N].T @ tin[K]).amax())  # dW = dY^T X, torch's [out, in] layout
            return torch.stack(outs)

    return (lambda: jax_set(jw, jin, jgy).block_until_ready()), torch_set


def summary(t: dict) -> dict:
    return {k: t[k] for k in ("median_s", "min_s", "max_s", "times_s", "reps")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from jaxshare.core.model import forward
    from jaxshare.core.params import cast_params
    from jaxshare.eval.parity import reference_model
    from jaxshare.io.load import load_model

    m = load_model(args.model, "fp32")
    ref = reference_model(m)
    shapes = gemm_shapes(m.cfg)
    rows = []

    def record(kind, dtype, M, gemm, extra=None, backward=False):
        flops = gemm_flops(shapes, M, backward)
        row = {"kind": kind, "dtype": dtype, "M": M, "gemm_flops": flops,
               "xla_gemm": summary(gemm["jax"]), "torch_gemm": summary(gemm["torch"]),
               "xla_gemm_gflops": flops / gemm["jax"]["median_s"] / 1e9,
               "torch_gemm_gflops": flops / gemm["torch"]["median_s"] / 1e9,
               "gemm_ratio": gemm["torch"]["median_s"] / gemm["jax"]["median_s"],
               "gemm_separated": gemm["jax"]["max_s"] < gemm["torch"]["min_s"]
               or gemm["torch"]["max_s"] < gemm["jax"]["min_s"], **(extra or {})}
        rows.append(row)
        msg = (f"{kind} {dtype} M={M}: GEMM set XLA {row['xla_gemm']['median_s'] * 1e3:.1f} ms "
               f"({row['xla_gemm_gflops']:.0f} GFLOP/s), torch {row['torch_gemm']['median_s'] * 1e3:.1f} ms "
               f"({row['torch_gemm_gflops']:.0f} GFLOP/s), ratio {row['gemm_ratio']:.2f}")
        if "forward_ratio" in row:
            msg += (f"; forward jax {row['jax_forward']['median_s'] * 1e3:.0f} ms ({row['jax_gemm_share']:.0%} GEMM), "
                    f"torch {row['torch_forward']['median_s'] * 1e3:.0f} ms ({row['torch_gemm_share']:.0%} GEMM), "
                    f"ratio {row['forward_ratio']:.2f}")
        print(msg, file=sys.stderr, flush=True)

    for dtype in ("fp32", "bf16"):
        jdt = jnp.float32 if dtype == "fp32" else jnp.bfloat16
        params = m.params if dtype == "fp32" else cast_params(m.params, jnp.bfloat16)
        tref = ref.to(torch.float32 if dtype == "fp32" else torch.bfloat16)
        for B in (1, 8):
            T = 512
            toks = np.random.default_rng(0).integers(0, m.cfg.vocab_size, (B, T)).astype(np.int32)
            jt, tt = jnp.asarray(toks), torch.as_tensor(toks.astype(np.int64))
            jg, tg = make_sides(shapes, B * T, dtype, False)

            def torch_forward():
                with torch.inference_mode():
                    return tref(tt).logits

            got = timeit_interleaved({"jax": jg, "torch": tg,
                                      "jax_forward": lambda: forward(params, m.cfg, jt, jdt).block_until_ready(),
                                      "torch_forward": torch_forward}, args.reps)
            jf, tf = got["jax_forward"], got["torch_forward"]
            record("prefill", dtype, B * T, got, {
                "batch": B, "seq_len": T, "jax_forward": summary(jf), "torch_forward": summary(tf),
                "forward_ratio": tf["median_s"] / jf["median_s"],
                "jax_gemm_share": got["jax"]["median_s"] / jf["median_s"],
                "torch_gemm_share": got["torch"]["median_s"] / tf["median_s"]})
            del jg, tg
    for B in (1, 8):
        jg, tg = make_sides(shapes, B, "fp32", False)
        record("decode", "fp32", B, timeit_interleaved({"jax": jg, "torch": tg}, max(args.reps, 20)), {"batch": B})
    jg, tg = make_sides(shapes, 4 * 128, "fp32", True)
    record("train", "fp32", 4 * 128, timeit_interleaved({"jax": jg, "torch": tg}, args.reps),
           {"batch": 4, "seq_len": 128}, backward=True)
    write_result("gemm_budget", {"model": args.model, "torch": torch.__version__,
                                 "torch_threads": torch.get_num_threads(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
