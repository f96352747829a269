"""The functional layer as one namespace (`js.nn`): pure functions over `(params, cfg, ...)`, the way
jax-llm-examples writes its models. Nothing here holds state; compressed weights (banks, bases,
quantized codes) pass through `linear` like dense ones.

    import jaxshare as js
    logits = js.nn.forward(m.params, m.cfg, tokens)
    x, per_layer = js.nn.hidden_states(m.params, m.cfg, tokens, layer_fn=my_layer)
"""
from __future__ import annotations

from jaxshare.core.config import ModelConfig
from jaxshare.core.generate import generate
from jaxshare.core.model import (KVCache, apply_rope, attention, attention_implementation, attention_probs,
                                 decoder_layer, embed, forward, forward_cached, hidden_states, linear, mlp,
                                 next_token_nll, norm, project_qkv, qk_rope, qkv_rope, rope_tables, token_nll, unembed)
from jaxshare.core.params import Params, cast_params, count_params, init_params, param_bytes

__all__ = ["KVCache", "ModelConfig", "Params", "apply_rope", "attention", "attention_implementation",
           "attention_probs", "cast_params", "count_params", "decoder_layer", "embed", "forward", "forward_cached",
           "generate", "hidden_states", "init_params", "linear", "mlp", "next_token_nll", "norm", "param_bytes",
           "project_qkv", "qk_rope", "qkv_rope", "rope_tables", "token_nll", "unembed"]
