"""Command-line arguments (issue 9, findings 4, 5, 6, 8, 10): bad numbers are usage errors that name
the subcommand and the flag (exit 2, nothing loaded), every flag has help and a shown default, one
spelling per concept, and `basis` says what its calibration will cost before it starts."""
import argparse
import json

import numpy as np
import pytest

from jaxshare.cli.main import build_parser
from tests.tiny_model import save_text, save_tiny_model
from tests.cli_helpers import leaves, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_model(root / "m"), save_text(root / "t.txt")


def usage_error(capsys, prog, flag, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"jaxshare {prog}: error: argument {flag}"), last
    return last


# --- finding 5: --max-windows 0 / -1 gave "need at least one array to concatenate" / a reshape error

@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_max_windows_below_one_is_a_usage_error(value, capsys, monkeypatch):
    monkeypatch.setattr("jaxshare.io.load.load_model", _must_not_load)
    msg = usage_error(capsys, "eval ppl", "--max-windows", "eval", "ppl", "m", "--data", "x", "--max-windows", value)
    assert f"at least 1, got {value}" in msg


def test_library_refuses_max_windows_below_one():
    from jaxshare.data.tokens import DataError, token_windows

    with pytest.raises(DataError, match="max_windows must be at least 1"):
        token_windows(np.arange(100, dtype=np.int32), 10, 0)


def test_eval_batch_larger_than_the_windows_is_not_padded_out(tiny, capsys):
    model, text = tiny
    code, out, _ = run(capsys, "eval", "ppl", model, "--data", text, "--seq-len", 64, "--max-windows", 3,
                       "--batch-size", 10**12, "--json")
    small = json.loads(out)
    code2, out2, _ = run(capsys, "eval", "ppl", model, "--data", text, "--seq-len", 64, "--max-windows", 3,
                         "--batch-size", 1, "--json")
    assert code == code2 == 0 and small["windows"] == 3
    assert small["ppl"] == pytest.approx(json.loads(out2)["ppl"], rel=1e-6)


# --- findings 4 and 6: generate --prompt "" (IndexError), --temperature -1 / --top-p 0 accepted

@pytest.mark.parametrize("flag,value,msg", [
    ("--prompt", "", "must not be empty"),
    ("--temperature", "-1", ">= 0, got -1"),
    ("--temperature", "nan", "finite"),
    ("--top-p", "0", "in (0, 1], got 0"),
    ("--top-p", "1.5", "in (0, 1], got 1.5"),
    ("--max-new-tokens", "0", "at least 1"),
    ("--seed", "-3", "in [0, 4294967295]"),
])
def test_generate_bad_settings_are_usage_errors(flag, value, msg, capsys, monkeypatch):
    monkeypatch.setattr("jaxshare.io.load.load_model", _must_not_load)
    argv = ["generate", "m", "--prompt", "hello", flag, value]
    assert msg in usage_error(capsys, "generate", flag, *argv)


