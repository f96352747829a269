"""Gemma3 text (HF `gemma3_text`, `Gemma3ForCausalLM`; GGUF architecture `gemma3`).

The generic decoder with Gemma's flags: RMSNorm weights used as (1 + w), a norm before and after
both attention and the MLP, q/k RMSNorm per head, embeddings times sqrt(D), GELU-tanh gating,
head_dim independent of D/H, sliding-window layers with their own RoPE base, and attention
scores scaled by query_pre_attn_scalar ** -0.5. Norm weights are kept in the HF convention (w,
not 1 + w); llama.cpp stores 1 + w, which `gguf_tensor` undoes as transformers' loader does.
"""
from __future__ import annotations

import dataclasses

from jaxshare.core.config import ConfigError, ModelConfig
from jaxshare.io.families import llama
from jaxshare.io.families.base import Slot, check_unsupported, rope_from_hf, rope_to_hf, single

FAMILY = "gemma3_text"
ARCHITECTURE = "Gemma3ForCausalLM"
# Config keys transformers derives when config.json leaves them out (layer_types from the older
# sliding_window_pattern); families.config_from_hf_dict keeps them for this adapter.
NORMALISED_KEYS = ("layer_types",)
HANDLED = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "hidden_activation",
    "rope_parameters", "tie_word_embeddings", "attention_bias", "query_pre_attn_scalar", "sliding_window",
    "layer_types", "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention",
    "sliding_window_pattern",  # only derives layer_types, which transformers always fills in
    "cache_implementation",  # which KV cache generate() builds; the forward is the same
}
ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}
LAYER_TYPES = ("sliding_attention", "full_attention")


def config_from_hf(hf: dict, default: dict) -> ModelConfig:
    check_unsupported(hf, default, HANDLED, FAMILY)

    def get(key):
        return hf[key] if key in hf else default.get(key)

    act = get("hidden_activation")
    if act not in ACTS:
        raise ConfigError(f"unsupported {FAMILY} hidden_activation {act!r} (supported: {sorted(ACTS)})")
    if get("attn_logit_softcapping") is not None:
        raise ConfigError(f"unsupported {FAMILY} attn_logit_softcapping={get('attn_logit_softcapping')!r}: "
                          "attention-score softcapping is not implemented")
    if get("use_bidirectional_attention"):
        raise ConfigError(f"unsupported {FAMILY} use_bidirectional_attention=True (only causal attention)")
    n_layers = int(hf["num_hidden_layers"])
    types = list(get("layer_types") or [])
    if len(types) != n_layers or set(types) - set(LAYER_TYPES):
        raise ConfigError(f"{FAMILY} layer_types must list {n_layers} of {LAYER_TYPES}, got {types}")
    rope = get("rope_parameters") or {}
    theta, scaling = rope_from_hf(rope.get("full_attention"), FAMILY)
    local_theta, local_scaling = rope_from_hf(rope.get("sliding_attention"), FAMILY)
    if local_scaling is not None:
        raise ConfigError(f"unsupported {FAMILY} rope scaling on sliding_attention layers")
    windows, local = None, None
    if "sliding_attention" in types:
        w = get("sliding_window")
        if not w or int(w) <= 0:
            raise ConfigError(f"{FAMILY} config has sliding_attention layers but no sliding_window")
        windows = tuple(int(w) if t == "sliding_attention" else 0 for t in types)
        local = local_theta
    softcap = get("final_logit_softcapping")
    eos = get("eos_token_id")
    bias = bool(get("attention_bias"))
    heads = int(hf["num_attention_heads"])
    return ModelConfig(
        family=FAMILY, vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]), n_layers=n_layers,
        n_heads=heads, n_kv_heads=int(get("num_key_value_heads") or heads), head_dim=int(get("head_dim")),
        d_ff=int(hf["intermediate_size"]), max_seq_len=int(get("max_position_embeddings")),
        norm_eps=float(get("rms_norm_eps")), act=ACTS[act], rope_theta=theta, rope_scaling=scaling,
        qkv_bias=bias, o_bias=bias, tie_embeddings=bool(get("tie_word_embeddings")), windows=windows,
        bos_token_id=get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        norm_plus_one=True, post_norms=True, qk_norm=True, scale_embed=True, rope_local_theta=local,
        query_pre_attn_scalar=float(get("query_pre_attn_scalar")),
        final_logit_softcap=None if softcap is None else float(softcap),
    )


