"""XLA's per-device memory of a pod config's train step, compiled ahead of time on simulated CPU
devices from abstract params (no weights): the figure docs/training.md gives for the v5e-64
config, with its provenance. Each config compiles in a fresh process (the device count is fixed
when jax starts).

    python -m benchmarks.aot [--config llama3_8b_v5e64_postshare --shape llama3-8b --devices 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import ROOT, write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama3_8b_v5e64_postshare")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "jaxshare.training.aot", "--config", args.config, "--shape", args.shape,
           "--devices", str(args.devices)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode:
        print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "aot failed", file=sys.stderr)
        return 1
    res = json.loads(out.stdout.splitlines()[-1])
    res["peak_gb"] = round(res["peak_bytes"] / 1e9, 2)
    write_result("aot", {"results": [res]}, args.json)
    print(f"{args.config} on {args.shape}, {args.devices} devices: {res['peak_gb']} GB per device "
          f"(arguments {res['argument_size'] / 1e9:.2f} GB, temporaries {res['temp_size'] / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
