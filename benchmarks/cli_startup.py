"""The whole `jaxshare generate` command as a user runs it, with the persistent XLA cache warm and
with it off (JAXSHARE_XLA_CACHE=0), interleaved: wall seconds of the process, median and min-max.
Interleaved with them, a process that times the command's phases with the cache warm: imports,
load (params and tokenizer), compile + first token, and the decode of --new-tokens.

    python -m benchmarks.cli_startup [--model smollm2-135m] [--new-tokens 32] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, write_result


# the phases of cmd_generate, timed in a fresh process (stdout: one JSON object)
PHASES = """
import json, sys, time
t0 = time.perf_counter()
from jaxshare.cli.xla_cache import enable_compilation_cache
from jaxshare.core.generate import generate_text
from jaxshare.io.load import load_model
enable_compilation_cache()
t1 = time.perf_counter()
m = load_model(sys.argv[1])
t2 = time.perf_counter()
generate_text(m, "The capital of France is", 1)
t3 = time.perf_counter()
generate_text(m, "The capital of France is", int(sys.argv[2]))
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "compile_first_token_s": t3 - t2,
                  "generate_s": t4 - t3, "torch_imported": "torch" in sys.modules}))
"""


def stats(v: list[float]) -> dict:
    return {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "all_s": v}


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
    phases: list[dict] = []
    for rep in range(args.reps):
        for k, env in envs.items():
            times[k].append(run(env))
        out = subprocess.run([sys.executable, "-c", PHASES, args.model, str(args.new_tokens)], cwd=ROOT,
                             env=envs["cache_warm"], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr.strip().splitlines()[-1])
        phases.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
              + f"; load + compile {phases[-1]['load_s'] + phases[-1]['compile_first_token_s']:.2f} s", file=sys.stderr)
    res = {k: stats(v) for k, v in times.items()}
    res["phases"] = {k: stats([p[k] for p in phases]) for k in ("import_s", "load_s", "compile_first_token_s",
                                                               "generate_s")}
    res["phases"]["load_and_compile_s"] = stats([p["load_s"] + p["compile_first_token_s"] for p in phases])
    res["phases"]["torch_imported"] = any(p["torch_imported"] for p in phases)
    res = {"model": args.model, "new_tokens": args.new_tokens, "reps": args.reps, **res,
           "saved_s_median": res["cache_off"]["median_s"] - res["cache_warm"]["median_s"],
           "outside_noise": max(times["cache_warm"]) < min(times["cache_off"])}
    write_result("cli_startup", res, args.json)
    print(f"jaxshare generate ({args.new_tokens} tokens): {res['cache_warm']['median_s']:.2f} s with the cache warm, "
          f"{res['cache_off']['median_s']:.2f} s without; load + compile "
          f"{res['phases']['load_and_compile_s']['median_s']:.2f} s (imports {res['phases']['import_s']['median_s']:.2f} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
