"""The soundness probe before each checkpoint (Trainer._unsound) takes the gradient of a chunked
cross-entropy: the same loss and gradient as the training step's, without [B, T, V] logits."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshare.core.params import init_params
from jaxshare.training.step import ce_loss, chunked_ce_loss
from tests.tiny_model import TRAIN_CFG


@pytest.mark.parametrize("chunk", [7, 31, 128])  # 7 and 31 leave a padded last chunk of the 31 predictions
def test_chunked_ce_loss_and_gradient_equal_ce_loss(chunk):
    params = init_params(TRAIN_CFG, jax.random.key(0))
    tok = jnp.asarray(np.random.default_rng(0).integers(0, TRAIN_CFG.vocab_size, (3, 32)), jnp.int32)
    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(lambda p, f=f: f(p, TRAIN_CFG, tok, remat="dots", **kw)))(params)
                        for f, kw in ((ce_loss, {}), (chunked_ce_loss, {"chunk": chunk})))
    assert float(b) == pytest.approx(float(a), rel=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-6)


def test_chunked_ce_gradient_never_holds_the_whole_logits():
    # What a large vocabulary adds to the gradient's temporaries on the same tiny body: 4 x 511
    # positions x 32,768 fp32 logits are 268 MB, and ce_loss holds them and their gradient.
    tok = jax.ShapeDtypeStruct((4, 512), jnp.int32)
    logits_bytes = 4 * 511 * 32768 * 4

    def temp(f, vocab, **kw):
        cfg = dataclasses.replace(TRAIN_CFG, vocab_size=vocab)
        params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
        grad = jax.jit(jax.grad(lambda p, t: f(p, cfg, t, **kw)))
        return grad.lower(params, tok).compile().memory_analysis().temp_size_in_bytes

    assert temp(ce_loss, 32768) - temp(ce_loss, 256) > 2 * logits_bytes  # what the probe held before
    # a few [4, 64, V] chunks' worth (the chunk's logits, their softmax and gradient), an eighth of the whole each
    grown = temp(chunked_ce_loss, 32768, chunk=64) - temp(chunked_ce_loss, 256, chunk=64)
    assert grown < 4 * logits_bytes / 8, grown
