"""Exact parameter accounting of a budgeted plan's allocations (compose/budget.py).

An allocation keeps k of the L layers, ties n q/k/v units (head sharing), factors some types at a
rank (Basis Sharing), removes f MLP channels and g KV groups in every kept layer (width pruning,
compose/candidates.py). `Budget.params` counts the model such an allocation builds, exactly: the
tests compare it with `count_params` of the model the plan builds. With quantization of some types
(one bit width, the byte-budgeted plan), `Budget.bytes` counts its bytes as exactly (`param_bytes`):
the floating weights in the model's dtype, the int32 indices of banks and bases, and each quantized
type's codes and scales as quant/model.py packs them.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import jax

from jaxshare.basis.factor import TYPES, default_types, dims, get_type, groups_of
from jaxshare.compose.candidates import channel_params, group_params
from jaxshare.core.params import count_params
from jaxshare.headshare.sharing import FIELDS, MATRICES  # the matrices head sharing ties, and their biases


@dataclasses.dataclass
class Budget:
    """The parameter count of any allocation (layers kept, units tied, per-type ranks, MLP channels
    and KV groups pruned), exactly."""
    cfg: object
    group_size: int
    nonlayer: int  # embeddings, final norm, LM head
    rest: int  # per layer: norms and the biases not carried by a q/k/v unit
    unit: dict  # q/k/v: weights + bias of one unit
    bias: dict  # q/k/v: bias params per layer (stay dense beside a factored weight)
    shared_types: tuple
    channel: int = 0  # one MLP channel of one layer (compose/candidates.py)
    group: int = 0  # one KV group of one layer with its query heads and o's input rows
    itemsize: int = 4  # bytes of one floating parameter (the model's dtype)

    @classmethod
    def of(cls, params, cfg, group_size: int = 2) -> "Budget":
        L, K = cfg.n_layers, cfg.n_kv_heads
        attn = params.layers.attn
        bias = {t: 0 if getattr(attn, FIELDS[t][1]) is None else int(getattr(attn, FIELDS[t][1]).size) // L
                for t in MATRICES}
        types = [t for t in TYPES if get_type(params.layers, t) is not None]
        weights = sum(L * dims(cfg, t)[0] * dims(cfg, t)[1] for t in types)
        total_layers = count_params(params.layers)
        rest = (total_layers - weights - L * sum(bias.values())) // L
        unit = {t: (dims(cfg, t)[0] * dims(cfg, t)[1] + bias[t]) // K for t in MATRICES}
        shared, _ = default_types(cfg)
        floats = [x for x in jax.tree_util.tree_leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
        return cls(cfg, group_size, count_params(params) - total_layers, rest, unit, bias, tuple(shared),
                   channel_params(params, cfg), group_params(params, cfg), jnp.dtype(floats[0].dtype).itemsize)

    def types(self) -> list[str]:
        shared, private = default_types(self.cfg)
        return [t for t in TYPES if t in set(shared) | set(private)]

    def n_groups(self, t: str, k: int) -> int:
        return len(groups_of(k, self.group_size if t in self.shared_types else 1))

    def type_params(self, t: str, k: int, n: int, rank) -> int:
        d_in, d_out = dims(self.cfg, t)
        if rank is not None:
            return self.n_groups(t, k) * d_in * rank + k * rank * d_out + k * self.bias.get(t, 0)
        if t in MATRICES:
            return (k * self.cfg.n_kv_heads - n) * self.unit[t]
        return k * d_in * d_out

    def params(self, k: int, n: int, ranks: dict, f: int = 0, g: int = 0) -> int:
        """k layers, n units tied, per-type ranks, f MLP channels and g KV groups pruned per layer
        (gate/up/down dense when f > 0; q/k/v/o dense when g > 0)."""
        return self.nonlayer + k * self.rest + sum(self.type_params(t, k, n, ranks.get(t)) for t in self.types()) \
            - k * f * self.channel - k * g * self.group

    def max_useful_rank(self, t: str, k: int) -> int:
        """The largest rank whose factors are smaller than the dense weights."""
        d_in, d_out = dims(self.cfg, t)
        per_rank = self.n_groups(t, k) * d_in + k * d_out
        return min((k * d_in * d_out - 1) // per_rank, d_in)

    def fraction(self, t: str, k: int, rank: int) -> float:
        d_in, d_out = dims(self.cfg, t)
        return 1 - (self.n_groups(t, k) * d_in * rank + k * rank * d_out) / (k * d_in * d_out)

    def bytes(self, k: int, n: int, ranks: dict, f: int = 0, g: int = 0, quant=(), bits: int | None = None,
              group: int | None = None):
        """Bytes of the allocation with the types in `quant` quantized at `bits` (rows per scale
        `group`, None: per output channel); None when a quantized type's rows cannot be cut into
        whole groups (quantization refuses it)."""
        total = self.params(k, n, ranks, f, g) * self.itemsize
        total += 4 * (k * self.cfg.n_kv_heads * len(MATRICES) if n else 0) + 4 * k * len(ranks)  # int32 indices
        for t in quant:
            q = self.quantized(t, k, n, ranks.get(t), f, g, bits, group)
            if q is None:
                return None
            total += q
        return total

    def weight_dims(self, t: str, f: int = 0, g: int = 0) -> tuple[int, int]:
        """(d_in, d_out) of type t with f MLP channels and g KV groups pruned per layer."""
        d_in, d_out = dims(self.cfg, t)
        K = self.cfg.n_kv_heads
        if f and t in ("up", "gate"):
            d_out -= f
        elif f and t == "down":
            d_in -= f
        if g and t in ("q", "k", "v"):
            d_out = d_out * (K - g) // K
        elif g and t == "o":
            d_in = d_in * (K - g) // K
        return d_in, d_out

    def quantized(self, t: str, k: int, n: int, rank, f: int, g: int, bits: int, group: int | None):
        """Bytes quantizing type t adds (its codes and scales, less the floating weights they replace)."""
        d_in, d_out = self.weight_dims(t, f, g)
        if rank is not None:  # the bases [groups, d_in, r] (whole groups), the coefficients [k, r, d_out] (padded)
            parts = [(self.n_groups(t, k), d_in, rank, False), (k, rank, d_out, True)]
        elif t in MATRICES and n:  # bank rows: one unit [d_in, d_out / K] per row
            parts = [(k * self.cfg.n_kv_heads - n, d_in, d_out // self.cfg.n_kv_heads, False)]
        else:
            parts = [(k, d_in, d_out, False)]
        total = 0
        for items, rows, cols, pad_ok in parts:
            q = quant_bytes(items, rows, cols, bits, group, self.itemsize, pad_ok)
            if q is None:
                return None
            total += q - items * rows * cols * self.itemsize
        return total


def quant_bytes(items: int, d_in: int, d_out: int, bits: int, group: int | None, itemsize: int,
                pad_ok: bool = False):
    """Bytes of `items` weights [d_in, d_out] quantized symmetrically (uint8 codes, int4 two per byte,
    one scale per group of rows and output column), as quant/model.py packs them; None when the rows
    must be padded and pad_ok is false."""
    rows = d_in
    if group is not None and d_in % group:
        rows = -(-d_in // group) * group
    elif bits == 4 and d_in % 2:
        rows = d_in + 1
    if rows != d_in and not pad_ok:
        return None
    groups = 1 if group is None else rows // group
    return items * ((rows // 2 if bits == 4 else rows) * d_out + groups * d_out * itemsize)
