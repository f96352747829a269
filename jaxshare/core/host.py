"""Host buffers that a CPU jax array adopts without a copy.

`jax.device_put(x, may_alias=True)` on the CPU backend shares a numpy array's memory only when the
buffer is 64-byte aligned. numpy's large allocations (glibc mmap plus its 16-byte header) are
16-byte aligned, so an "alias" of a freshly read leaf was silently a copy: for a moment the
leaf was held twice, 1.5 GB for a 1.5B model's stacked up-projection and 5.8 GB for a 7B one.
Buffers from `empty`/`zeros` are aligned, and `adopt` then costs no memory.

Large buffers are anonymous mappings of their own rather than numpy allocations: numpy asks the
kernel for transparent huge pages on every allocation of 4 MiB or more, and a model's leaves,
held for the whole run, then fault in 2 MiB at a time. On the 2-core VM the benchmarks run on
that made loading SmolLM2 (0.54 GB of weights) 2x slower than reading the same bytes into 4 KiB
pages (`python -m benchmarks.cli_startup`: load 2.5 s against 0.9 s). A mapping is page-aligned,
gets the kernel's default pages (XLA's own buffers, which held the weights before, get the same),
and is unmapped when the last array over it goes.
"""
from __future__ import annotations

import math
import mmap

import jax
import numpy as np

ALIGN = 64  # XLA:CPU's minimum alignment for a buffer it does not own


MAPPED_BYTES = 4 << 20  # numpy's threshold for asking for huge pages


def empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), ALIGN-byte aligned."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes >= MAPPED_BYTES:
        return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def zeros(shape, dtype) -> np.ndarray:
    out = empty(shape, dtype)
    if out.nbytes < MAPPED_BYTES:  # a fresh anonymous mapping is zero already
        out.fill(0)
    return out


def adopt(x: np.ndarray) -> jax.Array:
    """x as a jax array on the default device: its own memory where the backend can share it (an
    aligned host buffer on CPU), else a copy. x must not be written afterwards."""
    return jax.device_put(x, may_alias=True)
