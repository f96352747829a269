"""jaxshare: compress LLMs by sharing weights, in JAX.

    import jaxshare as js

    m = js.load("smollm2-135m")                      # registered name, HF dir, .gguf, or native dir
    logits = js.nn.forward(m.params, m.cfg, tokens)  # [B, T, V] float32; dtype="bf16" computes in bf16
    shared, report = js.direct_share(m, 0.3)         # every method verb: a Model in, (Model, report) out
    js.export_hf(shared, "out/hf")                   # every writer: (model, path); js.load restores the sharing

Every name below is imported on first use, so `import jaxshare` stays cheap; `js.nn` (the functional
layer) and `js.nnx` (the Flax NNX view, needs flax) are namespaces imported on first use too. Dtypes
are taken the same way everywhere: "fp32", "bf16", "float32", "bfloat16" or a jnp dtype (`as_dtype`).
"""
from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

from jaxshare.errors import MissingAttribute as _MissingAttribute, MissingDependency as _MissingDependency

try:  # the installed distribution's (wheel or editable); a bare source tree on sys.path has none
    __version__ = _metadata.version("jaxshare")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

# module -> the public names it provides (grouped by what they do); _RENAMED: public -> module name
_EXPORTS = {
    # models, their weights, checkpoints and exports
    "jaxshare.io.load": ("load", "Model", "LoadedModel"),
    "jaxshare.core.config": ("ModelConfig",),
    "jaxshare.core.params": ("Params", "init_params", "count_params", "param_bytes", "cast_params"),
    "jaxshare.core.dtypes": ("as_dtype",),
    "jaxshare.api": ("save", "export_hf", "export_gguf",
                     # the method verbs: (Model, report); compress is the deprecated name of basis_share
                     "direct_share", "basis_share", "quantize", "inherit", "prune", "apply_plan", "compress",
                     # healing by distillation from the dense model
                     "heal"),
    "jaxshare.compose.plan": ("Plan", "load_plan", "parse_plan"),
    "jaxshare.quant.model": ("QuantSpec",),
    "jaxshare.training.config": ("TrainConfig",),
    "jaxshare.training.trainer": ("Trainer",),
    # compressed weights: one protocol for every kind
    "jaxshare.core.compressed": ("Compressed", "materialize"),
    "jaxshare.core.bank": ("Bank",),
    "jaxshare.basis.factor": ("Factored",),
    "jaxshare.quant.leaf": ("Quantized",),
    "jaxshare.lora.leaf": ("LoRA",),
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
    # head sharing's tie of given units (docs/methods.md §1) and calibration for Basis Sharing (§2) and GPTQ
    "jaxshare.headshare.sharing": ("share",),
    "jaxshare.basis.calibrate": ("calibrate", "collect_grams"),
}
_RENAMED = {"load": "load_model", "load_plan": "read_plan"}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_NAMESPACES = {"nn": "jaxshare.nn", "nnx": "jaxshare.nnx"}  # submodules reached as attributes

__all__ = sorted(set(_WHERE) | set(_NAMESPACES))


def __getattr__(name: str):
    if name in _NAMESPACES:
        try:
            value = importlib.import_module(_NAMESPACES[name])
        except _MissingDependency as e:  # js.nnx without flax: hasattr() must answer, not raise
            raise _MissingAttribute(str(e)) from None
        globals()[name] = value
        return value
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxshare' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static tools see the real objects
    from jaxshare import nn, nnx
    from jaxshare.api import (apply_plan, basis_share, compress, direct_share, export_gguf, export_hf, heal, inherit,
                              prune, quantize, save)
    from jaxshare.lora.leaf import LoRA
    from jaxshare.compose.plan import Plan, parse_plan
    from jaxshare.compose.plan import read_plan as load_plan
    from jaxshare.quant.leaf import Quantized
    from jaxshare.quant.model import QuantSpec
    from jaxshare.training.config import TrainConfig
    from jaxshare.training.trainer import Trainer
    from jaxshare.basis.calibrate import calibrate, collect_grams
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
    from jaxshare.headshare.sharing import share
    from jaxshare.headshare.similarity import best_partners, cosine, head_features, head_similarity, similarity_matrix
    from jaxshare.io.load import LoadedModel, Model, load_model as load
