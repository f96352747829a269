"""`jaxshare train MODE --config C --dry-run`: plan a pod run before having the pod.

The real train step is compiled ahead of time for the config's mesh on simulated CPU devices
(training.aot: abstract params, no weights, no data) and the compiled program itself is read:

- memory per device: `compiled.memory_analysis()` (arguments + temporaries + unaliased outputs);
- FLOPs per step: XLA's cost analysis with each loop body weighted by its trip count
  (training.hlo.step_cost; the raw `cost_analysis()` counts a scan's body once). The figure is
  per device: the compiled SPMD module is one partition's program. It is set beside the model
  FLOPs of `model_flops` times the recompute the remat policy implies;
- bytes per device of each collective kind, from the HLO text (training.hlo.collectives);
- with --accelerator, a roofline: step time = max(compute, HBM traffic, collectives) and MFU.

XLA CPU is not XLA TPU: fusion, layouts and the collective passes differ (the CPU backend forms
no reduce-scatter: a sharded gradient is an all-reduce followed by a slice, which a TPU compile
turns into a reduce-scatter). The figures are the program's shape, not a TPU measurement.
"""
from __future__ import annotations

import json
import math
import os
import time

from jaxshare.errors import UsageError

# Per chip. Sources: each vendor's public spec page named beside the entry.
ACCELERATORS = {
    # cloud.google.com/tpu/docs/v5e "System architecture": 197 TFLOP/s bf16, 16 GiB HBM2 at
    # 819 GB/s, inter-chip interconnect 1,600 Gbps
    "tpu-v5e": dict(peak_flops=197e12, hbm_bytes=16 * 2**30, hbm_bw=819e9, ici_bw=1600e9 / 8),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2,765 GB/s, ICI 4,800 Gbps
    "tpu-v5p": dict(peak_flops=459e12, hbm_bytes=95 * 2**30, hbm_bw=2765e9, ici_bw=4800e9 / 8),
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s. The ICI figure is
    # the one we are unsure of: 6 links of ~50 GB/s each (the TPU v4 paper, ISCA 2023), taken
    # here as 300 GB/s per chip
    "tpu-v4": dict(peak_flops=275e12, hbm_bytes=32 * 2**30, hbm_bw=1200e9, ici_bw=300e9),
    # nvidia.com/en-us/data-center/h100 datasheet (SXM5): 989 TFLOP/s dense bf16 (1,979 is with
    # sparsity), 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s. NVLink joins the 8 GPUs of one node
    # only; a mesh across nodes moves its collectives over InfiniBand (~50 GB/s per GPU)
    "h100": dict(peak_flops=989e12, hbm_bytes=80e9, hbm_bw=3.35e12, ici_bw=900e9),
}

# Bytes on the wire per byte of the full buffer (training.hlo's convention), for a ring of g
# chips: gather and scatter pass (g-1)/g of it, an all-reduce both ways, a permute all of it.
WIRE = {"all-gather": lambda g: (g - 1) / g, "reduce-scatter": lambda g: (g - 1) / g,
        "all-reduce": lambda g: 2 * (g - 1) / g, "all-to-all": lambda g: (g - 1) / g,
        "collective-permute": lambda g: 1.0}


def accelerator(name: str | None):
    if name is None:
        return None
    if name not in ACCELERATORS:
        raise UsageError(f"unknown accelerator {name!r} (known: {', '.join(ACCELERATORS)})")
    return ACCELERATORS[name]


