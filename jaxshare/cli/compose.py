"""`jaxshare compress`: several methods in one model, from a plan file or a parameter target."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jaxshare.cli.common import (COUNT, DATA_HELP, MODEL_HELP, SEED, SEQ_LEN, DeprecatedAlias, batch_size_arg,
                                 check_out_dir, float_in, nonempty, refuse_given, storage_dtype_arg)
from jaxshare.data.corpora import calibration_source, load_corpus
from jaxshare.storage.atomic import OutputError

_FRACTION = float_in(0.0, 1.0, low_open=True, high_open=True)


def _target(text: str) -> float:
    # deferred: jax-heavy (jaxshare.compose pulls jax), and the parser (`jaxshare --help`) imports this
    # module; this type runs only when --target-params is given
    from jaxshare.compose.budget import check_target
    from jaxshare.compose.plan import PlanError

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    try:
        return check_target(value)
    except PlanError:
        raise argparse.ArgumentTypeError(f"must be a fraction of the model's parameters in (0, 1), got {text}") from None


def _removed_bytes(text: str) -> float:
    try:
        return _FRACTION(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be the fraction of the model's bytes to remove, in (0, 1), "
                                         f"got {text}") from None


def _removed(text: str) -> float:
    try:
        return _FRACTION(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be the fraction of the model's parameters to remove, in (0, 1), "
                                         f"got {text}") from None


class _Ratio(argparse.Action):
    """--ratio R (removed, like every other ratio flag) also sets target_params = 1 - R, the
    fraction kept, which is what the planner in compose/budget.py counts in."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.ratio, namespace.target_params = values, 1.0 - values


class _ByteRatio(argparse.Action):
    """--byte-ratio R: the fraction of the model's bytes removed; the planner then counts in bytes."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.byte_ratio, namespace.target_params = values, 1.0 - values


class _TargetParams(DeprecatedAlias):
    """--target-params F, the fraction kept: the one ratio flag that counted the other way."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: --target-params is deprecated (it is the fraction kept; every ratio flag is "
              f"now the fraction removed), use --ratio {1.0 - values:g}", file=sys.stderr)
        namespace.ratio, namespace.target_params = 1.0 - values, values


# what only the plan chooser (--ratio) reads, and what only calibration reads
TARGET_ONLY = ("methods", "group_size", "match", "keep", "sens_windows", "heldout", "heldout_windows", "heal_tokens",
               "heal_data", "quant_method")
CALIB_FLAGS = ("calib", "calib_windows", "calib_seq_len", "seed", "batch_size")


