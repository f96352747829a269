"""`jaxshare basis` and `jaxshare basis-pairs` (Basis Sharing, docs/methods.md §2)."""
from __future__ import annotations

import argparse
import json
import sys

from jaxshare.basis.names import METHODS as BASIS_METHODS
from jaxshare.basis.names import PATHS, TYPE_NAMES
from jaxshare.cli.common import (BASIS_RATIO, COUNT, MODEL_HELP, SEED, SEQ_LEN, batch_size_arg, check_out_dir,
                                 memory_size, nonempty, refuse_dtype_arg, refuse_given)
from jaxshare.optional import check

# Sized for a CPU: 16k tokens, 430 s and 2.0 GiB for SmolLM2-135M on 2 busy cores (256 x 2048 ran about
# an hour and 4.4 GB there); the paper's 256 x 2048 is for accelerators.
CALIB_WINDOWS, CALIB_SEQ_LEN = 32, 512
SCALE_UP = ("on an accelerator use the paper's calibration: --calib-windows 256 --calib-seq-len 2048 "
            "(about 32x the tokens of the default)")


def type_list(s: str) -> list[str]:
    """A comma list of matrix types, checked while parsing."""
    names = [x.strip() for x in s.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of matrix types ({','.join(TYPE_NAMES)}), got {s!r}")
    for n in names:
        if n not in TYPE_NAMES:
            raise argparse.ArgumentTypeError(f"unknown matrix type {n!r}; known: {', '.join(TYPE_NAMES)}")
    return names


def _calib_name(s: str) -> str:
    from jaxshare.data.corpora import calibration_source

    return calibration_source(s)


def announce(m, args) -> None:
    """The calibration's size and a rough cost on stderr, before the long work starts."""
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.basis.calibrate import cache_path, estimate

    size = f"{args.calib_windows} x {args.calib_seq_len} = {args.calib_windows * args.calib_seq_len:,} tokens"
    if cache_path(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed).is_dir():
        print(f"calibration: {size} of {_calib_name(args.calib)}, cached from an earlier run", file=sys.stderr)
        return
    est = estimate(m.cfg, args.calib_windows, args.calib_seq_len, args.batch_size)
    msg = (f"calibration: {size} of {_calib_name(args.calib)} in batches of {args.batch_size}; rough estimate "
           f"~{est['seconds']:.0f} s and ~{est['peak_bytes'] / 2**30:.1f} GiB peak on this {est['backend']} "
           f"(cached for the next run)")
    if est["tokens"] < 256 * 2048:
        msg += "; " + SCALE_UP
    print(msg, file=sys.stderr)


def gram_budget(args) -> int:
    """Bytes of calibration grams held at once: a third of what --max-memory leaves beside the
    loaded model, else 1 GiB (the rest stays on disk, one .npy per layer and input)."""
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.eval.perplexity import rss_bytes

    if getattr(args, "max_memory", None) is None:
        return 1 << 30
    return max(64 << 20, (args.max_memory - rss_bytes()) // 3)


def cast_consuming(params, dtype):
    """params with floating leaves cast to dtype, each source buffer deleted once cast."""
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    import jax
    import jax.numpy as jnp

    from jaxshare.core.dtypes import as_dtype

    dt = as_dtype(dtype)

    def cast(x):
        if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dt:
            return x
        y = x.astype(dt)
        x.delete()
        return y

    return jax.tree_util.tree_map(cast, params)


def cmd_basis(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.basis.factor import BasisError, validate
    from jaxshare.io.load import load_model
    from jaxshare.io.native import save_native
    from jaxshare.methods import METHODS
    from jaxshare.methods.basis import BasisOptions

    # Everything checkable is checked before loading or computing anything (numbers: while parsing).
    if args.method == "svd":
        refuse_given(args, ("calib", "calib_windows", "calib_seq_len", "batch_size", "seed", "max_memory"),
                     "is unused: --method svd calibrates nothing, so it would be ignored: drop it, or use "
                     "--method basis or svd-llm")
    shared, private = args.shared, args.private
    if shared and private and set(shared) & set(private):
        raise BasisError(f"types both shared and private: {', '.join(sorted(set(shared) & set(private)))}")
    # the options a plan's basis step takes, checked the same way
    BasisOptions(ratio=args.ratio, group_size=args.group_size, method=args.method, path=args.path,
                 types=tuple((shared or []) + (private or [])) or None, shared=tuple(shared) if shared else None)
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    m = load_model(args.model, "fp32")
    # --private alone means "the other present types shared": only the model's types say which those are,
    # so the step's options (types and the shared among them) are settled here
    shared, private = validate(m.cfg, args.ratio, args.group_size, args.method, shared, private)
    opts = BasisOptions(ratio=args.ratio, types=tuple(t for t in TYPE_NAMES if t in shared or t in private),
                        group_size=args.group_size, method=args.method, shared=tuple(shared), path=args.path)
    grams, info = None, None
    if args.method != "svd":
        announce(m, args)
        grams, info = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed,
                                args.batch_size, budget_bytes=gram_budget(args))
    # consume: each dense type is freed once factorized (m.params is not used again)
    out, manifest, rep = METHODS["basis"].compress(m, opts, grams, progress=True, consume=True)
    params = out.params if args.dtype == "fp32" else cast_consuming(out.params, args.dtype)
    manifest["calibration"] = info
    save_native(args.out, m.cfg, params, m.tokenizer, extra={"basis": manifest, "compressed_from": str(m.source)},
                overwrite=args.overwrite)
    rep.update(out=str(args.out), model=args.model, calibration=info)
    lines = [f"{'type':6s} {'shared':>6s} {'n':>3s} {'rank':>5s} {'before':>10s} {'after':>10s} {'ratio':>6s} calib err"]
    for t, r in rep["per_type"].items():
        err = "-" if r["rel_calib_error"] is None else f"{r['rel_calib_error']:.3f}"
        lines.append(f"{t:6s} {str(r['shared']):>6s} {r['group_size']:3d} {r['rank']:5d} {r['params_before']:10d} "
                     f"{r['params_after']:10d} {r['ratio']:6.3f} {err}")
    lines.append(f"linear weights {rep['compressible_params_before']} -> {rep['compressible_params_after']} "
                 f"(requested {rep['requested_ratio']:.3f}, achieved {rep['achieved_ratio']:.3f}); model "
                 f"{rep['params_before']} -> {rep['params_after']} params, {rep['bytes_before']} -> "
                 f"{rep['bytes_after']} bytes; whitening fallbacks {rep['fallbacks']}; {rep['seconds']:.1f} s")
    lines.append(f"wrote {args.out}")
    print(json.dumps(rep) if args.json else "\n".join(lines))


def cmd_basis_pairs(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.basis.pairs import pair_losses, write_pairs
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.io.load import load_model

    check("matplotlib", "plots", "basis-pairs' heatmap")  # before the calibration it would be drawn from
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    m = load_model(args.model, "fp32")
    announce(m, args)
    grams, info = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed,
                            args.batch_size)
    res = pair_losses(m.params, m.cfg, grams, args.ratio, args.types)
    obj = write_pairs(args.out, res, {"model": args.model, "ratio": args.ratio, "calibration": info},
                      args.overwrite)
    print(json.dumps({"out": args.out, "summary": obj["summary"]}) if args.json else
          "\n".join([f"{t}: relative loss, adjacent pairs {v['adjacent']:.4f}, all pairs {v['all_pairs']:.4f}, "
                     f"alone {v['alone']:.4f}" for t, v in obj["summary"].items()]
                     + [f"wrote {args.out}/basis_pairs.json and basis_pairs.png"]))


def _calib_args(p) -> None:
    p.add_argument("--calib", default="books:train", help="calibration corpus or file (a bare corpus name means its train split)")
    p.add_argument("--calib-windows", type=COUNT, default=CALIB_WINDOWS,
                   help="calibration windows (sequences) drawn from the corpus; the default suits a CPU, "
                        + SCALE_UP)
    p.add_argument("--calib-seq-len", type=SEQ_LEN, default=CALIB_SEQ_LEN, help="tokens per calibration window")
    batch_size_arg(p, 4, "calibration windows per forward pass (speed and memory only)")
    p.add_argument("--seed", type=SEED, default=0, help="which calibration windows are drawn")


def register(sub, add, group) -> None:
    b = add("basis", cmd_basis, "compress with Basis Sharing (shared SVD bases across layers), SVD-LLM or plain SVD")
    b.add_argument("model", help=MODEL_HELP)
    b.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory")
    b.add_argument("--ratio", type=BASIS_RATIO, default=0.2,
                   help="fraction of the linear weights' parameters removed, in (0, 1); 0.2 is the paper's "
                        "headline setting")
    b.add_argument("--group-size", type=COUNT, default=2, help="layers per shared basis (n)")
    b.add_argument("--method", choices=BASIS_METHODS, default="basis",
                   help="basis: Basis Sharing; svd-llm: whitened SVD per layer (n = 1); svd: plain truncated SVD")
    b.add_argument("--shared", type=type_list, default=None,
                   help=f"comma list of shared types ({','.join(TYPE_NAMES)}) (default: the method's choice)")
    b.add_argument("--private", type=type_list, default=None,
                   help="comma list of per-layer types, still compressed with n = 1 (default: the method's choice)")
    b.add_argument("--path", choices=PATHS, default="auto",
                   help="basis from eigh of S(sum W W^T)S^T (eig) or svd of the concatenation; auto by shape")
    _calib_args(b)
    b.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="dtype the factors are stored in (calibration and factorization run in fp32/fp64)")
    b.add_argument("--max-memory", type=memory_size, default=None,
                   help="peak memory to aim for (e.g. 12G): sets how many layers' calibration grams are "
                        "held at once (default: 1 GiB of grams; the rest waits on disk)")
    b.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")

    bp = add("basis-pairs", cmd_basis_pairs, "Frobenius loss of sharing a basis between any two layers (heatmap + JSON)")
    bp.add_argument("model", help=MODEL_HELP)
    bp.add_argument("out", type=nonempty, help="output directory for basis_pairs.json and basis_pairs.png")
    bp.add_argument("--ratio", type=BASIS_RATIO, default=0.2,
                    help="fraction of each linear weight's parameters removed, which sets the rank, in (0, 1)")
    bp.add_argument("--types", type=type_list, default=None, help="comma list of types (default: all)")
    _calib_args(bp)
    refuse_dtype_arg(bp)
    bp.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")


if __name__ == "__main__":
    sys.exit("use: python -m jaxshare basis ...")
