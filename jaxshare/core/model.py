"""The generic decoder: pure functions over a Params pytree, layers under `jax.lax.scan`.

Every family (Llama, Mistral, Qwen2, GPT-2) runs through this one forward; the families
differ only in ModelConfig flags (norm, activation, positions, biases, windows).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.axes import constrain
from jaxshare.core.bank import split_banks
from jaxshare.core.compressed import SelfApplying
from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.params import MLP, Attention, Layers, Norm, Params

Array = jax.Array

# jax.nn.dot_product_attention's implementation: "xla" (default), "cudnn", or None (jax picks,
# cuDNN where it supports the call). The trainer sets it for the steps it traces
# (`attention_implementation`), so every other caller keeps the XLA path.
_ATTENTION_IMPL = contextvars.ContextVar("jaxshare_attention_impl", default="xla")


@contextlib.contextmanager
def attention_implementation(impl):
    token = _ATTENTION_IMPL.set(impl)
    try:
        yield
    finally:
        _ATTENTION_IMPL.reset(token)


@jax.tree_util.register_dataclass
@dataclass
class KVCache:
    k: Array  # [L, B, S, K, d]
    v: Array  # [L, B, S, K, d]
    length: Array  # int32 scalar: tokens already written

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape, dtype = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim), as_dtype(dtype)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse frequencies [d/2] in float64 math, as transformers computes them. local: those of the
    sliding-window layers (rope_local_theta, unscaled as transformers' Gemma3 leaves them)."""
    d = cfg.head_dim
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    s = None if local else cfg.rope_scaling
    if s is None:
        return inv.astype(np.float32)
    # llama3: long wavelengths slow down by `factor`, short ones stay, the middle band blends.
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: ModelConfig, positions_BT: Array, local: bool = False) -> tuple[Array, Array]:
    """cos, sin [B, T, d] for rotate-half RoPE (the Hugging Face layout)."""
    inv = jnp.asarray(rope_inv_freq(cfg, local))
    ang_BTh = positions_BT.astype(jnp.float32)[..., None] * inv
    ang_BTd = jnp.concatenate([ang_BTh, ang_BTh], axis=-1)
    return jnp.cos(ang_BTd), jnp.sin(ang_BTd)


def apply_rope(x_BT_d: Array, cos_BTd: Array, sin_BTd: Array) -> Array:
    """Rotate x [B, T, ..., d] by position; head axes sit between T and d."""
    extra = x_BT_d.ndim - 3
    cos = cos_BTd.reshape(cos_BTd.shape[:2] + (1,) * extra + cos_BTd.shape[-1:])
    sin = sin_BTd.reshape(sin_BTd.shape[:2] + (1,) * extra + sin_BTd.shape[-1:])
    half = x_BT_d.shape[-1] // 2
    rot = jnp.concatenate([-x_BT_d[..., half:], x_BT_d[..., :half]], axis=-1)
    return (x_BT_d.astype(jnp.float32) * cos + rot.astype(jnp.float32) * sin).astype(x_BT_d.dtype)


def norm(x_BTD: Array, p: Norm, cfg: ModelConfig) -> Array:
    x = x_BTD.astype(jnp.float32)
    if cfg.norm == "rms":
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps)
        if cfg.norm_plus_one:  # Gemma multiplies by (1 + w) in fp32 and casts after
            return (x * (1.0 + p.scale.astype(jnp.float32))).astype(x_BTD.dtype)
        return p.scale.astype(x_BTD.dtype) * x.astype(x_BTD.dtype)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    y = (x - mu) * jax.lax.rsqrt(var + cfg.norm_eps) * p.scale.astype(jnp.float32)
    if p.bias is not None:
        y = y + p.bias.astype(jnp.float32)
    return y.astype(x_BTD.dtype)


def _act(x: Array, kind: str) -> Array:
    if kind == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=(kind == "gelu_tanh"))


def _matmul(x, w):
    return x @ w


def linear(x: Array, w, dense_fn=_matmul) -> Array:
    """dense_fn(x, w) for a plain weight; a `SelfApplying` weight (a compressed kind such as a
    basis-shared factorization, a calibration tap) computes its own product."""
    if isinstance(w, SelfApplying):
        return w.apply(x, dense_fn)
    return dense_fn(x, w.astype(x.dtype))


