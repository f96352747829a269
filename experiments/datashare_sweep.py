"""Data-aware DirectShare on SmolLM2-135M (issue 13): keep root / mean / data, with and without
the per-unit corrections, at 10/20/30% of units tied, and data+corrections at equal net
parameters to keep=mean (`net_ratio`: a few more units tied to pay for the corrections).

PPL on the first N windows of seq_len tokens of DATA:test (and canterbury with --corpora) (the
METHODS.md protocol, as `jaxshare eval ppl --max-windows 8`). Calibration: Basis Sharing's cached
grams (DATA:train, 32 x 512 by default, as `jaxshare share --calib DATA:train`). DATA is --data:
books by default (wiki needs the BIG-bench sdist, which the package index no longer serves; its
run is datashare_sweep.jsonl). Rows are appended to a JSONL as they come (an interrupted sweep
resumes); `--report` rebuilds the table (the .md beside it).

  python -m experiments.datashare_sweep [--data books] [--windows 8] [--seq-len 512] [--report]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import append_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RATIOS = (0.1, 0.2, 0.3)
# (label, keep, correct, equal net parameters to keep=mean)
ARMS = (("root", "root", "none", False), ("mean", "mean", "none", False), ("data", "data", "none", False),
        ("data+qkv", "data", "qkv", False), ("data+qkv, net = mean", "data", "qkv", True))


def report(rows: list[dict]) -> str:
    dense = next(r for r in rows if r["arm"] == "dense")
    table = {(r["arm"], r["ratio"]): r for r in rows}
    lines = []
    for corpus in [c for c in dense["ppl"] if any(c in r["ppl"] for r in rows if r["arm"] != "dense")]:
        lines += [f"\n**{corpus}** (dense PPL {dense['ppl'][corpus]:.2f}; {dense['windows']} x {dense['seq_len']} "
                  "tokens; cells: PPL (units tied, net params freed))\n",
                  "| keep / correct | " + " | ".join(f"{x:.0%}" for x in RATIOS) + " |",
                  "| --- |" + " --- |" * len(RATIOS)]
        for label, *_ in ARMS:
            cells = []
            for x in RATIOS:
                r = table.get((label, x))
                cells.append("-" if r is None or corpus not in r["ppl"] else
                             f"{r['ppl'][corpus]:.2f} ({r['units_tied']}, {r['net_params_freed'] / 1e6:.2f}M)")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--data", default="books", choices=("books", "wiki"))
    ap.add_argument("--corpora", default=None, help="comma list (default: DATA:test)")
    ap.add_argument("--out", default=None, help="the JSONL (default: datashare_sweep_DATA.jsonl in benchmarks/results)")
    ap.add_argument("--report", action="store_true", help="only rebuild the table from the JSONL")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / (
        "datashare_sweep.jsonl" if args.data == "wiki" else f"datashare_sweep_{args.data}.jsonl")
    if args.report:
        text = report([json.loads(x) for x in out.read_text().splitlines()])
        out.with_suffix(".md").write_text(text + "\n")
        print(text)
        return

    import jaxshare as js
    from jaxshare import perplexity_of_windows
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.headshare.datashare import data_share

    m = js.load("smollm2-135m")
    windows = {c: js.token_windows(js.token_ids(c, m.tokenizer), args.seq_len, args.windows)
               for c in (args.corpora or f"{args.data}:test").split(",")}
    grams, calib = calibrate(m, f"{args.data}:train", args.calib_windows, args.calib_seq_len)
    grams = {"attn_in": grams["attn_in"]}  # the only input head sharing reads
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["arm"], r["ratio"]) for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()

    def evaluate(params, arm, ratio, extra):
        t0 = time.perf_counter()
        ppl = {c: perplexity_of_windows(params, m.cfg, w, desc=f"{arm} {ratio} {c}")["ppl"] for c, w in windows.items()}
        row = {"arm": arm, "ratio": ratio, "ppl": ppl, "windows": args.windows, "seq_len": args.seq_len,
               "calibration": calib, "seconds": time.perf_counter() - t0, **extra}
        append_row(out, row, "experiments.datashare_sweep")
        print(json.dumps({k: row[k] for k in ("arm", "ratio", "ppl")} | {"units": extra.get("units_tied")}),
              file=sys.stderr)

    if ("dense", 0.0) not in done:
        evaluate(m.params, "dense", 0.0, {})
    for ratio in (0.3, 0.1, 0.2):  # the target first
        for label, keep, correct, net in ARMS:
            if (label, ratio) in done:
                continue
            shared, info = data_share(m.params, m.cfg, None if net else ratio, keep, correct, grams,
                                      net_ratio=ratio if net else None)
            r = info["report"]
            keys = ("units_tied", "net_params_freed", "correction_params", "params_before", "params_after",
                    "calib_rel_error", "extra_units", "net_target_params")
            evaluate(shared, label, ratio, {k: r[k] for k in keys if k in r})


if __name__ == "__main__":
    main()
