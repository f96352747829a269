"""Will healing a 1.5B-2B model fit a 24 GiB machine? XLA's own per-device accounting of the
compiled heal step, from abstract params (no weights, no data), beside a plain training step.

Each variant compiles `jaxshare.training.aot` in its own process on 1 CPU device with the shipped
`smollm2_heal` config (seq_len 512, batch 2, remat dots) and reads `compiled.memory_analysis()`:
arguments (student params, optimizer state, teacher params, batch), temporaries, and the peak
(arguments + temporaries + outputs that do not alias an argument). The student here is dense (the
largest student a heal run can have); a compressed student has fewer params and less state.

What this is not: peak RSS. The Python process, the runtime and the host copy made while loading
add to it. On the CPU backend XLA upcasts bf16 dots to fp32, so a bf16 teacher's temporaries hold
an fp32 copy of its weights here; TPU and GPU compute bf16 dots natively.

  python -m benchmarks.heal_memory_aot [--shapes smollm2-1.7b,qwen2.5-1.5b] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
GiB = 2 ** 30
BUDGET_GIB = 24
VARIANTS = {  # name -> --set overrides of smollm2_heal
    "plain (CE, all leaves)": ["mode=plain", "teacher="],
    "heal all, fp32 teacher": ["trains=all"],
    "heal all, bf16 teacher": ["trains=all", "teacher_dtype=bf16"],
    "heal lora r16, fp32 teacher": ["trains=lora"],
    "heal lora r16, bf16 teacher": ["trains=lora", "teacher_dtype=bf16"],
}


def compile_variant(shape: str, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "jaxshare.training.aot", "--config", "smollm2_heal", "--shape", shape,
           "--devices", "1"]
    for kv in [*sets, "mesh=data=1,fsdp=1", "steps=10"]:
        cmd += ["--set", kv]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{shape} {sets}: aot failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="smollm2-1.7b,qwen2.5-1.5b")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        for name, sets in VARIANTS.items():
            r = compile_variant(shape, sets)
            row = {"shape": shape, "variant": name, "n_params": r["n_params"],
                   **{k: round(r[f"{k}_size"] / GiB, 2) for k in ("argument", "temp", "output", "alias")},
                   "peak_gib": round(r["peak_bytes"] / GiB, 2), "compile_s": r["compile_s"]}
            row["fits_24_gib"] = row["peak_gib"] <= BUDGET_GIB
            rows.append(row)
            print(f"{shape:14s} {name:30s} args {row['argument']:6.2f}  temp {row['temp']:6.2f}  "
                  f"peak {row['peak_gib']:6.2f} GiB  {'fits' if row['fits_24_gib'] else 'over'} {BUDGET_GIB} GiB",
                  file=sys.stderr, flush=True)
    write_result("heal_memory_aot", {"budget_gib": BUDGET_GIB, "config": "smollm2_heal (seq_len 512, batch 2, "
                                     "remat dots)", "what": "XLA memory_analysis of the compiled step on 1 CPU "
                                     "device; not RSS", "rows": rows}, args.json)


if __name__ == "__main__":
    main()