def mlp(x_BTD: Array, p: MLP, cfg: ModelConfig) -> Array:
    def lin(w, b, x):
        y = linear(x, w)
        return y if b is None else y + b.astype(x.dtype)

    up_BTF = constrain(lin(p.w_up, p.b_up, x_BTD), "batch", "length", "act_mlp")
    if p.w_gate is not None:
        up_BTF = _act(lin(p.w_gate, p.b_gate, x_BTD), cfg.act) * up_BTF
    else:
        up_BTF = _act(up_BTF, cfg.act)
    return lin(p.w_down, p.b_down, up_BTF)


def project_qkv(x_BTD: Array, p: Attention) -> tuple[Array, Array, Array]:
    """Per-head projections: q [B,T,K,G,d], k and v [B,T,K,d]."""
    dt = x_BTD.dtype
    q = linear(x_BTD, p.wq, partial(jnp.einsum, "btD,kgDd->btkgd"))
    k = linear(x_BTD, p.wk, partial(jnp.einsum, "btD,kDd->btkd"))
    v = linear(x_BTD, p.wv, partial(jnp.einsum, "btD,kDd->btkd"))
    if p.bq is not None:
        q, k, v = q + p.bq.astype(dt), k + p.bk.astype(dt), v + p.bv.astype(dt)
    return q, k, v


def qkv_rope(x_BTD: Array, p: Attention, cfg: ModelConfig, rope) -> tuple[Array, Array, Array]:
    """q [B,T,K,G,d], k and v [B,T,K,d] of one layer, q and k rotated by position (rope families).

    x_BTD: the attention input (after the layer's attn_norm). rope: the (cos, sin) tables a
    `layer_fn` receives, positions [B, T] (int) to build them from, or None (learned positions).
    With qk_norm, q and k are RMS-normalized per head before the rotation."""
    q, k, v = project_qkv(x_BTD, p)
    if p.q_norm is not None:
        q, k = norm(q, Norm(p.q_norm), cfg), norm(k, Norm(p.k_norm), cfg)
    if cfg.positions == "rope":
        cos_sin = rope if isinstance(rope, tuple) else rope_tables(cfg, rope)
        q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
    return q, k, v


def qk_rope(x_BTD: Array, p: Attention, cfg: ModelConfig, rope) -> tuple[Array, Array]:
    """Rotated q [B,T,K,G,d] and k [B,T,K,d] (see qkv_rope); the unused v is dead code under jit."""
    q, k, _ = qkv_rope(x_BTD, p, cfg, rope)
    return q, k


def visible(q_pos_BT: Array, k_pos_BS: Array, window: Array) -> Array:
    """Which keys each query sees [B, T, S]: causal, written (unwritten cache slots carry -1),
    and with a window w > 0, q_pos - k_pos < w (the Mistral/transformers convention)."""
    qp, kp = q_pos_BT[:, :, None], k_pos_BS[:, None, :]
    return (kp <= qp) & (kp >= 0) & ((window <= 0) | (qp - kp < window))


def attention_scale(cfg: ModelConfig) -> float:
    """What the q.k scores are multiplied by: query_pre_attn_scalar ** -0.5 (Gemma), else 1/sqrt(d)."""
    if cfg.query_pre_attn_scalar is None:
        return 1.0 / math.sqrt(cfg.head_dim)
    return cfg.query_pre_attn_scalar ** -0.5  # transformers' expression, to the last bit


