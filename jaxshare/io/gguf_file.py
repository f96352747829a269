"""A GGUF file's header, metadata and tensor table, parsed without reading tensor data, and its
tensors read one at a time with pread (no memory map).

gguf.GGUFReader maps the whole file and turns every metadata item, each of the ~50k-150k vocabulary
strings included, into numpy objects (about 290 MB and seconds for a 49k vocabulary, each time the
file is opened). Here the vocabulary arrays are skipped (only their lengths are kept), so reading
the architecture and the config takes milliseconds, and tensor bytes enter memory only when a
tensor is read, a block of rows at a time.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import gguf
import numpy as np
from gguf.quants import dequantize, quant_shape_to_byte_shape

from jaxshare.errors import CheckpointError
from jaxshare.io.tensorfile import BinaryFile

VOCAB_ARRAYS = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type"}  # large; only the tokenizer needs them

# GGUF metadata value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_TYPED = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
          "I32": np.int32, "I64": np.int64}
_CHUNK_BYTES = 32 << 20  # dequantized output per block of rows


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ne order (fastest axis first), as GGUF lists it
    tensor_type: object  # gguf.GGMLQuantizationType
    data_offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def rows_shape(self) -> tuple[int, ...]:
        """Row-major shape of the dequantized array (HF/torch orientation)."""
        return tuple(reversed(self.shape))


class _Cursor:
    """Sequential little-endian reads over a file, buffered in large blocks."""

    def __init__(self, f, size: int):
        self.f, self.size, self.buf, self.base, self.pos = f, size, b"", 0, 0

    def _need(self, n: int) -> None:
        if self.pos + n <= self.base + len(self.buf):
            return
        if self.pos + n > self.size:
            raise CheckpointError(f"header runs past the end of the file ({self.size} bytes)")
        self.f.seek(self.pos)
        self.buf, self.base = self.f.read(max(n, 1 << 20)), self.pos

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        self._need(n)
        value = struct.unpack_from(fmt, self.buf, self.pos - self.base)[0]
        self.pos += n
        return value

    def string(self) -> str:
        n = self.take("<Q")
        self._need(n)
        start = self.pos - self.base
        self.pos += n
        return self.buf[start:start + n].decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.take("<Q")
        self._need(0)
        self.pos += n
        if self.pos > self.size:
            raise CheckpointError(f"header runs past the end of the file ({self.size} bytes)")

    def value(self, vtype: int, keep: bool = True):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string() if keep else self.skip_string()
        if vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if not keep:  # only the length is kept
                if etype in _SCALARS:
                    self.pos += count * struct.calcsize(_SCALARS[etype])
                else:
                    for _ in range(count):
                        self.value(etype, keep=False)
                if self.pos > self.size:
                    raise CheckpointError(f"header runs past the end of the file ({self.size} bytes)")
                return count
            return [self.value(etype) for _ in range(count)]
        raise CheckpointError(f"unknown metadata value type {vtype}")


class GGUFFile(BinaryFile):
    """fields: metadata key -> value (vocabulary arrays left out; their lengths in array_lengths);
    tensors: the tensor table in file order. Use as a context manager; `read` needs the file open."""

    def __init__(self, path, vocab: bool = False):
        """vocab: keep the vocabulary arrays in fields too (only a tokenizer build needs them)."""
        self._vocab = vocab
        super().__init__(path)

    def _parse(self) -> None:
        path, vocab = self.path, self._vocab
        size = os.fstat(self._f.fileno()).st_size
        try:
            cur = _Cursor(self._f, size)
            magic = cur.take("<I")
            if magic != 0x46554747:  # b"GGUF" little-endian
                raise CheckpointError("no GGUF magic")
            version = cur.take("<I")
            if version not in (2, 3):
                raise CheckpointError(f"GGUF version {version} is not supported")
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            self.fields, self.array_lengths = {}, {}
            for _ in range(n_kv):
                key, vtype = cur.string(), cur.take("<I")
                if key in VOCAB_ARRAYS and not vocab:  # large; only the tokenizer needs them
                    self.array_lengths[key] = cur.value(vtype, keep=False)
                else:
                    self.fields[key] = cur.value(vtype)
                    if key in VOCAB_ARRAYS:
                        self.array_lengths[key] = len(self.fields[key])
            infos = []
            for _ in range(n_tensors):
                name, n_dims = cur.string(), cur.take("<I")
                dims = tuple(cur.take("<Q") for _ in range(n_dims))
                infos.append((name, dims, gguf.GGMLQuantizationType(cur.take("<I")), cur.take("<Q")))
            align = int(self.fields.get("general.alignment", 32))
            start = cur.pos + (-cur.pos % align)
        except (ValueError, struct.error, OverflowError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from None
        self.tensors, seen = [], set()
        for name, dims, qtype, offset in infos:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            begin = start + offset
            end = begin + math.prod(dims) * type_size // block
            if name in seen:
                raise CheckpointError(f"{path}: duplicate tensor {name}")
            seen.add(name)
            if end > size:
                raise CheckpointError(f"{path} is truncated: tensor {name} needs bytes {begin}..{end}, "
                                      f"the file has {size}")
            self.tensors.append(GGUFTensor(name, dims, qtype, begin, end - begin))

    def read(self, t: GGUFTensor) -> np.ndarray:
        """The tensor dequantized to float32 [rows..., cols], a block of rows at a time."""
        shape = t.rows_shape
        out = np.empty(shape, np.float32)
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        flat = out.reshape(rows, shape[-1])
        row_bytes = t.n_bytes // rows
        typed = _TYPED.get(t.tensor_type.name)
        step = max(1, _CHUNK_BYTES // max(1, 4 * shape[-1]))
        for a in range(0, rows, step):
            b = min(rows, a + step)
            raw = np.empty((b - a) * row_bytes, np.uint8)
            self._f.seek(t.data_offset + a * row_bytes)
            if self._f.readinto(memoryview(raw)) != raw.size:
                raise CheckpointError(f"{self.path}: short read in tensor {t.name}")
            if typed is not None:
                data = raw.view(typed).reshape(b - a, shape[-1])
            else:
                data = raw.reshape(quant_shape_to_byte_shape((b - a, shape[-1]), t.tensor_type))
            try:
                flat[a:b] = dequantize(data, t.tensor_type).reshape(b - a, shape[-1])
            except NotImplementedError as e:
                raise CheckpointError(f"GGUF tensor {t.name}: quantization type {t.tensor_type.name} "
                                 f"cannot be dequantized by the gguf package ({e})") from None
        return out
