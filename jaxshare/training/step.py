"""The pure pieces of training: loss, optimizer, the jitted step and the sharded training state.
Module-level so tests, benchmarks and the AOT compile use exactly what the trainer runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxshare.core import axes
from jaxshare.core.bank import combine, partition
from jaxshare.core.model import attention_implementation, decoder_layer, hidden_states, next_token_nll, token_nll, unembed
from jaxshare.headshare.penalty import weight_penalty
from jaxshare.training import mesh as meshlib
from jaxshare.training.memory import clip_by_global_norm, remat_layer
from jaxshare.training.multihost import put_global

ATTENTION = ("xla", "cudnn", "auto")


def ce_loss(params, cfg, tokens_BT, dtype=jnp.float32, remat="none"):
    """Mean next-token cross-entropy over the T-1 predictions of each window (fp32 logits);
    remat: none | full | dots (True = dots), a jax.checkpoint policy on the scanned layer."""
    policy = {True: "dots", False: "none"}.get(remat, remat)
    layer_fn = remat_layer(decoder_layer, policy) if policy != "none" else decoder_layer
    return jnp.mean(next_token_nll(params, cfg, tokens_BT, dtype, layer_fn=layer_fn))


def chunked_ce_loss(params, cfg, tokens_BT, dtype=jnp.float32, remat="none", chunk: int = 128):
    """ce_loss with the logits made `chunk` positions at a time under jax.checkpoint, forward and
    backward: [B, chunk, V] at most, where ce_loss holds [B, T, V] fp32 logits and their gradient
    (Qwen2-1.5B at 4 x 512: 1.2 GB each). The same mean up to summation order."""
    policy = {True: "dots", False: "none"}.get(remat, remat)
    layer_fn = remat_layer(decoder_layer, policy) if policy != "none" else decoder_layer
    x, _ = hidden_states(params, cfg, tokens_BT, dtype=dtype, layer_fn=layer_fn)
    B, n = tokens_BT.shape[0], tokens_BT.shape[1] - 1
    c = max(1, min(chunk, n))
    pad = (-n) % c

    def chunks(a):  # [B, n, ...] -> [n_chunks, B, c, ...]
        a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
        return jnp.moveaxis(a.reshape((B, -1, c) + a.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(total, xs):
        x_c, t_c, m_c = xs
        return total + jnp.sum(token_nll(unembed(params, cfg, x_c), t_c) * m_c), None

    total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32),
                            (chunks(x[:, :-1]), chunks(tokens_BT[:, 1:]), chunks(jnp.ones((B, n), jnp.float32))))
    return total / (B * n)


# Axes that make a leaf a weight matrix (a bank's unit axis stands for the one its index covers).
MATRIX_AXES = frozenset({"vocab", "embed", "positions", "kv_heads", "mlp", "rank", "units"})


def decays(axes, dtype) -> bool:
    """Weight decay on matrices only (two matrix axes), never on norms, biases or integer leaves:
    the usual AdamW practice, read from the logical axes so every compressed kind is covered."""
    return bool(jnp.issubdtype(dtype, jnp.floating)) and sum(a in MATRIX_AXES for a in axes) >= 2


def _decay_mask(params):
    return jax.tree_util.tree_map(lambda x, a: decays(a, x.dtype), params, axes.tree_axes(params))


def make_optimizer(tc, total_steps: int):
    warmup = min(tc.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, max(total_steps, warmup + 1),
                                                  end_value=tc.lr * tc.end_lr_ratio)
    parts = [clip_by_global_norm(tc.clip_norm)] if tc.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts), schedule


def global_norm_fp32(tree):
    """sqrt(sum of squares) accumulated in fp32 whatever the leaves' dtype."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def make_train_step(tx, micro_loss, weight_loss=None, gamma: float = 0.0, penalize: bool = False):
    """step(state, batch [A, B, T], aux=None) -> (state, metrics), for any recipe.

    micro_loss(params, tokens [B, T], aux) -> (loss, metrics): the loss of one micro-batch with the
    full params (trainable and frozen combined) and the step's auxiliary input (a teacher's params,
    or None); its gradient and metrics are averaged over the A micro-batches by a scan (gradient
    accumulation without extra optimizer steps). weight_loss(params) -> scalar: a term on the
    weights only (PostShare's pairwise penalty), added once per step with weight gamma when
    `penalize`, otherwise only logged as `lw`."""

    def step(state, batch_ABT, aux=None):
        params, frozen = state["params"], state["frozen"]

        def loss_of(p, toks):
            return micro_loss(combine(p, frozen), toks, aux)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        A = batch_ABT.shape[0]
        if A == 1:  # no accumulator: a zeroed copy of the params would only be added to once
            (loss, mets), grads = grad_fn(params, batch_ABT[0])
        else:
            def micro(acc, toks):
                (loss, mets), g = grad_fn(params, toks)
                return jax.tree_util.tree_map(jnp.add, acc, (loss, mets, g)), None

            zero_m = jax.eval_shape(lambda t: loss_of(params, t)[1], batch_ABT[0])
            zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), zero_m),
                     jax.tree_util.tree_map(jnp.zeros_like, params))
            (loss, mets, grads), _ = jax.lax.scan(micro, zeros, batch_ABT)
            loss, mets, grads = jax.tree_util.tree_map(lambda x: x / A, (loss, mets, grads))
        lw = jnp.zeros((), jnp.float32)
        if weight_loss is not None and penalize:
            lw, g_pen = jax.value_and_grad(lambda p: weight_loss(combine(p, frozen)))(params)
            grads = jax.tree_util.tree_map(lambda a, b: a + gamma * b, grads, g_pen)
            loss = loss + gamma * lw
        elif weight_loss is not None:  # the control run logs how far its pairs drift without being pulled
            lw = weight_loss(combine(params, frozen))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = dict(state, params=optax.apply_updates(params, updates), opt_state=opt_state,
                   step=state["step"] + 1,
                   rng=jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])))
        return new, {**mets, "loss": loss, "lw": lw, "grad_norm": global_norm_fp32(grads)}

    return step


