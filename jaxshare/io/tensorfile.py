"""safetensors files read and written tensor by tensor with plain pread/pwrite, never a memory map.

Why not the safetensors package: it reads through an mmap whose touched pages count toward the
process's RSS until the file closes (a 6 GB checkpoint shows as 6 GB more), and its writer takes a
whole state dict at once. Here a reader fills caller-owned buffers (optionally a range of rows, cast
on the way), and a writer lays out the header from shapes first, so tensors (or single layers of
them) can be written in any order as they are produced. The files are ordinary safetensors that
the safetensors package and transformers read.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxshare.errors import CheckpointError
from jaxshare.core import host

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
CHUNK_BYTES = 64 << 20  # rows are read, cast and written in pieces of about this size


def dtype_name(dtype) -> str:
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors") from None


def _error(path, why: str) -> Exception:
    return CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {why}")


def all_finite(arr) -> bool:
    """Whether a floating array holds no NaN/inf (integer arrays always do), tested a block of rows
    at a time: the boolean mask of a whole embedding would be a transient copy of it."""
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16):
        return True
    if arr.ndim == 0:
        return bool(np.isfinite(arr))
    step = max(1, (CHUNK_BYTES // 8) // max(1, arr.size // max(1, arr.shape[0]) * arr.dtype.itemsize))
    return all(bool(np.isfinite(arr[i:i + step]).all()) for i in range(0, arr.shape[0], step))


def check_finite(arr, source, name: str) -> None:
    """Refuse a tensor holding NaN/inf as it is read: a corrupt file (chunks joined out of order,
    a bad download) would otherwise load and only show up as a NaN perplexity much later."""
    if not all_finite(arr):
        raise CheckpointError(f"{source}: tensor {name} holds NaN or infinite values (the file is corrupt?); "
                              "download or export it again")


def _readinto(f, buf: np.ndarray, offset: int, path) -> None:
    view = memoryview(buf.reshape(-1).view(np.uint8))
    f.seek(offset)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise _error(path, f"unexpected end of file at byte {offset + done}")
        done += n


class BinaryFile:
    """A file whose tensors are read in place by offset (safetensors here, GGUF in io/gguf_file):
    opened unbuffered, its header parsed by the subclass's `_parse`, and closed when that fails,
    by `close` or at the end of a with block. One place, so no reader can leak its descriptor."""

    def __init__(self, path):
        self.path = Path(path)
        self._f = self._open()
        try:
            self._parse()
        except BaseException:
            self._f.close()
            raise

    def _open(self):
        return open(self.path, "rb", buffering=0)

    def _parse(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TensorReader(BinaryFile):
    """Random access to the tensors of one safetensors file; use as a context manager."""

    def _open(self):
        try:
            return super()._open()
        except OSError as e:
            raise _error(self.path, e.strerror or str(e)) from None

    def _parse(self) -> None:
        size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(8)
        if len(head) < 8:
            raise _error(self.path, "shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 << 20:
            raise _error(self.path, f"header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(self._f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _error(self.path, f"header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise _error(self.path, "header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        start, self.entries = 8 + n, {}
        for name, e in header.items():
            try:
                dt, shape, (b, end) = DTYPES[e["dtype"]], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise _error(self.path, f"bad header entry for {name}: {e!r}") from None
            if end - b != math.prod(shape) * np.dtype(dt).itemsize or b < 0:
                raise _error(self.path, f"tensor {name}: offsets {b}..{end} do not hold shape {shape}")
            if start + end > size:
                raise _error(self.path, f"tensor {name} needs bytes {start + b}..{start + end}, the file has {size}")
            self.entries[name] = (np.dtype(dt), shape, start + b)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self.entries[name][0]

    def read(self, name: str, dtype=None, rows: tuple[int, int] | None = None, out: np.ndarray | None = None):
        """Tensor `name` (rows [a, b) of its first axis), cast to dtype (default: as stored), into
        `out` when given. A cast goes through pieces of ~64 MB, so it never holds two copies."""
        stored, shape, offset = self.entries[name]
        a, b = rows if rows is not None else (0, shape[0] if shape else 1)
        row_elems = math.prod(shape[1:]) if shape else 1
        want = np.dtype(dtype) if dtype is not None else stored
        out_shape = (b - a, *shape[1:]) if shape else ()
        if out is None:
            out = host.empty(out_shape, want)  # aligned: the jax array adopts it (core/host.py)
        begin = offset + a * row_elems * stored.itemsize
        if want == stored:
            _readinto(self._f, out, begin, self.path)
            return out
        step = max(1, CHUNK_BYTES // max(1, row_elems * stored.itemsize))
        flat = out.reshape(b - a, row_elems) if shape else out.reshape(1, 1)
        for i in range(0, b - a, step):
            j = min(b - a, i + step)
            piece = np.empty((j - i, row_elems), stored)
            _readinto(self._f, piece, begin + i * row_elems * stored.itemsize, self.path)
            flat[i:j] = piece.astype(want)
        return out


class TensorWriter:
    """A safetensors file whose layout is fixed up front from (name, shape, dtype) specs; `write`
    puts an array (a whole tensor or a run of its leading rows) at its place, in any order."""

    def __init__(self, path, specs: list[tuple[str, tuple[int, ...], object]], metadata: dict | None = None):
        self.path = Path(path)
        header, self.entries, offset = {}, {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for name, shape, dtype in specs:
            dt = np.dtype(dtype)
            nbytes = math.prod(shape) * dt.itemsize
            header[name] = {"dtype": dtype_name(dt), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.entries[name] = (dt, tuple(shape), offset)
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        self._start = 8 + len(blob)
        self._f = open(self.path, "wb", buffering=0)
        self._f.write(len(blob).to_bytes(8, "little") + blob)
        self._f.truncate(self._start + offset)

    def write(self, name: str, array, row: int = 0) -> None:
        """array: rows [row, row + len) of tensor `name` (or the whole tensor), cast to its dtype."""
        dt, shape, offset = self.entries[name]
        row_elems = math.prod(shape[1:]) if shape else 1
        arr = np.asarray(array)
        if arr.shape != tuple(shape) and arr.shape != tuple(shape[1:]) and arr.shape[1:] != tuple(shape[1:]):
            raise ValueError(f"{name}: cannot write an array of shape {arr.shape} into {shape}")
        n_rows = 1 if arr.shape == tuple(shape[1:]) and arr.shape != tuple(shape) else (arr.shape[0] if shape else 1)
        if row + n_rows > (shape[0] if shape else 1):
            raise ValueError(f"{name}: rows {row}..{row + n_rows} exceed {shape}")
        pos = self._start + offset + row * row_elems * dt.itemsize
        flat = arr.reshape(n_rows, row_elems)
        step = max(1, CHUNK_BYTES // max(1, row_elems * dt.itemsize))
        for i in range(0, n_rows, step):  # cast a piece at a time: never a second full copy
            piece = np.ascontiguousarray(flat[i:i + step], dtype=dt)
            view = memoryview(piece.reshape(-1).view(np.uint8))
            done = 0
            while done < len(view):
                done += os.pwrite(self._f.fileno(), view[done:], pos + done)
            pos += len(view)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
