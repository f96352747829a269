"""GPT-2: learned positions, LayerNorm with bias, GELU MLP, fused c_attn, Conv1D [in, out]."""
from __future__ import annotations

import numpy as np

from jaxshare.core.config import ConfigError, ModelConfig
from jaxshare.io.families.base import Slot, check_unsupported, single

HANDLED = {
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings",
    "n_ctx",
    "reorder_and_upcast_attn",  # an fp16 overflow guard; fp32 math is identical
}
ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def config_from_hf(hf: dict, default: dict) -> ModelConfig:
    check_unsupported(hf, default, HANDLED, "gpt2")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTS:
        raise ConfigError(f"unsupported gpt2 activation_function {act!r} (supported: {sorted(ACTS)})")
    if not hf.get("scale_attn_weights", True):
        raise ConfigError("unsupported gpt2 scale_attn_weights=False")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ConfigError("unsupported gpt2 scale_attn_by_inverse_layer_idx=True")
    D, H = int(hf["n_embd"]), int(hf["n_head"])
    return ModelConfig(
        family="gpt2", vocab_size=int(hf["vocab_size"]), d_model=D, n_layers=int(hf["n_layer"]),
        n_heads=H, n_kv_heads=H, head_dim=D // H, d_ff=int(hf.get("n_inner") or 4 * D),
        max_seq_len=int(hf["n_positions"]), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        norm="layer", act=ACTS[act], gated_mlp=False, positions="learned",
        qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
    )


def hf_config_kwargs(cfg: ModelConfig) -> dict:
    if cfg.head_dim * cfg.n_heads != cfg.d_model or cfg.n_kv_heads != cfg.n_heads:
        raise ConfigError("gpt2 export needs head_dim * n_heads == d_model and no GQA")
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[cfg.act]
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function=act, layer_norm_epsilon=cfg.norm_eps,
                tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)


def slots(cfg: ModelConfig) -> list[Slot]:
    H, D, d, F, V = cfg.n_heads, cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    ident = lambda x: x  # noqa: E731

    def qkv_split(w):  # [D, 3D] (Conv1D: in, out) -> q [H,1,D,d], k [H,D,d], v [H,D,d]
        q, k, v = np.split(w, 3, axis=1)
        return (q.reshape(D, H, 1, d).transpose(1, 2, 0, 3),
                k.reshape(D, H, d).transpose(1, 0, 2), v.reshape(D, H, d).transpose(1, 0, 2))

    def qkv_join(q, k, v):
        return np.concatenate([q.transpose(2, 0, 1, 3).reshape(D, H * d),
                               k.transpose(1, 0, 2).reshape(D, H * d), v.transpose(1, 0, 2).reshape(D, H * d)], axis=1)

    def bias_split(b):
        q, k, v = np.split(b, 3)
        return q.reshape(H, 1, d), k.reshape(H, d), v.reshape(H, d)

    def bias_join(q, k, v):
        return np.concatenate([q.reshape(-1), k.reshape(-1), v.reshape(-1)])

    out = [single("transformer.wte.weight", "embed", None, ident, ident, (V, D)),
           single("transformer.wpe.weight", "pos_embed", None, ident, ident, (cfg.max_seq_len, D)),
           single("transformer.ln_f.weight", "final_norm.scale", None, ident, ident, (D,)),
           single("transformer.ln_f.bias", "final_norm.bias", None, ident, ident, (D,))]
    if not cfg.tie_embeddings:
        out.append(single("lm_head.weight", "lm_head", None, np.transpose, np.transpose, (V, D)))
    for i in range(cfg.n_layers):
        p = f"transformer.h.{i}."
        L = "layers."
        out += [
            single(p + "ln_1.weight", L + "attn_norm.scale", i, ident, ident, (D,)),
            single(p + "ln_1.bias", L + "attn_norm.bias", i, ident, ident, (D,)),
            single(p + "ln_2.weight", L + "mlp_norm.scale", i, ident, ident, (D,)),
            single(p + "ln_2.bias", L + "mlp_norm.bias", i, ident, ident, (D,)),
            Slot(p + "attn.c_attn.weight", ((L + "attn.wq", i), (L + "attn.wk", i), (L + "attn.wv", i)),
                 qkv_split, qkv_join, (D, 3 * H * d)),
            Slot(p + "attn.c_attn.bias", ((L + "attn.bq", i), (L + "attn.bk", i), (L + "attn.bv", i)),
                 bias_split, bias_join, (3 * H * d,)),
            single(p + "attn.c_proj.weight", L + "attn.wo", i, lambda x: x.reshape(H, 1, d, D),
                   lambda x: x.reshape(H * d, D), (H * d, D)),
            single(p + "attn.c_proj.bias", L + "attn.bo", i, ident, ident, (D,)),
            single(p + "mlp.c_fc.weight", L + "mlp.w_up", i, ident, ident, (D, F)),
            single(p + "mlp.c_fc.bias", L + "mlp.b_up", i, ident, ident, (F,)),
            single(p + "mlp.c_proj.weight", L + "mlp.w_down", i, ident, ident, (F, D)),
            single(p + "mlp.c_proj.bias", L + "mlp.b_down", i, ident, ident, (D,)),
        ]
    return out


# Causal-mask buffers that old GPT-2 checkpoints saved alongside the weights.
IGNORED = (r"transformer\.h\.\d+\.attn\.(masked_)?bias",)
