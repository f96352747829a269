"""Low-rank adapters over any linear weight: W_l + s * A_l @ B_l, whatever W_l is.

`LoRA` is a compressed kind that wraps another leaf (a dense per-layer array, a head-sharing
`Bank`, a Basis Sharing `Factored`, `Quantized` codes): the base computes its own product and
the adapter adds s * (x @ A) @ B in the type's 2-D view (core.matrices). Over frozen quantized
codes this is QLoRA's arrangement; over a shared bank each layer keeps its own adapter while the
bank stays tied. B starts at zero, so attaching adapters leaves the model's outputs unchanged.

`merge` folds an adapter into its base where the result keeps the base's structure: a dense
per-layer leaf. A bank (merging per-layer adapters would untie it), a factorization (the sum no
longer has the group's basis) or quantized codes (a requantization would change the weights)
keep their adapter, and the report says which.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxshare.core.axes import layout_axes
from jaxshare.core.compressed import SelfApplying, axes_of, dense_of, frozen_of, is_compressed
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import TYPES, dims, from_2d, get_type, matmul_2d
from jaxshare.core.params import abstract_params, nodes_by_path, replace_leaves
from jaxshare.errors import UsageError

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclass
class LoRA:
    """base + scale * A @ B for one weight type. Before the layer scan a is [L, d_in, r] and b
    [L, r, d_out]; inside it (one layer) [d_in, r] and [r, d_out], the base gathered as usual."""
    base: object  # any leaf: an array or a compressed kind
    a: Array
    b: Array
    layout: str = field(metadata=dict(static=True))  # the weight type (core.matrices.TYPES)
    leaf_shape: tuple = field(metadata=dict(static=True))  # the dense per-layer leaf shape
    scale: float = field(metadata=dict(static=True))  # alpha / rank

    rank = property(lambda self: int(self.a.shape[-1]))
    # The dense leaf's shape and dtype (core.compressed.rank_of, casts): the adapters' layer axis,
    # then one layer's weight; the base's dtype.
    shape = property(lambda self: (*self.a.shape[:-2], *self.leaf_shape))
    dtype = property(lambda self: self.base.dtype)

    def delta(self) -> Array:
        """The dense per-layer update s * A @ B [L, ...]."""
        return from_2d(self.layout, self.scale * (self.a @ self.b), self.leaf_shape)

    def dense(self) -> Array:
        base = dense_of(self.base)
        return (base.astype(jnp.float32) + self.delta()).astype(base.dtype)

    def apply(self, x: Array, dense_fn) -> Array:
        base = self.base
        y = base.apply(x, dense_fn) if isinstance(base, SelfApplying) else dense_fn(x, base.astype(x.dtype))
        s = jnp.asarray(self.scale, x.dtype)
        delta = matmul_2d(self.layout, x, lambda x2: ((x2 @ self.a.astype(x.dtype)) @ self.b.astype(x.dtype)) * s,
                          self.leaf_shape)
        # Named, so training's "dots" remat saves this sum as one [tokens, d_out] array; otherwise it
        # keeps both matmul outputs it is made of (a 1.5B heal step: about 2 GiB more for gate and up).
        return checkpoint_name(y + delta, "lora_product")

    def logical_axes(self, dense_axes: tuple) -> "LoRA":
        d_in, d_out = layout_axes(self.layout, dense_axes)
        lead = tuple(dense_axes[:len(dense_axes) - len(self.leaf_shape)])
        return dataclasses.replace(self, base=axes_of(self.base, dense_axes),
                                   a=None if self.a is None else lead + (d_in, "rank"),
                                   b=None if self.b is None else lead + ("rank", d_out))

    def frozen(self) -> "LoRA":
        """The base keeps its own frozen fields (indices, codes); the adapters always train."""
        return dataclasses.replace(self, base=frozen_of(self.base), a=None if self.a is None else False,
                                   b=None if self.b is None else False)


def is_lora(x) -> bool:
    return isinstance(x, LoRA)


def lora_paths(tree) -> dict[str, LoRA]:
    """{dotted path: LoRA} of every adapter in a params tree."""
    return {p: x for p, x in nodes_by_path(tree, is_lora).items() if is_lora(x)}


def attach(params, cfg: ModelConfig, rank: int, *, alpha: float | None = None, types=None, seed: int = 0):
    """params with a rank-`rank` adapter on every linear weight type (`types`: a subset of
    core.matrices.TYPES, default all the family has). A ~ N(0, 1/d_in), B = 0: outputs unchanged.
    alpha: the scale is alpha / rank (default alpha = rank: scale 1)."""
    if rank < 1:
        raise UsageError(f"LoRA rank must be >= 1, got {rank}")
    if any(is_lora(x) for x in lora_paths(params).values()):
        raise UsageError("the model already has LoRA adapters; merge them (jaxshare heal --merge) before adding more")
    types = list(TYPES) if types is None else list(types)
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise UsageError(f"unknown weight types {unknown}; choose from {', '.join(TYPES)}")
    shapes = abstract_params(cfg)
    scale = float(alpha if alpha is not None else rank) / rank
    key, new = jax.random.key(seed), {}
    for i, t in enumerate(types):
        leaf = get_type(params.layers, t)
        if leaf is None:  # a family without this weight (GPT-2 has no gate)
            continue
        d_in, d_out = dims(cfg, t)
        r = min(rank, d_in, d_out)
        # fp32 adapters whatever the base holds: they are what trains (master weights)
        a = jax.random.normal(jax.random.fold_in(key, i), (cfg.n_layers, d_in, r), jnp.float32) / jnp.sqrt(d_in)
        b = jnp.zeros((cfg.n_layers, r, d_out), jnp.float32)
        new[f"layers.{TYPES[t][0]}"] = LoRA(leaf, a, b, t, tuple(get_type(shapes.layers, t).shape[1:]), scale)
    return replace_leaves(params, new)


def merge(params) -> tuple[object, dict]:
    """(params, report): adapters over dense leaves folded in; the others kept, each named in
    report["kept"] with the reason."""
    folded, kept, new = [], {}, {}
    for path, x in lora_paths(params).items():
        if is_compressed(x.base):
            kept[path] = (f"{type(x.base).__name__} base: folding per-layer adapters into it would change its "
                          "structure (a bank unties, a basis loses its sharing, codes would be requantized)")
            continue
        new[path] = x.dense()
        folded.append(path)
    return replace_leaves(params, new), {"merged": folded, "kept": kept}


def strip(params):
    """params with every adapter removed (its base in its place)."""
    return replace_leaves(params, {p: x.base for p, x in lora_paths(params).items()})


def adapter_params(params) -> int:
    """Parameters the adapters add (every A and B)."""
    return sum(int(x.a.size) + int(x.b.size) for x in lora_paths(params).values())
