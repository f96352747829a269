"""The registered gemma3-270m (Q4_K_M GGUF from four PyPI part wheels) against transformers' own
GGUF loader of the same file. Slow: about 4.5 GB peak (our fp32 params, transformers' model, and
an exported copy), minutes on a CPU."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxshare.core.model import hidden_states, unembed
from jaxshare.data.corpora import load_corpus
from jaxshare.data.tokens import token_windows, tokenize_corpus
from jaxshare.eval.parity import run_parity
from jaxshare.io.load import load_model
from tests.references import gguf_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m")


@pytest.fixture(scope="module")
def reference():
    # transformers' GGUF loader's own model, kept as fp32 safetensors after its first load (24.6 s
    # for this file's 262k-token vocabulary and Q4_K_M weights; the kept copy loads in 1.5 s)
    return gguf_reference("gemma3-270m")


def test_config_is_gemma3_270m(gemma):
    cfg = gemma.cfg
    assert (cfg.family, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model, cfg.vocab_size) == \
        ("gemma3_text", 18, 4, 1, 256, 640, 262144)
    assert cfg.windows == ((512,) * 5 + (0,)) * 3 and cfg.rope_local_theta == 10000.0 and cfg.rope_theta == 1e6
    assert gemma.tokenizer("Hello")["input_ids"][0] == cfg.bos_token_id == 2


def test_parity_and_ppl_with_transformers_gguf_loader(gemma, reference):
    res = run_parity(gemma, load_corpus("canterbury"), seq_len=512, max_windows=2, reference=reference)
    assert res["tokens"] == 2 * 511
    # benchmarks/results/parity.json: max |dlogit| 4.43e-4 (7.94e-4 on another CPU), PPL 81.64558 vs 81.64555 (rel 3.8e-7)
    assert res["max_abs_logit_diff"] <= 1e-3
    assert res["ppl_rel_diff"] <= 1e-5
    assert res["ppl_jax"] == pytest.approx(81.6456, rel=1e-4)


def test_parity_past_the_sliding_window(gemma, reference):
    """1024 tokens: the local layers' 512-token window really slides."""
    ids = token_windows(tokenize_corpus(gemma.tokenizer, load_corpus("botchan")), 1024, 1)
    with torch.no_grad():  # the last 512 positions only: [512, 262144] fp32 logits per side, not [1024, ...]
        want = reference(torch.as_tensor(ids.astype(np.int64)), logits_to_keep=512).logits[0].float().numpy()
    x, _ = hidden_states(gemma.params, gemma.cfg, jnp.asarray(ids))
    got = np.asarray(unembed(gemma.params, gemma.cfg, x[:, 512:]))[0]
    assert np.max(np.abs(got - want)) <= 1e-3


def test_export_loads_in_transformers_with_the_same_logits(gemma, reference, tmp_path):
    from transformers import AutoModelForCausalLM

    from jaxshare.cli.main import main

    assert main(["export", "gemma3-270m", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["query_pre_attn_scalar"] == 256
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = gemma.tokenizer("The quick brown fox jumps over the lazy dog. " * 20, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (back(ids).logits - reference(ids).logits).abs().max().item() <= 1e-5
