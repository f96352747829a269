"""Issue 13's commands on a tiny random model of every supported family, through the command line.

For each family: `share --keep data --correct qkv`, `compress --plan` (share, basis, inherit),
`compress --ratio 0.1 --methods share,basis`; each result is exported to HF, re-imported
by jaxshare with the compressed model's logits (<= 1e-5) and read by transformers as a dense model
with the same logits (<= 1e-4). The configs are chosen to stress what differs between families:
GQA and MQA unit formation, q/k/v and MLP biases, GPT-2's fused biased attention and LayerNorm
with bias, Gemma3's q/k norms, head_dim != D/H and local/global layers with their own RoPE base,
sliding windows shorter than the windows scored."""
import json

import numpy as np
import pytest

from tests.conftest import random_hf_model, torch_logits
from jaxshare.core.bank import is_bank
from jaxshare.core.model import forward
from jaxshare.core.params import count_params
from jaxshare.io.families import ADAPTERS

L = 4  # layers: enough for a basis group of 2, an inherit step and ties across layers
FAMILIES = {
    "llama": dict(num_hidden_layers=L, attention_bias=True, mlp_bias=True),  # GQA 4/2, biases
    "mistral": dict(num_hidden_layers=L, num_key_value_heads=1, sliding_window=16),  # MQA, window < T
    "qwen2": dict(num_hidden_layers=L, num_attention_heads=8, num_key_value_heads=2),  # GQA 8/2, q/k/v bias
    "gpt2": dict(n_layer=L, n_positions=128),  # MHA, fused c_attn, LayerNorm with bias
    "gemma3_text": dict(num_hidden_layers=L, num_key_value_heads=1, head_dim=24, sliding_window=16,
                        sliding_window_pattern=2, query_pre_attn_scalar=20),  # MQA, q/k norms, local RoPE
}
CALIB = ["--calib-windows", "4", "--calib-seq-len", "32", "--batch-size", "4"]
PLAN = {"steps": [{"share": {"ratio": 0.3, "keep": "data", "correct": "qkv"}},
                  {"basis": {"ratio": 0.3, "group_size": 2}}, {"inherit": {"layers": L - 1}}],
        "calibration": {"windows": 4, "seq_len": 32, "seed": 0}}


def test_every_registered_family_is_covered():
    assert set(FAMILIES) == set(ADAPTERS), "add the new family to FAMILIES"


def _model(family):
    import torch

    kw = dict(FAMILIES[family])
    if family != "gpt2":
        kw.setdefault("max_position_embeddings", 128)
    model = random_hf_model(family, **kw)
    if family == "gemma3_text":  # Gemma multiplies by (1 + w): weights near 0 are norms near 1 (test_gemma3.py)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(0.1 * torch.randn_like(p))
    return model


