"""Memory-lean paths (issue 15) on tiny models: chunked NLL, streamed conversion, safetensors native
checkpoints, cheap GGUF refusals."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_hf_model
from jaxshare.core.model import hidden_states, token_nll, unembed
from jaxshare.eval.perplexity import chunked_token_nll, fit_batch, perplexity_of_windows, window_nll
from jaxshare.io.hf import load_hf_dir


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_chunked_nll_equals_full_logits(tied, chunk, tmp_path):
    random_hf_model("llama", tie_word_embeddings=tied).save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 40)).astype(np.int32))
    x, _ = hidden_states(params, cfg, toks)
    want = token_nll(unembed(params, cfg, x[:, :-1]), toks[:, 1:])
    got = chunked_token_nll(params, cfg, x[:, :-1], toks[:, 1:], chunk=chunk)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=2e-6)


def test_window_nll_equals_old_computation(tmp_path):
    from jaxshare.core.model import next_token_nll

    random_hf_model("qwen2").save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(3, 33)).astype(np.int32))
    old = jnp.sum(next_token_nll(params, cfg, toks), axis=-1)
    np.testing.assert_allclose(np.asarray(window_nll(params, cfg, toks)), np.asarray(old), rtol=1e-6)


def test_max_memory_picks_the_batch(tmp_path):
    random_hf_model("llama").save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    windows = np.random.default_rng(2).integers(0, 256, size=(6, 32)).astype(np.int32)
    from jaxshare.eval.perplexity import window_bytes

    per = window_bytes(cfg, 32)
    assert fit_batch(cfg, 32, 10 * per + 5, held=5) == 10
    assert fit_batch(cfg, 32, 0, held=5) == 1
    full = perplexity_of_windows(params, cfg, windows, batch_size=8)
    small = perplexity_of_windows(params, cfg, windows, batch_size=8, max_memory=1)  # nothing fits: batch 1
    assert full["batch_size"] == 6 and small["batch_size"] == 1
    assert small["nll"] == pytest.approx(full["nll"], rel=1e-6)
