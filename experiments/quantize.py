"""Weight-only quantization alone and composed with sharing, on SmolLM2-135M (issue 14, METHODS.md §5).

Arms: fp32 (the registered model: the Q4_1 GGUF dequantized), int8 (RTN and GPTQ, per channel), int4
RTN and GPTQ (group 64, symmetric), int4 RTN asymmetric group 32 (the original file's own grid),
the original Q4_1 GGUF itself and our re-export of it as q4_1, DirectShare 30% (qk, keep=mean, the best
keep at 30%) alone and + int4 GPTQ, Basis Sharing 20% (n=2) alone and + int8 / int4 GPTQ on its factors.
Metrics: DATA:test and canterbury PPL (METHODS.md protocol, the first --windows windows of --seq-len
tokens), DATA being --data (books by default; wiki needs the BIG-bench sdist, which the package
index no longer serves), bytes of the params pytree (whole model, and the layers' linear weights
alone). GPTQ and Basis Sharing calibrate once on the dense model (DATA:train, --calib-windows x
--calib-seq-len, seed 0, cached); the composed arms reuse those grams (the shared model's own inputs
differ slightly). Each arm is one JSON line in experiments/results/quantize_books.jsonl
(wiki: quantize.jsonl) as it finishes (resumable); --report writes quantize_books.json beside it and
prints the table.

  nice python -m experiments.quantize            # then: python -m experiments.quantize --report
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from benchmarks.common import append_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CANTERBURY = "canterbury"
ARMS = ("fp32", "int8-rtn", "int8-gptq", "int4-rtn-g64", "int4-gptq-g64", "int4-gptq-g64-act", "int4-gptq-g64-damp0.1",
        "int4-rtn-asym-g32", "gguf-q4_1-original",
        "gguf-q4_1-reexport", "ds30", "ds30+int4-gptq-g64", "ds30+int4-gptq-g64-act", "bs20", "bs20+int8-gptq", "bs20+int4-gptq-g64")


def linear_bytes(params) -> int:
    from jaxshare.basis.factor import TYPES, get_type
    from jaxshare.core.params import param_bytes

    return sum(param_bytes(leaf) for t in TYPES if (leaf := get_type(params.layers, t)) is not None)


def gguf_tensor_bytes(path) -> int:
    import gguf

    return int(sum(t.n_bytes for t in gguf.GGUFReader(str(path)).tensors))


def rows_path(data: str) -> Path:
    """The rows of one --data: wiki's keep the name they were written under before books existed."""
    return RESULTS / ("quantize.jsonl" if data == "wiki" else f"quantize_{data}.jsonl")