def model_flops(cfg, tc) -> dict:
    """Training FLOPs per optimizer step of the cross-entropy recipes, all devices together.

    matmul: 6 x (per-layer weight-matmul params x A*B*T tokens + the LM head's D*V x A*B*(T-1)
    predictions); the embedding is a gather (no FLOPs). attention: q.k and p.v, forward 4*T^2*H*d
    per layer per sequence, the full T x T square: the XLA path of jax.nn.dot_product_attention
    computes every score and masks, so causality saves nothing; backward twice that. remat adds
    the forward it recomputes in the backward pass: "dots" the attention products (batched dots
    are not saveable under dots_with_no_batch_dims_saveable), "full" each layer's forward but its
    last matmul (the MLP's down projection: only its input is needed for the gradients, so XLA
    drops the recomputed output)."""
    D, L, H, K, d, F, V = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    A, B, T = tc.grad_accum, tc.batch_size, tc.seq_len
    layer_params = D * H * d * 2 + D * K * d * 2 + D * F * (3 if cfg.gated_mlp else 2)
    seqs = A * B
    matmul = 6.0 * (L * layer_params * seqs * T + D * V * seqs * (T - 1))
    attn_fwd = 4.0 * T * T * H * d * L * seqs
    base = matmul + 3 * attn_fwd
    recompute = {"none": 0.0, "dots": attn_fwd, "full": 2.0 * L * (layer_params - D * F) * seqs * T + attn_fwd}[tc.remat]
    return {"matmul_params": L * layer_params + D * V, "tokens": seqs * T, "flops": base,
            "with_recompute": base + recompute, "recompute_factor": (base + recompute) / base}


def roofline(acc: dict, flops_dev: float, bytes_dev: float, coll: dict, model: float | None, chips: int,
             tokens: int, peak_bytes: int) -> dict:
    compute = flops_dev / acc["peak_flops"]
    memory = bytes_dev / acc["hbm_bw"]
    wire = sum(c["bytes"] * WIRE[k](c["group"]) for k, c in coll.items() if c["bytes"])
    collective = wire / acc["ici_bw"]
    step = max(compute, memory, collective)
    bound = {compute: "compute", memory: "memory", collective: "collectives"}[step]
    out = {"compute_s": compute, "memory_s": memory, "collective_s": collective, "wire_bytes": wire,
           "step_s": step, "bound": bound, "tokens_per_s": tokens / step if step else None,
           "fits": peak_bytes <= acc["hbm_bytes"], "hbm_bytes": acc["hbm_bytes"]}
    out["mfu"] = model / (step * acc["peak_flops"] * chips) if model and step else None
    return out


def default_devices(tc) -> int:
    from jaxshare.training.mesh import parse_mesh

    sizes = {**parse_mesh(tc.mesh)}
    n = math.prod(sizes.values()) * math.prod(parse_mesh(tc.dcn_mesh, "dcn_mesh").values())
    if n <= 1:
        raise UsageError(f"mesh {tc.mesh!r} does not say how many devices: give --devices N")
    return n


def model_shape(tc, shape: str | None):
    """The ModelConfig to compile for: a named shape, else the config.json (Hugging Face) or
    jaxshare.json (native) of a local model directory; no weights are read."""
    from jaxshare.core.config import ModelConfig
    from jaxshare.training.aot import SHAPES, shape_config

    if shape is not None:
        return shape_config(shape)
    model = str(tc.model)
    if os.path.isfile(os.path.join(model, "config.json")):
        from jaxshare.io.hf import read_hf_config

        return read_hf_config(model)
    if os.path.isfile(os.path.join(model, "jaxshare.json")):
        with open(os.path.join(model, "jaxshare.json")) as f:
            return ModelConfig.from_dict(json.load(f)["config"])
    raise UsageError(f"model {model!r} is no local model directory: give --shape ({', '.join(SHAPES)})")