def test_generate_library_refuses_empty_prompt_and_bad_sampling(tiny):
    from jaxshare.core.generate import generate, generate_text
    from jaxshare.io.load import load_model

    m = load_model(str(tiny[0]))
    with pytest.raises(ValueError, match="gives no tokens"):
        generate_text(m, "")
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(m.params, m.cfg, np.zeros((1, 0), np.int32), 4)
    with pytest.raises(ValueError, match="temperature must be"):
        generate(m.params, m.cfg, np.ones((1, 3), np.int32), 4, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(m.params, m.cfg, np.ones((1, 3), np.int32), 4, temperature=1.0, top_p=0.0)
    # sampling: a seed fixes the draw; different seeds draw differently (4 draws of 8 tokens)
    draws = [generate_text(m, "w1 w2 w3", 8, temperature=1.0, top_p=0.9, seed=s) for s in range(4)]
    assert all(isinstance(d, str) and d for d in draws)
    assert generate_text(m, "w1 w2 w3", 8, temperature=1.0, top_p=0.9, seed=1) == draws[1]
    assert len(set(draws)) > 1


# --- finding 8: basis calibration help, CPU-sized defaults, size and estimate before the work

def test_basis_help_shows_calibration_defaults_and_how_to_scale_up(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["basis", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("seq- len", "seq-len")  # undo the line wrap
    assert "--calib-windows 256 --calib-seq-len 2048" in text
    sp = dict(leaves(build_parser()))[("basis",)]
    shown = {a.dest: sp._get_formatter()._expand_help(a) for a in sp._actions
             if a.help and a.help != argparse.SUPPRESS}  # not the hidden --batch alias
    for dest, default in (("calib_windows", 32), ("calib_seq_len", 512), ("batch_size", 4)):
        assert shown[dest].endswith(f"(default: {default})") and len(shown[dest]) > 30, dest


def test_basis_prints_size_and_estimate_before_calibrating_and_reuses_the_cache(tiny, tmp_path, capsys,
                                                                              monkeypatch):
    import jaxshare.basis.calibrate as calibrate_mod

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    model, text = tiny
    seen = []
    real = calibrate_mod.calibrate

    def spy(*a, **kw):
        seen.append(capsys.readouterr().err)  # what the user had been told when the work began
        return real(*a, **kw)

    monkeypatch.setattr(calibrate_mod, "calibrate", spy)
    argv = ["basis", model, tmp_path / "b1", "--calib", text, "--calib-windows", 3, "--calib-seq-len", 64,
            "--json"]
    code, out, err = run(capsys, *argv)
    assert code == 0 and len(seen) == 1, err
    told = seen[0]
    assert "calibration: 3 x 64 = 192 tokens" in told and " s and " in told and "GiB peak" in told
    assert "--calib-windows 256 --calib-seq-len 2048" in told
    assert json.loads(out)["calibration"]["cached"] is False
    argv[2] = tmp_path / "b2"
    code, out, _ = run(capsys, *argv)
    assert code == 0 and json.loads(out)["calibration"]["cached"] is True  # same key: model, data, size, seed
    assert "calibration: 3 x 64 = 192 tokens of " in seen[1] and "cached from an earlier run" in seen[1]
    argv[2], argv[-1] = tmp_path / "b3", "--seed"
    code, out, _ = run(capsys, *argv, 1, "--json")  # another draw of windows is another key
    assert code == 0 and json.loads(out)["calibration"]["cached"] is False and "estimate" in seen[2]


def test_calibration_estimate_scales_with_tokens():
    from jaxshare.basis.calibrate import estimate
    from jaxshare.core.config import ModelConfig

    cfg = ModelConfig(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                      head_dim=64, d_ff=1536, max_seq_len=8192, norm_eps=1e-5)
    small, paper = estimate(cfg, 32, 512), estimate(cfg, 256, 2048)
    assert small["tokens"] == 32 * 512 and paper["tokens"] == 256 * 2048
    assert paper["flops"] > 32 * small["flops"]  # 32x the tokens, and longer attention rows
    assert 0 < small["seconds"] < paper["seconds"] and small["peak_bytes"] < paper["peak_bytes"]


# --- finding 10: one spelling per concept, errors name the subcommand, outputs checked before loading

def _must_not_load(*a, **kw):
    raise AssertionError("the model was loaded before the arguments were checked")


def test_ratio_has_a_shown_default_in_both_compressing_commands():
    p = build_parser()
    share = p.parse_args(["share", "m", "o"])
    basis = p.parse_args(["basis", "m", "o"])
    assert share.ratio == 0.3 and basis.ratio == 0.2
    assert p.parse_args(["share", "m", "o", "--ratio", "0.1"]).ratio == 0.1  # the old form still works


def test_batch_size_is_the_one_spelling_and_batch_is_a_hidden_alias(capsys):
    p = build_parser()
    assert p.parse_args(["eval", "ppl", "m", "--data", "x", "--batch-size", "3"]).batch_size == 3
    assert p.parse_args(["eval", "ppl", "m", "--data", "x"]).batch_size == 8
    assert p.parse_args(["eval", "ppl", "m", "--data", "x", "--batch", "5"]).batch_size == 5
    assert "--batch is deprecated, use --batch-size" in capsys.readouterr().err
    for words, sp in leaves(p):
        flags = {s for a in sp._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
        assert "--batch" not in flags, words


def test_dtype_means_storage_and_compute_dtype_has_its_own_name(capsys):
    p = build_parser()
    for cmd in (["eval", "ppl", "m", "--data", "x"], ["generate", "m", "--prompt", "hi"]):
        assert p.parse_args([*cmd, "--compute-dtype", "bf16"]).compute_dtype == "bf16"
        with pytest.raises(SystemExit):  # one meaning per name: refused here, naming the flag to use
            p.parse_args([*cmd, "--dtype", "bf16"])
        assert "use --compute-dtype for the forward pass" in capsys.readouterr().err
        assert p.parse_args(cmd).compute_dtype == "fp32"
    for cmd in (["convert", "m", "o"], ["export", "m", "o"]):
        assert p.parse_args([*cmd, "--dtype", "bf16"]).dtype == "bf16"
    texts = {}
    for words, sp in leaves(p):
        for a in sp._actions:
            if "dtype" in a.dest and a.help != argparse.SUPPRESS:
                texts.setdefault(a.option_strings[0], set()).add(a.help)
    assert set(texts) == {"--dtype", "--compute-dtype", "--param-dtype"}
    assert all("stored" in h for h in texts["--dtype"]) and all("forward" in h for h in texts["--compute-dtype"])
    assert all("held" in h for h in texts["--param-dtype"])
    for cmd in (["eval", "ppl", "m", "--data", "x"], ["generate", "m", "--prompt", "hi"]):
        assert p.parse_args([*cmd, "--param-dtype", "bf16"]).param_dtype == "bf16"
        assert p.parse_args(cmd).param_dtype == "fp32"


@pytest.mark.parametrize("text,value", [("12G", 12 * 2**30), ("800M", 800 * 2**20), ("1.5GiB", int(1.5 * 2**30)),
                                        ("4096", 4096), ("2gb", 2 * 2**30)])
def test_memory_sizes_parse(text, value):
    from jaxshare.cli.common import memory_size

    assert memory_size(text) == value


@pytest.mark.parametrize("bad", ["0", "-1G", "12Q", "", "G", "nan"])
def test_bad_memory_sizes_are_refused_while_parsing(bad, capsys):
    code, _, err = run(capsys, "eval", "ppl", "m", "--data", "x", "--max-memory", bad)
    assert code == 2 and "jaxshare eval ppl: error: argument --max-memory" in err


@pytest.mark.parametrize("argv,prog", [
    (["eval", "ppl", "m", "--data", "x", "--seq-len", "1"], "eval ppl"),
    (["eval", "ppl", "m", "--data", "x", "--no-such-flag"], "eval ppl"),
    (["train", "postshare", "--no-such-flag"], "train postshare"),
    (["share", "m", "o", "--ratio", "1"], "share"),
    (["basis", "m", "o", "--group-size", "0"], "basis"),
])
def test_usage_errors_name_the_subcommand(argv, prog, capsys):
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"jaxshare {prog}: error:")


def test_runtime_errors_name_the_subcommand(capsys):
    code, _, err = run(capsys, "eval", "ppl", "no-such-model", "--data", "canterbury")
    assert code == 2 and err.startswith("jaxshare eval ppl: error:") and "not a registered model" in err


@pytest.mark.parametrize("cmd", ["convert", "export", "share", "basis"])
def test_output_is_checked_before_the_model_is_loaded(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jaxshare.io.load.load_model", _must_not_load)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, cmd, "smollm2-135m", out)
    assert code == 2 and f"jaxshare {cmd}: error:" in err and "not empty" in err
    assert (out / "keep.txt").read_text() == "mine"


# --- every flag documented, defaults shown, numbers validated while parsing

def test_every_flag_has_help_and_shows_its_default():
    for words, sp in leaves(build_parser()):
        text = " ".join(sp.format_help().split())
        for a in sp._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            assert a.help, (words, a.dest)
            if a.option_strings and a.nargs != 0 and not a.required:
                assert "(default:" in " ".join(sp._get_formatter()._expand_help(a).split()), (words, a.dest)
        assert "(default: None)" not in text, words


def test_every_numeric_flag_is_validated_while_parsing():
    builtins = {int, float}
    for words, sp in leaves(build_parser()):
        for a in sp._actions:
            assert a.type not in builtins, (words, a.option_strings)  # a bare int/float accepts 0, -1, nan


@pytest.mark.parametrize("argv", [["share", "m", ""], ["basis", "m", ""], ["basis-pairs", "m", ""], ["convert", "m", ""],
                                  ["export", "m", ""], ["share", "m", "o", "--plot-dir", ""], ["plot-run", ""]])
def test_an_empty_output_path_is_refused_while_parsing(argv, capsys, monkeypatch):
    # "" is the working directory to pathlib: the fuzz test found `share m ""` writing there
    monkeypatch.setattr("jaxshare.io.load.load_model", _must_not_load)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "must not be empty" in err


def test_share_writes_its_plots_only_after_the_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    def full_disk(*a, **kw):
        raise FileExistsError("the write failed")  # any failure of the checkpoint write

    monkeypatch.setattr("jaxshare.io.native.save_native", full_disk)
    code, _, err = run(capsys, "share", tiny[0], tmp_path / "out", "--plot-dir", tmp_path / "plots")
    assert code == 2 and "the write failed" in err
    assert not (tmp_path / "plots").exists() and not (tmp_path / "out").exists()
