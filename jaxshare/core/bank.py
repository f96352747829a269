"""Weight banks: unique weights with a leading unit axis, read through an int32 index.

A `Bank` replaces a per-layer leaf of `Layers` (leading axis L). Its `rows` hold the unique
weights [U, ...] and its `index` [L, ...] says which row each layer (or each (layer, unit))
reads. Head sharing (docs/methods.md §1) uses index [L, K] over rows [U, *unit_shape]; Basis
Sharing (§2) uses index [L] over one basis per group. The decoder scans over the indices and
gathers inside the scan (`split_banks`), so a dense model is the identity index over a full
bank and sharing never changes the per-layer code.

The index is a leaf (so it checkpoints and shards like any array) but is never trainable:
`trainable_mask` / `partition` keep it away from gradients and optax.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.axes import AxesError
from jaxshare.core.compressed import axes_of, dense_of, frozen_of, is_compressed, materialize, rank_of  # noqa: F401  (materialize: banks are where most callers meet it)

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclass
class Bank:
    """A `Compressed` kind (jaxshare.core.compressed): as a leaf of `Layers` it is head sharing,
    whose manifest is `sharing` (jaxshare.headshare.sharing)."""

    rows: Array  # [U, ...]: the unique weights
    index: Array  # int32 [L] or [L, K]: the row each layer (unit) reads

    def dense(self) -> Array:
        """The per-layer leaf this bank stands for: [L, (K,) ...]."""
        return dense_of(self.rows)[self.index]  # rows may be quantized

    def apply(self, x: Array, dense_fn) -> Array:
        # Inside the layer scan banks arrive gathered; this is the product outside of it.
        return dense_fn(x, self.dense().astype(x.dtype))

    def logical_axes(self, dense_axes: tuple) -> "Bank":
        """rows: (units, <the dense axes the index does not cover>); every other field (the int32
        index, a corrected bank's corrections) is never sharded: the scan reads it whole."""
        if self.rows is None and self.index is None:  # a half of bank.partition holding neither
            return dataclasses.replace(self, **{f.name: None if getattr(self, f.name) is None else
                                                (None,) * rank_of(getattr(self, f.name)) for f in dataclasses.fields(self)})
        # how many leading dense axes the index covers, from whichever of rows/index is present
        n = rank_of(self.index) if self.index is not None else len(dense_axes) + 1 - rank_of(self.rows)
        if self.rows is not None and rank_of(self.rows) != 1 + len(dense_axes) - n:
            raise AxesError(f"bank rows of rank {rank_of(self.rows)} do not stand for a leaf with axes {dense_axes}")
        out = {f.name: None if getattr(self, f.name) is None else (None,) * rank_of(getattr(self, f.name))
               for f in dataclasses.fields(self)}
        out["rows"] = axes_of(self.rows, ("units",) + tuple(dense_axes[n:]))
        return dataclasses.replace(self, **out)

    def frozen(self) -> "Bank":
        """Every *index field (a corrected bank's corr_index too) is frozen; rows and corrections train."""
        return dataclasses.replace(self, **{f.name: frozen_of(getattr(self, f.name), f.name.endswith("index"))
                                            for f in dataclasses.fields(self)})

    # The layer scan (split_banks): what is closed over, what is scanned, and one layer's weight.
    # A bank with more leaves (headshare.corrected.CorrectedBank) overrides these three.
    def scan_closed(self):
        return self.rows

    def scan_xs(self):
        return self.index

    @staticmethod
    def scan_gather(closed, xs_l):
        return closed[xs_l]


def is_bank(x) -> bool:
    return isinstance(x, Bank)


def has_banks(tree) -> bool:
    return any(is_bank(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_bank))


def identity_bank(w_LK_: Array, unit_dims: int = 2) -> Bank:
    """A full bank over a dense leaf: the first `unit_dims` axes (L, K) become the index."""
    lead = w_LK_.shape[:unit_dims]
    n = int(np.prod(lead))
    return Bank(w_LK_.reshape((n,) + w_LK_.shape[unit_dims:]), jnp.arange(n, dtype=jnp.int32).reshape(lead))


def split_banks(layers):
    """(xs, rebuild): `xs` is what `lax.scan` iterates (bank indices in place of banks, every
    leaf with a leading L axis); `rebuild(xs_l)` turns one layer's slice back into a `Layers`
    whose bank leaves are gathered weights, closing over the rows (which are not scanned)."""
    leaves, treedef = jax.tree_util.tree_flatten(layers, is_leaf=is_bank)
    rows = [leaf.scan_closed() if is_bank(leaf) else None for leaf in leaves]
    xs = [leaf.scan_xs() if is_bank(leaf) else leaf for leaf in leaves]
    gathers = [type(leaf).scan_gather if is_bank(leaf) else None for leaf in leaves]

    def rebuild(xs_l):
        return jax.tree_util.tree_unflatten(treedef, [x if r is None else g(r, x)
                                                      for r, g, x in zip(rows, gathers, xs_l)])

    return xs, rebuild


def compact(bank: Bank) -> Bank:
    """Drop the rows no index reads and renumber; the weights each layer reads are unchanged."""
    index = np.asarray(bank.index)
    used, inverse = np.unique(index.ravel(), return_inverse=True)
    # replace, not Bank(...): a bank with more leaves (per-unit corrections) keeps them
    return dataclasses.replace(bank, rows=bank.rows[jnp.asarray(used)],
                               index=jnp.asarray(inverse.reshape(index.shape).astype(np.int32)))


def trainable_mask(tree):
    """True for leaves that gradients and optax may touch: what no compressed kind declares
    frozen (bank indices, quantization codes; `Compressed.frozen`)."""
    def mark(x):
        if is_compressed(x):
            return jax.tree_util.tree_map(operator.not_, x.frozen())
        return True

    return jax.tree_util.tree_map(mark, tree, is_leaf=is_compressed)


def partition(tree, mask=None):
    """(trainable, frozen): two trees of the same structure, with None where the other one
    holds the leaf. `combine` puts them back together. mask: which leaves train (default
    `trainable_mask`; a recipe that trains less passes its own, never more than that)."""
    mask = trainable_mask(tree) if mask is None else mask
    train = jax.tree_util.tree_map(lambda m, x: x if m else None, mask, tree)
    frozen = jax.tree_util.tree_map(lambda m, x: None if m else x, mask, tree)
    return train, frozen


def combine(trainable, frozen):
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, trainable, frozen,
                                  is_leaf=lambda x: x is None)
