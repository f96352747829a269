"""`jaxshare prune`: structured width pruning (Minitron-style) to a smaller dense model."""
from __future__ import annotations

import json
import sys

from jaxshare.cli.common import (MODEL_HELP, calibration_args, check_out_dir, float_in, nonempty,
                                 storage_dtype_arg)

# The same CPU-sized calibration as `jaxshare basis` (the grams are cached and shared with it).
CALIB_WINDOWS, CALIB_SEQ_LEN = 32, 512
PRUNE_RATIO = float_in(0.0, 1.0, high_open=True)


def cmd_prune(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.cli.basis import _calib_name, announce
    from jaxshare.core.params import cast_params
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native
    from jaxshare.methods import METHODS, PruneOptions

    opts = PruneOptions(args.mlp, args.kv_groups, args.compensate, args.per_layer)  # the plan step's options, checked alike
    method = METHODS["prune"]
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    m = load_model(args.model, "fp32")  # ranked, sliced and refit in fp32; stored in --dtype
    method.check(opts, m.cfg)  # a ratio that removes no channel, every channel or part of a KV group
    grams = info = None
    if opts.active:
        announce(m, args)
        grams, info = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed,
                                args.batch_size)
    out, rep = method.apply(m, opts, grams, consume=True)  # m.params is not used again
    params = out.params if args.dtype == "fp32" else cast_params(out.params, args.dtype)
    extra = out.extra
    extra["prune"] = {**extra["prune"], "calibration": info}
    extra["pruned_from"] = str(m.source)
    save_native(args.out, out.cfg, params, out.tokenizer, extra=extra, overwrite=args.overwrite)
    rep.update(out=str(args.out), model=args.model, calibration=info)
    lines = []
    for t, r in rep["per_type"].items():
        fit = r.get("rel_calib_error_compensated")
        lines.append(f"{t}: calibration error of the kept channels {r['rel_calib_error_sliced']:.4f}"
                     + ("" if fit is None else f", compensated {fit:.4f}"))
    if "widths" in rep:
        w = rep["widths"]
        lines.append(f"MLP channels kept per layer: {min(w)} to {max(w)} of {rep['d_ff'][0]} ({', '.join(map(str, w))}); "
                     "a layer computes at the widest layer's width")
    lines.append(f"d_ff {rep['d_ff'][0]} -> {rep['d_ff'][1]}{' (widest layer)' if 'widths' in rep else ''}, KV groups {rep['n_kv_heads'][0]} -> "
                 f"{rep['n_kv_heads'][1]} (heads {rep['n_heads'][0]} -> {rep['n_heads'][1]}) per layer; model "
                 f"{rep['params_before']} -> {rep['params_after']} params ({100 * rep['fraction_removed']:.1f}% "
                 f"removed); {rep['seconds']:.1f} s")
    lines.append(f"wrote {args.out}")
    print(json.dumps(rep) if args.json else "\n".join(lines))


def register(sub, add, group) -> None:
    p = add("prune", cmd_prune, "structured width pruning (Minitron-style): remove MLP channels and KV groups "
                                "by calibration activations, giving a smaller dense model")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory")
    p.add_argument("--mlp", type=PRUNE_RATIO, default=0.0,
                   help="share of each layer's MLP channels removed, in [0, 1) (the same count in every layer unless "
                        "--per-layer)")
    p.add_argument("--kv-groups", type=PRUNE_RATIO, default=0.0,
                   help="share of each layer's KV groups removed with their query heads, in [0, 1); must be a "
                        "whole number of groups")
    p.add_argument("--per-layer", action="store_true",
                   help="remove the same number of MLP channels from the model as a whole, each layer its own "
                        "count (the channels of least energy in the residual stream go first, at most 1.5x the "
                        "uniform count per layer); kept as per-layer widths natively, padded with zero channels to "
                        "the widest layer in HF and GGUF exports")
    p.add_argument("--compensate", action="store_true",
                   help="refit down (and o) on the kept channels by least squares on the calibration grams")
    calibration_args(p, CALIB_WINDOWS, CALIB_SEQ_LEN, "calibration")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")
    storage_dtype_arg(p)


if __name__ == "__main__":
    sys.exit("use: python -m jaxshare prune ...")
