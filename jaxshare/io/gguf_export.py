"""GGUF files out (llama.cpp): `jaxshare export MODEL OUT.gguf --gguf-type TYPE`.

Tensors get llama.cpp's names (the inverse of io.gguf's table) and, for the `llama` architecture, the
q/k rotary row permutation that import undoes; matrices are stored in the chosen type with the `gguf`
package's quantizers (norms stay F32, as llama.cpp stores them), and the file is written with its
GGUFWriter. The tokenizer is copied from the source GGUF when the model came from one (a registered
name included), else built from the HF tokenizer's `tokenizer.json` (byte-level BPE) the way llama.cpp's
converter does, with the chat template. A shared or basis model has no GGUF form (llama.cpp cannot
gather an index), so its dense materialized weights are written and `jaxshare.note` says so.

Where our codes and the GGUF type agree (q8_0: int8 symmetric, groups of 32; q4_0: int4 symmetric, g32;
q4_1: int4 asymmetric, g32) a plain quantized leaf's integer codes are written as they are (only the
scale is rounded to fp16, as the format stores it). The file appears whole or not at all.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np

from jaxshare.basis.factor import get_type
from jaxshare.core.compressed import materialize
from jaxshare.core.config import ModelConfig
from jaxshare.errors import JaxshareError
from jaxshare.io import gguf as gguf_in
from jaxshare.io.hf import hf_state_dict
from jaxshare.io.kinds import codecs_in
from jaxshare.quant.leaf import Quantized
from jaxshare.quant.pack import unpack
from jaxshare.storage import paths
from jaxshare.storage.atomic import OutputError, atomic_file, check_file_destination, is_remote, output_path, shown_path

TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16", "f32")
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # our family -> GGUF architecture
MARKER = "jaxshare.export_version"


class GGUFExportError(JaxshareError, ValueError):
    """A model or request that cannot be written as GGUF."""


def check_type(name: str) -> str:
    if name not in TYPES:
        raise GGUFExportError(f"unsupported GGUF type {name!r}; choose one of {', '.join(TYPES)}")
    return name


def _qtype(name: str):
    return gguf.GGMLQuantizationType[name.upper()]


def _file_type(name: str):
    f = gguf.LlamaFileType
    return {"f32": f.ALL_F32, "f16": f.MOSTLY_F16, "bf16": f.MOSTLY_BF16, "q8_0": f.MOSTLY_Q8_0,
            "q4_0": f.MOSTLY_Q4_0, "q4_1": f.MOSTLY_Q4_1, "q5_0": f.MOSTLY_Q5_0, "q5_1": f.MOSTLY_Q5_1}[name]


def check_model(cfg: ModelConfig) -> str:
    """The GGUF architecture of cfg, or a clear error for what GGUF (or our reader) cannot express."""
    if cfg.family not in ARCHITECTURES:
        raise GGUFExportError(f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {cfg.family}")
    if cfg.rope_scaling is not None:
        raise GGUFExportError("GGUF export of llama3 RoPE scaling (rope_freqs) is not supported")
    if cfg.windows is not None and any(cfg.windows):
        raise GGUFExportError("GGUF export of sliding-window attention is not supported")
    if cfg.o_bias or cfg.mlp_bias:
        raise GGUFExportError("GGUF export of o/MLP biases is not supported")
    return ARCHITECTURES[cfg.family]


OURS = "a GGUF file written by jaxshare"


def check_destination(path, overwrite: bool, sources=()) -> Path:
    """A .gguf destination: absent, or (with overwrite) a GGUF file this exporter wrote; never one of
    `sources` or inside one. Sweeps the temporaries of killed exports to the same path."""
    if not os.fspath(path).endswith(".gguf"):
        raise OutputError(f"{shown_path(path)}: a GGUF output must end in .gguf")
    return check_file_destination(path, overwrite, _ours, OURS, sources)


def _ours(path) -> bool:
    if is_remote(str(path)):  # GGUFReader maps a local file: read a copy (only when replacing one)
        with tempfile.TemporaryDirectory() as t:
            paths.copy_file(path, os.path.join(t, "probe.gguf"))
            return _ours(os.path.join(t, "probe.gguf"))
    try:
        return MARKER in gguf.GGUFReader(str(path)).fields
    except Exception:  # not a GGUF at all
        return False


# ------------------------------------------------------------------ names and tensors

def _gguf_names() -> tuple[dict, dict]:
    return ({v: k for k, v in gguf_in._BLOCK_NAMES.items()}, {v: k for k, v in gguf_in._GLOBAL_NAMES.items()})


def gguf_name(hf_key: str) -> str:
    block, glob = _gguf_names()
    stem, kind = hf_key.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, layer, rest = stem.split(".", 3)
        return f"blk.{int(layer)}.{block[rest]}.{kind}"
    return f"{glob[stem]}.{kind}"


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's `permute`: each head's rows [first half; second half] -> interleaved pairs (the
    inverse of io.gguf.unpermute_rope_rows)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


EIGHT_BIT_NAMES = ("token_embd.weight", "output.weight")
_NATIVE = {"q8_0": (8, True), "q4_0": (4, True), "q4_1": (4, False)}  # type -> (bits, symmetric), group 32


def _native_blocks(q, layer: int, gtype: str) -> np.ndarray | None:
    """The GGUF blocks [out, bytes] of one layer of a Quantized leaf whose codes the type stores as they are,
    or None when the formats differ. Rows of the GGUF tensor are output features; blocks run along inputs."""
    bits, sym = _NATIVE.get(gtype, (None, None))
    if bits != q.bits or sym != q.sym or q.group != 32 or q.layout not in ("q", "k", "v", "o", "up", "gate", "down"):
        return None

    codes = np.asarray(unpack(q.packed[layer], q.bits)).T  # [out, in]
    scale = np.asarray(q.scale[layer], np.float32).T  # [out, blocks]
    n_out, n_in = codes.shape
    nb = n_in // 32
    c = codes.reshape(n_out, nb, 32)
    d = np.ascontiguousarray(scale.astype(np.float16)).view(np.uint8).reshape(n_out, nb, 2)
    if gtype == "q8_0":
        qs = (c - 128).astype(np.int8).view(np.uint8)
        return np.concatenate([d, qs], axis=-1).reshape(n_out, -1)
    packed = (c[..., :16] | (c[..., 16:] << 4)).astype(np.uint8)  # ggml: element j low nibble, j + 16 high
    if gtype == "q4_0":
        return np.concatenate([d, packed], axis=-1).reshape(n_out, -1)
    zero = np.asarray(q.zero[layer], np.float32).T
    m = np.ascontiguousarray((-zero * scale).astype(np.float16)).view(np.uint8).reshape(n_out, nb, 2)
    return np.concatenate([d, m, packed], axis=-1).reshape(n_out, -1)


def _hf_to_2d_slot(hf_key: str) -> tuple[str, int] | None:
    """(type, layer) of a per-layer linear weight's HF key."""
    m = gguf_in._BLOCK_RE.fullmatch(gguf_name(hf_key))
    if not m or m.group(3) != "weight":
        return None
    t = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_up": "up", "ffn_gate": "gate",
         "ffn_down": "down"}.get(m.group(2))
    return None if t is None else (t, int(m.group(1)))