def make_step(cfg, tx, gamma: float, dtype, pairs: dict | None, penalize: bool, monitor: bool = True,
              remat="dots"):
    """The cross-entropy step (plain, PostShare, DirectShare + post-training): make_train_step with
    the next-token CE and, given pairs, the pairwise L2 penalty (applied when `penalize`, logged
    when `monitor`)."""
    def micro(p, toks, aux):
        ce = ce_loss(p, cfg, toks, dtype, remat)
        return ce, {"ce": ce}

    use_lw = pairs is not None and (penalize or monitor)
    weight = (lambda p: weight_penalty(p, pairs)) if use_lw else None
    return make_train_step(tx, micro, weight, gamma, penalize)


def init_state(params, tx, seed: int, mask=None) -> dict:
    """The training state: trainable params, frozen leaves (bank indices; all but `mask`'s True
    leaves when a recipe trains less), optimizer state, step and RNG (checkpointed together; the
    data iterator's state is saved beside it)."""
    trainable, frozen = partition(params, mask)
    return {"params": trainable, "frozen": frozen, "opt_state": tx.init(trainable),
            "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed))}


def abstract_state(params, tx, seed: int, mesh, rules=None, mask=None):
    """(ShapeDtypeStructs of init_state carrying their shardings, the shardings): what a restore
    or an AOT compile needs, without any array."""
    shapes = jax.eval_shape(lambda p: init_state(p, tx, seed, mask), params)
    p_shapes = jax.eval_shape(lambda p: p, params)
    sh = meshlib.state_shardings(mesh, shapes, p_shapes, rules, mask)
    abstract = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)
    return abstract, sh


def place_state(params, tx, seed: int, mesh, donate: bool = False, mask=None):
    """init_state laid out on the mesh: params put on their shardings, optimizer state created
    directly in its sharded layout (no replicated copy of m and v ever exists). donate: the
    state takes over the buffers of `params` (deleted then) instead of copying them. Every
    process passes the same host params; each keeps only its devices' shards."""
    _, sh = abstract_state(params, tx, seed, mesh, mask=mask)
    trainable, frozen = partition(params, mask)
    del params
    trainable = put_global(trainable, sh["params"])
    frozen = put_global(frozen, sh["frozen"])
    init = jax.jit(lambda t, f: {**init_state(combine(t, f), tx, seed, mask)}, out_shardings=sh,
                   donate_argnums=(0, 1) if donate else ())
    return init(trainable, frozen), sh


def compile_step(step, mesh, sh, rules=None, attention: str = "xla", aux_sh=None):
    """The jitted step: state sharded as `sh`, batch [A, B, T] split over data x fsdp along B,
    activations pinned by the logical-axis rules while tracing, metrics replicated. aux_sh: the
    shardings of the step's auxiliary input (a teacher's params), which it then takes as a third
    argument."""
    batch_sh = meshlib.batch_sharding(mesh, 3, batch_axis=1)
    impl = {"auto": None}.get(attention, attention)

    def traced(state, batch, aux=None):
        with axes.activation_sharding(mesh, rules or axes.DEFAULT_RULES), attention_implementation(impl):
            return step(state, batch, aux)

    shardings = (sh, batch_sh) if aux_sh is None else (sh, batch_sh, aux_sh)
    return jax.jit(traced, in_shardings=shardings, out_shardings=(sh, meshlib.replicated(mesh)),
                   donate_argnums=0), batch_sh
