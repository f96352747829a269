"""`Quantized`: the compressed-weight kind of weight-only quantization (jaxshare.core.compressed).

A Quantized leaf stands for a dense leaf [*lead, *leaf_shape] (lead: L layers, U bank rows, or the
groups of a shared basis). It stores the codes of each item's 2-D view W [d_in, d_out] (y = x @ W),
packed (jaxshare.quant.pack), with per-group scales and, when asymmetric, zero points. It may sit
where a dense leaf sits, as a `Bank`'s rows (head sharing) or as a `Factored`'s basis rows or
coefficients (Basis Sharing): indexing it (`q[i]`) indexes the leading axes, which is all the layer
scan's bank gather needs, and inside the scan `apply` dequantizes one layer's weight and multiplies.

Layouts say how an item's dense shape folds into [d_in, d_out]: the dense types of Basis Sharing
(q, k, v, o, up, gate, down, per layer), `q_unit` / `o_unit` for a KV-group unit of a head-sharing
bank ([G, D, d] and [G, d, D]), and `2d` for anything already [d_in, d_out]. When a group does
not divide d_in (only allowed for a basis' coefficients, whose rank the ratio sets), the codes
carry zero rows up to a whole group and `dense` drops them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core import matrices
from jaxshare.core.axes import layout_axes
from jaxshare.quant import pack as P

Array = jax.Array
DENSE_LAYOUTS = tuple(matrices.TYPES)  # a dense weight type's own layout: its 2-D view is core.matrices'
LAYOUTS = DENSE_LAYOUTS + ("q_unit", "o_unit", "2d")


def to_2d(layout: str, w):
    """[..., *leaf_shape] -> [..., d_in, d_out]."""
    if layout in DENSE_LAYOUTS:
        return matrices.to_2d(layout, w)
    if layout == "q_unit":  # [.., G, D, d] -> [.., D, G*d]
        w = jnp.moveaxis(w, -2, -3)
        return w.reshape(w.shape[:-2] + (-1,))
    if layout == "o_unit":  # [.., G, d, D] -> [.., G*d, D]
        return w.reshape(w.shape[:-3] + (-1, w.shape[-1]))
    return w


def from_2d(layout: str, w, leaf_shape: tuple):
    if layout in DENSE_LAYOUTS:
        return matrices.from_2d(layout, w, leaf_shape)
    lead = w.shape[:-2]
    if layout == "q_unit":
        G, D, d = leaf_shape
        return jnp.moveaxis(w.reshape(lead + (D, G, d)), -3, -2)
    return w.reshape(lead + tuple(leaf_shape))


@jax.tree_util.register_dataclass
@dataclass
class Quantized:
    """Codes, scales and zero points of a weight; a `Compressed` kind whose manifest is `quant`."""
    packed: Array  # uint8 [*lead, rows (/2 for int4), d_out]
    scale: Array  # [*lead, groups, d_out], the dtype the weight dequantizes to
    zero: Array | None  # uint8 [*lead, groups, d_out] when asymmetric, else None (z = 2^(bits-1))
    bits: int = field(metadata=dict(static=True))
    group: int | None = field(metadata=dict(static=True))  # rows per group; None: one per output channel
    layout: str = field(metadata=dict(static=True))
    leaf_shape: tuple = field(metadata=dict(static=True))  # one item's dense shape
    d_in: int = field(metadata=dict(static=True))  # real input rows (rows beyond are padding)

    @property
    def shape(self) -> tuple:
        return tuple(self.scale.shape[:-2]) + tuple(self.leaf_shape)

    @property
    def dtype(self):
        return self.scale.dtype

    @property
    def sym(self) -> bool:
        return self.zero is None

    def __getitem__(self, idx) -> "Quantized":
        """Index the leading axes (a bank's gather of rows)."""
        return Quantized(self.packed[idx], self.scale[idx], None if self.zero is None else self.zero[idx],
                         self.bits, self.group, self.layout, self.leaf_shape, self.d_in)

    def zeros(self) -> Array:
        if self.zero is not None:
            return self.zero
        return jnp.full(self.scale.shape, 1 << (self.bits - 1), jnp.uint8)

    def dense_2d(self) -> Array:
        w = P.dequantize(self.packed, self.scale, self.zeros(), self.bits, self.group, self.scale.dtype)
        return w[..., :self.d_in, :]

    def dense(self) -> Array:
        return from_2d(self.layout, self.dense_2d(), self.leaf_shape)

    def apply(self, x: Array, dense_fn) -> Array:
        # dequantize then the dense product: on CPU XLA fuses the unpacking into the weight's load
        return dense_fn(x, self.dense().astype(x.dtype))

    def logical_axes(self, dense_axes: tuple) -> "Quantized":
        """codes, scales and zero points all [*lead, d_in (rows or groups), d_out]: the groups
        axis follows the rows it scales, so a shard of the codes finds its scales beside it."""
        lead = tuple(dense_axes[:len(dense_axes) - len(self.leaf_shape)])
        view = lead + layout_axes(self.layout, dense_axes)
        return Quantized(*(None if a is None else view for a in (self.packed, self.scale, self.zero)),
                         self.bits, self.group, self.layout, self.leaf_shape, self.d_in)

    def frozen(self) -> "Quantized":
        """The integer codes and zero points are fixed; the scales may train (a scale's update
        is a per-group rescaling of the dequantized weight, QLoRA-style adapters aside)."""
        return Quantized(*(None if a is None else f for a, f in ((self.packed, True), (self.scale, False),
                                                                  (self.zero, True))),
                         self.bits, self.group, self.layout, self.leaf_shape, self.d_in)


def make(codes, scale, zero, bits: int, group: int | None, layout: str, leaf_shape: tuple, d_in: int,
         dtype=jnp.float32) -> Quantized:
    """A Quantized leaf from int codes [*lead, rows, d_out] and float scale/zero [*lead, G, d_out]."""
    sym = zero is None
    return Quantized(P.pack(codes, bits), jnp.asarray(scale, dtype),
                     None if sym else jnp.asarray(np.asarray(zero), jnp.uint8),
                     bits, group, layout, tuple(leaf_shape), int(d_in))


def is_quantized(x) -> bool:
    return isinstance(x, Quantized)
