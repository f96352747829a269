"""Input that was accepted and then ignored or recorded wrongly (issue 22, items 6, 13-16, 18):
each is refused with one line naming the file, flag, key or tensor, exit 2, nothing written."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.tiny_model import save_text, save_tiny_model
from tests.cli_helpers import run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_model(root / "m"), save_text(root / "t.txt")


def refused(capsys, *argv, match: str):
    code, out, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert match in last, last
    return last


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- item 16: duplicate YAML keys (the last one used to win silently)

def test_duplicate_yaml_keys_are_refused(tmp_path):
    from jaxshare.compose.plan import read_plan
    from jaxshare.training.config import load_config
    from jaxshare.yamlio import DuplicateKeyError, safe_load

    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 5\nlr: 1.0e-3\nsteps: 7\n")
    with pytest.raises(DuplicateKeyError, match=r"c.yaml: key 'steps' appears twice \(lines 1 and 3\)"):
        load_config(cfg)
    plan = tmp_path / "p.yaml"
    plan.write_text("steps:\n  - share: {ratio: 0.1, ratio: 0.2}\n")
    with pytest.raises(DuplicateKeyError, match="p.yaml: key 'ratio' appears twice"):
        read_plan(plan)
    # merge keys override by design: not a duplicate
    assert safe_load("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n") == {"a": {"x": 1}, "b": {"x": 2}}


def test_duplicate_plan_key_on_the_cli(tiny, tmp_path, capsys):
    model, _ = tiny
    plan = tmp_path / "p.yaml"
    plan.write_text("steps:\n  - inherit: {layers: 1}\nsteps:\n  - inherit: {layers: 2}\n")
    refused(capsys, "compress", model, tmp_path / "out", "--plan", plan, match="key 'steps' appears twice")
    assert not (tmp_path / "out").exists()


# --- item 18: NaN/inf in a model file is refused as it is read, with the tensor's name

def test_nan_in_safetensors_is_refused_by_convert_and_eval(tiny, tmp_path, capsys):
    model = _copy_model(tiny[0], tmp_path / "m")
    st = load_file(model / "model.safetensors")
    st["model.layers.1.mlp.up_proj.weight"][3, 4] = np.nan
    save_file(st, model / "model.safetensors", metadata={"format": "pt"})
    for argv in (("convert", model, tmp_path / "out"), ("eval", "ppl", model, "--data", tiny[1], "--seq-len", 16)):
        refused(capsys, *argv, match="tensor model.layers.1.mlp.up_proj.weight holds NaN or infinite values")
    assert not (tmp_path / "out").exists()


def test_inf_in_native_checkpoint_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "native"
    assert run(capsys, "convert", tiny[0], out)[0] == 0
    st = load_file(out / "params.safetensors")
    name = sorted(st)[0]
    st[name].reshape(-1)[0] = np.inf
    save_file(st, out / "params.safetensors", metadata={"format": "jaxshare"})
    refused(capsys, "eval", "ppl", out, "--data", tiny[1], "--seq-len", 16, match=f"tensor {name} holds NaN")


def test_nan_in_gguf_is_refused(tmp_path, capsys):
    import torch

    from tests.conftest import random_hf_model
    from tests.io.test_gguf import write_gguf

    model = random_hf_model("llama", num_hidden_layers=2)
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[0, 0] = float("nan")
    vocab = (("add_tokenizer_model", "gpt2"), ("add_token_list", [f"t{i}" for i in range(256)]),
             ("add_token_merges", []), ("add_token_scores", [0.0] * 256), ("add_token_types", [1] * 256))
    path = write_gguf(tmp_path / "m.gguf", model, extra=vocab)
    refused(capsys, "convert", path, tmp_path / "out", match="model.layers.0.self_attn.v_proj.weight holds NaN")
    assert not (tmp_path / "out").exists()


def test_non_finite_perplexity_exits_non_zero(tiny, tmp_path, capsys):
    # finite but huge weights (what a corrupt file can hold): the norms overflow and the PPL is NaN
    model = _copy_model(tiny[0], tmp_path / "m")
    st = load_file(model / "model.safetensors")
    st["model.layers.0.mlp.down_proj.weight"][:] = 3e38
    save_file(st, model / "model.safetensors", metadata={"format": "pt"})
    code, out, err = run(capsys, "eval", "ppl", model, "--data", tiny[1], "--seq-len", 16)
    assert code == 2 and "perplexity is not finite" in err and "ppl" not in out, (out, err)


# --- item 6: an HF folder without tokenizer files (eval ppl was a TypeError; convert was silent)

def test_missing_tokenizer_is_refused_by_commands_that_need_one(tiny, tmp_path, capsys):
    model = _copy_model(tiny[0], tmp_path / "m")
    (model / "tokenizer.json").unlink()
    (model / "tokenizer_config.json").unlink()
    for argv, purpose in ((("eval", "ppl", model, "--data", tiny[1], "--seq-len", 16), "eval ppl"),
                          (("generate", model, "--prompt", "w1 w2"), "generate"),
                          (("quantize", model, tmp_path / "q", "--method", "gptq", "--group", 32, "--calib", tiny[1],
                            "--calib-windows", 2, "--calib-seq-len", 16), "calibration")):
        last = refused(capsys, *argv, match=f"{model}: neither tokenizer.json nor tokenizer_config.json")
        assert f"{purpose} needs a tokenizer" in last and "copy tokenizer.json" in last, last
    assert not (tmp_path / "q").exists()
    # convert warns on stderr and records the missing tokenizer; its output is then refused the same way
    code, out, err = run(capsys, "convert", model, tmp_path / "native")
    assert code == 0 and "warning:" in err and "gets no tokenizer" in err, err
    meta = json.loads((tmp_path / "native" / "jaxshare.json").read_text())
    assert "converted without a tokenizer" in meta["extra"]["no_tokenizer"]
    refused(capsys, "eval", "ppl", tmp_path / "native", "--data", tiny[1], "--seq-len", 16,
            match="converted without a tokenizer")


def test_tokenizer_config_without_tokenizer_json_gives_the_right_advice(tiny, tmp_path, capsys):
    model = _copy_model(tiny[0], tmp_path / "m")
    (model / "tokenizer.json").unlink()
    last = refused(capsys, "eval", "ppl", model, "--data", tiny[1], "--seq-len", 16, match="no tokenizer.json")
    assert "sentencepiece" not in last and "copy tokenizer.json" in last, last


# --- item 13: int64 token ids >= 2**31 were cast to int32 before the vocabulary check (2**32 + 5 trained as 5)

def test_wide_token_ids_are_checked_before_the_cast(tiny, tmp_path, capsys):
    from jaxshare.data.tokens import DataError, token_ids

    data = tmp_path / "ids.npy"
    ids = np.arange(4000, dtype=np.int64) % 200
    ids[7] = 2**32 + 5
    np.save(data, ids)
    with pytest.raises(DataError, match="token id 4294967301"):
        token_ids(str(data), None)
    with pytest.raises(DataError, match="token id 4294967301, outside the model's vocabulary of 256"):
        token_ids(str(data), None, vocab_size=256)
    run_dir = tmp_path / "run"
    last = refused(capsys, "train", "plain", "--set", f"model={tiny[0]}", "--set", f"data={data}",
                   "--set", f"eval_data={data}", "--set", f"run_dir={run_dir}", "--set", "seq_len=16",
                   "--set", "batch_size=2", "--set", "steps=1", "--set", "mesh=data=1,fsdp=1",
                   match="token id 4294967301")
    assert str(data) in last and not run_dir.exists()


def test_perplexity_of_windows_refuses_ids_outside_the_vocabulary(tiny):
    from jaxshare.data.tokens import DataError
    from jaxshare.eval.perplexity import perplexity_of_windows
    from jaxshare.io.load import load_model

    m = load_model(str(tiny[0]))
    windows = np.full((1, 8), 3, np.int64)
    windows[0, 2] = 2**32 + 5  # jnp.asarray would make it 5
    with pytest.raises(DataError, match="token id 4294967301"):
        perplexity_of_windows(m.params, m.cfg, windows)


# --- item 15 (and its kin): a flag the chosen method ignores is refused by name, before anything loads

@pytest.mark.parametrize("argv,flag", [
    (["quantize", "M", "OUT", "--method", "rtn", "--act-order"], "--act-order"),
    (["quantize", "M", "OUT", "--method", "rtn", "--damp", "0.1"], "--damp"),
    (["quantize", "M", "OUT", "--method", "rtn", "--calib-windows", "8"], "--calib-windows"),
    (["basis", "M", "OUT", "--method", "svd", "--calib", "wiki"], "--calib"),
    (["basis", "M", "OUT", "--method", "svd", "--max-memory", "8G"], "--max-memory"),
    (["share", "M", "OUT", "--calib", "wiki:train"], "--calib"),
    (["share", "M", "OUT", "--keep", "mean", "--seed", "3"], "--seed"),
    (["inherit", "M", "OUT", "--layers", "1", "--tau", "0.5"], "--tau"),
])
def test_flags_the_method_ignores_are_refused(argv, flag, tmp_path, capsys, monkeypatch):
    def must_not_load(*a, **k):
        raise AssertionError("loaded a model before refusing the flag")

    monkeypatch.setattr("jaxshare.io.load.load_model", must_not_load)
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    last = refused(capsys, *argv, match=f"error: {flag} ")
    assert "drop it" in last, last
    assert not (tmp_path / "out").exists()


def test_rtn_records_no_gptq_settings(tiny, tmp_path, capsys):
    out = tmp_path / "q"
    assert run(capsys, "quantize", tiny[0], out, "--method", "rtn", "--bits", "8")[0] == 0
    quant = json.loads((out / "jaxshare.json").read_text())["extra"]["quant"]
    assert quant["method"] == "rtn" and not {"act_order", "damp", "calibration"} & set(quant), quant


# --- item 14: compress --plan with a plan that calibrates nothing took --calib /missing.txt and recorded it

def test_compress_refuses_calibration_flags_a_plan_does_not_use(tiny, tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("steps:\n  - inherit: {layers: 1}\n")
    out = tmp_path / "out"
    refused(capsys, "compress", tiny[0], out, "--plan", plan, "--calib", "/missing.txt",
            match="--calib is unused: no step of the plan")
    refused(capsys, "compress", tiny[0], out, "--plan", plan, "--group-size", "3",
            match="--group-size applies only when compress chooses the plan")
    assert not out.exists()
    # without them it runs, and records no calibration it did not use
    assert run(capsys, "compress", tiny[0], out, "--plan", plan)[0] == 0
    assert "calibration" not in (out / "plan.yaml").read_text()
    assert json.loads((out / "jaxshare.json").read_text())["extra"]["plan"]["calibration"] is None


# --- item 16 (part): eval ppl --max-memory 1K ran a batch of 1 without a word

def test_max_memory_below_the_model_is_refused(tiny, capsys):
    last = refused(capsys, "eval", "ppl", tiny[0], "--data", tiny[1], "--seq-len", 16, "--max-memory", "1K",
                   match="--max-memory 0.0 MiB is below what the loaded model and one window of 16 tokens need")
    assert "give at least --max-memory" in last
    code, out, _ = run(capsys, "eval", "ppl", tiny[0], "--data", tiny[1], "--seq-len", 16, "--max-memory", "64G")
    assert code == 0 and out.startswith("ppl ")


def test_gguf_vocabulary_missing_a_field_is_one_line(tmp_path, capsys):
    """transformers' gpt2 converter indexes tokenizer.ggml.scores; without it: one line, not a KeyError."""
    from tests.conftest import random_hf_model
    from tests.io.test_gguf import write_gguf

    model = random_hf_model("llama", num_hidden_layers=2)
    vocab = (("add_tokenizer_model", "gpt2"), ("add_token_list", [f"t{i}" for i in range(256)]),
             ("add_token_merges", []), ("add_token_types", [1] * 256))
    path = write_gguf(tmp_path / "m.gguf", model, extra=vocab)
    refused(capsys, "convert", path, tmp_path / "out", match="lacks tokenizer.ggml.scores")
    assert not (tmp_path / "out").exists()
