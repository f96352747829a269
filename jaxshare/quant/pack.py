"""Integer codes of weight-only quantization (docs/methods.md §5): scales, codes, packing, dequantization.

A weight is handled as W [d_in, d_out] with y = x @ W. Its input rows are cut into groups of `group`
rows (int8 per output channel: one group of all d_in rows); each (group, output column) gets a scale
s and, when asymmetric, an integer zero point z. Codes are unsigned: q in [0, 2^bits - 1], and
  w = s * (q - z),   z = 2^(bits-1) when symmetric (not stored), else stored per group.
int4 codes are packed two per byte along the input rows (row 2i in the low nibble, 2i+1 in the high
one); int8 codes are stored one per byte. Every function here works on arrays with any leading axes.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxshare.errors import JaxshareError

BITS = (4, 8)
GROUPS = (32, 64, 128)


class QuantError(JaxshareError, ValueError):
    """A quantization request that cannot be carried out (bits, group, shape)."""


def check_spec(bits: int, group: int | None) -> None:
    """bits in {4, 8}; group None (one group per output channel) or one of GROUPS."""
    if bits not in BITS:
        raise QuantError(f"--bits must be 4 or 8, got {bits}")
    if group is not None and group not in GROUPS:
        raise QuantError(f"--group must be one of {', '.join(map(str, GROUPS))} (or per-channel), got {group}")


def check_rows(d_in: int, group: int | None, what: str = "weight") -> None:
    """A group must divide the rows it cuts (int4 also needs an even row count to pack)."""
    if group is not None and d_in % group:
        raise QuantError(f"group {group} does not divide the {d_in} input rows of {what}")


def qmax(bits: int) -> int:
    return (1 << bits) - 1


def params_of(w_GgO: jax.Array, bits: int, sym: bool) -> tuple[jax.Array, jax.Array]:
    """(scale, zero) [..., G, O] of weights grouped as [..., G, g, O] (float32, zero as float)."""
    w = w_GgO.astype(jnp.float32)
    top = qmax(bits)
    if sym:
        amax = jnp.max(jnp.abs(w), axis=-2)
        half = 1 << (bits - 1)
        scale = amax / (half - 1)
        zero = jnp.full_like(scale, half)
    else:
        lo = jnp.minimum(jnp.min(w, axis=-2), 0.0)  # the range holds 0, so w = 0 is exact
        hi = jnp.maximum(jnp.max(w, axis=-2), 0.0)
        scale = (hi - lo) / top
        zero = jnp.round(-lo / jnp.where(scale > 0, scale, 1.0))
    scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero group: any scale codes it exactly
    return scale, zero


def codes_of(w, scale, zero, bits: int):
    """Codes of w given broadcastable scale and zero: clip(round(w / s) + z, 0, 2^bits - 1)."""
    return jnp.clip(jnp.round(w.astype(jnp.float32) / scale) + zero, 0, qmax(bits))


def groups_view(w_IO: jax.Array, group: int | None) -> jax.Array:
    """[..., d_in, O] -> [..., G, g, O]."""
    d_in = w_IO.shape[-2]
    g = d_in if group is None else group
    return w_IO.reshape(w_IO.shape[:-2] + (d_in // g, g, w_IO.shape[-1]))


@partial(jax.jit, static_argnames=("bits", "group", "sym"))
def rtn(w_IO: jax.Array, bits: int, group: int | None, sym: bool):
    """Round-to-nearest: (codes int32 [..., d_in, O], scale [..., G, O], zero [..., G, O])."""
    wg = groups_view(w_IO, group)
    scale, zero = params_of(wg, bits, sym)
    q = codes_of(wg, scale[..., None, :], zero[..., None, :], bits)
    return q.reshape(w_IO.shape).astype(jnp.int32), scale, zero


def pack(q_IO, bits: int):
    """Codes [..., d_in, O] -> uint8 storage ([..., d_in / 2, O] for int4)."""
    q = jnp.asarray(q_IO).astype(jnp.uint8)
    if bits == 8:
        return q
    if q.shape[-2] % 2:
        raise QuantError(f"int4 packs row pairs; {q.shape[-2]} rows is odd")
    return q[..., 0::2, :] | (q[..., 1::2, :] << 4)


def unpack(p_IO, bits: int):
    """uint8 storage -> codes int32 [..., d_in, O]."""
    p = jnp.asarray(p_IO)
    if bits == 8:
        return p.astype(jnp.int32)
    lo, hi = (p & 0xF).astype(jnp.int32), (p >> 4).astype(jnp.int32)
    return jnp.stack([lo, hi], axis=-2).reshape(p.shape[:-2] + (2 * p.shape[-2], p.shape[-1]))


def dequantize(packed, scale, zero, bits: int, group: int | None, dtype=jnp.float32):
    """W [..., d_in, O] = s * (q - z), group by group."""
    q = unpack(packed, bits)
    qg = groups_view(q, group).astype(jnp.float32)
    w = (qg - zero[..., None, :].astype(jnp.float32)) * scale[..., None, :].astype(jnp.float32)
    return w.reshape(q.shape).astype(dtype)


def dequantize_np(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, group: int | None) -> np.ndarray:
    """The same in plain numpy, one row at a time (the reference the tests hold the jax path to)."""
    packed = np.asarray(packed)
    rows = packed.shape[-2] * (2 if bits == 4 else 1)
    out = np.empty(packed.shape[:-2] + (rows, packed.shape[-1]), np.float32)
    g = rows if group is None else group
    for i in range(rows):
        byte = packed[..., i // 2, :] if bits == 4 else packed[..., i, :]
        code = ((byte >> 4) if i % 2 else (byte & 0xF)) if bits == 4 else byte
        out[..., i, :] = (code.astype(np.float32) - zero[..., i // g, :]) * scale[..., i // g, :]
    return out
