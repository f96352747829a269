"""Logit and perplexity parity of the registered real models against transformers' own loader of
the same GGUF file (canterbury, 2 windows of 512 tokens, fp32, highest matmul precision): the
figures docs/models.md and docs/results.md give, and the bounds tests/slow holds them to.

    python -m benchmarks.parity [--models smollm2-135m gemma3-270m]
"""
from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--data", default="canterbury")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from jaxshare.data.corpora import load_corpus
    from jaxshare.eval.parity import run_parity
    from jaxshare.io.load import load_model

    docs = load_corpus(args.data)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        res = run_parity(load_model(name), docs, seq_len=args.seq_len, max_windows=args.windows, free_params=True)
        rows.append({"model": name, "data": args.data, "seq_len": args.seq_len, "windows": args.windows,
                     **{k: res[k] for k in ("tokens", "max_abs_logit_diff", "ppl_jax", "ppl_reference", "ppl_rel_diff")},
                     "seconds": round(time.perf_counter() - t0, 1)})
        r = rows[-1]
        print(f"{name}: max |dlogit| {r['max_abs_logit_diff']:.3g}, ppl {r['ppl_jax']:.5f} vs {r['ppl_reference']:.5f} "
              f"(rel {r['ppl_rel_diff']:.2g})", file=sys.stderr)
    write_result("parity", {"results": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
