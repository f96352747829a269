"""Prefill of a DirectShare model (gather inside the layer scan) vs the dense model, and the
bytes the bank saves. SmolLM2-135M, 512 tokens; dense and shared runs are interleaved so that
load on a shared machine hits both alike.

  python -m benchmarks.shared_forward [--json] [--ratio 0.3] [--batch 4] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)

    from jaxshare.headshare.directshare import direct_share
    from jaxshare.io.load import load_model
    from jaxshare.core.model import forward
    from jaxshare.core.params import param_bytes

    m = load_model("smollm2-135m")
    shared, info = direct_share(m.params, m.cfg, args.ratio, "qk")
    rep = info["report"]
    toks = jnp.asarray(np.random.default_rng(0).integers(0, m.cfg.vocab_size, (args.batch, args.seq_len)), jnp.int32)
    models = {"dense": m.params, "shared": shared}
    for p in models.values():
        forward(p, m.cfg, toks).block_until_ready()  # compile
    times = {k: [] for k in models}
    for _ in range(args.reps):
        for name, p in models.items():
            t0 = time.perf_counter()
            forward(p, m.cfg, toks).block_until_ready()
            times[name].append(time.perf_counter() - t0)
    tok = args.batch * args.seq_len
    tps = {k: tok / statistics.median(v) for k, v in times.items()}

    a_dense, a_shared = m.params.layers.attn, shared.layers.attn
    qkv_before = sum(param_bytes(getattr(a_dense, n)) for n in ("wq", "wk", "wv"))
    qkv_after = sum(param_bytes(getattr(a_shared, n).rows) for n in ("wq", "wk", "wv"))
    index_bytes = sum(param_bytes(getattr(a_shared, n).index) for n in ("wq", "wk", "wv"))
    res = {"ratio": args.ratio, "batch": args.batch, "seq_len": args.seq_len, "reps": args.reps,
           "tokens_per_s": tps, "throughput_ratio": tps["shared"] / tps["dense"],
           "qkv_bytes_before": qkv_before, "qkv_bytes_after": qkv_after, "index_bytes": index_bytes,
           "qkv_bytes_fraction_kept": qkv_after / qkv_before, "expected_fraction_kept": 1 - rep["units_freed"] / rep["units_total"],
           "model_bytes_before": rep["bytes_before"], "model_bytes_after": rep["bytes_after"],
           "targets": {"throughput_ratio": ">= 0.95", "qkv_bytes_fraction_kept": "= 1 - saved fraction"}}
    print(f"prefill {args.batch}x{args.seq_len}: dense {tps['dense']:.0f} tok/s, {args.ratio:.0%} shared "
          f"{tps['shared']:.0f} tok/s (x{res['throughput_ratio']:.3f}); q/k/v bytes {qkv_before / 2**20:.1f} -> "
          f"{qkv_after / 2**20:.1f} MiB (kept {res['qkv_bytes_fraction_kept']:.3f}, expected "
          f"{res['expected_fraction_kept']:.3f}) + {index_bytes} B of indices", file=sys.stderr)
    write_result("shared_forward", res, args.json)


if __name__ == "__main__":
    main()
