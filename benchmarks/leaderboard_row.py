"""The multiple-choice pass of one leaderboard row: `jaxshare.eval.mc.evaluate` over all six local
BIG-bench tasks at --limit 100 (what `experiments.leaderboard` runs for every arm), scoring each
item's shared context once (today) against every choice as its own sequence (`share_context=false`,
the scoring when issue 27 was filed), same model and process, runs alternating.

    python -m benchmarks.leaderboard_row [--model smollm2-135m] [--limit 100] [--reps 5] [--json]

Each side runs once untimed first (jit compiles), then --reps timed runs in turn; median and
min-max of each, and whether both sides gave the same acc / acc_norm on every task.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.common import write_result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from jaxshare.eval.harness import JaxshareLM
    from jaxshare.eval.mc import evaluate, parse_tasks

    tasks = parse_tasks("all")
    shared = JaxshareLM(model=args.model, dtype="fp32", batch_size=args.batch_size)
    sides = {"context_once": shared,
             "every_choice": JaxshareLM.from_loaded(shared.loaded, dtype="fp32", batch_size=args.batch_size,
                                                     share_context=False)}
    results = {k: evaluate(lm, tasks, args.limit)["tasks"] for k, lm in sides.items()}  # warm-up: compiles
    times: dict = {k: [] for k in sides}
    for rep in range(args.reps):
        for k, lm in sides.items():
            t0 = time.perf_counter()
            evaluate(lm, tasks, args.limit)
            times[k].append(time.perf_counter() - t0)
            print(f"rep {rep + 1}/{args.reps} {k}: {times[k][-1]:.1f} s", file=sys.stderr)
    spread = {k: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs_s": t}
              for k, t in times.items()}
    a, b = spread["context_once"], spread["every_choice"]
    same = all(results["context_once"][t][m] == results["every_choice"][t][m] for t in tasks for m in ("acc", "acc_norm"))
    out = {"model": args.model, "tasks": tasks, "limit": args.limit, "batch_size": args.batch_size, "reps": args.reps,
           "seconds": spread, "fraction_of_before": a["median_s"] / b["median_s"],
           "ranges_apart": a["max_s"] < b["min_s"], "same_acc_and_acc_norm": same,
           "acc": results["context_once"], "target": "fraction_of_before < 0.5"}
    print(f"leaderboard row mc pass, {len(tasks)} tasks x {args.limit}: context once {a['median_s']:.1f} s "
          f"[{a['min_s']:.1f}, {a['max_s']:.1f}], every choice {b['median_s']:.1f} s [{b['min_s']:.1f}, "
          f"{b['max_s']:.1f}] -> {out['fraction_of_before']:.2f} of before; same acc: {same}", file=sys.stderr)
    write_result("leaderboard_row", out, args.json)


if __name__ == "__main__":
    main()
