"""Knowledge distillation from the dense teacher: the loss of the `heal` recipe.

    loss = (1 - alpha) * tau^2 * KL(p_teacher^tau || p_student^tau) + alpha * CE(labels)
           + beta * mean_l ||h_student_l - h_teacher_l||^2 / ||h_teacher_l||^2   (chosen layers)

over the full vocabulary (Minitron's logit loss, Hinton's tau^2 keeps gradient scales comparable
across temperatures). The logits are computed chunk by chunk along the sequence under
`jax.checkpoint`: neither model's [B, T, V] logits exist whole, forward or backward, only one
chunk of each at a time (SmolLM2: 49k vocabulary, so a 4 x 512 batch would otherwise hold 0.4 GB
of fp32 logits per model, and twice that in the backward pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxshare.core.model import decoder_layer, hidden_states, token_nll, unembed
from jaxshare.training.memory import remat_layer


@dataclass(frozen=True)
class KDLoss:
    temperature: float = 1.0
    alpha: float = 0.0  # weight of the label cross-entropy (0: pure KD)
    beta: float = 0.0  # weight of the hidden-state term
    layers: tuple = ()  # student layers whose outputs match the teacher's same-numbered layer
    chunk: int = 128  # sequence positions per logits chunk


def _layer_outputs(layer_fn):
    """A layer function that also returns its output stream, for the hidden-state term."""
    def fn(x, layer, cfg, rope, q_pos_BT, window, kv=None):
        y, _ = layer_fn(x, layer, cfg, rope, q_pos_BT, window)
        return y, y
    return fn


def kd_terms(student, cfg, teacher, t_cfg, tokens_BT, spec: KDLoss, dtype=jnp.float32, t_dtype=jnp.float32,
             remat="none"):
    """(loss, metrics) for one micro-batch: the KD loss above; metrics: kd, ce, hid (fp32 means
    over the B * (T-1) next-token positions). The teacher runs forward only (stop_gradient)."""
    policy = {True: "dots", False: "none"}.get(remat, remat)
    layer_fn = remat_layer(decoder_layer, policy) if policy != "none" else decoder_layer
    want_h = spec.beta > 0 and len(spec.layers) > 0
    s_fn = _layer_outputs(layer_fn) if want_h else layer_fn
    t_fn = _layer_outputs(decoder_layer) if want_h else decoder_layer
    xs, hs = hidden_states(student, cfg, tokens_BT, dtype=dtype, layer_fn=s_fn)
    xt, ht = hidden_states(teacher, t_cfg, tokens_BT, dtype=t_dtype, layer_fn=t_fn)
    xt = jax.lax.stop_gradient(xt)
    teacher = jax.lax.stop_gradient(teacher)

    B, T, D = xs.shape
    n = T - 1
    c = max(1, min(spec.chunk, n))
    pad = (-n) % c
    tgt = tokens_BT[:, 1:]

    def chunks(x):  # [B, n, ...] -> [n_chunks, B, c, ...]
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((B, -1, c) + x.shape[2:]), 1, 0)

    valid = chunks(jnp.ones((B, n), jnp.float32))
    tau = jnp.float32(spec.temperature)

    @jax.checkpoint
    def one(xs_c, xt_c, tgt_c, m_c):
        ls = unembed(student, cfg, xs_c)
        lt = unembed(teacher, t_cfg, xt_c.astype(xs_c.dtype))
        logp_s = jax.nn.log_softmax(ls / tau, axis=-1)
        logp_t = jax.nn.log_softmax(lt / tau, axis=-1)
        kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
        ce = token_nll(ls, tgt_c)
        return jnp.sum(kl * m_c), jnp.sum(ce * m_c)

    def body(acc, xs_):
        kl, ce = one(*xs_)
        return (acc[0] + kl, acc[1] + ce), None

    zero = jnp.zeros((), jnp.float32)
    (kl_sum, ce_sum), _ = jax.lax.scan(body, (zero, zero),
                                       (chunks(xs[:, :-1]), chunks(xt[:, :-1]), chunks(tgt), valid))
    kd = kl_sum / (B * n) * tau * tau
    ce = ce_sum / (B * n)
    loss = (1.0 - spec.alpha) * kd + spec.alpha * ce
    hid = zero
    if want_h:
        idx = jnp.asarray(spec.layers, jnp.int32)
        s_h = hs[idx].astype(jnp.float32)
        t_h = jax.lax.stop_gradient(ht[idx]).astype(jnp.float32)
        hid = jnp.mean(jnp.sum(jnp.square(s_h - t_h), -1) / (jnp.sum(jnp.square(t_h), -1) + 1e-6))
        loss = loss + spec.beta * hid
    return loss, {"kd": kd, "ce": ce, "hid": hid}
