"""DirectShare sweep on SmolLM2-135M: ratio x match function x keep, plus the paper's baseline
(magnitude pruning of the q/k/v weights at the same parameter reduction).

Each configuration is evaluated on a fixed subset of windows of DATA:test and canterbury
(first N windows of seq_len tokens, the METHODS.md protocol), DATA being --data: books by default
(wiki needs the BIG-bench sdist, which the package index no longer serves; its run is
directshare_sweep.jsonl). Results are appended to a JSONL as they come, so an interrupted sweep
resumes where it stopped; the table (the .md beside it) and plots are rebuilt from it.

  python -m experiments.directshare_sweep [--data books] [--windows 8] [--seq-len 512] [--report]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from benchmarks.common import append_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MATCHES = ("qk", "q", "k", "v", "qkv", "separate")


def default_out(data: str) -> Path:
    return RESULTS / ("directshare_sweep.jsonl" if data == "wiki" else f"directshare_sweep_{data}.jsonl")


def magnitude_prune(params, n_remove: int):
    """Zero the n_remove smallest-magnitude q/k/v weights, globally over layers and matrices."""
    import dataclasses

    attn = params.layers.attn
    mags = np.concatenate([np.abs(np.asarray(getattr(attn, n))).ravel() for n in ("wq", "wk", "wv")])
    thresh = np.partition(mags, n_remove - 1)[n_remove - 1] if n_remove else -1.0
    new = {n: jnp.where(jnp.abs(getattr(attn, n)) <= thresh, 0.0, getattr(attn, n)) for n in ("wq", "wk", "wv")}
    return dataclasses.replace(params, layers=dataclasses.replace(params.layers, attn=dataclasses.replace(attn, **new)))


def report(rows: list[dict], out_dir: Path) -> str:
    """A markdown table (PPL per corpus: ratio x method) and a PNG plot, from the sweep's rows."""
    from jaxshare import plots

    dense = next(r for r in rows if r["method"] == "dense")
    methods = [(m, k) for k in ("root", "mean") for m in MATCHES] + [("magnitude", "-")]
    ratios = sorted({r["ratio"] for r in rows if r["method"] != "dense"})
    table = {}
    for r in rows:
        name = "magnitude" if r["method"] == "magnitude" else f"{r['match']}/{r['keep']}"
        table[(name, r["ratio"])] = r["ppl"]
    lines = []
    for corpus in dense["ppl"]:
        lines.append(f"\n**{corpus}** (dense PPL {dense['ppl'][corpus]:.2f}; {dense['windows']} x {dense['seq_len']} tokens)\n")
        lines.append("| match / keep | " + " | ".join(f"{x:.0%}" for x in ratios) + " |")
        lines.append("| --- |" + " --- |" * len(ratios))
        series = {}
        for m, k in methods:
            name = "magnitude" if m == "magnitude" else f"{m}/{k}"
            vals = [table.get((name, x), {}).get(corpus) for x in ratios]
            if all(v is None for v in vals):
                continue
            label = "magnitude pruning (q/k/v, same #params)" if m == "magnitude" else f"`{m}` / {k}"
            lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
            if k in ("root", "-"):
                series[name] = [v for v in vals if v is not None]
        plots.lines(ratios, series, out_dir / f"directshare_sweep_{corpus.replace(':', '_')}.png",
                    f"DirectShare on SmolLM2-135M: {corpus} PPL (keep=root)", "ratio of units tied", "PPL",
                    logy=True, hline=dense["ppl"][corpus])
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="books", choices=("books", "wiki"))
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", default=None, help="the JSONL (default: directshare_sweep_DATA.jsonl in benchmarks/results)")
    ap.add_argument("--report", action="store_true", help="only rebuild the table and plots from the JSONL")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.data)
    if args.report:
        text = report([json.loads(x) for x in out.read_text().splitlines()], RESULTS)
        out.with_suffix(".md").write_text(text + "\n")
        print(text)
        return

    import jaxshare as js
    from jaxshare import direct_share, perplexity_of_windows

    m = js.load("smollm2-135m")
    windows = {c: js.token_windows(js.token_ids(c, m.tokenizer), args.seq_len, args.windows)
               for c in (f"{args.data}:test", "canterbury")}
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["match"], r["keep"], r["ratio"]))

    def evaluate(params, key, extra):
        if key in done:
            return
        t0 = time.perf_counter()
        ppl = {c: perplexity_of_windows(params, m.cfg, w, desc=f"{key} {c}")["ppl"] for c, w in windows.items()}
        row = {"method": key[0], "match": key[1], "keep": key[2], "ratio": key[3], "ppl": ppl,
               "windows": args.windows, "seq_len": args.seq_len, "seconds": time.perf_counter() - t0, **extra}
        append_row(out, row, "experiments.directshare_sweep")
        print(json.dumps({k: row[k] for k in ("method", "match", "keep", "ratio", "ppl")}), file=sys.stderr)

    evaluate(m.params, ("dense", "-", "-", 0.0), {})
    # Passes in order of interest, so that a sweep cut short still has whole rows of the table:
    # keep=root with the baseline first, at the core ratios, then keep=mean, then the rest.
    core, rest = (0.1, 0.3, 0.5), (0.2, 0.4, 0.05)
    for ratios, keep in ((core, "root"), (core, "mean"), (rest, "root"), (rest, "mean")):
        for ratio in ratios:
            for match in MATCHES:
                key = ("directshare", match, keep, ratio)
                if key in done:
                    continue
                shared, info = direct_share(m.params, m.cfg, ratio, match, keep)
                evaluate(shared, key, {"report": info["report"]})
            if keep == "root":  # the paper's baseline at the same number of q/k/v parameters removed
                _, info = direct_share(m.params, m.cfg, ratio, "qk", "root")
                n_removed = info["report"]["qkv_params_before"] - info["report"]["qkv_params_after"]
                evaluate(magnitude_prune(m.params, n_removed), ("magnitude", "-", "-", ratio),
                         {"qkv_params_zeroed": n_removed})

if __name__ == "__main__":
    main()