def dry_run(tc, shape: str | None = None, devices: int | None = None, accel: str | None = None) -> dict:
    """Compile the step of `tc` on simulated CPU devices and read the figures off the program.
    Must run before jax is imported in this process (the device count is fixed when jax starts)."""
    acc = accelerator(accel)
    if shape is not None:  # refused by name before anything starts
        from jaxshare.training.aot import shape_config

        shape_config(shape)
    n = devices or default_devices(tc)
    from jaxshare.training.aot import compile_program, simulate_devices

    simulate_devices(n)  # before anything imports jax
    cfg = model_shape(tc, shape)
    import jax

    from jaxshare.training import hlo

    t0 = time.perf_counter()
    compiled, mem = compile_program(tc, cfg)
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    cost = hlo.step_cost(text, jax.devices()[0].client)
    dots = hlo.dot_flops(text)
    weighted = cost is not None
    if not weighted:  # no per-loop analysis in this jaxlib: the dots' FLOPs, the bytes counted once
        raw = hlo.raw_cost(compiled)
        cost = {"flops": dots, "bytes accessed": raw.get("bytes accessed", 0.0),
                "trip_counts": sorted((t for _, t in hlo.loops_all(hlo.parse(text))), reverse=True)}
    coll = hlo.collectives(text, n)
    model = model_flops(cfg, tc) if tc.mode in ("plain", "postshare", "direct+post") else None
    res = {"mode": tc.mode, "shape": shape or str(tc.model), "devices": n, "mesh": mem["mesh"],
           "remat": tc.remat, "dtype": tc.dtype, "batch_size": tc.batch_size, "grad_accum": tc.grad_accum,
           "seq_len": tc.seq_len, "n_params": mem["n_params"], "compile_s": round(compile_s, 1),
           "analysis_s": round(time.perf_counter() - t0 - compile_s, 1),
           "memory": {k: mem[k] for k in ("argument_size", "output_size", "alias_size", "temp_size", "peak_bytes")},
           "flops": {"per_device": cost["flops"], "total": cost["flops"] * n, "matmul_total": dots * n,
                     "cost_analysis_raw": hlo.raw_cost(compiled).get("flops"), "loop_trip_counts": cost["trip_counts"],
                     "source": "cost analysis, loops weighted" if weighted else "dot ops only (cost analysis of "
                               "loop bodies unavailable in this jaxlib; bytes accessed count each body once)",
                     "bytes_accessed_per_device": cost["bytes accessed"]},
           "collectives": coll}
    if model:
        res["flops"].update(model=model["flops"], model_with_recompute=model["with_recompute"],
                            expected_ratio=model["recompute_factor"], ratio=cost["flops"] * n / model["flops"],
                            matmul_ratio=dots * n / model["flops"],
                            matmul_params=model["matmul_params"], tokens_per_step=model["tokens"])
    if acc:
        res["accelerator"] = {"name": accel, **roofline(
            acc, cost["flops"], cost["bytes accessed"], coll, model and model["flops"], n,
            tc.grad_accum * tc.batch_size * tc.seq_len, mem["peak_bytes"])}
    return res


def _gb(b) -> str:
    return f"{b / 1e9:.2f} GB"


def table(res: dict) -> str:
    m, f = res["memory"], res["flops"]
    mesh = " ".join(f"{k}={v}" for k, v in res["mesh"].items())
    rows = [f"dry run: {res['mode']} on {res['shape']}, {res['devices']} simulated devices (mesh {mesh}), "
            f"remat {res['remat']}, {res['grad_accum']} x {res['batch_size']} x {res['seq_len']} tokens per step; "
            f"compiled in {res['compile_s']} s",
            f"memory per device      {_gb(m['peak_bytes'])} (arguments {_gb(m['argument_size'])}, "
            f"temporaries {_gb(m['temp_size'])}, unaliased outputs {_gb(m['output_size'] - m['alias_size'])})",
            f"FLOPs per step         {f['total']:.3e} compiled, all devices ({f['per_device']:.3e} per device), "
            f"of which matmuls {f['matmul_total']:.3e} [{f['source']}]"]
    if "model" in f:
        rows.append(f"model FLOPs            {f['model']:.3e} (6 x {f['matmul_params']:.3e} matmul params x tokens "
                    f"+ attention); compiled / model {f['ratio']:.3f} (matmuls {f['matmul_ratio']:.3f}), "
                    f"remat {res['remat']} expects {f['expected_ratio']:.3f}")
    rows.append("collectives per device (bytes of the full buffer each op exchanges):")
    for k, c in res["collectives"].items():
        if c["ops"]:
            rows.append(f"  {k:<20} {_gb(c['bytes']):>10} in {c['ops']} ops (group of {c['group']})")
    a = res.get("accelerator")
    if a:
        rows.append(f"roofline on {a['name']}: compute {a['compute_s']:.3f} s, HBM traffic {a['memory_s']:.3f} s, "
                    f"collectives {a['collective_s']:.3f} s -> step {a['step_s']:.3f} s ({a['bound']}-bound)"
                    + (f", MFU {a['mfu']:.1%}" if a["mfu"] else ""))
        rows.append(f"memory {'fits' if a['fits'] else 'does NOT fit'} {a['name']}'s {_gb(a['hbm_bytes'])} of HBM")
    return "\n".join(rows)

