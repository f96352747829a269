"""GGUF export: our writer -> our reader and transformers' own GGUF loader, tokenizer and chat template,
codes kept where formats agree, shared models written dense, bad input refused with nothing written."""
import json

import gguf
import numpy as np
import pytest
import torch
import transformers

from tests.conftest import random_hf_model, torch_logits
from jaxshare.core.model import forward
from jaxshare.io import gguf as gguf_in
from jaxshare.io.gguf_export import export_gguf
from jaxshare.io.load import load_model

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def save_bpe_model(path, family: str, **kw):
    """A tiny random model with a trained byte-level BPE tokenizer and a chat template (an HF directory)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog " * 20, "hello world, a tiny tokenizer for tests " * 20]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|im_end|>")
    fast.chat_template = TEMPLATE
    model = random_hf_model(family, vocab_size=320, bos_token_id=0, eos_token_id=1, **kw)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def assert_same_tokenizer(ours, theirs, tmp_path) -> None:
    """The same class and the same saved files, less the two keys from_pretrained adds about where
    it loaded from (is_local, local_files_only)."""
    assert type(ours) is type(theirs)
    ours.save_pretrained(tmp_path / "tok_ours")
    theirs.save_pretrained(tmp_path / "tok_theirs")
    names = sorted(p.name for p in (tmp_path / "tok_theirs").iterdir())
    assert sorted(p.name for p in (tmp_path / "tok_ours").iterdir()) == names
    for name in names:
        a, b = ((tmp_path / d / name).read_text() for d in ("tok_ours", "tok_theirs"))
        if name == "tokenizer_config.json":
            a, b = ({k: v for k, v in json.loads(x).items() if k not in ("is_local", "local_files_only")}
                    for x in (a, b))
        assert a == b, name


CASES = {"llama": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False)),
         "qwen2": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True))}


@pytest.fixture(scope="module", params=sorted(CASES))
def model_dir(request, tmp_path_factory):
    family, kw = CASES[request.param]
    return save_bpe_model(tmp_path_factory.mktemp(request.param) / "m", family, **kw)


def _tokens(vocab: int):
    return np.random.default_rng(0).integers(0, vocab, size=(2, 48)).astype(np.int32)


@pytest.mark.parametrize("gtype", ["f32", "q4_1"])
def test_round_trips_ours_and_transformers(model_dir, gtype, tmp_path):
    m = load_model(model_dir)
    out = export_gguf(m.params, m.cfg, tmp_path / "m.gguf", m.tokenizer, gtype)
    ours = dict(gguf_in.iter_gguf_tensors(out))
    tm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
    theirs = {k: v.numpy() for k, v in tm.state_dict().items()}
    want = dict(__import__("jaxshare.io.hf", fromlist=["x"]).hf_state_dict(m.params, m.cfg))
    for k, a in ours.items():
        np.testing.assert_array_equal(a, theirs[k], err_msg=k)  # one file, two readers, the same tensors
        if gtype == "f32":
            np.testing.assert_array_equal(a, want[k], err_msg=k)  # our export -> our import: exact
        else:
            assert np.max(np.abs(a - want[k])) <= 0.1 * np.max(np.abs(want[k])), k
    back = load_model(out)
    toks = _tokens(m.cfg.vocab_size)
    ours_logits = np.asarray(forward(back.params, back.cfg, toks))
    assert np.max(np.abs(torch_logits(tm, toks) - ours_logits)) <= 1e-4
    if gtype == "f32":
        np.testing.assert_allclose(ours_logits, np.asarray(forward(m.params, m.cfg, toks)), atol=1e-5)
    # the tokenizer and its chat template come back through both readers
    text = "the lazy dog says hello world"
    tt = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert tt(text, add_special_tokens=False)["input_ids"] == m.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert back.tokenizer(text, add_special_tokens=False)["input_ids"] == tt(text, add_special_tokens=False)["input_ids"]
    assert_same_tokenizer(gguf_in.gguf_tokenizer(out), tt, tmp_path)
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["tokenizer.chat_template"].contents() == TEMPLATE
    assert fields["general.architecture"].contents() == m.cfg.family


@pytest.mark.parametrize("gtype,bits,sym", [("q4_1", 4, False), ("q4_0", 4, True), ("q8_0", 8, True)])
def test_matching_types_keep_our_codes(gtype, bits, sym, tmp_path):
    from jaxshare.quant.model import QuantSpec, quantize_params
    from jaxshare.quant.pack import unpack

    family, kw = CASES["llama"]
    m = load_model(save_bpe_model(tmp_path / "m", family, **kw))
    qp, _ = quantize_params(m.params, m.cfg, QuantSpec(bits, 32, sym, "rtn"), progress=False)
    out = export_gguf(qp, m.cfg, tmp_path / "q.gguf", m.tokenizer, gtype)
    got = dict(gguf_in.iter_gguf_tensors(out))  # dequantized, q/k un-permuted
    q = qp.layers.mlp.w_down
    codes = np.asarray(unpack(q.packed[1], bits)).T.astype(np.float64)  # [out, in]
    d = np.repeat(np.asarray(q.scale[1]).astype(np.float16).astype(np.float64).T, 32, axis=1)
    w = got["model.layers.1.mlp.down_proj.weight"].astype(np.float64)
    if sym:
        recovered = w / d + (1 << (bits - 1))
    else:
        m16 = np.repeat((-np.asarray(q.zero[1], np.float32) * np.asarray(q.scale[1])).astype(np.float16)
                        .astype(np.float64).T, 32, axis=1)
        recovered = (w - m16) / d
    np.testing.assert_array_equal(np.round(recovered), codes)  # the exact integers
    wq = got["model.layers.0.self_attn.q_proj.weight"]  # and a permuted one lands back in place
    want = np.asarray(__import__("jaxshare.io.hf", fromlist=["x"]).hf_tensor(
        __import__("jaxshare.core.compressed", fromlist=["x"]).materialize(qp),
        [s for s in __import__("jaxshare.io.families", fromlist=["x"]).slots(m.cfg)
         if s.hf_key == "model.layers.0.self_attn.q_proj.weight"][0], "fp32"))
    assert np.max(np.abs(wq - want)) <= 1e-3 * np.max(np.abs(want))


def test_shared_model_exports_dense_with_a_note(tmp_path):
    from jaxshare.headshare.directshare import direct_share

    family, kw = CASES["llama"]
    m = load_model(save_bpe_model(tmp_path / "m", family, **kw))
    shared, _ = direct_share(m.params, m.cfg, 0.5)
    out = export_gguf(shared, m.cfg, tmp_path / "s.gguf", m.tokenizer, "f32")
    fields = gguf.GGUFReader(str(out)).fields
    assert "GGUF cannot express shared weights" in fields["jaxshare.note"].contents()
    back = load_model(out)
    toks = _tokens(m.cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(forward(back.params, m.cfg, toks)), np.asarray(forward(shared, m.cfg, toks)),
                               atol=1e-5)


@pytest.mark.parametrize("extra,msg", [
    (["--gguf-type", "q3_k"], "argument --gguf-type: unsupported GGUF type 'q3_k'"),
    (["--format", "gguf"], "a GGUF output must end in .gguf"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(extra, msg, tmp_path, capsys):
    from jaxshare.cli.main import main

    family, kw = CASES["llama"]
    src = save_bpe_model(tmp_path / "m", family, **kw)
    out = tmp_path / ("o.gguf" if "--gguf-type" in extra else "o.bin")
    try:
        code = main(["export", str(src), str(out), *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("jaxshare export: error:") and msg in last, last
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]
    good = tmp_path / "g.gguf"
    assert main(["export", str(src), str(good), "--gguf-type", "q8_0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gguf_type"] == "q8_0"
    assert main(["export", str(src), str(good)]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(src), str(good), "--overwrite", "--gguf-type", "f16"]) == 0
    other = tmp_path / "foreign.gguf"
    other.write_bytes(b"not ours")
    assert main(["export", str(src), str(other), "--overwrite"]) == 2 and other.read_bytes() == b"not ours"


@pytest.mark.slow
def test_smollm2_gguf_export_matches_transformers(tmp_path):
    """The real model: our q8_0 export read by transformers' GGUF loader gives our logits (<= 1e-3)."""
    from jaxshare.cli.main import main
    from jaxshare.data.tokens import token_ids, token_windows

    out = tmp_path / "smol.gguf"
    assert main(["export", "smollm2-135m", str(out), "--gguf-type", "q8_0"]) == 0
    back = load_model(out)
    toks = token_windows(token_ids("canterbury", back.tokenizer), 128, 1)
    ours = np.asarray(forward(back.params, back.cfg, toks))
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm" and "im_start" in fields["tokenizer.chat_template"].contents()
    tm = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32)
    assert np.max(np.abs(torch_logits(tm.eval(), toks) - ours)) <= 1e-3
