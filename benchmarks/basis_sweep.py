"""Basis Sharing vs SVD-LLM vs plain SVD on SmolLM2-135M: perplexity over compression ratios.

    nice -n 10 python -m benchmarks.basis_sweep [--data books] [--calib-windows 64 --calib-seq-len 512 --eval-windows 16]

Calibration: DATA:train, N windows x T tokens (seed 0). PPL: DATA:test and canterbury, seq 512,
the first --eval-windows windows of each (METHODS.md protocol). DATA is --data: books by default
(wiki needs the BIG-bench sdist, which the package index no longer serves; its run is
basis_sweep.json). Results are rewritten after every configuration
(benchmarks/results/basis_sweep_books.json), then plotted (basis_sweep_books.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.common import RESULTS, write_result


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["eval_sets"]), figsize=(6 * len(res["eval_sets"]), 4.5))
    for ax, data in zip(axes, res["eval_sets"]):
        names = sorted({r["name"] for r in res["runs"]})
        for name in names:
            rows = sorted((r for r in res["runs"] if r["name"] == name), key=lambda r: r["ratio"])
            ax.plot([r["ratio"] for r in rows], [r["ppl"][data] for r in rows], marker="o", label=name)
        ax.axhline(res["baseline"]["ppl"][data], color="k", ls="--", lw=1, label="uncompressed")
        ax.set_yscale("log")
        ax.set_xlabel("compression ratio (linear weights)")
        ax.set_ylabel(f"perplexity ({data}, seq 512)")
        ax.set_title(f"SmolLM2-135M: {data}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="books", choices=("books", "wiki"))
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--group-sizes", default="2,3,4")
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--resume", action="store_true", help="keep the runs of an existing result with the same protocol")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from jaxshare.basis.compress import compress
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.data.corpora import load_corpus
    from jaxshare.eval.perplexity import perplexity
    from jaxshare.io.load import load_model

    m = load_model(args.model)
    result = "basis_sweep" if args.data == "wiki" else f"basis_sweep_{args.data}"
    eval_sets = {f"{args.data}:test": load_corpus(f"{args.data}:test"), "canterbury": load_corpus("canterbury")}

    def ppl(params):
        return {k: perplexity(params, m.cfg, m.tokenizer, d, args.seq_len, args.eval_windows)["ppl"]
                for k, d in eval_sets.items()}

    t0 = time.perf_counter()
    grams, info = calibrate(m, f"{args.data}:train", args.calib_windows, args.calib_seq_len)
    prev = RESULTS / f"{result}.json"
    setup = {"model": args.model, "calibration": {k: v for k, v in info.items() if k != "cached"},
             "eval": f"first {args.eval_windows} windows x {args.seq_len} tokens of each eval set",
             "eval_sets": list(eval_sets)}
    old = json.loads(prev.read_text()) if args.resume and prev.is_file() else {}
    if old:
        old["calibration"] = {k: v for k, v in old["calibration"].items() if k != "cached"}
    if old and all(old.get(k) == v for k, v in setup.items()):  # same protocol: keep its runs
        res = {**old, "calibration": setup["calibration"]}
    else:
        res = {**setup, "calib_seconds": time.perf_counter() - t0, "baseline": {"ppl": ppl(m.params)}, "runs": []}
    print(f"baseline {res['baseline']['ppl']}", file=sys.stderr, flush=True)
    # The key comparison (Basis Sharing n=2 vs SVD-LLM) over all ratios first, then n=3/4, then plain
    # SVD: results are rewritten after each run, so a sweep cut short still answers the main question.
    ratios = [float(r) for r in args.ratios.split(",")]
    sizes = [int(n) for n in args.group_sizes.split(",")]
    stages = [[(f"basis n={sizes[0]}", "basis", sizes[0]), ("svd-llm", "svd-llm", 1)],
              [(f"basis n={n}", "basis", n) for n in sizes[1:]], [("svd", "svd", 1)]]
    done = {(r["name"], r["ratio"]) for r in res["runs"]}
    for stage in stages:
        for ratio in ratios:
            for name, method, n in stage:
                if (name, ratio) in done:
                    continue
                t = time.perf_counter()
                params, _, rep = compress(m.params, m.cfg, grams, ratio, n, method, progress=False)
                row = {"name": name, "method": method, "group_size": n, "ratio": ratio,
                       "achieved_ratio": rep["achieved_ratio"], "params_after": rep["params_after"],
                       "fallbacks": rep["fallbacks"], "compress_s": rep["seconds"], "ppl": ppl(params),
                       "seconds": time.perf_counter() - t}
                res["runs"].append(row)
                print(f"{name:12s} CR {ratio:.1f} (achieved {row['achieved_ratio']:.3f}): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in row["ppl"].items()), file=sys.stderr, flush=True)
                write_result(result, res, False)
                plot(res, RESULTS / f"{result}.png")
    plot(res, RESULTS / f"{result}.png")
    write_result(result, res, args.json)


if __name__ == "__main__":
    main()
