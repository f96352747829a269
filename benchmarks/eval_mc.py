"""Multiple-choice scoring throughput: jaxshare's lm-eval backend vs lm-eval's own `hf` backend
(torch), same task items, same model (our HF export of it), same batch size, same process, runs
interleaved (ours, hf, ours, hf, ...) so that a shared CPU's load falls on both sides alike.

    python -m benchmarks.eval_mc [--model smollm2-135m] [--task social_iqa] [--limit 200]
                                 [--batch-size 16] [--reps 2] [--parity-limit 50] [--json]

Timed: `lm.loglikelihood(requests)` on the task's requests as lm-eval builds them (every choice of
every item); items/s counts items (questions). Each backend runs once untimed first (jit compiles,
torch warms up). Parity: the per-request log-likelihoods of the two backends on those requests
(max relative difference), and acc / acc_norm of `simple_evaluate` with --parity-limit items.
The load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import write_result


def hf_export(model: str) -> Path:
    """Our HF export of `model` in the cache (written once)."""
    from jaxshare.storage.fetch import cache_dir
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    out = cache_dir() / "models" / model.replace("/", "_") / "hf-export-fp32"
    if not (out / "config.json").is_file():
        m = load_model(model, "fp32")
        export_hf(m.params, m.cfg, out, m.tokenizer, dtype="fp32", overwrite=True)
    return out


def task_requests(task: str, limit: int):
    from lm_eval.tasks import get_task_dict

    from jaxshare.eval.mc import task_manager
    from jaxshare.eval.tasks import lm_eval_name

    name = lm_eval_name(task)
    t = get_task_dict([name], task_manager())[name]
    t.build_all_requests(limit=limit, rank=0, world_size=1)
    return t.instances


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="social_iqa")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--parity-limit", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from lm_eval.models.huggingface import HFLM

    from jaxshare.eval.harness import JaxshareLM
    from jaxshare.eval.mc import evaluate

    load_before = os.getloadavg()
    path = hf_export(args.model)
    ours = JaxshareLM(model=str(path), dtype="fp32", batch_size=args.batch_size)
    hf = HFLM(pretrained=str(path), dtype="float32", batch_size=args.batch_size, device="cpu")
    reqs = task_requests(args.task, args.limit)
    items = len({r.doc_id for r in reqs})
    backends = {"jaxshare": ours, "hf": hf}
    results = {k: lm.loglikelihood(reqs, disable_tqdm=True) for k, lm in backends.items()}  # warm-up
    times = {k: [] for k in backends}
    for _ in range(args.reps):
        for k, lm in backends.items():
            t0 = time.perf_counter()
            lm.loglikelihood(reqs, disable_tqdm=True)
            times[k].append(time.perf_counter() - t0)
    ll = {k: np.asarray([r[0] for r in v], np.float64) for k, v in results.items()}
    rel = np.abs(ll["jaxshare"] - ll["hf"]) / np.maximum(np.abs(ll["hf"]), 1e-12)
    speed = {k: items / statistics.median(v) for k, v in times.items()}

    acc = {k: evaluate(lm, [args.task], args.parity_limit)["tasks"][args.task] for k, lm in backends.items()}
    same_acc = all(acc["jaxshare"][m] == acc["hf"][m] for m in ("acc", "acc_norm"))
    res = {
        "model": args.model, "hf_export": str(path), "task": args.task, "items": items, "requests": len(reqs),
        "batch_size": args.batch_size, "reps": args.reps, "torch_threads": torch.get_num_threads(),
        "seconds": times, "items_per_s": speed, "speedup": speed["jaxshare"] / speed["hf"],
        "parity": {"max_rel_loglik_diff": float(rel.max()), "max_abs_loglik_diff": float(np.abs(ll["jaxshare"] - ll["hf"]).max()),
                   "requests": len(reqs), "acc_limit": args.parity_limit, "acc": acc, "same_acc_and_acc_norm": same_acc},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    write_result("eval_mc", res, args.json)
    if not args.json:
        print(f"{args.task} x{items} items ({len(reqs)} requests), batch {args.batch_size}: jaxshare "
              f"{speed['jaxshare']:.2f} items/s, hf {speed['hf']:.2f} items/s -> {res['speedup']:.2f}x; "
              f"max rel loglik diff {rel.max():.2e}; acc/acc_norm equal at limit {args.parity_limit}: {same_acc}; "
              f"load {load_before[0]:.1f} -> {res['loadavg_after'][0]:.1f}")


if __name__ == "__main__":
    main()
