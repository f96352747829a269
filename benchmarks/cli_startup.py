"""The whole `jaxshare generate` command as a user runs it, with the persistent XLA cache warm and
with it off (JAXSHARE_XLA_CACHE=0), interleaved: wall seconds of the process, median and min-max.

    python -m benchmarks.cli_startup [--model smollm2-135m] [--new-tokens 32] [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="jaxshare-xla-")
    cmd = [sys.executable, "-m", "jaxshare", "generate", args.model, "--prompt", "The capital of France is",
           "--max-new-tokens", str(args.new_tokens), "--json"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
    envs = {"cache_warm": {**base, "JAX_COMPILATION_CACHE_DIR": cache},
            "cache_off": {**base, "JAXSHARE_XLA_CACHE": "0"}}

    def run(env) -> float:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr.strip().splitlines()[-1])
        return time.perf_counter() - t0

    run(envs["cache_warm"])  # fills the cache (and the model's conversion, if it is the first use)
    times = {k: [] for k in envs}
    for rep in range(args.reps):
        for k, env in envs.items():
            times[k].append(run(env))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              file=sys.stderr)
    res = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "all_s": v} for k, v in times.items()}
    res = {"model": args.model, "new_tokens": args.new_tokens, "reps": args.reps, **res,
           "saved_s_median": res["cache_off"]["median_s"] - res["cache_warm"]["median_s"],
           "outside_noise": max(times["cache_warm"]) < min(times["cache_off"])}
    write_result("cli_startup", res, args.json)
    print(f"jaxshare generate ({args.new_tokens} tokens): {res['cache_warm']['median_s']:.2f} s with the cache warm, "
          f"{res['cache_off']['median_s']:.2f} s without", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
