"""The budgeted plan under a byte budget, with quantization among its methods, against quantization
alone at the same bytes, on SmolLM2-135M (fp32, not healed).

Arms (each scored on the first --windows windows of --seq-len tokens of DATA:test, bootstrap 95%
interval of the PPL over windows; every model built with the CLI a user runs, in its own process):
  int8           `jaxshare quantize smollm2-135m OUT --bits 8` (GPTQ, per output channel, every linear type)
  int4           `jaxshare quantize smollm2-135m OUT --bits 4` (GPTQ, groups of 64, every linear type)
  plan@int8      `jaxshare compress smollm2-135m OUT --byte-ratio R --methods prune,prune-kv,basis,quantize
                 --calib-windows 32 --calib-seq-len 512`, R the bytes int8 removes (so plan <= int8 in bytes)
  plan@int4      the same at the bytes int4 removes
  plan@R         the same at each --extra byte ratio (beyond what quantization alone reaches)
Every model calibrates on DATA:train; the plan measures its candidates (quantization of each type
alone at each width included) on DATA:train windows outside its calibration and checks itself on
DATA:validation: never on these. DATA is --data: books by default (wiki needs the BIG-bench sdist,
which the package index no longer serves; its run is plan_bytes.{jsonl,md}).

  python -m experiments.plan_bytes [--data books] [--extra 0.75] [--windows 32]
  # rows: experiments/results/plan_bytes_books.jsonl, table: experiments/results/plan_bytes_books.md
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.heal import RESULTS, bootstrap, held_out, stamp, window_nlls
from experiments.prune import paired

ROOT = Path(__file__).resolve().parents[1]
METHODS = "prune,prune-kv,basis,quantize"
CALIB = ["--calib-windows", "32", "--calib-seq-len", "512"]


def build(argv: list[str]):
    """Run `jaxshare ARGV OUT --json` in its own process; (model, seconds, report)."""
    from jaxshare.io.load import load_model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m"
        cmd = [sys.executable, "-m", "jaxshare", argv[0], "smollm2-135m", str(out), *argv[1:], "--json"]
        print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"plan_bytes: {' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
        seconds = time.perf_counter() - t0
        return load_model(str(out), "fp32"), seconds, json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="books", choices=("books", "wiki"))
    ap.add_argument("--extra", type=lambda s: [float(x) for x in s.split(",") if x], default=[0.75])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()

    from jaxshare.core.params import param_bytes
    from jaxshare.io.load import load_model

    m = load_model("smollm2-135m", "fp32")
    total = param_bytes(m.params)
    windows = held_out(m.tokenizer, args.seq_len, args.windows, f"{args.data}:test")
    calib = [*CALIB, "--calib", f"{args.data}:train"]
    base = {**stamp(), "command": " ".join(["python", "-m", "experiments.plan_bytes", *sys.argv[1:]])}
    rows = []

    def record(name, model, seconds, extra=None):
        nll = window_nlls(model.params, model.cfg, windows)
        lo, hi = bootstrap(nll)
        b = param_bytes(model.params)
        row = {**base, "data": f"{args.data}:test", "arm": name, "bytes": b, "removed_bytes": round(1 - b / total, 4),
               "ppl": math.exp(nll.mean()), "ci95": [lo, hi], "windows": len(windows), "seq_len": args.seq_len,
               "seconds": round(seconds, 1), "window_nll": nll.round(6).tolist(), **(extra or {})}
        rows.append(row)
        print(f"{name:12s} bytes {b:,} (-{row['removed_bytes']:.2%})  PPL {row['ppl']:8.2f} [{lo:.2f}, {hi:.2f}]  "
              f"{seconds:.0f} s", file=sys.stderr, flush=True)
        return row

    record("dense", m, 0.0)
    targets = []
    for bits in (8, 4):
        q, seconds, rep = build(["quantize", "--bits", str(bits), *calib])
        row = record(f"int{bits}", q, seconds, {"quant": {k: rep[k] for k in ("bits", "group", "method")}})
        targets.append((f"plan@int{bits}", math.ceil(row["removed_bytes"] * 1e4) / 1e4))  # plan bytes <= these
        del q
    targets += [(f"plan@{r:g}", r) for r in args.extra]
    for name, ratio in targets:
        p, seconds, rep = build(["compress", "--byte-ratio", f"{ratio:.4f}", "--methods", METHODS, *calib,
                                 "--heldout", f"{args.data}:validation"])
        b = rep["budget"]
        record(name, p, seconds, {"byte_ratio": ratio, "plan": rep["plan"], "rows": b["rows"],
                                  "predicted": b["chosen"]["predicted"], "variant": b["chosen"]["variant"],
                                  "heldout": b["heldout"], "quant_sensitivity": b["sensitivity"].get("quant")})
        del p
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "plan_bytes" if args.data == "wiki" else f"plan_bytes_{args.data}"
    (RESULTS / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(rows, RESULTS / f"{stem}.md")


def write_report(rows: list[dict], path: Path) -> None:
    by = {r["arm"]: r for r in rows}
    r0 = rows[0]
    lines = ["# The budgeted plan under a byte budget against quantization alone, SmolLM2-135M (fp32, not healed)", "",
             f"{r0.get('data', 'wiki:test')}, {r0['windows']} windows of {r0['seq_len']} tokens; commit {r0['commit'][:10]}, "
             f"{r0['machine']}; command: `{r0['command']}`", "",
             "| arm | bytes | removed | PPL [95% CI] | what the plan chose | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        chose = "; ".join(f"{x['what']} {x['setting']}" for x in r.get("rows", [])) or "-"
        lines.append(f"| {r['arm']} | {r['bytes']:,} | {r['removed_bytes']:.2%} | {r['ppl']:.2f} "
                     f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {chose} | {r['seconds']} |")
    lines += ["", "The plan against quantization alone at the same or more bytes (paired bootstrap over windows):", ""]
    for bits in (8, 4):
        plan, q = by.get(f"plan@int{bits}"), by.get(f"int{bits}")
        if not plan or not q:
            continue
        d, lo, hi, wins = paired(plan, q)
        verdict = ("the plan is better" if hi < 0 else f"int{bits} alone is better" if lo > 0
                   else "no difference outside the interval")
        lines.append(f"- at int{bits}'s bytes ({q['removed_bytes']:.2%} removed): plan {plan['ppl']:.2f} "
                     f"({plan['bytes']:,} bytes) vs int{bits} {q['ppl']:.2f} ({q['bytes']:,} bytes): plan − int{bits} "
                     f"= {d:+.4f} nats per token [{lo:+.4f}, {hi:+.4f}], plan lower on {wins} of {len(plan['window_nll'])}"
                     f" windows: {verdict}")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
