"""Streamed conversion: HF safetensors or GGUF straight into a native checkpoint.

Each source file is opened once and read tensor by tensor; each tensor is split into its param
leaves (one layer of a stacked leaf at a time) and written at its place in params.safetensors,
whose layout is fixed from the config before any tensor is read. The model is never held whole:
the peak is the imports, the tokenizer and one tensor (plus its cast), whatever the model's size.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

import numpy as np

from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.params import abstract_params, map_shapes, param_shapes
from jaxshare.io import families
from jaxshare.io import gguf as gguf_io
from jaxshare.io.hf import (
    CheckpointError,
    _safetensor_files,
    count_safetensors,
    fill_from_tensors,
    iter_safetensors,
    iter_torch_bin,
    read_hf_config,
)
from jaxshare.io.native import PARAMS_FILE, write_meta
from jaxshare.io.tensorfile import TensorWriter
from jaxshare.io.tokenizers import tokenizer_from_dir
from jaxshare.storage.atomic import atomic_output, output_path


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so that a transient peak
    (the GGUF tokenizer's vocabulary objects) does not stay in RSS under what comes next."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass


def stream_to_native(out, cfg: ModelConfig, tensors, tokenizer, dtype="fp32", extra: dict | None = None,
                     overwrite: bool = False, source: str = "checkpoint", total: int | None = None) -> Path:
    """Write (hf_key, array) pairs as a native checkpoint, one tensor at a time (atomically)."""
    dt = np.dtype(as_dtype(dtype))
    specs: list = []
    map_shapes(lambda path, shape: specs.append((path, shape, dt)), param_shapes(cfg))
    with atomic_output(out, overwrite) as tmp:
        with TensorWriter(tmp / PARAMS_FILE, specs, metadata={"format": "jaxshare"}) as w:
            fill_from_tensors(cfg, tensors, lambda leaf, layer, part: w.write(leaf, part, row=layer or 0),
                              source, total)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_meta(tmp, cfg, str(dt), abstract_params(cfg, dt), extra)
    return output_path(out)


def convert_gguf_to_native(path, out, dtype="fp32", extra: dict | None = None, overwrite: bool = False):
    """(out, cfg): a GGUF file as a native checkpoint; the header is checked before anything heavy."""
    path = Path(path)
    cfg = families.config_from_gguf_dict(gguf_io.gguf_hf_config(path))  # refuses in milliseconds
    tokenizer = gguf_io.gguf_tokenizer(path)  # first: its vocabulary objects are gone before the tensors
    release_memory()
    out = stream_to_native(out, cfg, gguf_io.iter_gguf_tensors(path), tokenizer, dtype, extra, overwrite,
                           str(path), gguf_io.gguf_tensor_count(path))
    return out, cfg


def convert_hf_to_native(model_dir, out, dtype="fp32", extra: dict | None = None, overwrite: bool = False,
                         allow_bin: bool = False):
    """(out, cfg): an HF directory as a native checkpoint; config.json is checked first."""
    model_dir = Path(model_dir)
    cfg = read_hf_config(model_dir)
    files = _safetensor_files(model_dir)
    if files:
        tensors, total = iter_safetensors(files), count_safetensors(files)
    elif any(model_dir.glob("pytorch_model*.bin")):
        if not allow_bin:
            raise CheckpointError(f"{model_dir} holds only PyTorch .bin weights, which are pickles; "
                                  "pass --allow-bin (loaded with weights_only=True) or convert to safetensors")
        tensors, total = iter_torch_bin(model_dir), None
    else:
        raise CheckpointError(f"{model_dir}: no model.safetensors, sharded index, or pytorch_model.bin")
    tokenizer = tokenizer_from_dir(model_dir)
    return stream_to_native(out, cfg, tensors, tokenizer, dtype, extra, overwrite, str(model_dir), total), cfg
