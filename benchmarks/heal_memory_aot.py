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

The memory benchmark's `heal_lora` case (benchmarks/memory.py, whose peak RSS it measures) runs
other settings: `jaxshare heal`'s own config for that case's flags (batch 4, bf16 compute, LoRA
rank 8) on the random Qwen2-1.5B width-pruned by `--mlp 0.2` (d_ff 8960 -> 7168 in every layer)
from its dense fp32 teacher. Its row is compiled from that command line (`memory_case`), so that
RSS and XLA's count are compared at the same settings.

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


MEMORY_CASE_D_FF = 7168  # `jaxshare prune --mlp 0.2` of Qwen2-1.5B's 8960 (memory.json: 1,312,503,296 params)


def memory_case() -> dict:
    """XLA's count of the memory benchmark's heal_lora step, in this process (run it in a fresh one:
    it sets the device count before jax loads)."""
    import dataclasses
    import tempfile

    from jaxshare.training import aot

    aot.simulate_devices(1)
    import jax
    import jax.numpy as jnp

    from benchmarks import memory
    from jaxshare.cli.heal import heal_config
    from jaxshare.cli.main import build_parser
    from jaxshare.core.params import init_params
    from jaxshare.training import mesh as meshlib
    from jaxshare.training import step as steplib
    from jaxshare.training.recipes import recipe_for

    with tempfile.TemporaryDirectory() as tmp:
        argv = next(a for name, a, _ in memory.cases("qwen2-1.5b", Path(tmp) / "src", Path(tmp), 512, 8, (8, 256))
                    if name == "heal_lora")
    tc = heal_config(build_parser().parse_args(argv[3:]))  # argv: python -m jaxshare heal ...
    teacher = aot.shape_config("qwen2.5-1.5b")
    cfg = dataclasses.replace(teacher, d_ff=MEMORY_CASE_D_FF)
    recipe, mesh = recipe_for(tc), meshlib.make_mesh("data=1,fsdp=1")
    params = jax.eval_shape(lambda: recipe.start(tc, init_params(cfg, jax.random.key(0)), cfg))
    tx, _ = steplib.make_optimizer(tc, max(tc.steps, 1))
    abstract, sh = steplib.abstract_state(params, tx, tc.seed, mesh, mask=recipe.mask(tc, params))
    t = jax.eval_shape(lambda: init_params(teacher, jax.random.key(0)))
    t_sh = meshlib.param_shardings(mesh, t)
    aux = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), t, t_sh)
    jitted, batch_sh = steplib.compile_step(recipe.step(tc, cfg, tx, None, teacher), mesh, sh,
                                            attention=tc.attention, aux_sh=t_sh)
    batch = jax.ShapeDtypeStruct((tc.grad_accum, tc.batch_size, tc.seq_len), jnp.int32, sharding=batch_sh)
    m = jitted.lower(abstract, batch, aux).compile().memory_analysis()
    out = {k: getattr(m, f"{k}_size_in_bytes") for k in ("argument", "temp", "output", "alias")}
    return {"variant": "memory.json heal_lora: jaxshare heal defaults, pruned student", "shape": "qwen2-1.5b",
            "student_d_ff": cfg.d_ff, "batch_size": tc.batch_size, "seq_len": tc.seq_len, "dtype": tc.dtype,
            "lora_rank": tc.lora_rank, "remat": tc.remat, "teacher_dtype": tc.teacher_dtype or "fp32",
            "n_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
            **{k: round(v / GiB, 2) for k, v in out.items()},
            "peak_gib": round((out["argument"] + out["temp"] + out["output"] - out["alias"]) / GiB, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="smollm2-1.7b,qwen2.5-1.5b")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory-case", action="store_true", help=argparse.SUPPRESS)  # the child that compiles it
    args = ap.parse_args()
    if args.memory_case:
        print(json.dumps(memory_case()))
        return
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
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.heal_memory_aot", "--memory-case"], cwd=ROOT,
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"memory case: {out.stderr.strip().splitlines()[-1:]}")
    case = json.loads(out.stdout.splitlines()[-1])
    print(f"memory.json heal_lora step: peak {case['peak_gib']:.2f} GiB", file=sys.stderr)
    write_result("heal_memory_aot", {"budget_gib": BUDGET_GIB, "config": "smollm2_heal (seq_len 512, batch 2, "
                                     "remat dots)", "what": "XLA memory_analysis of the compiled step on 1 CPU "
                                     "device; not RSS", "rows": rows, "memory_case": case}, args.json)


if __name__ == "__main__":
    main()
