"""Llama-style families: Llama 2/3 and SmolLM2, Mistral (sliding window), Qwen2 (q/k/v bias).

They share the HF tensor names and the SwiGLU/RMSNorm/RoPE decoder; they differ in a few
config flags only.
"""
from __future__ import annotations

import numpy as np

from jaxshare.core.config import ConfigError, ModelConfig
from jaxshare.io.families.base import Slot, check_unsupported, rope_from_hf, rope_to_hf, single

HANDLED = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "hidden_act",
    "rope_parameters", "rope_scaling", "rope_theta", "tie_word_embeddings", "attention_bias", "mlp_bias",
    "sliding_window", "use_sliding_window", "layer_types",
    "pretraining_tp",  # only splits the reference's matmuls; the math is the same
}


def _windows(hf: dict, model_type: str, n_layers: int):
    if model_type == "llama":
        return None
    if model_type == "mistral":
        w = hf.get("sliding_window")
        return None if not w else (int(w),) * n_layers
    types = hf.get("layer_types") or ["full_attention"] * n_layers
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ConfigError(f"unsupported qwen2 layer_types: {sorted(unknown)}")
    if "sliding_attention" not in types:
        return None
    w = int(hf.get("sliding_window") or 0)
    if w <= 0:
        raise ConfigError("qwen2 config has sliding_attention layers but no sliding_window")
    return tuple(w if t == "sliding_attention" else 0 for t in types)


def config_from_hf(hf: dict, default: dict) -> ModelConfig:
    model_type = hf["model_type"]
    check_unsupported(hf, default, HANDLED, model_type)
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"unsupported {model_type} hidden_act {hf['hidden_act']!r} (supported: silu)")
    theta, scaling = rope_from_hf(hf.get("rope_parameters"), model_type)
    heads = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // heads
    qkv_bias = model_type == "qwen2" or bool(hf.get("attention_bias", False))
    return ModelConfig(
        family=model_type,
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        d_ff=int(hf["intermediate_size"]),
        max_seq_len=int(hf["max_position_embeddings"]),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=qkv_bias,
        o_bias=model_type == "llama" and bool(hf.get("attention_bias", False)),
        mlp_bias=model_type == "llama" and bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        windows=_windows(hf, model_type, int(hf["num_hidden_layers"])),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(hf["eos_token_id"]) if isinstance(hf.get("eos_token_id"), list) else hf.get("eos_token_id"),
    )


def hf_config_kwargs(cfg: ModelConfig) -> dict:
    kw = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
        rope_parameters=rope_to_hf(cfg), tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_token_id, eos_token_id=list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
    )
    if cfg.family in ("llama", "mistral"):
        kw["head_dim"] = cfg.head_dim
    elif cfg.head_dim != cfg.d_model // cfg.n_heads:
        # A KV-pruned qwen2 keeps its head_dim with fewer heads; transformers' Qwen2Attention reads
        # config.head_dim when present (hidden_size // heads otherwise), so only then is it written.
        kw["head_dim"] = cfg.head_dim
    if cfg.family == "llama":
        kw.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if cfg.family == "mistral":
        kw["sliding_window"] = cfg.windows[0] if cfg.windows else None
    if cfg.family == "qwen2" and cfg.windows:
        w = max(cfg.windows)
        kw.update(use_sliding_window=True, sliding_window=w,
                  layer_types=["sliding_attention" if x else "full_attention" for x in cfg.windows])
    return kw


def slots(cfg: ModelConfig) -> list[Slot]:
    K, G, D, d, F, V = cfg.n_kv_heads, cfg.groups, cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    H = cfg.n_heads
    T = np.transpose
    out = [single("model.embed_tokens.weight", "embed", None, lambda a: a, lambda a: a, (V, D)),
           single("model.norm.weight", "final_norm.scale", None, lambda a: a, lambda a: a, (D,))]
    if not cfg.tie_embeddings:
        out.append(single("lm_head.weight", "lm_head", None, T, T, (V, D)))
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out += [
            single(p + "input_layernorm.weight", "layers.attn_norm.scale", i, lambda x: x, lambda x: x, (D,)),
            single(p + "post_attention_layernorm.weight", "layers.mlp_norm.scale", i, lambda x: x, lambda x: x, (D,)),
            # torch Linear weight is [out, in]; query head h lives in KV group h // G.
            single(a + "q_proj.weight", "layers.attn.wq", i,
                   lambda x: x.reshape(K, G, d, D).transpose(0, 1, 3, 2),
                   lambda x: x.transpose(0, 1, 3, 2).reshape(H * d, D), (H * d, D)),
            single(a + "k_proj.weight", "layers.attn.wk", i,
                   lambda x: x.reshape(K, d, D).transpose(0, 2, 1),
                   lambda x: x.transpose(0, 2, 1).reshape(K * d, D), (K * d, D)),
            single(a + "v_proj.weight", "layers.attn.wv", i,
                   lambda x: x.reshape(K, d, D).transpose(0, 2, 1),
                   lambda x: x.transpose(0, 2, 1).reshape(K * d, D), (K * d, D)),
            single(a + "o_proj.weight", "layers.attn.wo", i,
                   lambda x: x.reshape(D, K, G, d).transpose(1, 2, 3, 0),
                   lambda x: x.transpose(3, 0, 1, 2).reshape(D, H * d), (D, H * d)),
            single(p + "mlp.gate_proj.weight", "layers.mlp.w_gate", i, T, T, (F, D)),
            single(p + "mlp.up_proj.weight", "layers.mlp.w_up", i, T, T, (F, D)),
            single(p + "mlp.down_proj.weight", "layers.mlp.w_down", i, T, T, (D, F)),
        ]
        if cfg.qkv_bias:
            out += [
                single(a + "q_proj.bias", "layers.attn.bq", i, lambda x: x.reshape(K, G, d), lambda x: x.reshape(-1), (H * d,)),
                single(a + "k_proj.bias", "layers.attn.bk", i, lambda x: x.reshape(K, d), lambda x: x.reshape(-1), (K * d,)),
                single(a + "v_proj.bias", "layers.attn.bv", i, lambda x: x.reshape(K, d), lambda x: x.reshape(-1), (K * d,)),
            ]
        if cfg.o_bias:
            out.append(single(a + "o_proj.bias", "layers.attn.bo", i, lambda x: x, lambda x: x, (D,)))
        if cfg.mlp_bias:
            for name, leaf, n in (("gate_proj", "b_gate", F), ("up_proj", "b_up", F), ("down_proj", "b_down", D)):
                out.append(single(p + f"mlp.{name}.bias", f"layers.mlp.{leaf}", i, lambda x: x, lambda x: x, (n,)))
    return out


# Buffers some checkpoints carry that hold no parameters.
IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")