def attention_probs(q_BTKGd: Array, k_BSKd: Array, q_pos_BT: Array, k_pos_BS: Array, window: Array,
                    scale: float | None = None) -> Array:
    """Post-softmax attention [B, K, G, T, S] in float32, for analyses that need the maps.
    scale: `attention_scale(cfg)`; None means 1/sqrt(head_dim)."""
    scale = 1.0 / math.sqrt(q_BTKGd.shape[-1]) if scale is None else scale
    s = jnp.einsum("btkgd,bskd->bkgts", q_BTKGd, k_BSKd, preferred_element_type=jnp.float32) * scale
    s = jnp.where(visible(q_pos_BT, k_pos_BS, window)[:, None, None], s, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(s, axis=-1)


def attention(x_BTD, p: Attention, cfg: ModelConfig, rope, q_pos_BT, window, kv=None):
    """Self-attention of one layer. kv: optional (k_cache, v_cache, length) of this layer."""
    q, k, v = qkv_rope(x_BTD, p, cfg, rope)
    if kv is None:
        k_all, v_all, k_pos, new_kv = k, v, q_pos_BT, None
    else:
        k_cache, v_cache, length = kv
        k_all = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), length, axis=1)
        v_all = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), length, axis=1)
        S = k_all.shape[1]
        slots = jnp.arange(S, dtype=jnp.int32)
        k_pos = jnp.broadcast_to(jnp.where(slots < length + x_BTD.shape[1], slots, -1), (x_BTD.shape[0], S))
        new_kv = (k_all, v_all)
        k_all, v_all = k_all.astype(q.dtype), v_all.astype(q.dtype)
    B, T, K, G, d = q.shape
    # jax's own XLA attention (GQA-aware, softmax in fp32) measured ~9% faster on CPU than
    # our einsum + softmax, with the same results to fp32 rounding.
    out = jax.nn.dot_product_attention(q.reshape(B, T, K * G, d), k_all, v_all,
                                       mask=visible(q_pos_BT, k_pos, window)[:, None],
                                       implementation=_ATTENTION_IMPL.get(),
                                       scale=None if cfg.query_pre_attn_scalar is None else attention_scale(cfg))
    y = linear(out.reshape(B, T, K, G, d), p.wo, partial(jnp.einsum, "btkgd,kgdD->btD"))
    if p.bo is not None:
        y = y + p.bo.astype(y.dtype)
    return y, new_kv


def decoder_layer(x_BTD, layer: Layers, cfg: ModelConfig, rope, q_pos_BT, window, kv=None):
    x_BTD = constrain(x_BTD, "batch", "length", "act_embed")
    h, new_kv = attention(norm(x_BTD, layer.attn_norm, cfg), layer.attn, cfg, rope, q_pos_BT, window, kv)
    if layer.attn_post_norm is not None:
        h = norm(h, layer.attn_post_norm, cfg)
    x_BTD = x_BTD + h
    h = mlp(norm(x_BTD, layer.mlp_norm, cfg), layer.mlp, cfg)
    if layer.mlp_post_norm is not None:
        h = norm(h, layer.mlp_post_norm, cfg)
    x_BTD = x_BTD + h
    return x_BTD, new_kv


def embed(params: Params, cfg: ModelConfig, tokens_BT: Array, positions_BT: Array, dtype) -> Array:
    x = params.embed.astype(dtype)[tokens_BT]
    if cfg.scale_embed:  # transformers' Gemma: sqrt(D) as a tensor in the weights' dtype
        x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
    if cfg.positions == "learned":
        x = x + params.pos_embed.astype(dtype)[positions_BT]
    return x


def unembed(params: Params, cfg: ModelConfig, x_BTD: Array) -> Array:
    x = norm(x_BTD, params.final_norm, cfg)
    w_DV = params.embed.T if params.lm_head is None else params.lm_head
    logits = jnp.einsum("btD,DV->btV", x, w_DV.astype(x.dtype), preferred_element_type=jnp.float32)
    if cfg.final_logit_softcap is not None:
        logits = cfg.final_logit_softcap * jnp.tanh(logits / cfg.final_logit_softcap)
    return logits


def _per_layer_rope(cfg: ModelConfig, rope, q_pos_BT: Array):
    """window -> the layer's (cos, sin). With rope_local_theta, sliding-window layers (window > 0)
    read the local tables: both tables stack to [2, B, T, d] and each layer picks its own inside
    the scan, so the per-layer choice rides on the windows array the scan already carries."""
    if rope is None or cfg.rope_local_theta is None:
        return lambda window: rope
    local = rope_tables(cfg, q_pos_BT, local=True)
    cos_2BTd, sin_2BTd = jnp.stack([rope[0], local[0]]), jnp.stack([rope[1], local[1]])
    return lambda window: (cos_2BTd[(window > 0).astype(jnp.int32)], sin_2BTd[(window > 0).astype(jnp.int32)])