def _text(path, chars: int = 4000):
    """Calibration text whose UTF-8 bytes reach most of the 256 byte tokens (ASCII and 2-byte
    characters). Text of a few distinct bytes gives rank-deficient grams: the data-aware merges
    and corrections are then free along directions no calibration token spans, and random test
    tokens that hit them make a model whose fp32 logits differ between implementations by > 1e-4."""
    rng = np.random.default_rng(0)
    codes = np.array([*range(0x21, 0x7F), *range(0xA1, 0x800)])
    codes = codes[rng.integers(0, len(codes), chars)]
    codes[rng.random(chars) < 0.25] = 0x20  # words of about four characters
    path.write_text("".join(map(chr, codes)), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    from tests.tiny_model import save_tiny_model

    d = tmp_path_factory.mktemp(request.param)
    src = save_tiny_model(d / "src", model=_model(request.param), byte_level=True)
    return request.param, src, _text(d / "text.txt")


@pytest.fixture
def model(tiny, monkeypatch):
    """(family, HF directory, calibration text) with the model's calibration cache in place."""
    # One calibration cache per model: the three commands calibrate on the same windows (the first
    # collects the grams, the others read them back, as a user's runs would)
    monkeypatch.setenv("JAXSHARE_CACHE", str(tiny[1].parent / "cache"))
    return tiny


def _run(capsys, *argv):
    from jaxshare.cli.main import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    assert code == 0, cap.err[-3000:]
    return cap.out


TOKENS = np.random.default_rng(7).integers(0, 256, size=(2, 48)).astype(np.int32)  # 48 > the windows of 16


def _export_and_check(capsys, native, tmp_path):
    """The checkpoint's logits survive export + re-import (<= 1e-5) and transformers reads the dense
    export with the same logits (<= 1e-4); returns the loaded compressed model."""
    import torch
    import transformers

    from jaxshare.io.load import load_model

    m = load_model(str(native))
    ours = np.asarray(forward(m.params, m.cfg, TOKENS))
    _run(capsys, "export", native, tmp_path / "hf")
    back = load_model(str(tmp_path / "hf"))
    assert back.cfg == m.cfg
    np.testing.assert_allclose(np.asarray(forward(back.params, back.cfg, TOKENS)), ours, atol=1e-5, rtol=0)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert np.max(np.abs(torch_logits(ref, TOKENS) - ours)) <= 1e-4
    return m


def test_share_data_qkv(model, tmp_path, capsys):
    from jaxshare.headshare.corrected import CorrectedBank

    _, src, text = model
    rep = json.loads(_run(capsys, "share", src, tmp_path / "out", "--ratio", "0.3", "--keep", "data",
                          "--correct", "qkv", "--calib", text, *CALIB, "--json"))
    assert rep["units_freed"] >= 1 and rep["correction_params"] > 0
    m = _export_and_check(capsys, tmp_path / "out", tmp_path)
    assert rep["units_total"] == L * m.cfg.n_kv_heads  # a unit is one kv head and its query group (MQA: 1 a layer)
    assert isinstance(m.params.layers.attn.wq, CorrectedBank) and count_params(m.params) == rep["params_after"]


def test_compress_plan_share_basis_inherit(model, tmp_path, capsys):
    from jaxshare.basis.factor import Factored

    _, src, text = model
    (tmp_path / "plan.yaml").write_text(json.dumps(PLAN | {"calibration": PLAN["calibration"] | {"data": str(text)}}))
    rep = json.loads(_run(capsys, "compress", src, tmp_path / "out", "--plan", tmp_path / "plan.yaml", "--json"))
    assert [s["method"] for s in rep["steps"]] == ["share", "basis", "inherit"]
    assert rep["model"]["layers_after"] == L - 1 and rep["steps"][0]["units_freed"] >= 1
    m = _export_and_check(capsys, tmp_path / "out", tmp_path)
    assert m.cfg.n_layers == L - 1 and is_bank(m.params.layers.attn.wq)
    assert isinstance(m.params.layers.mlp.w_down, Factored)


# The budgeted plan scores ~27 candidates per model (about 6 s a family here): GPT-2, the family
# that differs most from the others, runs by default; the rest are marked slow, and tiny: their
# models are tiny, so they keep the suite's fast compile flags (tests/conftest.py).
@pytest.mark.parametrize("tiny", [pytest.param(f, marks=() if f == "gpt2" else (pytest.mark.slow, pytest.mark.tiny))
                                  for f in sorted(FAMILIES)], indirect=True)
def test_compress_target_share_basis(model, tmp_path, capsys):
    _, src, text = model
    rep = json.loads(_run(capsys, "compress", src, tmp_path / "out", "--ratio", "0.1", "--methods",
                          "share,basis", "--calib", text, *CALIB, "--heldout", text, "--heldout-windows", "1",
                          "--sens-windows", "1", "--json"))
    b = rep["budget"]
    assert b["target_params"] - b["chosen"]["last_step"] < rep["model"]["params_after"] <= b["target_params"]
    assert (tmp_path / "out" / "plan.yaml").is_file()
    _export_and_check(capsys, tmp_path / "out", tmp_path)
