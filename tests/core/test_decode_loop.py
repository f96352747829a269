"""generate's fused, run-ahead decode loop against the step-by-step loop it replaced."""
import jax
import numpy as np
import pytest

from jaxshare.core.config import ModelConfig
from jaxshare.core.generate import generate, sample_token
from jaxshare.core.model import KVCache, forward, forward_cached
from jaxshare.core.params import init_params

CFG = ModelConfig(family="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=48, max_seq_len=128, norm_eps=1e-6, windows=None)


def stepwise(params, cfg, prompt, n, temperature=0.0, top_p=1.0, seed=0, eos_ids=()):
    """The previous generate: one forward_cached and one host read of the token per step."""
    B, T = prompt.shape
    cache = KVCache.empty(cfg, B, T + n)
    logits, cache = forward_cached(params, cfg, jax.numpy.asarray(prompt), cache)
    key, eos, done, out, last = jax.random.key(seed), np.asarray(sorted(eos_ids), np.int32), np.zeros(B, bool), [], logits[:, -1]
    for _ in range(n):
        key, sub = jax.random.split(key)
        tok = sample_token(last, sub, temperature, top_p)
        tok_np = np.asarray(tok)
        out.append(np.where(done, eos[0] if len(eos) else tok_np, tok_np))
        done |= np.isin(tok_np, eos)
        if done.all():
            break
        logits, cache = forward_cached(params, cfg, tok[:, None], cache)
        last = logits[:, -1]
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def model():
    return init_params(CFG, jax.random.key(3))


@pytest.fixture(scope="module")
def prompt():
    return np.random.default_rng(4).integers(0, CFG.vocab_size, (2, 7)).astype(np.int32)


def test_greedy_equals_stepwise_and_full_forward_argmax(model, prompt):
    new = generate(model, CFG, prompt, 21)
    np.testing.assert_array_equal(new, stepwise(model, CFG, prompt, 21))
    seq = prompt
    for _ in range(21):
        seq = np.concatenate([seq, np.asarray(forward(model, CFG, seq))[:, -1].argmax(-1)[:, None].astype(np.int32)], 1)
    np.testing.assert_array_equal(new, seq[:, 7:])
    np.testing.assert_array_equal(generate(model, CFG, prompt[:1], 1), seq[:1, 7:8])


@pytest.mark.parametrize("temperature,top_p,seed", [(0.8, 1.0, 0), (1.3, 0.9, 5)])
def test_sampling_equals_stepwise(model, prompt, temperature, top_p, seed):
    kw = dict(temperature=temperature, top_p=top_p, seed=seed)
    np.testing.assert_array_equal(generate(model, CFG, prompt, 19, **kw), stepwise(model, CFG, prompt, 19, **kw))


def test_eos_stop_equals_stepwise(model, prompt):
    """EOS ids taken from a sampled run, so rows finish at different steps, before and across the
    host's read-back boundary; finished rows continue with the first EOS id."""
    kw = dict(temperature=1.5, seed=1)
    free = stepwise(model, CFG, prompt, 30, **kw)
    for eos in ({int(free[0, 2]), int(free[1, 11])}, {int(free[0, 9])}, {int(free[1, 16]), int(free[0, 20])}, {63}):
        want = stepwise(model, CFG, prompt, 30, eos_ids=eos, **kw)
        got = generate(model, CFG, prompt, 30, eos_ids=tuple(eos), **kw)
        np.testing.assert_array_equal(got, want)
