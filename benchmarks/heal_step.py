"""Cost of healing: the heal step (student forward + backward, teacher forward, chunked KD over the
full vocabulary) against a plain cross-entropy step of the same student, same batch, same
optimizer, timed interleaved (A B A B ...) so machine load hits both alike. Peak memory of each
side is measured in its own process (ru_maxrss after its steps) against the target: the plain
step's peak + the teacher's parameters + one chunk of logits of each model.

  python -m benchmarks.heal_step [--student DIR] [--teacher smollm2-135m]
                                 [--seq-len 512] [--batch-size 2] [--reps 5] [--trains all]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.common import write_result


def _steps(args, sides):
    import jax
    import numpy as np

    from jaxshare.core.params import param_bytes
    from jaxshare.io.load import load_model
    from jaxshare.training import mesh as meshlib
    from jaxshare.training.config import build_config
    from jaxshare.training.recipes import RECIPES
    from jaxshare.training.step import compile_step, make_optimizer, place_state

    s = load_model(args.student, "fp32")
    t = load_model(args.teacher, "fp32") if "heal" in sides else None
    mesh = meshlib.make_mesh("")
    batch = np.random.default_rng(0).integers(0, s.cfg.vocab_size, (1, args.batch_size, args.seq_len)).astype(np.int32)
    out = {}
    for side in sides:
        tc = build_config({"mode": "heal" if side == "heal" else "plain", "teacher": args.teacher if side == "heal"
                           else "", "ratio": 0.0, "steps": 1000, "dtype": "fp32", "trains": args.trains,
                           "kd_chunk": args.chunk})
        recipe = RECIPES[tc.mode]
        params = recipe.start(tc, s.params, s.cfg)
        tx, _ = make_optimizer(tc, tc.steps)
        mask = recipe.mask(tc, params)
        state, sh = place_state(params, tx, 0, mesh, mask=mask)
        aux = aux_sh = None
        if side == "heal":
            aux_sh = meshlib.param_shardings(mesh, t.params)
            aux = jax.device_put(t.params, aux_sh)
        fn, bsh = compile_step(recipe.step(tc, s.cfg, tx, None, None if t is None else t.cfg), mesh, sh,
                               attention="xla", aux_sh=aux_sh)
        b = jax.device_put(batch, bsh)
        state, m = fn(state, b) if aux is None else fn(state, b, aux)  # compile + warm-up
        jax.block_until_ready(m)
        out[side] = [fn, state, b, aux]
    teacher_bytes = param_bytes(t.params) if t is not None else 0
    chunk_bytes = 2 * args.batch_size * min(args.chunk, args.seq_len - 1) * s.cfg.vocab_size * 4
    return out, teacher_bytes, chunk_bytes


def _run(entry):
    import jax

    fn, state, b, aux = entry
    t0 = time.perf_counter()
    entry[1], m = fn(state, b) if aux is None else fn(state, b, aux)
    jax.block_until_ready(m)
    return time.perf_counter() - t0


DEFAULT_STUDENT = "runs/heal_step/basis_0.2"


def _default_student() -> None:
    """The healing experiment's -20% Basis student (experiments/heal.py), built once with the CLI, but
    calibrated on books: that experiment's text (wiki) can no longer be fetched, and the step's cost
    depends only on the student's shapes, which the calibration text does not change."""
    from experiments.heal import LINEAR_SHARE, TEACHER, sh
    from jaxshare.io.native import is_native

    if not is_native(DEFAULT_STUDENT):
        sh([sys.executable, "-m", "jaxshare", "basis", TEACHER, DEFAULT_STUDENT, "--ratio",
            f"{0.2 / LINEAR_SHARE:.4f}", "--calib", "books", "--overwrite"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default=DEFAULT_STUDENT)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--trains", default="all", choices=["all", "compressed", "lora"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--memory-side", choices=["plain", "heal"], help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.student == DEFAULT_STUDENT and not args.memory_side:
        _default_student()
    if args.memory_side:  # one side alone, for its own peak RSS
        steps, tb, cb = _steps(args, [args.memory_side])
        for _ in range(2):
            _run(steps[args.memory_side])
        print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "teacher_bytes": tb,
                          "chunk_bytes": cb}))
        return
    steps, _, _ = _steps(args, ["plain", "heal"])
    times = {"plain": [], "heal": []}
    for _ in range(args.reps):
        for side in ("plain", "heal"):  # interleaved
            times[side].append(_run(steps[side]))
    del steps
    peak = {}
    for side in ("plain", "heal"):
        cmd = [sys.executable, "-m", "benchmarks.heal_step", "--memory-side", side, "--student", args.student,
               "--teacher", args.teacher, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
               "--chunk", str(args.chunk), "--trains", args.trains]
        peak[side] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    tokens = args.batch_size * args.seq_len
    res = {"student": args.student, "teacher": args.teacher, "seq_len": args.seq_len, "batch_size": args.batch_size,
           "chunk": args.chunk, "trains": args.trains, "reps": args.reps}
    for side, ts in times.items():
        med = statistics.median(ts)
        res[side] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "times_s": ts, "tokens_per_s": tokens / med,
                     "peak_rss_bytes": peak[side]["peak_rss"]}
    res["heal_throughput_over_plain"] = res["plain"]["median_s"] / res["heal"]["median_s"]
    target = peak["plain"]["peak_rss"] + peak["heal"]["teacher_bytes"] + peak["heal"]["chunk_bytes"]
    res["memory_target_bytes"] = target
    res["heal_peak_over_target"] = peak["heal"]["peak_rss"] / target
    write_result("heal_step", res, args.json)
    print(f"plain {res['plain']['median_s']:.2f}s [{res['plain']['min_s']:.2f}, {res['plain']['max_s']:.2f}], heal "
          f"{res['heal']['median_s']:.2f}s [{res['heal']['min_s']:.2f}, {res['heal']['max_s']:.2f}]: heal throughput "
          f"{res['heal_throughput_over_plain']:.2f}x plain; peak RSS plain {peak['plain']['peak_rss'] / 2**30:.2f} GiB, "
          f"heal {peak['heal']['peak_rss'] / 2**30:.2f} GiB (target {target / 2**30:.2f} GiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
