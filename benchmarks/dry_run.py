"""`jaxshare train MODE --config C --dry-run` on the Llama-3-8B v5e-64 config: its wall time and
the figures it reads off the compiled step (memory per device, FLOPs per step, collective bytes,
the TPU v5e roofline), for docs/training.md. The command runs in a fresh process, as a user runs
it (the simulated device count is fixed when jax starts).

    python -m benchmarks.dry_run [--config llama3_8b_v5e64_postshare --mode postshare
                                  --shape llama3-8b --devices 64 --accelerator tpu-v5e]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import ROOT, write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama3_8b_v5e64_postshare")
    ap.add_argument("--mode", default="postshare")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--accelerator", default="tpu-v5e")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "jaxshare", "train", args.mode, "--config", args.config, "--dry-run", "--shape",
           args.shape, "--devices", str(args.devices), "--accelerator", args.accelerator, "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    if out.returncode:
        print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "dry run failed", file=sys.stderr)
        return 1
    res = json.loads(out.stdout.splitlines()[-1])
    res["wall_s"] = round(wall, 1)
    write_result("dry_run", {"cli": " ".join(["jaxshare", *cmd[3:]]), "results": [res]}, args.json)
    a = res["accelerator"]
    print(f"{args.config}: {wall:.0f} s wall ({res['compile_s']} s compile); {res['memory']['peak_bytes'] / 1e9:.2f} GB "
          f"per device; {res['flops']['total']:.3e} FLOPs per step ({res['flops']['ratio']:.3f} x model); "
          f"{args.accelerator} step {a['step_s']:.2f} s ({a['bound']}-bound), MFU {a['mfu']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