def tensors(params, cfg: ModelConfig, gguf_type: str):
    """(gguf name, array, raw dtype or None) per tensor, llama.cpp layout and types."""
    arch = check_model(cfg)
    dense = materialize(params)
    for hf_key, arr in hf_state_dict(dense, cfg, "fp32"):
        name = gguf_name(hf_key)
        # The embedding and output matrices stay at q8_0 under 4/5-bit types, as llama.cpp's quantizer keeps
        # them (the registered SmolLM2 Q4_1 file holds a Q8_0 token_embd): 4 bits there cost the most.
        qt = _qtype("q8_0" if name in EIGHT_BIT_NAMES and gguf_type[1] in "45" else gguf_type)
        block = gguf.GGML_QUANT_SIZES[qt][0]
        heads = cfg.n_heads if ".q_proj." in hf_key else cfg.n_kv_heads if ".k_proj." in hf_key else None
        slot = _hf_to_2d_slot(hf_key)
        leaf = get_type(params.layers, slot[0]) if slot else None
        raw = _native_blocks(leaf, slot[1], gguf_type) if isinstance(leaf, Quantized) else None
        if raw is not None:
            if arch == "llama" and heads:
                raw = permute_rope_rows(raw, heads)
            yield name, raw, qt
            continue
        if arch == "llama" and heads:
            arr = permute_rope_rows(arr, heads)
        if arr.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            yield name, np.ascontiguousarray(arr, np.float32), None
        elif arr.shape[-1] % block:  # a row the type's blocks do not divide: kept exact
            yield name, np.ascontiguousarray(arr, np.float32), None
        else:
            yield name, gguf.quants.quantize(np.ascontiguousarray(arr, np.float32), qt), qt


