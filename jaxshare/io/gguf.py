"""GGUF files (llama.cpp) read as if they were Hugging Face checkpoints.

`gguf_hf_config` turns the GGUF metadata into HF config kwargs (header only, jaxshare.io.gguf_file),
`iter_gguf_tensors` streams (hf_key, float32 array) pairs one tensor at a time, read with pread and
dequantized with `gguf.quants.dequantize` a block of rows at a time, and `gguf_tokenizer` is
transformers' own tokenizer for it, built without importing torch.

Orientation: GGUF lists a tensor's shape fastest axis first (ne order); the numpy view that
gguf.GGUFReader gives, and the array dequantize returns, are already row-major [rows, cols],
which is the torch Linear orientation [out_features, in_features] that HF uses.

llama.cpp's Llama converter permutes the rows of q_proj/k_proj (weights and biases) from HF's
"rotate halves" RoPE layout to its interleaved one; iter_gguf_tensors undoes that permutation.
Qwen2 is converted without the permutation. Metadata we cannot honour raises ValueError.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxshare.errors import CheckpointError
from jaxshare.io import families
from jaxshare.io.gguf_file import VOCAB_ARRAYS as _VOCAB_ARRAYS, GGUFFile  # noqa: F401 (older name)

ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}  # general.architecture -> HF model_type
PERMUTED_QK = {"llama"}  # architectures whose q/k rows llama.cpp permutes for its RoPE layout
HEAD_DIM_TYPES = {"llama", "gemma3_text"}  # model types whose HF config takes head_dim != hidden // heads

# {arch}.<suffix> -> HF config key (a scalar each).
_ARCH_KEYS = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
# {arch}.<suffix> read separately (head size, RoPE), checked for consistency below.
_ARCH_CHECKED = {"rope.freq_base", "rope.dimension_count", "attention.key_length", "attention.value_length",
                 "rope.scaling.type"}
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "padding_token_id": "pad_token_id"}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")


def _family(arch: str | None):
    """The family adapter of a GGUF architecture; its optional GGUF hooks: GGUF_KEYS (more
    {arch}.<key> metadata it reads), GGUF_BLOCK_NAMES (block tensor names that differ from
    Llama's), gguf_config(cfg, fields, arch) and gguf_tensor(hf_key, array)."""
    return families.ADAPTERS.get(ARCHITECTURES.get(arch))


def _hook(arch: str | None, name: str, default=None):
    return getattr(_family(arch), name, default)


def _reader(path, vocab: bool = False):
    """The file's metadata and tensor table (jaxshare.io.gguf_file): no tensor data, no vocabulary
    objects unless asked; a truncated or garbled file raises CheckpointError naming the cause."""

    return GGUFFile(path, vocab)


def _fields(reader) -> dict:
    """Metadata key -> Python value (str, int, float, bool, or a list), less the vocabulary arrays."""
    return reader.fields


def _architecture(fields: dict) -> tuple[str, str]:
    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unsupported GGUF architecture: {arch} (supported: {', '.join(sorted(ARCHITECTURES))})")
    return arch, ARCHITECTURES[arch]


def _scalar(fields: dict, key: str, required: bool = True):
    if key not in fields:
        if required:
            raise CheckpointError(f"GGUF metadata lacks {key}")
        return None
    value = fields[key]
    if isinstance(value, list):
        raise CheckpointError(f"GGUF metadata {key} is per-layer ({value!r}); only uniform layers are supported")
    return value


def _rope_scaling_problems(fields: dict, arch: str) -> list[str]:
    bad = []
    for key, value in fields.items():
        if not key.startswith(f"{arch}.rope.scal"):  # rope.scaling.* and the old rope.scale_linear
            continue
        suffix = key[len(arch) + 1:]
        harmless = ((suffix == "rope.scaling.type" and value == "none")
                    or (suffix in ("rope.scaling.factor", "rope.scale_linear") and value in (0.0, 1.0))
                    or (suffix == "rope.scaling.finetuned" and not value))
        if not harmless:
            bad.append(f"{key}={value!r}")
    return bad


def gguf_hf_config(path) -> dict:
    """HF config kwargs (a config.json-like dict) for the model in the GGUF file at `path`; reads
    the header only (milliseconds), so an unsupported file is refused before anything heavy."""
    with _reader(path) as reader:
        return _config(reader, path)[0]


def _config(reader, path) -> tuple[dict, str]:
    """(HF config kwargs, GGUF architecture name)."""
    fields = _fields(reader)
    arch, model_type = _architecture(fields)
    tensor_names = {t.name for t in reader.tensors}

    problems = _rope_scaling_problems(fields, arch)
    if "rope_freqs.weight" in tensor_names:
        problems.append("rope_freqs.weight (llama3-style RoPE frequency scaling)")
    known = set(_ARCH_KEYS) | _ARCH_CHECKED | set(_hook(arch, "GGUF_KEYS", ()))
    for key, value in fields.items():
        suffix = key[len(arch) + 1:]
        if key.startswith(f"{arch}.") and suffix not in known and not suffix.startswith("rope.scal"):
            if value not in (0, False, None, [], ""):  # e.g. expert_count, attention.sliding_window
                problems.append(f"{key}={value!r}")
    if problems:
        raise CheckpointError(f"{path}: unsupported GGUF {arch} metadata: {', '.join(problems)}")

    cfg: dict = {"model_type": model_type, "hidden_act": "silu"}
    for suffix, hf_key in _ARCH_KEYS.items():
        value = _scalar(fields, f"{arch}.{suffix}", required=suffix not in ("vocab_size", "attention.head_count_kv"))
        if value is not None:
            cfg[hf_key] = float(value) if hf_key == "rms_norm_eps" else int(value)
    if "vocab_size" not in cfg:  # older files: the vocabulary size is the token list's length
        if "tokenizer.ggml.tokens" not in reader.array_lengths:
            raise CheckpointError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
        cfg["vocab_size"] = int(reader.array_lengths["tokenizer.ggml.tokens"])
    heads = cfg["num_attention_heads"]
    cfg.setdefault("num_key_value_heads", heads)

    # Head size: attention.key_length when written, else the RoPE width, else hidden // heads.
    rope_dim = _scalar(fields, f"{arch}.rope.dimension_count", required=False)
    key_len = _scalar(fields, f"{arch}.attention.key_length", required=False)
    value_len = _scalar(fields, f"{arch}.attention.value_length", required=False)
    head_dim = int(key_len or rope_dim or cfg["hidden_size"] // heads)
    if value_len is not None and int(value_len) != head_dim:
        raise CheckpointError(f"{path}: attention value_length {value_len} != key_length {head_dim} is not supported")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise CheckpointError(f"{path}: partial rotary embedding (rope.dimension_count {rope_dim} of head size "
                         f"{head_dim}) is not supported")
    if model_type in HEAD_DIM_TYPES:
        cfg["head_dim"] = head_dim
    elif head_dim != cfg["hidden_size"] // heads:
        raise CheckpointError(f"{path}: {model_type} head size {head_dim} != hidden_size // num_attention_heads")

    theta = _scalar(fields, f"{arch}.rope.freq_base", required=False)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta if theta is not None else 10000.0)}
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    if model_type == "llama":
        cfg["attention_bias"] = any(n.endswith(".attn_q.bias") for n in tensor_names)
        cfg["mlp_bias"] = any(n.endswith(".ffn_up.bias") for n in tensor_names)
    for gguf_key, hf_key in _TOKEN_IDS.items():
        value = _scalar(fields, f"tokenizer.ggml.{gguf_key}", required=False)
        if value is not None:
            cfg[hf_key] = int(value)
    if (hook := _hook(arch, "gguf_config")) is not None:
        cfg = hook(cfg, fields, arch)
    return cfg, arch


