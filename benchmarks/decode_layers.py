"""Where a SmolLM2 decode step loses its time on XLA:CPU: the 30 layers' MLP and attention blocks
for one token (batch 1, fp32, the model's own `mlp` and `attention`), run as the model runs them,
`lax.scan` over the stacked [L, ...] weights, and unrolled over per-layer weight buffers, the two
taking turns in every repetition.

    python -m benchmarks.decode_layers [--reps 20] [--json]

A weight read from the stack inside the scan reaches its dot through a copy of the layer's slice
(XLA:CPU does not feed a dot from a dynamic slice); given per-layer buffers, the unrolled MLP
reads its weights once. The attention's q/k/v weights are stored [K, G, D, d], so their dots need
a transposed copy in either form. Compare with benchmarks/results/gemm_budget.json's decode rows
(the same products alone) and decode.json (the whole step).
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from benchmarks.common import timeit_interleaved, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from jaxshare.core.bank import split_banks
    from jaxshare.core.model import attention, mlp, norm, rope_tables
    from jaxshare.io.load import load_model

    m = load_model(args.model, "fp32")
    cfg, params = m.cfg, m.params
    xs, rebuild = split_banks(params.layers)
    per_layer = [jax.tree_util.tree_map(lambda a, i=i: jnp.array(a[i]), xs) for i in range(cfg.n_layers)]
    x0 = jnp.ones((1, 1, cfg.d_model), jnp.float32)
    pos = jnp.zeros((1, 1), jnp.int32)

    def block(part, x, layer):
        if part == "mlp":
            return x + mlp(norm(x, layer.mlp_norm, cfg), layer.mlp, cfg)
        rope = rope_tables(cfg, pos)
        return x + attention(norm(x, layer.attn_norm, cfg), layer.attn, cfg, rope, pos, jnp.int32(0))[0]

    fns = {}
    for part in ("mlp", "attention"):
        scanned = jax.jit(lambda xs_, x, part=part: jax.lax.scan(
            lambda h, l: (block(part, h, rebuild(l)), None), x, xs_)[0])
        unrolled = jax.jit(lambda layers, x, part=part: _unrolled(block, part, rebuild, layers, x))
        fns[f"{part}_scanned"] = lambda f=scanned: f(xs, x0).block_until_ready()
        fns[f"{part}_unrolled"] = lambda f=unrolled: f(per_layer, x0).block_until_ready()
    got = timeit_interleaved(fns, args.reps)
    rows = []
    for part in ("mlp", "attention"):
        s, u = got[f"{part}_scanned"], got[f"{part}_unrolled"]
        rows.append({"block": part, "scanned": s, "unrolled": u, "scanned_ms": s["median_s"] * 1e3,
                     "unrolled_ms": u["median_s"] * 1e3, "scanned_over_unrolled": s["median_s"] / u["median_s"],
                     "separated": s["max_s"] < u["min_s"] or u["max_s"] < s["min_s"]})
        print(f"{part}: scanned {rows[-1]['scanned_ms']:.1f} ms, unrolled over per-layer buffers "
              f"{rows[-1]['unrolled_ms']:.1f} ms", file=sys.stderr)
    write_result("decode_layers", {"model": args.model, "batch": 1, "tokens": 1, "dtype": "fp32",
                                   "layers": cfg.n_layers, "rows": rows}, args.json)


def _unrolled(block, part, rebuild, layers, x):
    for layer in layers:
        x = block(part, x, rebuild(layer))
    return x


if __name__ == "__main__":
    main()
