"""SmolLM2-135M prefill throughput: jaxshare (jit, warmed up) vs transformers torch, same run,
the two sides taking turns in every repetition (median, min and max of each).

    python -m benchmarks.forward [--seq-len 512] [--reps 5] [--json]

`ratio` = jaxshare / torch tokens/s by median, fp32, batch 8; `separated` says whether the two
sides' [min, max] ranges are apart. bf16 figures are reported beside.
"""
from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import timeit_interleaved, write_result
from jaxshare.io.load import load_model
from jaxshare.core.model import forward
from jaxshare.core.params import cast_params
from jaxshare.eval.parity import reference_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    m = load_model(args.model, "fp32")
    ref = reference_model(m)
    rows = []
    dtypes = ["fp32"] if args.no_bf16 else ["fp32", "bf16"]
    for dtype in dtypes:
        jdt = jnp.float32 if dtype == "fp32" else jnp.bfloat16
        params = m.params if dtype == "fp32" else cast_params(m.params, jnp.bfloat16)
        tref = ref.to(torch.float32 if dtype == "fp32" else torch.bfloat16)
        for B in [int(b) for b in args.batches.split(",")]:
            toks = np.random.default_rng(0).integers(0, m.cfg.vocab_size, (B, args.seq_len)).astype(np.int32)
            jt = jnp.asarray(toks)
            tt = torch.as_tensor(toks.astype(np.int64))
            with torch.inference_mode():
                got = timeit_interleaved({"jax": lambda: forward(params, m.cfg, jt, jdt).block_until_ready(),
                                          "torch": lambda: tref(tt).logits}, args.reps)
            j, t = got["jax"], got["torch"]
            n = B * args.seq_len
            row = {"dtype": dtype, "batch": B, "seq_len": args.seq_len,
                   "jax_tokens_per_s": n / j["median_s"], "torch_tokens_per_s": n / t["median_s"],
                   "jax": j, "torch": t}
            row["ratio"] = row["jax_tokens_per_s"] / row["torch_tokens_per_s"]
            row["separated"] = j["max_s"] < t["min_s"] or t["max_s"] < j["min_s"]
            rows.append(row)
            print(f"{dtype} B={B} T={args.seq_len}: jaxshare {row['jax_tokens_per_s']:.0f} tok/s, "
                  f"torch {row['torch_tokens_per_s']:.0f} tok/s, ratio {row['ratio']:.2f}", file=sys.stderr)
    head = next(r for r in rows if r["dtype"] == "fp32" and r["batch"] == max(int(b) for b in args.batches.split(",")))
    write_result("forward", {"model": args.model, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                             "ratio": head["ratio"], "rows": rows}, args.json)


if __name__ == "__main__":
    main()
