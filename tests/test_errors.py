"""Bad input: a clear error naming the problem, exit code 2 from the CLI, and nothing written."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import random_hf_model
from jaxshare.cli.main import main
from jaxshare.core.config import ConfigError
from jaxshare.io.families import config_from_hf_dict
from jaxshare.io.hf import CheckpointError, load_hf_dir


@pytest.fixture
def hf_dir(tmp_path):
    path = tmp_path / "hf"
    random_hf_model("llama", num_hidden_layers=2).save_pretrained(path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_truncated_safetensors(hf_dir, tmp_path, capsys):
    f = hf_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_hf_dir(hf_dir)
    code, out, err = run_cli(capsys, "convert", hf_dir, tmp_path / "out")
    assert code == 2 and "model.safetensors" in err and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_missing_and_unexpected_keys(hf_dir, tmp_path, capsys):
    state = load_file(hf_dir / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.1.mlp.extra.weight"] = np.zeros(3, np.float32)
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_hf_dir(hf_dir)
    assert "missing keys: model.layers.1.mlp.up_proj.weight" in str(e.value)
    assert "unexpected keys: model.layers.1.mlp.extra.weight" in str(e.value)
    code, _, err = run_cli(capsys, "export", hf_dir, tmp_path / "exp")
    assert code == 2 and "missing keys" in err and not (tmp_path / "exp").exists()


def test_duplicate_key_across_shards(hf_dir):
    state = load_file(hf_dir / "model.safetensors")
    keys = sorted(state)
    save_file({k: state[k] for k in keys}, hf_dir / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({keys[0]: state[keys[0]]}, hf_dir / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    (hf_dir / "model.safetensors").unlink()
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
    weight_map["x"] = "model-00002-of-00002.safetensors"
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=f"duplicate keys: {keys[0]}"):
        load_hf_dir(hf_dir)


def test_wrong_shape_names_the_tensor(hf_dir):
    state = load_file(hf_dir / "model.safetensors")
    state["model.norm.weight"] = np.ones(7, np.float32)
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.norm.weight has shape"):
        load_hf_dir(hf_dir)


def test_unsupported_architecture(tmp_path, capsys):
    import transformers

    path = tmp_path / "bert"
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64).save_pretrained(path)
    code, _, err = run_cli(capsys, "convert", path, tmp_path / "out")
    assert code == 2 and "unsupported architecture 'bert'" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("rope,match", [
    ({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "unsupported rope type 'yarn'"),
    ({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}, "unsupported rope type 'dynamic'"),
])
def test_unsupported_rope(rope, match):
    hf = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
          "num_hidden_layers": 1, "num_attention_heads": 2, "rope_parameters": rope}
    with pytest.raises(ConfigError, match=match):
        config_from_hf_dict(hf)


def test_unknown_behaviour_attribute_is_named():
    hf = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
          "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_act": "gelu"}
    with pytest.raises(ConfigError, match="hidden_act 'gelu'"):
        config_from_hf_dict(hf)
    hf = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
          "num_hidden_layers": 1, "num_attention_heads": 2, "quantization_config": {"bits": 4}}
    with pytest.raises(ConfigError, match="quantization_config"):
        config_from_hf_dict(hf)


def test_bin_needs_explicit_flag(tmp_path):
    import torch

    model = random_hf_model("llama", num_hidden_layers=1)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-bin"):
        load_hf_dir(tmp_path)
    cfg, params = load_hf_dir(tmp_path, allow_bin=True)
    assert cfg.n_layers == 1


def test_export_refuses_to_clobber(hf_dir, tmp_path, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", hf_dir, dest)
    assert code == 2 and "not empty" in err and (dest / "keep.txt").read_text() == "mine"


def test_seq_len_above_model_max_and_empty_corpus(hf_dir, tmp_path, capsys):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(hf_dir)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 256}" for i in range(3000)))
    code, _, err = run_cli(capsys, "eval", "ppl", hf_dir, "--data", text, "--seq-len", 4096)
    assert code == 2 and "above the model's maximum of 512" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    code, _, err = run_cli(capsys, "eval", "ppl", hf_dir, "--data", empty, "--seq-len", 64)
    assert code == 2 and "empty corpus" in err
    code, out, _ = run_cli(capsys, "eval", "ppl", hf_dir, "--data", text, "--seq-len", 128, "--json")
    res = json.loads(out)
    assert code == 0 and res["windows"] == 3000 // 128 and res["tokens"] == res["windows"] * 127
    assert set(res) >= {"ppl", "nll", "tokens", "windows", "seq_len", "protocol"}


def test_unknown_model_name(capsys):
    code, _, err = run_cli(capsys, "eval", "ppl", "no-such-model", "--data", "canterbury")
    assert code == 2 and "not a registered model" in err and "smollm2-135m" in err


def test_parity_without_the_reference_is_one_line(hf_dir, capsys, monkeypatch):
    """torch/accelerate are optional (a wheel install has neither): parity says what to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, out, err = run_cli(capsys, "parity", hf_dir, "--max-windows", "1", "--seq-len", "16")
    assert code == 2 and err.count("\n") == 1 and "jaxshare[reference]" in err and "Traceback" not in err