def _methods(text: str) -> list[str]:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.compose.budget import parse_methods
    from jaxshare.compose.plan import PlanError

    try:
        return parse_methods(text)
    except PlanError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--methods: ")) from None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _calibration(args, plan_calib: dict | None) -> dict:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.compose.plan import CALIB_DEFAULTS

    calib = dict(plan_calib or CALIB_DEFAULTS)
    for key, flag in (("data", "calib"), ("windows", "calib_windows"), ("seq_len", "calib_seq_len"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            calib[key] = getattr(args, flag)
    calib["data"] = calibration_source(calib["data"])
    return calib


def _grams(m, calib: dict, batch_size: int):
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.basis.calibrate import calibrate

    _say(f"calibration: {calib['windows']} x {calib['seq_len']} tokens of {calib['data']} (cached after the first run)")
    return calibrate(m, calib["data"], calib["windows"], calib["seq_len"], calib["seed"], batch_size)


def cmd_compress(args) -> None:
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.compose.apply import run_plan
    from jaxshare.compose.plan import PlanError, check_against, read_plan
    from jaxshare.io.load import load_model, resolve
    from jaxshare.io.native import save_native

    if args.plan is None and "quantize" in args.methods and args.byte_ratio is None:
        raise PlanError("--methods quantize removes no parameters: give the target in bytes (--byte-ratio)")
    plan = read_plan(args.plan) if args.plan else None  # a bad plan costs nothing
    if plan is not None:  # flags this plan would ignore, refused before anything loads
        refuse_given(args, TARGET_ONLY, "applies only when compress chooses the plan (--ratio); with --plan the "
                                        "plan's steps decide: drop it")
        if not plan.needs_grams():
            refuse_given(args, CALIB_FLAGS, f"is unused: no step of the plan {args.plan} calibrates, so it would be "
                                            "ignored: drop it")
    check_out_dir(args.out, args.overwrite, sources=(args.model,))
    if args.plan_out:
        _check_file_out(args.plan_out)
    resolve(args.model)
    m = load_model(args.model, args.dtype)  # held and stored in --dtype
    calib = _calibration(args, plan.calibration if plan else None)
    if plan is not None:
        check_against(plan, m.cfg)
    calib_used = plan is None or plan.needs_grams()
    if calib_used:
        if calib["seq_len"] > m.cfg.max_seq_len:
            raise PlanError(f"calibration seq_len {calib['seq_len']} is above the model's maximum of "
                            f"{m.cfg.max_seq_len} positions (--calib-seq-len)")
        m.need_tokenizer("calibration")
    out = {"model": args.model, "out": str(args.out)}
    grams = calib_info = None
    if plan is None:
        plan, grams, calib_info, out["budget"] = _budgeted(m, args, calib)
        if args.heal_tokens:  # the budget's healing: distill the chosen model from this one
            from jaxshare.compose.plan import parse_plan  # deferred: jax-heavy (the parser imports this module)

            raw = plan.to_dict()
            raw["steps"].append({"heal": {"tokens": args.heal_tokens, "data": args.heal_data,
                                          "eval_data": args.heldout, "seq_len": min(256, m.cfg.max_seq_len)}})
            plan = parse_plan(raw)
    elif plan.needs_grams():
        grams, calib_info = _grams(m, calib, args.batch_size)
    done, report = run_plan(m, plan, grams)
    params, cfg, extra = done.params, done.cfg, done.extra
    extra["derived_from"] = str(m.source)
    extra["plan"]["calibration"] = calib if calib_used else None  # nothing recorded that was not used
    if "budget" in out:
        from jaxshare.compose.budget import verify

        held = out["budget"].pop("_heldout_windows")
        out["budget"]["heldout"] = {"data": args.heldout, **verify(m.params, m.cfg, params, cfg, held)}
        extra["budget"] = {k: v for k, v in out["budget"].items() if k != "sensitivity"}
    plan.calibration = calib if calib_used else None
    text = plan.to_yaml()
    save_native(args.out, cfg, params, m.tokenizer, extra=extra, overwrite=args.overwrite,
                files={"plan.yaml": text.encode()})
    if args.plan_out:
        _write_text(args.plan_out, text)
    out.update(report, plan=plan.to_dict(), calibration=calib_info, plan_file=str(args.out) + "/plan.yaml")
    if args.json:
        print(json.dumps(out))
        return
    acc = report["model"]
    lines = [f"step {s['step']} {s['method']}: model {s['model']['params_before']:,} -> {s['model']['params_after']:,} "
             f"params ({s['seconds']:.1f} s)" for s in report["steps"]]
    lines.append(f"whole model {acc['params_before']:,} -> {acc['params_after']:,} params "
                 f"(-{acc['model_fraction_removed']:.2%}), {acc['bytes_before']:,} -> {acc['bytes_after']:,} bytes")
    if "budget" in out:
        h = out["budget"]["heldout"]
        lines.append(f"held-out {args.heldout} ({h['windows']} x {h['seq_len']}): loss {h['loss_before']:.4f} -> "
                     f"{h['loss_after']:.4f} (ppl {h['ppl_before']:.2f} -> {h['ppl_after']:.2f}); predicted increase "
                     f"{out['budget']['chosen']['predicted']:.4f}")
    lines.append(f"wrote {args.out} (plan: {args.out}/plan.yaml{', ' + args.plan_out if args.plan_out else ''})")
    print("\n".join(lines))


def _budgeted(m, args, calib):
    # deferred: jax-heavy, and the parser (`jaxshare --help`) imports this module
    from jaxshare.basis.calibrate import calibration_windows, unseen_windows
    from jaxshare.compose.budget import check_reachable, format_table, refined_plan, sensitivity
    from jaxshare.compose.sensitivity import quant_sensitivity
    from jaxshare.compose.plan import PlanError
    from jaxshare.core.compressed import compressed_leaves

    if compressed_leaves(m.params):
        raise PlanError("--ratio starts from an uncompressed model; this one is already compressed "
                        "(use --plan to add steps)")
    unit = "bytes" if args.byte_ratio is not None else "params"
    check_reachable(m.params, m.cfg, args.target_params, args.methods, args.group_size, unit)
    # deferred: numpy; the parser imports this module (jaxshare --help stays light)
    from jaxshare.data.tokens import token_ids, token_windows

    held = token_windows(token_ids(args.heldout, m.tokenizer), calib["seq_len"], args.heldout_windows,
                         vocab_size=m.cfg.vocab_size, what=args.heldout)  # a bad held-out corpus fails before the long work
    # basis factors and prune ranks on the grams; data-aware sharing (--keep data) merges on them
    need = {"basis", "prune", "prune-kv"} & set(args.methods) or (args.keep == "data" and "share" in args.methods) \
        or ("quantize" in args.methods and args.quant_method == "gptq")
    grams, info = _grams(m, calib, args.batch_size) if need else (None, None)
    # Scored on windows of the calibration corpus that the grams (and so the fits) never saw.
    corpus = load_corpus(calib["data"])
    seen = calibration_windows(m.tokenizer, corpus, calib["windows"], calib["seq_len"], calib["seed"])
    windows = unseen_windows(m.tokenizer, corpus, args.sens_windows, calib["seq_len"], seen, calib["seed"])
    _say(f"sensitivity: loss of each candidate alone on {len(windows)} windows of {calib['data']} "
         f"outside the calibration")
    sens = sensitivity(m.params, m.cfg, windows, grams, args.methods, args.group_size, args.match, args.keep, log=_say)
    if "quantize" in args.methods:
        sens["quant"] = quant_sensitivity(m.params, m.cfg, windows, grams, args.quant_method, log=_say)
        sens["quant_method"] = args.quant_method
    plan, details = refined_plan(m.params, m.cfg, args.target_params, args.methods, sens, windows, grams,
                                 args.group_size, args.match, args.keep, calib, log=_say, unit=unit)
    print(format_table(details), file=sys.stderr if args.json else sys.stdout)
    details["sensitivity"] = sens
    details["_heldout_windows"] = held
    return plan, grams, info, details


def _check_file_out(path) -> None:
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"--plan-out {path} is a directory")
    if not p.parent.is_dir() or not os.access(p.parent, os.W_OK):
        raise OutputError(f"--plan-out {path}: {p.parent} is not a writable directory")


def _write_text(path, text: str) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def register(sub, add, group) -> None:
    c = add("compress", cmd_compress, "compose methods in one model: a plan of steps (inherit, prune, share, "
                                      "basis, quantize), "
                                      "or a plan chosen to meet a parameter target")
    c.add_argument("model", help=MODEL_HELP)
    c.add_argument("out", type=nonempty, help="output jaxshare checkpoint directory (holds plan.yaml too)")
    storage_dtype_arg(c)
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", type=nonempty, help="a plan YAML: ordered steps (default: none)")
    how.add_argument("--ratio", type=_removed, action=_Ratio,
                     help="fraction of the model's parameters removed (all of them, embeddings included), in "
                          "(0, 1), e.g. 0.15: instead of --plan, choose a plan that meets it (default: none)")
    how.add_argument("--target-params", type=_target, action=_TargetParams, dest="target_params",
                     new="--ratio (1 - F)")
    how.add_argument("--byte-ratio", type=_removed_bytes, action=_ByteRatio,
                     help="fraction of the model's bytes removed, in (0, 1): like --ratio, counted in bytes, so "
                          "--methods may include quantize (default: none)")
    c.set_defaults(ratio=None, target_params=None, byte_ratio=None)
    c.add_argument("--methods", type=_methods, default="share,basis",
                   help="with --ratio: methods the plan may use, a comma list of share (head sharing of q/k/v), "
                        "basis (Basis Sharing per type), inherit (drop the last layers), prune (width pruning of "
                        "MLP channels, compensated), prune-kv (removing whole KV groups with their query heads, "
                        "compensated; excludes share and basis of q/k/v/o), quantize (with --byte-ratio: int8 per "
                        "channel or int4 in groups of 64, per weight type, one width for the model)")
    c.add_argument("--quant-method", choices=("gptq", "rtn"), default="gptq",
                   help="with --byte-ratio and quantize: how the plan's types are quantized (and measured)")
    c.add_argument("--group-size", type=COUNT, default=2, help="with --ratio: layers per shared basis")
    c.add_argument("--match", default="qk", choices=("qk", "q", "k", "v", "qkv", "separate"),
                   help="with --ratio: head-sharing match function")
    c.add_argument("--keep", default="mean", choices=("root", "mean", "data"),
                   help="with --ratio: what a tied group of units keeps")
    c.add_argument("--sens-windows", type=COUNT, default=4,
                   help="with --ratio: windows each sensitivity loss is measured on (of the calibration "
                         "corpus, none of the calibration windows)")
    c.add_argument("--heldout", default="books:validation", help="with --ratio: held-out data; " + DATA_HELP)
    c.add_argument("--heldout-windows", type=COUNT, default=4, help="with --ratio: windows of --heldout checked")
    c.add_argument("--heal-tokens", type=COUNT, help="with --ratio: end the chosen plan with a heal step of this "
                                                     "many tokens (KD from MODEL; docs/healing.md) (default: none)")
    c.add_argument("--heal-data", default="books:train", help="with --heal-tokens: the healing text; " + DATA_HELP)
    c.add_argument("--plan-out", type=nonempty, help="also write the plan YAML here (default: only OUT/plan.yaml)")
    c.add_argument("--calib", default=None, help="calibration corpus (default: the plan's, else books:train)")
    c.add_argument("--calib-windows", type=COUNT, default=None, help="calibration windows (default: the plan's, else 16)")
    c.add_argument("--calib-seq-len", type=SEQ_LEN, default=None,
                   help="tokens per calibration window (default: the plan's, else 512)")
    c.add_argument("--seed", type=SEED, default=None, help="which calibration windows are drawn (default: the plan's, else 0)")
    batch_size_arg(c, 4, "windows per forward pass (speed and memory only)")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier output")
