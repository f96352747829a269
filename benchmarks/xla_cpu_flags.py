"""Does an XLA:CPU option bring a fast bf16 GEMM (oneDNN / AMX / AVX512-BF16) to jax?

    python -m benchmarks.xla_cpu_flags [--json]

Each XLA_FLAGS setting runs in a fresh process (flags are read once at backend start). Every
process times the same fp32 and bf16 GEMMs, at SmolLM2's MLP shape and a square one; torch times
them too, in the same run, as the competitor.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


from benchmarks.common import write_result

SHAPES = [(4096, 576, 1536), (2048, 2048, 2048)]  # (M, K, N): B*T x D x F of SmolLM2, and square
FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp
shapes = json.loads(sys.argv[1]); out = []
for M, K, N in shapes:
    for name, dt in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.random.normal(jax.random.key(0), (M, K), dt); b = jax.random.normal(jax.random.key(1), (K, N), dt)
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.5 or reps < 3:
            f(a, b).block_until_ready(); reps += 1
        dt_s = (time.perf_counter() - t0) / reps
        out.append({"shape": [M, K, N], "dtype": name, "gflops": 2 * M * K * N / dt_s / 1e9})
print(json.dumps(out))
"""


def torch_gemms() -> list[dict]:
    import time

    import torch

    out = []
    for M, K, N in SHAPES:
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(M, K, dtype=dt), torch.randn(K, N, dtype=dt)
            a @ b
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.5 or reps < 3:
                a @ b
                reps += 1
            out.append({"shape": [M, K, N], "dtype": name, "gflops": 2 * M * K * N / ((time.perf_counter() - t0) / reps) / 1e9})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"torch": torch_gemms(), "xla": {}}
    for name, flags in FLAG_SETS.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES)], env=env, capture_output=True, text=True)
        res["xla"][name] = {"flags": flags, "ok": proc.returncode == 0,
                            "rows": json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None,
                            "error": proc.stderr.strip().splitlines()[-1] if proc.returncode else None}
    for r in res["torch"]:
        line = f"{r['dtype']} {r['shape']}: torch {r['gflops']:.0f}"
        for name, x in res["xla"].items():
            if x["ok"]:
                g = next(y for y in x["rows"] if y["shape"] == r["shape"] and y["dtype"] == r["dtype"])["gflops"]
                line += f" | jax[{name}] {g:.0f}"
            else:
                line += f" | jax[{name}] failed"
        print(line + " GFLOP/s", file=sys.stderr)
    write_result("xla_cpu_flags", res, args.json)


if __name__ == "__main__":
    main()
