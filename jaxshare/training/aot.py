"""Ahead-of-time compile of a training config's step with abstract params: no weights, no data.

    python -m jaxshare.training.aot --config llama3_8b_v5e64_postshare --shape llama3-8b --devices 64

compiles the step on `--devices` simulated CPU devices (XLA_FLAGS is set before jax loads) with the
config's mesh, dcn_mesh, remat, batch and grad_accum, and prints XLA's per-device memory
(`compiled.memory_analysis()`): arguments (params + AdamW state + batch), outputs, temporaries.
On CPU the figure is the SPMD program's per-partition buffers, the same accounting a TPU
compile reports, but without TPU-specific layouts and fusions (see the README for the number).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxshare.core.config import ModelConfig, RopeScaling
from jaxshare.errors import UsageError
from jaxshare.training.config import load_config

# Model shapes by name (no weights are needed to compile).
SHAPES = {
    "llama3-8b": dict(family="llama", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      head_dim=128, d_ff=14336, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0,
                      rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=8192)),
    # the 1.5B-2B models a 24 GiB machine should still heal (config.json of each, no weights)
    "smollm2-1.7b": dict(family="llama", vocab_size=49152, d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32,
                         head_dim=64, d_ff=8192, max_seq_len=8192, norm_eps=1e-5, rope_theta=130000.0,
                         tie_embeddings=True),
    "qwen2.5-1.5b": dict(family="qwen2", vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                         head_dim=128, d_ff=8960, max_seq_len=32768, norm_eps=1e-6, rope_theta=1000000.0,
                         qkv_bias=True, tie_embeddings=True),
}


def simulate_devices(n: int) -> None:
    """Have jax start with `n` CPU devices: the device count replaces any the user set in
    XLA_FLAGS, their other flags are kept. jax fixes the count when it starts, so a process that
    already loaded jax with another count is refused."""
    if n < 1:
        raise UsageError(f"--devices must be >= 1, got {n}")
    if "jax" in sys.modules:
        import jax
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():  # imported and started: XLA_FLAGS was read
            if jax.device_count() != n or jax.default_backend() != "cpu":
                raise UsageError(f"jax is already running here on {jax.device_count()} {jax.default_backend()} "
                                 f"device(s); a compile for {n} simulated CPU devices needs a fresh process")
            return
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={n}"])
    os.environ["JAX_PLATFORMS"] = "cpu"
    # an executable read back from the persistent cache may lack its HLO text and cost analysis
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    if "jax" in sys.modules:  # imported (a config check loads it) but not started: its config
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_enable_compilation_cache", False)


def shape_config(name: str):
    if name not in SHAPES:
        raise UsageError(f"unknown model shape {name!r} (known: {', '.join(SHAPES)})")
    kw = dict(SHAPES[name])
    if kw.get("rope_scaling"):
        kw["rope_scaling"] = RopeScaling(**kw["rope_scaling"])
    return ModelConfig(**kw)


def compile_step(tc, cfg, mesh=None) -> dict:
    """Lower and compile the train step of `tc` for model `cfg` on `mesh` (default: the config's)
    from eval_shape'd params; returns XLA's per-device memory figures in bytes."""
    return compile_program(tc, cfg, mesh)[1]


def compile_program(tc, cfg, mesh=None):
    """(the compiled step, compile_step's figures): the executable for what else it can tell
    (cost analysis, HLO text; training.dryrun)."""
    # deferred: jax (and these modules, which import it) must load after main() sets XLA_FLAGS and
    # JAX_PLATFORMS; jax reads JAX_PLATFORMS when it is imported
    import jax
    import jax.numpy as jnp

    from jaxshare.core.params import cast_params, init_params
    from jaxshare.headshare.directshare import n_units
    from jaxshare.training import mesh as meshlib
    from jaxshare.training import step as steplib
    from jaxshare.training.recipes import recipe_for

    recipe = recipe_for(tc)
    mesh = mesh if mesh is not None else meshlib.make_mesh(tc.mesh, dcn=tc.dcn_mesh)
    meshlib.check_batch(mesh, tc.batch_size)
    dense = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    params = jax.eval_shape(lambda p: recipe.start(tc, p, cfg), dense)  # heal with LoRA: adapters attached
    pairs = None
    if tc.ratio > 0:  # which units pair up does not change the program, only how many do
        n, units = n_units(tc.ratio, cfg), cfg.n_layers * cfg.n_kv_heads
        later = np.arange(units - n, units, dtype=np.int32)
        pairs = {m: jnp.asarray(np.stack([later, later - cfg.n_kv_heads], axis=1)) for m in ("q", "k", "v")}
    tx, _ = steplib.make_optimizer(tc, max(tc.steps, 1))
    mask = recipe.mask(tc, params)
    abstract, sh = steplib.abstract_state(params, tx, tc.seed, mesh, mask=mask)
    fn = recipe.step(tc, cfg, tx, pairs, cfg if recipe.teacher else None)
    aux, aux_sh = (), None
    if recipe.teacher:  # a dense teacher of the model's own shape, in teacher_dtype, laid out like its params
        t = jax.eval_shape(lambda p: cast_params(p, tc.teacher_dtype or "fp32"), dense)
        aux_sh = meshlib.param_shardings(mesh, t)
        aux = (jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), t, aux_sh),)
    jitted, batch_sh = steplib.compile_step(fn, mesh, sh, attention=tc.attention, aux_sh=aux_sh)
    batch = jax.ShapeDtypeStruct((tc.grad_accum, tc.batch_size, tc.seq_len), jnp.int32, sharding=batch_sh)
    compiled = jitted.lower(abstract, batch, *aux).compile()
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_in_bytes")) for k in
           ("argument_size", "output_size", "temp_size", "alias_size", "generated_code_size")}
    # Donated state: outputs alias the arguments, so the live peak is arguments + temporaries
    # + the outputs that do not alias an argument.
    out["peak_bytes"] = out["argument_size"] + out["temp_size"] + out["output_size"] - out["alias_size"]
    out.update(devices=int(mesh.devices.size), mesh=dict(mesh.shape), recipe=recipe.name, n_params=int(sum(
        x.size for x in jax.tree_util.tree_leaves(params))))
    return compiled, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a training YAML or the name of a shipped config")
    ap.add_argument("--shape", default="llama3-8b", help=f"model shape ({', '.join(SHAPES)})")
    ap.add_argument("--devices", type=int, default=64, help="simulated CPU devices (default: 64)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    simulate_devices(args.devices)
    tc = load_config(args.config, args.set)
    t0 = time.perf_counter()
    res = compile_step(tc, shape_config(args.shape))
    res.update(config=str(args.config), shape=args.shape, compile_s=round(time.perf_counter() - t0, 1),
               remat=tc.remat, batch_size=tc.batch_size, grad_accum=tc.grad_accum, seq_len=tc.seq_len)
    json.dump(res, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
