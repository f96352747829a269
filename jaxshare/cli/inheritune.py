"""Subcommands of Inheritune: `degeneration` (attention-degeneration analysis) and `inherit`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxshare.cli.common import (COUNT, DATA_HELP, MODEL_HELP, SEQ_LEN, check_out_dir, emit, float_in, int_at_least,
                                 nonempty, param_dtype_arg, plot_dir_arg, refuse_dtype_arg, refuse_given,
                                 sample_windows_arg, storage_dtype_arg)
from jaxshare.data.corpora import load_corpus

TAU = float_in(0.0, 1.0, low_open=True)
SHARE = float_in(0.0, 1.0)
HEAD_FRAC = float_in(0.0, 1.0, high_open=True)


def run_analysis(m, args) -> dict:
    # deferred: numpy and jax, and the parser (`jaxshare --help`) imports this module
    from jaxshare.data.tokens import token_windows, tokenize_corpus
    from jaxshare.eval.perplexity import check_seq_len
    from jaxshare.inheritune.degeneration import analyze

    check_seq_len(m.cfg, args.seq_len)
    tokens = token_windows(tokenize_corpus(m.need_tokenizer("degeneration"), load_corpus(args.data)), args.seq_len,
                           args.max_windows)
    res = analyze(m.params, m.cfg, tokens, args.tau, args.rank_max, args.mass_min, args.head_frac, args.chunk)
    res["batch"], res["seq_len"] = int(tokens.shape[0]), args.seq_len
    return res


def _summary_text(res: dict) -> str:
    import numpy as np  # deferred: keeps numpy off the parser's (`jaxshare --help`) import path

    deg = np.flatnonzero(res["degenerate"]).tolist()
    r, m = res["layer_rank_mean"], res["layer_mass_mean"]
    return (f"{len(r)} layers x {res['rank'].shape[1]} heads on {res['batch']} x {res['seq_len']} tokens: "
            f"mean rank at tau={res['thresholds']['tau']} {r[0]:.1f} (layer 0) -> {r[-1]:.1f} (last); "
            f"mean single-column mass {m[0]:.2f} -> {m[-1]:.2f}; degenerate layers: {deg or 'none'}")


def cmd_degeneration(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.inheritune.degeneration import to_json, write_plots
    from jaxshare.io.load import load_model, resolve

    resolve(args.model)
    m = load_model(args.model, args.param_dtype)
    res = run_analysis(m, args)
    out = {"model": args.model, "data": args.data, "batch": res["batch"], "seq_len": res["seq_len"], **to_json(res)}
    text = _summary_text(res)
    if args.plot_dir:
        d = Path(args.plot_dir)
        files = write_plots(res, d, Path(str(args.model)).name)
        out["plots"] = [str(f) for f in files]
        tmp = d / ".degeneration.json.partial"
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(d / "degeneration.json")
        out["json"] = str(d / "degeneration.json")
        text += "\nwrote " + ", ".join(out["plots"] + [out["json"]])
    emit(args, out, text)


def cmd_inherit(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.core.params import count_params
    from jaxshare.inheritune.inherit import check_layers
    from jaxshare.io.load import load_model, resolve
    from jaxshare.io.native import save_native
    from jaxshare.methods import METHODS, InheritOptions

    if not args.auto:  # the analysis flags choose k; --layers gives it
        refuse_given(args, ("data", "max_windows", "seq_len", "tau", "rank_max", "mass_min", "head_frac", "chunk"),
                     "is unused: it tunes --auto's analysis, and --layers gives k: drop it, or use --auto")
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    resolve(args.model)
    m = load_model(args.model, args.dtype)  # held and stored in --dtype
    rep = {"model": args.model, "out": str(args.out), "from_layers": m.cfg.n_layers}
    if args.auto:
        from jaxshare.inheritune.degeneration import auto_k

        res = run_analysis(m, args)
        k, why = auto_k(res)
        rep.update(auto=True, reason=why, degenerate_layers=[int(i) for i in res["degenerate"].nonzero()[0]])
    else:
        k, why = check_layers(args.layers, m.cfg.n_layers), None
    m = dataclasses.replace(m, meta={**m.meta, "extra": {**m.extra, "derived_from": str(m.source)}})
    out, _ = METHODS["inherit"].apply(m, InheritOptions(k))  # the plan's inherit step, the same object
    params, cfg = out.params, out.cfg
    save_native(args.out, cfg, params, m.tokenizer, extra=out.extra, overwrite=args.overwrite)
    rep.update(layers=k, params_before=count_params(m.params), params_after=count_params(params))
    emit(args, rep, (f"--auto: {why}\n" if why else "") +
          f"inherited the first {k} of {m.cfg.n_layers} layers ({rep['params_before'] / 1e6:.1f}M -> "
          f"{rep['params_after'] / 1e6:.1f}M params); wrote {args.out}")


def _analysis_flags(p, windows: int = 8) -> None:
    p.add_argument("--data", default="books:validation", help=DATA_HELP)
    sample_windows_arg(p, windows, "windows of --data analysed (the first K; the result depends on it)")
    p.add_argument("--seq-len", type=SEQ_LEN, default=512, help="tokens per window")
    p.add_argument("--tau", type=TAU, default=0.9, help="energy share the rank must reach, in (0, 1]")
    p.add_argument("--rank-max", type=int_at_least(0), default=1, help="a head is degenerate with rank <= this ...")
    p.add_argument("--mass-min", type=SHARE, default=0.5, help="... or single-column mass >= this, in [0, 1]")
    p.add_argument("--head-frac", type=HEAD_FRAC, default=0.5,
                   help="a layer is degenerate when more than this share of its heads are, in [0, 1)")
    p.add_argument("--chunk", type=COUNT, default=4, help="heads per batched SVD")


def register(sub, add, group) -> None:
    d = add("degeneration", cmd_degeneration, "attention-degeneration analysis: rank and single-column mass "
                                              "per layer and head on real text (Inheritune)")
    d.add_argument("model", help=MODEL_HELP)
    _analysis_flags(d)
    param_dtype_arg(d)
    refuse_dtype_arg(d)
    plot_dir_arg(d, "write degeneration.json and PNG heatmaps, curves and example maps to DIR (default: none)")

    i = add("inherit", cmd_inherit, "Inheritune: a smaller model of the first k layers (+ embeddings, final norm, "
                                    "LM head)")
    i.add_argument("model", help=MODEL_HELP)
    i.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory")
    g = i.add_mutually_exclusive_group(required=True)
    g.add_argument("--layers", type=COUNT, help="k, the number of leading layers to keep (1..L); one of --layers or --auto is required "
                                        "(default: none)")
    g.add_argument("--auto", action="store_true", help="pick k from the degeneration analysis and say why")
    _analysis_flags(i)
    storage_dtype_arg(i)
    i.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier jaxshare output")
