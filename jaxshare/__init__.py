"""jaxshare: compress LLMs by sharing weights, in JAX.

    import jaxshare as js

    m = js.load("smollm2-135m")                      # registered name, HF dir, .gguf, or native dir
    logits = js.forward(m.params, m.cfg, tokens)     # [B, T, V] float32; dtype="bf16" computes in bf16
    shared, info = js.direct_share(m.params, m.cfg, 0.3)
    js.export_hf(shared, m.cfg, "out/hf", m.tokenizer)   # writes sharing.json itself; js.load restores it

Every name below is imported on first use, so `import jaxshare` stays cheap. Dtypes are taken
the same way everywhere: "fp32", "bf16", "float32", "bfloat16" or a jnp dtype (`as_dtype`).
"""
from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

try:  # the installed distribution's (wheel or editable); a bare source tree on sys.path has none
    __version__ = _metadata.version("jaxshare")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

# module -> the public names it provides (grouped by what they do); _RENAMED: public -> module name
_EXPORTS = {
    # models, their weights, checkpoints and exports
    "jaxshare.io.load": ("load", "LoadedModel"),
    "jaxshare.core.config": ("ModelConfig",),
    "jaxshare.core.params": ("Params", "init_params", "count_params", "param_bytes", "cast_params"),
    "jaxshare.core.dtypes": ("as_dtype",),
    "jaxshare.io.native": ("save",),
    "jaxshare.io.hf": ("export_hf",),
    # compressed weights: one protocol for every kind
    "jaxshare.core.compressed": ("Compressed", "materialize"),
    "jaxshare.core.bank": ("Bank",),
    "jaxshare.basis.factor": ("Factored",),
    # the decoder and its building blocks (for layer_fn analyses), generation
    "jaxshare.core.model": ("forward", "hidden_states", "unembed", "decoder_layer", "norm", "qk_rope", "qkv_rope",
                            "attention_probs", "next_token_nll", "KVCache"),
    "jaxshare.core.generate": ("generate", "generate_text"),
    # data: corpora, tokenized once, cut into windows
    "jaxshare.data.corpora": ("load_corpus",),
    "jaxshare.data.tokens": ("tokenize_corpus", "token_ids", "token_windows"),
    # evaluation and analysis
    "jaxshare.eval.perplexity": ("perplexity", "perplexity_of_windows"),
    "jaxshare.eval.attention_maps": ("attention_maps", "map_similarity"),
    "jaxshare.headshare.similarity": ("similarity_matrix", "best_partners", "head_features", "head_similarity",
                                      "cosine"),
    # head sharing (METHODS.md §1) and Basis Sharing (§2)
    "jaxshare.headshare.directshare": ("direct_share",),
    "jaxshare.headshare.sharing": ("share",),
    "jaxshare.basis.calibrate": ("calibrate", "collect_grams"),
    "jaxshare.basis.compress": ("compress",),
}
_RENAMED = {"load": "load_model", "save": "save_native"}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxshare' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static tools see the real objects
    from jaxshare.basis.calibrate import calibrate, collect_grams
    from jaxshare.basis.compress import compress
    from jaxshare.basis.factor import Factored
    from jaxshare.core.bank import Bank
    from jaxshare.core.compressed import Compressed, materialize
    from jaxshare.core.config import ModelConfig
    from jaxshare.core.dtypes import as_dtype
    from jaxshare.core.generate import generate, generate_text
    from jaxshare.core.model import (KVCache, attention_probs, decoder_layer, forward, hidden_states,
                                     next_token_nll, norm, qk_rope, qkv_rope, unembed)
    from jaxshare.core.params import Params, cast_params, count_params, init_params, param_bytes
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_ids, token_windows, tokenize_corpus
    from jaxshare.eval.attention_maps import attention_maps, map_similarity
    from jaxshare.eval.perplexity import perplexity, perplexity_of_windows
    from jaxshare.headshare.directshare import direct_share
    from jaxshare.headshare.sharing import share
    from jaxshare.headshare.similarity import best_partners, cosine, head_features, head_similarity, similarity_matrix
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import LoadedModel, load_model as load
    from jaxshare.io.native import save_native as save