def hf_config_kwargs(cfg: ModelConfig) -> dict:
    gemma = (cfg.norm == "rms" and cfg.norm_plus_one and cfg.post_norms and cfg.qk_norm and cfg.scale_embed
             and cfg.gated_mlp and cfg.positions == "rope" and cfg.act in ("gelu_tanh", "gelu"))
    if not gemma or cfg.qkv_bias != cfg.o_bias or cfg.mlp_bias:
        raise ConfigError(f"{FAMILY} export needs the Gemma3 decoder flags (a config not made by this adapter?)")
    sliding = sorted({w for w in cfg.layer_windows if w})
    if len(sliding) > 1:
        raise ConfigError(f"{FAMILY} export needs one sliding window size, the model has {sliding}")
    local = cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope_theta
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        hidden_activation="gelu_pytorch_tanh" if cfg.act == "gelu_tanh" else "gelu",
        rope_parameters={"full_attention": rope_to_hf(cfg),
                         "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        layer_types=["sliding_attention" if w else "full_attention" for w in cfg.layer_windows],
        sliding_window=sliding[0] if sliding else None, attention_bias=cfg.qkv_bias,
        query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None
                                            else cfg.head_dim),
        final_logit_softcapping=cfg.final_logit_softcap, attn_logit_softcapping=None,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_token_id,
        eos_token_id=list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
    )


def _int_if_whole(x):
    return int(x) if float(x).is_integer() else x  # transformers' strict config types it int


def slots(cfg: ModelConfig) -> list[Slot]:
    """Llama's tensor names and layouts, plus Gemma's four layer norms and q/k norms."""
    D, d = cfg.d_model, cfg.head_dim
    ident = lambda x: x  # noqa: E731
    # Llama's post_attention_layernorm feeds the MLP; Gemma's normalizes the attention output.
    renamed = {".post_attention_layernorm.weight": "layers.attn_post_norm.scale"}
    out = []
    for slot in llama.slots(cfg):
        for suffix, leaf in renamed.items():
            if slot.hf_key.endswith(suffix):
                slot = dataclasses.replace(slot, parts=((leaf, slot.parts[0][1]),))
        out.append(slot)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        out += [
            single(p + "pre_feedforward_layernorm.weight", "layers.mlp_norm.scale", i, ident, ident, (D,)),
            single(p + "post_feedforward_layernorm.weight", "layers.mlp_post_norm.scale", i, ident, ident, (D,)),
            single(p + "self_attn.q_norm.weight", "layers.attn.q_norm", i, ident, ident, (d,)),
            single(p + "self_attn.k_norm.weight", "layers.attn.k_norm", i, ident, ident, (d,)),
        ]
    return out


IGNORED = llama.IGNORED


# ---------------------------------------------------------------- GGUF (llama.cpp `gemma3`)

GGUF_BLOCK_NAMES = {  # GGUF block tensor -> HF module, where Gemma3 differs from Llama
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
GGUF_KEYS = {"attention.sliding_window"}  # gemma3.<key> metadata read here
# Gemma3TextConfig's defaults for what a GGUF header may leave out (families.config_from_gguf_dict);
# the rest it reads with get() default to None/False there too.
GGUF_DEFAULTS = {"sliding_window": 4096, "bos_token_id": 2, "eos_token_id": 1}
# llama.cpp's Gemma3 graph: every 6th layer global, local RoPE base 10000 (not in the file).
SLIDING_PATTERN, LOCAL_ROPE_THETA = 6, 10000.0


def gguf_config(cfg: dict, fields: dict, arch: str) -> dict:
    """The HF config dict from the generic GGUF metadata mapping, made Gemma3's."""
    cfg = dict(cfg)
    cfg.pop("hidden_act", None)
    n = cfg["num_hidden_layers"]
    window = fields.get(f"{arch}.attention.sliding_window")
    cfg["hidden_activation"] = "gelu_pytorch_tanh"
    cfg["layer_types"] = ["sliding_attention" if (i + 1) % SLIDING_PATTERN else "full_attention" for i in range(n)]
    if window:
        cfg["sliding_window"] = int(window)
    full = cfg["rope_parameters"]
    cfg["rope_parameters"] = {"full_attention": full,
                              "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_THETA}}
    # llama.cpp scales scores by 1/sqrt(head size), except for the 27B model (62 layers): 1/sqrt(D/H).
    # (transformers' GGUF loader keeps its default 256: the same for every released size but 27B.)
    big = n == 62
    cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // cfg["num_attention_heads"] if big else cfg["head_dim"]
    return cfg


def gguf_tensor(hf_key: str, arr):
    """llama.cpp stores Gemma norm weights as 1 + w; transformers' loader subtracts 1 in fp32."""
    return arr - 1 if hf_key.endswith("norm.weight") else arr
