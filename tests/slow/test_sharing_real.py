"""DirectShare end to end on the real SmolLM2-135M (slow: CI runs it too)."""
import json

import numpy as np
import pytest

from tests.conftest import torch_logits
from jaxshare.cli.main import main as cli_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("share") / "s30"
    assert cli_main(["share", "smollm2-135m", str(out), "--ratio", "0.3", "--match", "qk", "--json"]) == 0
    return out


def test_share_reports_exactly_n_units_and_bytes(shared_dir, capsys):
    rep = json.loads((shared_dir / "jaxshare.json").read_text())["extra"]["sharing"]
    assert rep["rows"]["q"] == 90 - 27  # N = round(0.3 * 30 * 3)
    assert cli_main(["share", "smollm2-135m", str(shared_dir.parent / "again"), "--ratio", "0.3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("units_total", "units_freed", "params_before", "params_after", "bytes_before", "bytes_after",
                "ratio", "match", "keep"):
        assert key in res
    assert res["units_total"] == 90 and res["units_freed"] == 27
    assert res["qkv_params_after"] == pytest.approx(0.7 * res["qkv_params_before"])
    assert res["bytes_before"] - res["bytes_after"] == 4 * (res["params_before"] - res["params_after"]) - 3 * 90 * 4


def test_eval_generate_and_export_of_shared_model(shared_dir, tmp_path, capsys):
    import transformers

    from jaxshare.io.load import load_model
    from jaxshare.core.model import forward

    assert cli_main(["eval", "ppl", str(shared_dir), "--data", "canterbury", "--seq-len", "512", "--max-windows", "1",
                     "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert np.isfinite(res["ppl"]) and res["tokens"] == 511
    assert cli_main(["generate", str(shared_dir), "--prompt", "Hello", "--max-new-tokens", "4"]) == 0

    hf = tmp_path / "hf"
    assert cli_main(["export", str(shared_dir), str(hf)]) == 0
    assert (hf / "sharing.json").is_file()
    m = load_model(str(hf))
    assert int(m.params.layers.attn.wq.rows.shape[0]) == 63
    toks = np.asarray(m.tokenizer("The quick brown fox jumps over the lazy dog. " * 16)["input_ids"][:160])[None]
    ours = np.asarray(forward(load_model(str(shared_dir)).params, m.cfg, toks))
    np.testing.assert_array_equal(np.asarray(forward(m.params, m.cfg, toks)), ours)
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf)
    diff = np.abs(torch_logits(ref, toks) - ours).max()
    assert diff <= 1e-3, diff  # real-model logits span ~±30: the foundation's real-model bound


def test_attention_similarity_on_real_text(tmp_path, capsys):
    assert cli_main(["attention-similarity", "smollm2-135m", "--data", "canterbury", "--seq-len", "128", "--max-windows", "2",
                     "--plot-dir", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    sim = np.asarray(res["layer_similarity"])
    assert sim.shape == (30, 30) and np.allclose(np.diag(sim), 1.0, atol=1e-5)
    assert 0 < res["adjacent_layer_mean"] <= 1 and all((tmp_path / n).is_file() for n in
                                                       ("attention_layer_similarity.png", "attention_head_similarity.png"))