def hf_tensor_name(gguf_name: str, arch: str | None = None) -> str | None:
    """HF state-dict key of a GGUF tensor name (Llama/Qwen2 naming, or `arch`'s), or None when unknown."""
    if m := _BLOCK_RE.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        block_names = {**_BLOCK_NAMES, **_hook(arch, "GGUF_BLOCK_NAMES", {})}
        if part in block_names:
            return f"model.layers.{int(layer)}.{block_names[part]}.{kind}"
        return None
    if (m := _GLOBAL_RE.fullmatch(gguf_name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute(w, n_head, n_head_kv)` on q/k rows (weights [out, in] or biases [out]).

    llama.cpp maps each head's rows from [2, head_dim // 2] (HF: first half, second half) to
    [head_dim // 2, 2] (interleaved pairs); here we reshape to the latter and swap back.
    For k, `n_heads` is the number of KV heads.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise CheckpointError(f"cannot un-permute {rows} rows into {n_heads} heads of even size")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def iter_gguf_tensors(path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (hf_key, float32 array in HF/torch orientation) per tensor, one at a time; the file is
    opened once and read with pread, a block of rows at a time (no memory map).

    Raises ValueError before yielding anything when a tensor name has no HF counterpart.
    """
    with _reader(path) as reader:
        cfg, arch = _config(reader, path)
        names = {t.name: hf_tensor_name(t.name, arch) for t in reader.tensors}
        unknown = sorted(n for n, hf in names.items() if hf is None)
        if unknown:
            more = f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
            raise CheckpointError(f"{path}: unknown GGUF tensor name(s): {', '.join(unknown[:8])}{more}")
        permuted = arch in PERMUTED_QK
        fix = _hook(arch, "gguf_tensor", lambda key, a: a)
        for tensor in reader.tensors:
            hf_key = names[tensor.name]
            arr = fix(hf_key, reader.read(tensor))
            if permuted and ".self_attn.q_proj." in hf_key:
                arr = unpermute_rope_rows(arr, cfg["num_attention_heads"])
            elif permuted and ".self_attn.k_proj." in hf_key:
                arr = unpermute_rope_rows(arr, cfg["num_key_value_heads"])
            yield hf_key, arr


def gguf_tensor_count(path) -> int:
    """Number of tensors in the file (a progress-bar total for iter_gguf_tensors)."""
    with _reader(path) as reader:
        return len(reader.tensors)


# AutoTokenizer's class for a GGUF of these model types (its TOKENIZER_MAPPING; others get
# TokenizersBackend). Read there only through the config classes, which import torch; the tests
# check that the two still agree.
TOKENIZER_CLASSES = {"qwen2": "Qwen2Tokenizer", "gemma3_text": "GemmaTokenizer"}
# tokenizer_config key -> tokenizer.ggml.<key> holding the token's id (transformers' gguf integration)
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                   "pad_token": "padding_token_id"}


def gguf_tokenizer(path):
    """The transformers tokenizer of the GGUF's vocabulary, the one AutoTokenizer.from_pretrained(dir,
    gguf_file=name) gives, built from the same pieces (transformers.integrations.gguf) without its file
    reader and config classes: both import torch, ~240 MB of RSS that a conversion otherwise never needs."""
    # deferred: transformers costs ~0.4 s to import; only a tokenizer build needs it
    import transformers
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    with _reader(path, vocab=True) as reader:
        meta = reader.fields
    arch, model_type = _architecture(meta)
    groups = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
              for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    vocab, config = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in vocab:
        raise CheckpointError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens (no vocabulary to build a tokenizer)")
    if vocab.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary by default
        config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKENS.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = vocab["tokens"][token_id] if token_id is not None else None
    try:
        backend, more = convert_gguf_tokenizer(arch, vocab)
    except KeyError as e:  # transformers' converters index the vocabulary fields they expect
        raise CheckpointError(f"{path}: its {vocab.get('tokenizer_type', 'unknown')}-type vocabulary lacks "
                              f"tokenizer.ggml.{e.args[0]}, which transformers needs to build the tokenizer; "
                              "re-export the GGUF with its full vocabulary") from None
    del meta, vocab, groups  # the Python vocabulary (tens of MB for 150k tokens): the backend holds its own
    cls = getattr(transformers, TOKENIZER_CLASSES.get(model_type, "TokenizersBackend"))
    return cls(tokenizer_object=backend, name_or_path=str(Path(path).parent), **config, **more)
