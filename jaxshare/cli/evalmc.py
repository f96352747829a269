"""`jaxshare eval mc`: zero-shot multiple-choice accuracy (lm-eval's scoring, jaxshare's backend)."""
from __future__ import annotations

import json
import sys

from jaxshare.errors import JaxshareError
from jaxshare.cli.common import COUNT, MODEL_HELP, batch_size_arg, compute_dtype_arg, refuse_dtype_arg
from jaxshare.eval.mc import check_limit, evaluate, parse_tasks, resolve, table
from jaxshare.eval.tasks import TASKS


class EvalSetupError(JaxshareError, ValueError):
    """The optional lm-eval extra is missing."""


def cmd_eval_mc(args) -> None:
    tasks = parse_tasks(args.tasks)  # bad input is refused before the (slow) model load
    check_limit(args.limit)
    try:  # deferred: lm-eval (the [eval] extra) and jax; a missing extra is one line
        from jaxshare.eval.harness import JaxshareLM
    except ImportError as e:
        raise EvalSetupError(str(e)) from None
    resolve(tasks)  # tasks that cannot be had (the built-in ones without their sdist): before the load too
    from jaxshare.io.load import load_model  # deferred: jax-heavy; the parser imports this module

    m = load_model(args.model, "fp32")
    lm = JaxshareLM.from_loaded(m, dtype=args.compute_dtype, batch_size=args.batch_size)
    res = evaluate(lm, tasks, args.limit)
    res.update(model=args.model, dtype=args.compute_dtype, compute_dtype=args.compute_dtype, batch_size=args.batch_size, backend="jaxshare")
    if args.json:
        print(json.dumps(res))
    else:
        print(table(res["tasks"]))
        print(f"({res['seconds']:.1f} s; zero-shot; limit {args.limit})", file=sys.stderr)


def register(ev_sub, add) -> None:
    mc = add("mc", cmd_eval_mc, "zero-shot multiple-choice accuracy (acc, acc_norm) on local BIG-bench "
             "tasks or your own task files, scored by lm-evaluation-harness (needs the [eval] extra)", parent=ev_sub)
    mc.add_argument("model", help=MODEL_HELP)
    mc.add_argument("--tasks", default="social_iqa",
                    help=f"comma-separated, or all: {', '.join(TASKS)}; or task files: a BIG-bench task.json, "
                         "or a .jsonl of {inputs, choices, gold} rows")
    mc.add_argument("--limit", type=COUNT, default=None, help="the first N items of each task (default: all)")
    batch_size_arg(mc, 16, "requests scored per jit call (speed and memory only)")
    compute_dtype_arg(mc)
    refuse_dtype_arg(mc)
