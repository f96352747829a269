"""Subcommands of head-wise sharing: `similarity`, `attention-similarity`, `share`."""
from __future__ import annotations

from pathlib import Path

from jaxshare.cli.basis import CALIB_SEQ_LEN, CALIB_WINDOWS, _calib_name, announce
from jaxshare.cli.common import (COUNT, DATA_HELP, MODEL_HELP, SEED, SEQ_LEN, SHARE_RATIO, batch_size_arg,
                                 check_out_dir, emit, nonempty, param_dtype_arg, plot_dir_arg, refuse_dtype_arg,
                                 refuse_given, sample_windows_arg)
from jaxshare.data.corpora import load_corpus
from jaxshare.headshare.names import CORRECT, KEEP, MATCHES


def cmd_similarity(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    import numpy as np

    from jaxshare import plots
    from jaxshare.io.load import load_model
    from jaxshare.headshare.similarity import best_partners, similarity_matrix

    m = load_model(args.model, args.param_dtype)  # the Grams accumulate in fp32 either way
    K = m.cfg.n_kv_heads
    found = best_partners(m.params, args.match)
    out = {"model": args.model, "match": args.match, "units": m.cfg.n_layers * K, "functions": {}}
    lines = []
    for f, r in found.items():
        ok = r["partner"] >= 0
        own_layer = np.repeat(np.arange(m.cfg.n_layers), K).reshape(r["partner"].shape)
        dist = (own_layer - r["partner"] // K)[ok]
        scores = r["score"][ok]
        out["functions"][f] = {
            "score_mean": float(scores.mean()), "score_max": float(scores.max()), "score_min": float(scores.min()),
            "layer_distance_mean": float(dist.mean()), "layer_distance_hist": np.bincount(dist).tolist(),
            "partner": r["partner"].tolist(), "score": np.where(ok, r["score"], np.nan).tolist()}
        lines.append(f"{f}: best-partner cosine mean {scores.mean():.3f} (max {scores.max():.3f}); "
                     f"mean layer distance {dist.mean():.2f}")
        if args.plot_dir:
            d = Path(args.plot_dir)
            S = np.asarray(similarity_matrix(m.params, f))
            files = [plots.heatmap(S, d / f"similarity_{f}.png", f"unit x unit cosine ({f})", tick_every=K),
                     plots.histogram(dist, d / f"partner_distance_{f}.png", f"layer distance to best partner ({f})",
                                     "layers back", integer=True),
                     plots.histogram(scores, d / f"scores_{f}.png", f"best-partner cosine ({f})", "cosine", bins=30)]
            out["functions"][f]["plots"] = [str(p) for p in files]
            lines.append("  plots: " + ", ".join(str(p) for p in files))
    emit(args, out, "\n".join(lines))


def cmd_attention_similarity(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    import numpy as np

    from jaxshare import plots
    from jaxshare.eval.attention_maps import map_similarity
    from jaxshare.data.tokens import token_windows, tokenize_corpus
    from jaxshare.eval.perplexity import check_seq_len
    from jaxshare.io.load import load_model

    m = load_model(args.model, args.param_dtype)
    check_seq_len(m.cfg, args.seq_len)
    tokens = token_windows(tokenize_corpus(m.need_tokenizer("attention similarity"), load_corpus(args.data)),
                           args.seq_len, args.max_windows)
    sim = map_similarity(m.params, m.cfg, tokens)
    L = m.cfg.n_layers
    off = ~np.eye(L, dtype=bool)
    adjacent = float(np.mean([sim["layer"][i, i + 1] for i in range(L - 1)]))
    out = {"model": args.model, "data": args.data, "batch": int(tokens.shape[0]), "seq_len": args.seq_len,
           "layer_similarity": sim["layer"].tolist(), "adjacent_layer_mean": adjacent,
           "layer_offdiag_mean": float(sim["layer"][off].mean())}
    text = (f"attention-map cosine over {tokens.shape[0]} x {args.seq_len} tokens: adjacent layers {adjacent:.3f}, "
            f"all layer pairs {out['layer_offdiag_mean']:.3f}")
    if args.plot_dir:
        d = Path(args.plot_dir)
        files = [plots.heatmap(sim["layer"], d / "attention_layer_similarity.png", "attention-map cosine, layer x layer",
                               tick_every=1),
                 plots.heatmap(sim["head"], d / "attention_head_similarity.png", "attention-map cosine, head x head",
                               tick_every=m.cfg.n_heads)]
        out["plots"] = [str(p) for p in files]
        text += "\nplots: " + ", ".join(out["plots"])
    emit(args, out, text)


def roots_of(params, m: str):
    """[L, K] flat id of the unit whose weights each unit of matrix `m` reads (itself when untied),
    read back from the bank: a tied group's root is its earliest unit (partners are in earlier
    layers), and the compacted rows keep the roots' order."""
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    import numpy as np

    from jaxshare.headshare.sharing import index_of

    index = index_of(params, m)
    first = np.full(int(index.max()) + 1, index.size, np.int64)
    np.minimum.at(first, index.ravel(), np.arange(index.size))
    return first[index]


def cmd_share(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare import plots
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.headshare.sharing import SharingError, manifest
    from jaxshare.io.load import load_model, resolve
    from jaxshare.io.native import save_native
    from jaxshare.methods import METHODS
    from jaxshare.methods.share import ShareOptions

    ratio = None if args.net_ratio is not None else args.ratio  # argparse refuses both given
    if ratio is not None and not (0 <= ratio < 1):
        raise SharingError(f"--ratio must be in [0, 1), got {ratio}")
    needs_calib = args.keep == "data" or args.correct != "none"
    if not needs_calib:
        refuse_given(args, ("calib", "calib_windows", "calib_seq_len", "batch_size", "seed"),
                     f"is unused: --keep {args.keep} --correct {args.correct} fits on no calibration data, so it "
                     "would be ignored: drop it, or use --keep data or --correct qk/qkv")
    if needs_calib and args.calib is None:
        raise SharingError(f"--keep {args.keep} --correct {args.correct} fits on calibration data: give --calib "
                           "(e.g. --calib books:train)")
    # the options of a plan's share step
    opts = ShareOptions(ratio, args.match, args.keep, args.correct, args.share_o, args.net_ratio)
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    resolve(args.model)
    m = load_model(args.model, args.dtype)  # held (and stored) in --dtype
    METHODS["share"].check(opts, m.cfg)  # more units than have partners fails here, before calibrating
    grams, calib = None, None
    if needs_calib:
        announce(m, args)
        grams, calib = calibrate(m, _calib_name(args.calib), args.calib_windows, args.calib_seq_len, args.seed,
                                 args.batch_size)
    out, report = METHODS["share"].apply(m, opts, grams)
    shared = out.params
    rep = {"model": args.model, "out": str(args.out), **report, "calibration": calib}
    # the checkpoint's record, as the command has always written it (not the Method's plan-step options)
    details = dict(ratio=rep["ratio"], match=args.match, keep=args.keep, share_o=args.share_o, source=str(m.source))
    man = manifest(shared, m.cfg, correct=args.correct, net_ratio=args.net_ratio, calibration=calib, **details)
    extra = {"sharing": man, "corrections": {"calibration": calib, "correct": args.correct},
             "derived_from": str(m.source)}
    save_native(args.out, m.cfg, shared, m.tokenizer, extra=extra, overwrite=args.overwrite)
    if args.plot_dir:  # after the checkpoint: a failed write leaves no plots behind either
        d = Path(args.plot_dir)
        rep["plots"] = [str(plots.share_map(roots_of(shared, mm), d / f"shared_units_{mm}.png",
                                            f"DirectShare {rep['ratio']:.0%} ({args.match}, {mm}): source layer"))
                        for mm in (("q", "k", "v") if args.match == "separate" else ("q",))]
    corr = (f", corrections {rep['correction_params']:,} params ({args.correct})" if args.correct != "none" else "")
    extra_units = f" ({rep['extra_units']} more than --net-ratio's {args.net_ratio})" if args.net_ratio is not None else ""
    emit(args, rep, f"tied {rep['units_freed']} of {rep['units_total']} units{extra_units} ({args.match}, "
                    f"keep={args.keep}{corr}): net {rep['net_params_freed']:,} params freed; "
                    f"q/k/v params -{rep['qkv_fraction_removed']:.1%}, attention -{rep['attn_fraction_removed']:.1%}, "
                    f"model -{rep['model_fraction_removed']:.1%}; {rep['bytes_before'] / 2**20:.1f} -> "
                    f"{rep['bytes_after'] / 2**20:.1f} MiB; wrote {args.out}")


def register(sub, add, group) -> None:
    s = add("similarity", cmd_similarity, "best-partner search over attention units (jit, vmapped Gram)")
    s.add_argument("model", help=MODEL_HELP)
    s.add_argument("--match", choices=MATCHES, default="qk", help="match function (paper Table 12)")
    param_dtype_arg(s)
    refuse_dtype_arg(s)
    plot_dir_arg(s, "write PNG heatmap, partner-distance and score histograms to DIR (default: no plots)")

    a = add("attention-similarity", cmd_attention_similarity,
            "cosine similarity of attention maps across layers and heads on real text (paper Eq. 1)")
    a.add_argument("model", help=MODEL_HELP)
    a.add_argument("--data", default="books", help=DATA_HELP)
    param_dtype_arg(a)
    refuse_dtype_arg(a)
    a.add_argument("--seq-len", type=SEQ_LEN, default=256, help="tokens per window")
    sample_windows_arg(a, 4, "windows of --data averaged over (the first K; the result depends on it)")
    plot_dir_arg(a, "write PNG heatmaps (layer x layer, head x head) to DIR (default: no plots)")

    sh = add("share", cmd_share, "DirectShare: tie attention units to their most similar earlier units")
    sh.add_argument("model", help=MODEL_HELP)
    sh.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory")
    how_many = sh.add_mutually_exclusive_group()
    how_many.add_argument("--ratio", type=SHARE_RATIO, default=0.3,
                          help="fraction of the L*K attention units removed (each tied to an earlier unit), in [0, 1); "
                               "0.3 is the paper's setting")
    how_many.add_argument("--net-ratio", type=SHARE_RATIO, default=None,
                          help="instead of --ratio: tie as many units as it takes to free, corrections counted, the "
                               "parameters keep=mean frees at this ratio (equal net parameters) (default: none, --ratio decides)")
    sh.add_argument("--match", choices=MATCHES, default="qk", help="match function (paper Table 12)")
    sh.add_argument("--keep", choices=KEEP, default="root",
                    help="a tied group keeps the root's weights (paper), their mean, or their calibration "
                         "least-squares merge (data; needs --calib)")
    sh.add_argument("--correct", choices=CORRECT, default="none",
                    help="per tied unit d x d least-squares corrections of its query heads and key (qk), plus the "
                         "value path folded into its own W_o at no parameter cost (qkv); needs --calib")
    sh.add_argument("--calib", default=None,
                    help="calibration corpus or file for --keep data / --correct (a bare corpus name means its train split); "
                         "cached, shared with `jaxshare basis` (default: none)")
    sh.add_argument("--calib-windows", type=COUNT, default=CALIB_WINDOWS, help="calibration windows")
    sh.add_argument("--calib-seq-len", type=SEQ_LEN, default=CALIB_SEQ_LEN, help="tokens per calibration window")
    batch_size_arg(sh, 4, "calibration windows per forward pass (speed and memory only)")
    sh.add_argument("--seed", type=SEED, default=0, help="which calibration windows are drawn")
    sh.add_argument("--share-o", action="store_true", help="also tie the units' W_o slices (reference code)")
    plot_dir_arg(sh, "write a per-layer PNG map of tied units to DIR (default: no plot)")
    sh.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="dtype the weights are loaded, matched and stored in (bf16 halves the memory)")
    sh.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")
