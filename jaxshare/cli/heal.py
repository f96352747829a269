"""`jaxshare heal STUDENT OUT --teacher TEACHER`: distill a compressed model from the dense model it
came from (training/recipes.py, recipe `heal`), then write the healed model to OUT.

The run itself (metrics, checkpoints, held-out PPL with the teacher's beside it and the fraction
of the gap recovered) lives in --run-dir, as for `jaxshare train`; it resumes with `jaxshare train
resume RUN_DIR`. OUT is written atomically once the run has completed.
"""
from __future__ import annotations

from jaxshare.cli.common import (COUNT, DATA_HELP, SEQ_LEN, check_out_dir, emit, float_in, nonempty,
                                 storage_dtype_arg)
from jaxshare.cli.train import SET_HELP, _check_packages, _exit_code, _interrupted, _refuse_in_memory
from jaxshare.training.config import TRAINS

# flag -> config key (the flags are the common ones; every other key goes through --set).
FLAGS = {"teacher": "teacher", "data": "data", "eval_data": "eval_data", "tokens": "tokens", "steps": "steps",
         "trains": "trains", "rank": "lora_rank", "lora_alpha": "lora_alpha", "temperature": "kd_temperature",
         "ce_weight": "kd_alpha", "seq_len": "seq_len", "lr": "lr"}


def heal_config(args):
    from jaxshare.training.config import load_config

    sets = [f"model={args.student}", f"run_dir={args.run_dir or default_run_dir(args.out)}"]
    sets += [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    if args.merge:
        sets.append("merge=true")
    return load_config(args.config, sets + list(args.set), mode="heal")


def default_run_dir(out: str) -> str:
    name = str(out).rstrip("/").rsplit("/", 1)[-1] or "model"
    return f"runs/heal-{name}"


def cmd_heal(args) -> int:
    from jaxshare.core.params import cast_params  # deferred: keeps jax out of `jaxshare --help`
    from jaxshare.io.native import save_native
    from jaxshare.training.program import initialize_distributed
    from jaxshare.training.trainer import Trainer
    from jaxshare.training import multihost as mh

    tc = heal_config(args)
    _refuse_in_memory(tc.run_dir)
    check_out_dir(args.out, args.overwrite, sources=(args.student, args.teacher, tc.run_dir))
    _check_packages(tc)
    initialize_distributed(tc)
    try:
        tr = Trainer(tc, overwrite=args.overwrite)
        res = tr.run()
    except KeyboardInterrupt:
        return _interrupted(args, tc.run_dir)
    if res["status"] != "completed":
        emit(args, res, f"preempted at step {res['step']}; checkpoint saved. Continue with: "
                        f"jaxshare train resume {res['run_dir']} (then copy {res['run_dir']}/final to {args.out})")
        return _exit_code(res)
    if mh.is_primary():  # the healed params are on every host already (finish gathered them)
        m = tr.model
        extra = {**dict((m.meta or {}).get("extra") or {}), "derived_from": str(m.source)}
        extra["heal"] = {k: res.get(k) for k in ("recipe", "tokens", "steps", "eval_ppl", "teacher_ppl", "start_ppl",
                                                 "recovered", "eval_data", "merge") if res.get(k) is not None}
        extra["heal"]["teacher"] = tc.teacher
        params = tr.shared if args.dtype == "fp32" else cast_params(tr.shared, args.dtype)  # trained in fp32
        save_native(args.out, m.cfg, params, m.tokenizer, extra=extra, overwrite=args.overwrite)
    mh.barrier("jaxshare_heal_out")
    res["out"] = str(args.out)
    gap = (f", teacher {res['teacher_ppl']:.4f}; recovered {100 * res['recovered']:.1f}% of the gap in nats"
           if "recovered" in res else "")
    emit(args, res, f"heal ({tc.trains}): {res['tokens']} tokens; held-out PPL {res.get('start_ppl', float('nan')):.4f}"
                    f" -> {res['eval_ppl']:.4f}{gap} ({res['eval_data']}, {res['eval_windows']} x {res['seq_len']}); "
                    f"{res['params']:,} params ({res['adapter_params']:,} in adapters); wrote {args.out}")
    return 0


def register(sub, add, group) -> None:
    p = add("heal", cmd_heal, "heal a compressed model by distillation from the dense model it came from")
    p.add_argument("student", type=nonempty, help="the compressed model (any kind; a dense one too)")
    p.add_argument("out", type=nonempty, help="where to write the healed model (native format)")
    p.add_argument("--teacher", required=True, type=nonempty,
                   help="the dense model the student was compressed from (same tokenizer)")
    p.add_argument("--data", help=f"healing text: {DATA_HELP} (default: books:train)")
    p.add_argument("--eval-data", help="held-out text the healing data never saw (default: books:test)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--tokens", type=COUNT, help="training tokens, rounded up to whole steps "
                                                     "(default: none, 100 steps)")
    length.add_argument("--steps", type=COUNT, help="optimizer steps (default: 100 unless --tokens)")
    p.add_argument("--trains", choices=TRAINS, help="all: every leaf the kind allows; compressed: only compressed "
                                                    "leaves and norms; lora: adapters only (default: all)")
    p.add_argument("--rank", type=COUNT, help="--trains lora: adapter rank (default: 8)")
    p.add_argument("--lora-alpha", type=float_in(0.0, low_open=True),
                   help="--trains lora: adapter scale alpha / rank (default: 16)")
    p.add_argument("--merge", action="store_true", help="fold the adapters into dense weights at the end; "
                                                        "shared, basis and quantized weights keep theirs")
    p.add_argument("--temperature", type=float_in(0.0, low_open=True), help="KD temperature tau (default: 1)")
    p.add_argument("--ce-weight", type=float_in(0.0, 1.0),
                   help="weight alpha of label cross-entropy mixed in; 0: pure KD (default: 0.5)")
    p.add_argument("--seq-len", type=SEQ_LEN, help="window length (default: 256)")
    p.add_argument("--lr", type=float_in(0.0, low_open=True), help="peak learning rate (default: 1e-4)")
    storage_dtype_arg(p)
    p.add_argument("--run-dir", help="the run directory: metrics, checkpoints, held-out evaluations "
                                     "(default: runs/heal-<OUT name>)")
    p.add_argument("--config", help="YAML file of config keys (default: none, the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP + " (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier jaxshare output at OUT and an "
                                                            "earlier jaxshare run in the run dir")