def hidden_states(params: Params, cfg: ModelConfig, tokens_BT: Array, *, dtype=jnp.float32,
                  cache: KVCache | None = None, layer_fn=decoder_layer):
    """(x, aux): final hidden states [B,T,D] before the final norm, and what the layers returned.

    The layers run under one `lax.scan`; bank leaves (jaxshare.core.bank) are gathered per layer
    inside it. `layer_fn` swaps the per-layer computation while keeping this scan:

        layer_fn(x_BTD, layer, cfg, rope, q_pos_BT, window, kv=None) -> (x_BTD, aux)

    x_BTD: the residual stream entering the layer, in the compute dtype. layer: this layer's
    `Layers` (no leading L axis; banks gathered, a `Factored` leaf holds its group's basis [d_in, k]).
    rope: (cos, sin) [B, T, d] or None (learned positions); `qk_rope(x, layer.attn, cfg, rope)`
    gives the rotated q/k. q_pos_BT: int32 positions. window: int32 scalar sliding window (0 = full).
    kv: None without a cache; with one, (k_cache, v_cache, length) of this layer.
    Returns the layer's output stream and `aux`, any pytree of arrays (or None): without a cache
    hidden_states returns it stacked over layers (each leaf gains a leading L axis, e.g. per-head
    statistics [L, B, H]); with a cache aux must be the layer's updated (k_cache, v_cache) and the
    second output is the grown KVCache. The usual pattern computes its statistic and then calls
    `decoder_layer(x_BTD, layer, cfg, rope, q_pos_BT, window)` for the output stream.
    dtype: compute dtype, anything `as_dtype` takes ("fp32", "bf16", jnp.bfloat16).
    """
    dtype = as_dtype(dtype)
    B, T = tokens_BT.shape
    start = jnp.zeros((), jnp.int32) if cache is None else cache.length
    q_pos_BT = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
    x = constrain(embed(params, cfg, tokens_BT, q_pos_BT, dtype), "batch", "length", "act_embed")
    rope = rope_tables(cfg, q_pos_BT) if cfg.positions == "rope" else None
    windows_L = jnp.asarray(cfg.layer_windows, jnp.int32)
    layer_rope = _per_layer_rope(cfg, rope, q_pos_BT)

    # Banked leaves (shared heads, shared bases) scan over their index; rows are gathered here.
    layers_xs, rebuild = split_banks(params.layers)

    if cache is None:
        def body(x, xs):
            layer, window = xs
            return layer_fn(x, rebuild(layer), cfg, layer_rope(window), q_pos_BT, window)

        x, aux = jax.lax.scan(body, x, (layers_xs, windows_L))
        return x, aux

    def body_kv(x, xs):
        layer, window, k_c, v_c = xs
        x, (k_c, v_c) = layer_fn(x, rebuild(layer), cfg, layer_rope(window), q_pos_BT, window,
                                 (k_c, v_c, cache.length))
        return x, (k_c, v_c)

    x, (k, v) = jax.lax.scan(body_kv, x, (layers_xs, windows_L, cache.k, cache.v))
    return x, KVCache(k, v, cache.length + T)


@partial(jax.jit, static_argnames=("cfg", "dtype"))
def forward(params: Params, cfg: ModelConfig, tokens_BT: Array, dtype=jnp.float32) -> Array:
    """Logits [B, T, V] (float32) of a full causal forward."""
    x, _ = hidden_states(params, cfg, tokens_BT, dtype=dtype)
    return unembed(params, cfg, x)


@partial(jax.jit, static_argnames=("cfg", "dtype"), donate_argnames=("cache",))
def forward_cached(params: Params, cfg: ModelConfig, tokens_BT: Array, cache: KVCache, dtype=jnp.float32):
    """Logits [B, T, V] of tokens appended after the cache, and the grown cache."""
    x, cache = hidden_states(params, cfg, tokens_BT, dtype=dtype, cache=cache)
    return unembed(params, cfg, x), cache


def token_nll(logits_BTV: Array, targets_BT: Array) -> Array:
    """Per-token negative log-likelihood [B, T] in float32."""
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]


def next_token_nll(params: Params, cfg: ModelConfig, tokens_BT: Array, dtype=jnp.float32,
                   layer_fn=decoder_layer) -> Array:
    """NLL [B, T-1] of each window's T-1 next-token predictions (fp32 logits): the quantity both
    perplexity and the training loss average."""
    x, _ = hidden_states(params, cfg, tokens_BT, dtype=dtype, layer_fn=layer_fn)
    return token_nll(unembed(params, cfg, x[:, :-1]), tokens_BT[:, 1:])
