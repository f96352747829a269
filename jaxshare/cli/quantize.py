"""`jaxshare quantize`: weight-only int8/int4 quantization (RTN or GPTQ), of any model (docs/methods.md §5)."""
from __future__ import annotations

import argparse
import json
import sys

from jaxshare.cli.common import (MODEL_HELP, calibration_args, check_out_dir, float_in, nonempty,
                                 refuse_given, storage_dtype_arg)

# The same CPU-sized calibration as `jaxshare basis` (the grams are cached and shared with it).
CALIB_WINDOWS, CALIB_SEQ_LEN = 32, 512
GPTQ_ONLY = ("damp", "act_order", "calib", "calib_windows", "calib_seq_len", "batch_size", "seed")


def bits_arg(text: str) -> int:
    if text not in ("4", "8"):
        raise argparse.ArgumentTypeError(f"must be 4 or 8, got {text}")
    return int(text)


def group_arg(text: str):
    if text == "channel":
        return text
    if text not in ("32", "64", "128"):
        raise argparse.ArgumentTypeError(f"must be 32, 64, 128 or 'channel', got {text}")
    return int(text)


def types_arg(text: str) -> tuple:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.core.matrices import TYPES

    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [n for n in names if n not in TYPES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(TYPES)}, got {text!r}")
    return names


def cmd_quantize(args) -> None:
    # deferred: jax-heavy (jaxshare.cli.basis too, through jaxshare.basis.factor), and the parser
    # (`jaxshare --help`) imports this module
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.cli.basis import _calib_name, announce
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native
    from jaxshare.methods import METHODS
    from jaxshare.quant.model import QuantSpec, check_model

    if args.method == "rtn":
        refuse_given(args, GPTQ_ONLY, "is a GPTQ option, and --method rtn (no calibration) would ignore it: "
                                      "drop it, or use --method gptq")
    group = {None: 64 if args.bits == 4 else None, "channel": None}.get(args.group, args.group)
    spec = QuantSpec(args.bits, group, not args.asym, args.method, args.damp, args.act_order,
                     args.types)  # the Method's Options
    spec.check()
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    m = load_model(args.model, args.dtype)  # the leaves left unquantized are held and stored in --dtype
    check_model(m.params, m.cfg, spec)  # an already quantized model, a group that does not divide a row
    grams = info = None
    if args.method == "gptq":
        announce(m, args)
        grams, info = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed,
                                args.batch_size)
    # consume: each weight is freed once its type is quantized (m.params is not used again)
    q, rep = METHODS["quantize"].apply(m, spec, grams, progress=True, consume=True)
    extra = q.extra  # the source's sharing/basis details ride along
    # the CLI's record of the spec, as it has always written it (per channel: group null, not 'channel')
    extra["quant"] = {"method": args.method, "bits": args.bits, "group": group, "sym": not args.asym}
    if args.types is not None:
        extra["quant"]["types"] = list(spec.types)
    if args.method == "gptq":  # what RTN does not use is not recorded as if it had been
        extra["quant"].update(damp=args.damp, act_order=args.act_order, calibration=info)
    extra["quantized_from"] = str(m.source)
    save_native(args.out, q.cfg, q.params, q.tokenizer, extra=extra, overwrite=args.overwrite)
    rep.update(out=str(args.out), model=args.model, calibration=info)
    g = "per channel" if group is None else f"group {group}"
    lines = [f"{'kind':8s} {'bytes before':>13s} {'bytes after':>12s} {'ratio':>6s}"]
    for k, r in rep["per_kind"].items():
        lines.append(f"{k:8s} {r['bytes_before']:13d} {r['bytes_after']:12d} {r['bytes_after'] / r['bytes_before']:6.3f}")
    lines.append(f"{args.method} int{args.bits} {g} {'asym' if args.asym else 'sym'}: linear weights "
                 f"{rep['linear_bytes_before']} -> {rep['linear_bytes_after']} bytes; model {rep['bytes_before']} -> "
                 f"{rep['bytes_after']} bytes (embeddings and norms stay as they are); {rep['seconds']:.1f} s")
    lines.append(f"wrote {args.out}")
    print(json.dumps(rep) if args.json else "\n".join(lines))


def gguf_type_arg(text: str) -> str:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.io.gguf_export import TYPES

    if text not in TYPES:
        raise argparse.ArgumentTypeError(f"unsupported GGUF type {text!r}; choose one of {', '.join(TYPES)}")
    return text


def gguf_export_args(e) -> None:
    """`jaxshare export`'s GGUF flags (the HF path ignores them)."""
    e.add_argument("--format", choices=("hf", "gguf"), default=None,
                   help="output format (default: gguf when OUT ends in .gguf, else an HF directory)")
    e.add_argument("--gguf-type", type=gguf_type_arg, default="q8_0",
                   help="GGUF tensor type of the matrices: q8_0, q4_0, q4_1, q5_0, q5_1, f16, bf16 or f32")


def export_gguf_cmd(args) -> None:
    """`jaxshare export MODEL OUT.gguf`: llama.cpp names, metadata, tokenizer and chat template."""
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.io import registry
    from jaxshare.io.gguf_export import check_destination, export_gguf
    from jaxshare.io.load import load_model

    check_destination(args.out, args.overwrite, sources=(args.model,))  # before loading: a taken OUT costs nothing
    m = load_model(args.model, "fp32", allow_bin=args.allow_bin)
    source = m.source if m.kind == "gguf" else registry.registered_gguf(args.model) if m.kind == "registered" else None
    out = export_gguf(m.params, m.cfg, args.out, m.tokenizer, args.gguf_type, args.overwrite, source_gguf=source,
                      name=f"{m.cfg.family} via jaxshare")
    obj = {"out": str(out), "format": "gguf", "gguf_type": args.gguf_type, "bytes": out.stat().st_size}
    print(json.dumps(obj) if args.json else f"wrote GGUF file {out} ({args.gguf_type}, {obj['bytes']} bytes)")


def register(sub, add, group) -> None:
    q = add("quantize", cmd_quantize, "weight-only int8/int4 quantization (RTN or GPTQ) of any model, "
                                      "shared and basis models included")
    q.add_argument("model", help=MODEL_HELP)
    q.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory")
    q.add_argument("--bits", type=bits_arg, default=4, help="4 or 8")
    q.add_argument("--group", type=group_arg, default=None,
                   help="input rows per scale: 32, 64, 128, or 'channel' (default: 64 for int4, channel for int8)")
    q.add_argument("--asym", action="store_true", help="asymmetric codes (a zero point per group)")
    q.add_argument("--types", type=types_arg, default=None,
                   help="comma list of the weight types quantized, e.g. up,down (default: every linear type; "
                        "the others stay as they are)")
    q.add_argument("--method", choices=("rtn", "gptq"), default="gptq", help="round-to-nearest or GPTQ")
    q.add_argument("--damp", type=float_in(0.0, 1.0, low_open=True, high_open=True), default=0.01,
                   help="GPTQ damping, a fraction of the gram's mean diagonal")
    q.add_argument("--act-order", action="store_true", help="GPTQ: quantize inputs by decreasing diag(H); on SmolLM2 int4 GPTQ beats RTN only with it "
                        "(outlier input channels otherwise absorb the error)")
    calibration_args(q, CALIB_WINDOWS, CALIB_SEQ_LEN, "GPTQ calibration")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")
    storage_dtype_arg(q)


if __name__ == "__main__":
    sys.exit("use: python -m jaxshare quantize ...")
