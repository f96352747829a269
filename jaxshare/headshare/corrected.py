"""Corrected banks: shared head weights plus a per-unit d x d correction of their output.

Data-aware DirectShare (docs/methods.md §4, issue 13) ties a group of units to one bank row W* and
gives each tied unit j a small least-squares map M_j so that x W* M_j ~ x W_j on its own layer's
calibration inputs. For q and k the map acts on the projection before RoPE, so it is exact to
fold into the dense weight (W_j' = W* M_j): `dense()` is that fold, which is what an HF export
writes. Inside the layer scan the bank row and the correction are gathered separately and
applied as two products (`Corrected`), so the stored parameters really are one shared row plus
(G or 1) d x d matrices per corrected unit.

Units that read a row without a correction (dense units, a keep=root group's root) have
corr_index -1 and use the identity; a corrected bank always holds at least one correction.
The corrections are trainable leaves (PostShare direct+post); both indices are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxshare.core.bank import Bank
from jaxshare.core.compressed import SelfApplying

Array = jax.Array


def correction_matrices(corr: Array, corr_index: Array) -> Array:
    """[..., *head, d, d]: each unit's correction, the identity where corr_index is -1."""
    d = corr.shape[-1]
    picked = corr[jnp.maximum(corr_index, 0)]
    eye = jnp.broadcast_to(jnp.eye(d, dtype=corr.dtype), picked.shape)
    on = (corr_index >= 0).reshape(corr_index.shape + (1,) * (picked.ndim - corr_index.ndim))
    return jnp.where(on, picked, eye)


@jax.tree_util.register_dataclass
@dataclass
class Corrected:
    """One layer's gathered weight w [K, ..., D, d] and correction m [K, ..., d, d] inside the scan:
    y = (x w) m (model.linear asks it to apply itself). A pytree, so a layer holding it passes
    through jax.checkpoint (training's remat) like any other."""

    w: Array
    m: Array

    def apply(self, x: Array, dense_fn) -> Array:
        # quantized rows (jaxshare quantize on a data-aware shared model) apply themselves
        y = self.w.apply(x, dense_fn) if isinstance(self.w, SelfApplying) else dense_fn(x, self.w.astype(x.dtype))
        return jnp.einsum("bt...d,...de->bt...e", y, self.m.astype(y.dtype))


@jax.tree_util.register_dataclass
@dataclass
class CorrectedBank(Bank):
    """A `Bank` of q or k weights whose units may carry a d x d correction (key `corrections`)."""

    corr: Array  # [T, *head, d, d]: one correction per corrected unit (head = (G,) for q, () for k)
    corr_index: Array  # int32 [L, K]: the correction each unit applies, -1 for none

    def matrices(self) -> Array:
        return correction_matrices(self.corr, self.corr_index)

    def dense(self) -> Array:
        w = super().dense()  # the rows gathered per unit, dequantized if quantized
        return jnp.einsum("...Dd,...de->...De", w, self.matrices().astype(w.dtype))

    # The layer scan (bank.split_banks): rows and corrections are closed over, both indices scanned.
    def scan_closed(self):
        return (self.rows, self.corr)

    def scan_xs(self):
        return (self.index, self.corr_index)

    @staticmethod
    def scan_gather(closed, xs_l):
        (rows, corr), (index, corr_index) = closed, xs_l
        return Corrected(rows[index], correction_matrices(corr, corr_index))
