"""`jaxshare basis` and `jaxshare basis-pairs` (Basis Sharing, METHODS.md §2)."""
from __future__ import annotations

import json
import sys

from jaxshare.basis.factor import METHODS, TYPES, BasisError


def _types(s: str | None) -> list[str] | None:
    if s is None:
        return None
    names = [x.strip() for x in s.split(",") if x.strip()]
    for n in names:
        if n not in TYPES:
            raise BasisError(f"unknown matrix type {n!r}; known: {', '.join(TYPES)}")
    return names


def _calib_name(s: str) -> str:
    return "wiki:train" if s == "wiki" else s  # calibrating on wiki:test would leak into the evaluation


def _check_out(out: str, overwrite: bool) -> None:
    from jaxshare.io.atomic import check_destination

    check_destination(out, overwrite)  # before loading or computing anything


def cmd_basis(args) -> None:
    from jaxshare.basis.factor import validate
    from jaxshare.basis.compress import compress
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.io.native import save_native
    from jaxshare.io.load import load_model

    # Everything checkable is checked before loading or computing anything.
    shared, private = _types(args.shared), _types(args.private)
    if not (0.0 < args.ratio < 1.0):
        raise BasisError(f"--ratio must be strictly between 0 and 1, got {args.ratio}")
    if args.group_size < 1:
        raise BasisError(f"--group-size must be at least 1, got {args.group_size}")
    if shared and private and set(shared) & set(private):
        raise BasisError(f"types both shared and private: {', '.join(sorted(set(shared) & set(private)))}")
    if args.calib_windows < 1 or args.calib_seq_len < 2:
        raise BasisError("--calib-windows must be >= 1 and --calib-seq-len >= 2")
    _check_out(args.out, args.overwrite)
    m = load_model(args.model, "fp32")
    validate(m.cfg, args.ratio, args.group_size, args.method, shared, private)
    grams, info = None, None
    if args.method != "svd":
        grams, info = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed,
                                args.batch_size)
    params, manifest, rep = compress(m.params, m.cfg, grams, args.ratio, args.group_size, args.method, shared,
                                     private, path=args.path)
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
    from jaxshare.basis.pairs import pair_losses, write_pairs
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.io.load import load_model

    types = _types(args.types)
    if not (0.0 < args.ratio < 1.0):
        raise BasisError(f"--ratio must be strictly between 0 and 1, got {args.ratio}")
    _check_out(args.out, args.overwrite)
    m = load_model(args.model, "fp32")
    grams, info = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed)
    res = pair_losses(m.params, m.cfg, grams, args.ratio, types)
    obj = write_pairs(args.out, res, {"model": args.model, "ratio": args.ratio, "calibration": info},
                      args.overwrite)
    print(json.dumps({"out": args.out, "summary": obj["summary"]}) if args.json else
          "\n".join([f"{t}: relative loss, adjacent pairs {v['adjacent']:.4f}, all pairs {v['all_pairs']:.4f}, "
                     f"alone {v['alone']:.4f}" for t, v in obj["summary"].items()]
                     + [f"wrote {args.out}/basis_pairs.json and basis_pairs.png"]))


def _calib_args(p, windows: int, seq_len: int) -> None:
    p.add_argument("--calib", default="wiki:train", help="calibration corpus or file (bare 'wiki' = wiki:train)")
    p.add_argument("--calib-windows", type=int, default=windows)
    p.add_argument("--calib-seq-len", type=int, default=seq_len)
    p.add_argument("--seed", type=int, default=0, help="which calibration windows are drawn")


def register(sub, add) -> None:
    from jaxshare.cli.main import MODEL_HELP

    b = add("basis", cmd_basis, "compress with Basis Sharing (shared SVD bases across layers), SVD-LLM or plain SVD")
    b.add_argument("model", help=MODEL_HELP)
    b.add_argument("out", help="output jaxshare checkpoint directory")
    b.add_argument("--ratio", type=float, default=0.2, help="compression ratio of the linear weights, in (0, 1)")
    b.add_argument("--group-size", type=int, default=2, help="layers per shared basis (n)")
    b.add_argument("--method", choices=METHODS, default="basis",
                   help="basis: Basis Sharing; svd-llm: whitened SVD per layer (n = 1); svd: plain truncated SVD")
    b.add_argument("--shared", default=None, help=f"comma list of shared types ({','.join(TYPES)})")
    b.add_argument("--private", default=None, help="comma list of per-layer types (still compressed, n = 1)")
    b.add_argument("--path", choices=["auto", "eig", "concat"], default="auto",
                   help="basis from eigh of S(sum W W^T)S^T (eig) or svd of the concatenation; auto by shape")
    b.add_argument("--batch-size", type=int, default=4, help="calibration batch")
    _calib_args(b, 256, 2048)
    b.add_argument("--overwrite", action="store_true")

    bp = add("basis-pairs", cmd_basis_pairs, "Frobenius loss of sharing a basis between any two layers (heatmap + JSON)")
    bp.add_argument("model", help=MODEL_HELP)
    bp.add_argument("out", help="output directory for basis_pairs.json and basis_pairs.png")
    bp.add_argument("--ratio", type=float, default=0.2, help="compression ratio that sets the rank")
    bp.add_argument("--types", default=None, help="comma list of types (default: all)")
    _calib_args(bp, 32, 512)
    bp.add_argument("--overwrite", action="store_true")


if __name__ == "__main__":
    sys.exit("use: python -m jaxshare basis ...")