# ------------------------------------------------------------------ tokenizer

def _copy_tokenizer(writer, source: Path) -> None:
    """Every tokenizer.* field of the source GGUF, as it is."""
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)


def _tokenizer_from_hf(writer, tokenizer, vocab_size: int) -> None:
    """Byte-level BPE vocabulary, merges, special ids and chat template from an HF tokenizer."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        tj = json.loads((Path(d) / "tokenizer.json").read_text()) if (Path(d) / "tokenizer.json").is_file() else {}
        if (tj.get("model") or {}).get("type") != "BPE":
            raise GGUFExportError("GGUF export needs a byte-level BPE tokenizer (tokenizer.json with a BPE model); "
                                  f"this one is {(tj.get('model') or {}).get('type', 'not a tokenizer.json')}")
        vocab = dict(tj["model"]["vocab"])
        added = {t["content"]: t for t in tj.get("added_tokens", [])}
        for t in tj.get("added_tokens", []):
            vocab[t["content"]] = t["id"]
        by_id = {i: t for t, i in vocab.items()}
        toks, types = [], []
        for i in range(vocab_size):
            tok = by_id.get(i)
            if tok is None:
                toks.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
            elif tok in added:
                toks.append(tok)
                types.append(gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED)
            else:
                toks.append(tok)
                types.append(gguf.TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(toks)
        writer.add_token_types(types)
        gguf.SpecialVocab(Path(d), load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


# ------------------------------------------------------------------ writer

def export_gguf(params, cfg: ModelConfig, out, tokenizer=None, gguf_type: str = "q8_0", overwrite: bool = False,
                source_gguf: Path | None = None, name: str = "jaxshare export") -> Path:
    """Write `out` (.gguf) atomically: a hidden sibling, renamed into place when complete."""
    check_type(gguf_type)
    arch = check_model(cfg)
    check_destination(out, overwrite)
    with atomic_file(out, overwrite, _ours, OURS) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name)
        w.add_file_type(_file_type(gguf_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.d_ff)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_vocab_size(cfg.vocab_size)
        if arch == "llama":
            w.add_rope_dimension_count(cfg.head_dim)
            if cfg.head_dim != cfg.d_model // cfg.n_heads:
                w.add_key_length(cfg.head_dim)
                w.add_value_length(cfg.head_dim)
        kinds = [c.key for c in codecs_in(params)]
        w.add_uint32(MARKER, 1)
        if kinds:
            w.add_string("jaxshare.compression", ",".join(kinds))
        if {"sharing", "basis"} & set(kinds):
            w.add_string("jaxshare.note", "dense materialized weights of a jaxshare " + "/".join(
                k for k in kinds if k != "quant") + " model: GGUF cannot express shared weights, so each layer "
                "stores its own copy and the file is not smaller than a dense model's")
        if source_gguf is not None:
            _copy_tokenizer(w, source_gguf)
        elif tokenizer is not None:
            _tokenizer_from_hf(w, tokenizer, cfg.vocab_size)
        for tname, arr, raw in tensors(params, cfg, gguf_type):
            w.add_tensor(tname, arr.view(_FileWrite), raw_dtype=raw)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()  # also on failure: the temporary can only be removed once closed
    return output_path(out)


class _FileWrite(np.ndarray):
    """An array that GGUFWriter writes through the file object: numpy's own tofile loses errno on
    a short write ("940032 requested and 514272 written"), the file object raises ENOSPC."""

    def tofile(self, fid, *args, **kw):
        fid.write(np.ascontiguousarray(self).view(np.ndarray).data)