def run(args) -> None:
    import jax

    from jaxshare.basis.calibrate import calibrate
    from jaxshare.basis.compress import compress
    from jaxshare.core.params import param_bytes
    from jaxshare.data.tokens import token_ids, token_windows
    from jaxshare.eval.perplexity import perplexity_of_windows
    from jaxshare.headshare.directshare import direct_share
    from jaxshare.io import registry
    from jaxshare.io.load import load_model
    from jaxshare.quant import gptq
    from jaxshare.quant.model import QuantSpec, quantize_params

    gptq.CHUNK_ELEMS = 1 << 22  # small vmapped chunks: this machine is shared, keep the peak low
    log, corpora = rows_path(args.data), (f"{args.data}:test", CANTERBURY)
    done = set()
    if log.exists():
        done = {json.loads(line)["arm"] for line in log.read_text().splitlines() if line.strip()}
    m = load_model("smollm2-135m")
    windows = {c: token_windows(token_ids(c, m.tokenizer), args.seq_len, args.windows) for c in corpora}
    grams, calib = calibrate(m, f"{args.data}:train", args.calib_windows, args.calib_seq_len, 0)
    cache: dict = {}

    def ds30():
        if "ds30" not in cache:
            cache["ds30"] = direct_share(m.params, m.cfg, 0.3, "qk", "mean")[0]
        return cache["ds30"]

    def bs20():
        if "bs20" not in cache:
            cache["bs20"] = compress(m.params, m.cfg, grams, 0.2, 2, "basis")[0]
        return cache["bs20"]

    def quant(params, bits, group, method, sym=True, **kw):
        return quantize_params(params, m.cfg, QuantSpec(bits, group, sym, method, **kw), grams)

    def from_gguf(path):
        return load_model(path).params

    def reexport():
        import tempfile

        from jaxshare.io.gguf_export import export_gguf

        with tempfile.TemporaryDirectory() as d:
            out = export_gguf(m.params, m.cfg, Path(d) / "smollm2-q4_1.gguf", m.tokenizer, "q4_1")
            return from_gguf(out), {"gguf_tensor_bytes": gguf_tensor_bytes(out)}

    builders = {
        "fp32": lambda: (m.params, {}),
        "int8-rtn": lambda: quant(m.params, 8, None, "rtn"),
        "int8-gptq": lambda: quant(m.params, 8, None, "gptq"),
        "int4-rtn-g64": lambda: quant(m.params, 4, 64, "rtn"),
        "int4-gptq-g64": lambda: quant(m.params, 4, 64, "gptq"),
        "int4-gptq-g64-act": lambda: quant(m.params, 4, 64, "gptq", act_order=True),
        "int4-gptq-g64-damp0.1": lambda: quant(m.params, 4, 64, "gptq", damp=0.1),
        "int4-rtn-asym-g32": lambda: quant(m.params, 4, 32, "rtn", sym=False),
        "gguf-q4_1-original": lambda: (from_gguf(registry.registered_gguf("smollm2-135m")),
                                       {"gguf_tensor_bytes": gguf_tensor_bytes(registry.registered_gguf("smollm2-135m"))}),
        "gguf-q4_1-reexport": reexport,
        "ds30": lambda: (ds30(), {}),
        "ds30+int4-gptq-g64": lambda: quant(ds30(), 4, 64, "gptq"),
        "ds30+int4-gptq-g64-act": lambda: quant(ds30(), 4, 64, "gptq", act_order=True),
        "bs20": lambda: (bs20(), {}),
        "bs20+int8-gptq": lambda: quant(bs20(), 8, None, "gptq"),
        "bs20+int4-gptq-g64": lambda: quant(bs20(), 4, 64, "gptq"),
    }
    if all(a.startswith("bs20") for a in args.arms if a not in done):
        bs20()
        m = dataclasses.replace(m, params=None)  # only the basis model is needed from here on: free the dense one
    for arm in args.arms:
        if arm in done:
            continue
        t0 = time.perf_counter()
        params, rep = builders[arm]()
        row = {"arm": arm, "bytes": param_bytes(params), "linear_bytes": linear_bytes(params),
               "build_seconds": time.perf_counter() - t0}
        for key in ("gguf_tensor_bytes", "per_kind", "per_part", "seconds"):
            if key in rep:
                row[key] = rep[key]
        for c in corpora:
            r = perplexity_of_windows(params, m.cfg, windows[c], args.batch_size)
            row[c] = {k: r[k] for k in ("ppl", "nll", "tokens", "windows", "seq_len")}
        row.update(data=corpora[0], calibration=calib, seconds=time.perf_counter() - t0)
        append_row(log, row, "experiments.quantize")
        print(f"{arm}: {corpora[0]} {row[corpora[0]]['ppl']:.2f} canterbury {row[CANTERBURY]['ppl']:.2f} "
              f"bytes {row['bytes'] / 2**20:.1f} MiB (linear {row['linear_bytes'] / 2**20:.1f})", flush=True)
        del params
        jax.clear_caches()


def report(data: str) -> None:
    log = rows_path(data)
    rows = {r["arm"]: r for r in map(json.loads, log.read_text().splitlines()) if r}
    base, test = rows.get("fp32"), f"{data}:test"
    lines = [f"| arm | {test} PPL | canterbury PPL | model MiB | linear-weight MiB |", "|---|---|---|---|---|"]
    for arm in ARMS:
        if arm not in rows:
            continue
        r = rows[arm]

        def rel(c, r=r, arm=arm):
            return f" ({100 * (r[c]['ppl'] / base[c]['ppl'] - 1):+.1f}%)" if base and arm != "fp32" else ""

        size = f"{r['bytes'] / 2**20:.1f}"
        if "gguf_tensor_bytes" in r:
            size += f" (file tensors {r['gguf_tensor_bytes'] / 2**20:.1f})"
        lines.append(f"| {arm} | {r[test]['ppl']:.2f}{rel(test)} | {r[CANTERBURY]['ppl']:.2f}"
                     f"{rel(CANTERBURY)} | {size} | {r['linear_bytes'] / 2**20:.1f} |")
    ex = next(iter(rows.values()))
    proto = (f"PPL on the first {ex[test]['windows']} windows x {ex[test]['seq_len']} tokens of each set "
             f"(METHODS.md protocol); calibration {ex['calibration']['windows']} x {ex['calibration']['seq_len']} "
             f"{data}:train tokens, seed 0")
    summary = {"protocol": proto, "arms": rows, "table": lines}
    log.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(proto + "\n\n" + "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="books", choices=("books", "wiki"),
                   help="DATA:train calibrates, DATA:test and canterbury score")
    p.add_argument("--arms", default=",".join(ARMS), help="comma list of arms")
    p.add_argument("--windows", type=int, default=8, help="evaluation windows per corpus")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--report", action="store_true", help="summarize the JSONL into quantize.json and a table")
    args = p.parse_args(argv)
    if args.report:
        report(args.data)
        return 0
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arms: {sorted(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
