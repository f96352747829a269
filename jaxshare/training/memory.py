"""Memory- and disk-lean pieces of training (issue 9: peak RSS <= 2.5x params + AdamW state).

Measured on SmolLM2-135M (fp32 master weights P = 0.54 GB, AdamW m and v = 2P), batch 2 x 128,
bf16 compute, with XLA's own buffer accounting (`compiled.memory_analysis().temp_size_in_bytes`):

- The layer scan's backward kept, per layer, the weight slices and their bf16 casts as saved
  residuals: 1.37 GB of temporaries for the gradient. Rematerializing each layer with the
  `dots_with_no_batch_dims_saveable` policy (keep the weight-matmul outputs, recompute casts,
  norms and attention) brings it to 0.54 GB for a few percent more compute.
- optax.clip_by_global_norm scales with a divide inside a select, which XLA will not duplicate
  into the AdamW fusions: a full clipped copy of the gradients (0.54 GB). The same clip as a
  multiply by min(1, max_norm / norm) fuses away (0 bytes); its state is the same EmptyState, so
  checkpoints keep their tree structure.
- glibc keeps the step's freed temporaries in its arenas; a checkpoint save or the export then
  maps fresh memory on top of them. `release_free_memory` hands them back between phases.
- A checkpoint is the whole training state (fp32 params + m + v: 3x the model). A completed run
  has its result in final/ and hf/, so `drop_checkpoints` removes them unless asked to keep one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys

import jax
import jax.numpy as jnp
import optax
from etils import epath


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm as a multiply, so XLA fuses it into the optimizer update."""
    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / g_norm)  # norm 0: inf -> 1, the updates stay 0
        return jax.tree_util.tree_map(lambda t: t * scale.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


REMAT = ("none", "full", "dots")


@functools.lru_cache(maxsize=None)
def remat_layer(layer_fn, policy: str = "dots"):
    """layer_fn under jax.checkpoint (cfg is static): "dots" keeps its weight-matmul outputs and
    every value a kind names with jax.ad_checkpoint.checkpoint_name (LoRA names its base + adapter
    sum, so neither product needs keeping) and recomputes the rest in the backward pass; "full"
    keeps only the layer's input; "none" is layer_fn itself (every residual stored)."""
    if policy in ("none", False):
        return layer_fn
    if policy == "full":
        return jax.checkpoint(layer_fn, static_argnums=(2,), policy=jax.checkpoint_policies.nothing_saveable)
    policies = jax.checkpoint_policies
    return jax.checkpoint(layer_fn, static_argnums=(2,), policy=policies.save_from_both_policies(
        policies.dots_with_no_batch_dims_saveable, policies.save_any_names_but_these()))


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


# Models this size or larger get a collection where the trainer lets one go: below it, what a cycle
# may hold is small next to a collection's cost (up to a second in a large process, every run).
COLLECT_ABOVE_BYTES = 2 ** 30


def release_free_memory(collect: bool = False) -> None:
    """Return the allocator's free pages to the OS (glibc malloc_trim; no-op elsewhere). collect:
    first free what only reference cycles hold. After the training state took over a loaded
    model's buffers, a cycle kept the loaded arrays' memory (the whole student, 5.8 GiB at 1.5B)
    until Python's next full collection. A collection costs up to a second in a large process, so
    it is for the few points where a model was let go, not for every checkpoint."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def drop_checkpoints(ckpt_dir) -> None:
    """Remove the orbax step directories (digit names) of a completed run, then checkpoints/
    itself if that left it empty; anything else there is not ours and stays (any epath)."""
    ckpt_dir = epath.Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.isdigit():
            p.rmtree()
    if not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()


def collect_quietly() -> None:
    """Collect garbage now, with the finalizers' complaints silenced. A failed orbax restore
    abandons its pending reads; their coroutines raise as they are finalized. Left to a later
    automatic collection, that happens inside whatever code it interrupts (CPython 3.11 then fails
    an AST compile with "recursion depth mismatch"), or prints tracebacks under a one-line error."""
    old = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = old
