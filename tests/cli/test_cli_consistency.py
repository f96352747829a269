"""One meaning per flag, everywhere (issue 22, "Consistency of the command line", and item 16's
abbreviations and silent `--batch`). Each test walks every subcommand that build_parser() makes, so
a flag added later is held to the same rules."""
import argparse
import json

import pytest

from jaxshare.cli.common import DeprecatedAlias, RefusedDtype
from jaxshare.cli.main import build_parser
from tests.tiny_model import save_text, save_tiny_model
from tests.cli_helpers import leaves, run

# Commands that write a model: the only ones where --dtype exists (the storage dtype).
WRITERS = {("convert",), ("export",), ("share",), ("basis",), ("inherit",), ("compress",), ("quantize",), ("heal",),
           ("prune",)}
# Commands that read a model and write none: --dtype is refused there, naming the flag to use.
READERS = {("eval", "ppl"), ("eval", "mc"), ("parity",), ("generate",), ("demo",), ("similarity",),
           ("attention-similarity",), ("degeneration",), ("basis-pairs",)}
# The smallest argv each subcommand parses.
BASE = {("fetch",): ["fetch", "model", "x"], ("convert",): ["convert", "m", "o"], ("export",): ["export", "m", "o"],
        ("eval", "ppl"): ["eval", "ppl", "m", "--data", "x"], ("eval", "mc"): ["eval", "mc", "m"],
        ("parity",): ["parity", "m"], ("generate",): ["generate", "m", "--prompt", "hi"], ("demo",): ["demo"],
        ("similarity",): ["similarity", "m"], ("attention-similarity",): ["attention-similarity", "m"],
        ("share",): ["share", "m", "o"], ("basis",): ["basis", "m", "o"], ("basis-pairs",): ["basis-pairs", "m", "o"],
        ("train", "postshare"): ["train", "postshare"], ("train", "direct+post"): ["train", "direct+post"],
        ("train", "plain"): ["train", "plain"], ("train", "inheritune"): ["train", "inheritune"],
        ("train", "heal"): ["train", "heal"], ("heal",): ["heal", "m", "o", "--teacher", "t"],
        ("train", "resume"): ["train", "resume", "r"], ("plot-run",): ["plot-run", "r"],
        ("degeneration",): ["degeneration", "m"], ("inherit",): ["inherit", "m", "o", "--layers", "2"],
        ("compress",): ["compress", "m", "o", "--plan", "p"], ("quantize",): ["quantize", "m", "o"],
        ("prune",): ["prune", "m", "o"]}


def parsers(parser):
    """Every parser: the top level, the groups (eval, train) and the leaves."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                yield from parsers(sp)


def visible(sp):
    return [a for a in sp._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


def _must_not_load(*a, **kw):
    raise AssertionError("the model was loaded before the arguments were checked")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency")
    return str(save_tiny_model(root / "m", layers=3)), str(save_text(root / "t.txt", 4000))


def test_base_argv_covers_every_subcommand():
    p = build_parser()
    assert {w for w, _ in leaves(p)} == set(BASE)
    for words, argv in BASE.items():
        p.parse_args(argv)  # each parses as it stands


# --- item 16: abbreviations (`--ov` meant `--overwrite`)

def test_no_parser_takes_abbreviations():
    assert all(sp.allow_abbrev is False for sp in parsers(build_parser()))


def test_a_prefix_of_any_flag_is_refused_on_every_subcommand(capsys, monkeypatch):
    monkeypatch.setattr("jaxshare.io.load.load_model", _must_not_load)
    p = build_parser()
    tried = 0
    for words, sp in leaves(p):
        names = set(sp._option_string_actions)
        for flag in names:
            prefix = flag[:-1]
            if not flag.startswith("--") or len(prefix) < 3 or prefix in names:
                continue
            ns, extras = p.parse_known_args([*BASE[words], prefix])
            assert extras == [prefix], (words, prefix)
            tried += 1
    assert tried > 100
    code, _, err = run(capsys, "share", "m", "o", "--ov")
    assert code == 2 and "jaxshare share: error: unrecognized arguments: --ov" in err


# --- --dtype: the storage dtype, only where a model is written

def test_dtype_is_the_storage_dtype_and_only_on_commands_that_write_a_model():
    p = build_parser()
    for words, sp in leaves(p):
        shown = {s: a for a in visible(sp) for s in a.option_strings}
        if words in WRITERS:
            assert "stored" in shown["--dtype"].help and shown["--dtype"].dest == "dtype", words
            assert p.parse_args([*BASE[words], "--dtype", "bf16"]).dtype == "bf16"
        else:  # hidden or shown, never an alias of another dtype: refused, or absent
            assert "--dtype" not in shown, words
            assert isinstance(sp._option_string_actions.get("--dtype"), (RefusedDtype, type(None))), words
            assert (words in READERS) == ("--dtype" in sp._option_string_actions), words


@pytest.mark.parametrize("words", sorted(READERS), ids=" ".join)
def test_dtype_on_a_command_that_writes_no_model_is_refused_naming_the_flag_to_use(words, capsys, monkeypatch):
    monkeypatch.setattr("jaxshare.io.load.load_model", _must_not_load)
    sp = dict(leaves(build_parser()))[words]
    code, out, err = run(capsys, *BASE[words], "--dtype", "bf16")
    last = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and "note:" not in err, err
    assert last.startswith(f"jaxshare {' '.join(words)}: error: argument --dtype:"), last
    for flag in ("--compute-dtype", "--param-dtype"):
        assert (flag in last) == (flag in sp._option_string_actions), (words, flag, last)
    if not {"--compute-dtype", "--param-dtype"} & set(sp._option_string_actions):
        assert "runs in fp32" in last


# --- ratios: the fraction removed, everywhere

def test_every_ratio_flag_is_the_fraction_removed():
    seen = 0
    for words, sp in leaves(build_parser()):
        for a in visible(sp):
            if a.option_strings[0] == "--ratio":
                assert a.help.startswith("fraction of ") and "removed" in a.help, (words, a.help)
                seen += 1
            if a.option_strings[0] == "--net-ratio":  # the same fraction, counted in net parameters
                assert a.help.startswith("instead of --ratio:"), (words, a.help)
    assert seen == 4  # share, basis, basis-pairs, compress


def test_compress_ratio_is_removed_and_target_params_is_a_noted_alias_of_one_minus_it(capsys):
    p = build_parser()
    args = p.parse_args(["compress", "m", "o", "--ratio", "0.15"])
    assert args.ratio == 0.15 and args.target_params == pytest.approx(0.85)
    assert capsys.readouterr().err == ""
    old = p.parse_args(["compress", "m", "o", "--target-params", "0.9"])
    assert old.target_params == 0.9 and old.ratio == pytest.approx(0.1)  # the same plan as before
    err = capsys.readouterr().err
    assert "--target-params is deprecated (it is the fraction kept" in err and "use --ratio 0.1" in err, err
    plan = p.parse_args(["compress", "m", "o", "--plan", "p.yaml"])
    assert plan.ratio is None and plan.target_params is None


def test_compress_ratio_reaches_the_planner_as_the_fraction_kept(tiny, tmp_path, capsys, monkeypatch):
    from jaxshare.compose.plan import PlanError

    seen = []

    def stop(params, cfg, target, *a, **kw):
        seen.append(target)
        raise PlanError("stopped here")

    monkeypatch.setattr("jaxshare.compose.budget.check_reachable", stop)
    for flag, value in (("--ratio", "0.2"), ("--target-params", "0.8")):
        code, _, err = run(capsys, "compress", tiny[0], tmp_path / flag.strip("-"), flag, value, "--calib-seq-len", "32")
        assert code == 2 and "stopped here" in err, err
    assert seen == [pytest.approx(0.8), 0.8]


# --- --batch-size: a speed setting; the sample size of an analysis is --max-windows

SPEED_ONLY = "speed and memory only"


def test_batch_size_is_only_ever_a_speed_setting():
    seen = 0
    for words, sp in leaves(build_parser()):
        for a in visible(sp):
            if "--batch-size" in a.option_strings:
                assert a.dest == "batch_size" and SPEED_ONLY in a.help, (words, a.help)
                seen += 1
    assert seen == 8


@pytest.mark.parametrize("words", [("degeneration",), ("inherit",), ("attention-similarity",)], ids=" ".join)
def test_the_sample_size_of_an_analysis_is_max_windows(words, capsys):
    p = build_parser()
    base = BASE[words]
    assert p.parse_args([*base, "--max-windows", "3"]).max_windows == 3
    assert not hasattr(p.parse_args(base), "batch_size")
    for old in ("--batch-size", "--batch"):
        ns = p.parse_args([*base, old, "5"])
        assert ns.max_windows == 5 and not hasattr(ns, "batch_size")
        assert f"{old} is deprecated (here it was the number of windows analysed), use --max-windows" in \
            capsys.readouterr().err


def test_degeneration_reads_max_windows_windows(tiny, capsys):
    for n in ("2", "3"):
        code, out, err = run(capsys, "degeneration", tiny[0], "--data", tiny[1], "--seq-len", "32", "--max-windows", n,
                             "--json")
        assert code == 0, err
        assert json.loads(out)["batch"] == int(n)


# --- window counts and plot outputs: one name each

WINDOW_FLAGS = {"--max-windows": "max_windows", "--calib-windows": "calib_windows"}
COMPRESS_ONLY = {"--sens-windows": "sens_windows", "--heldout-windows": "heldout_windows"}


def test_window_counts_have_one_name_per_role():
    for words, sp in leaves(build_parser()):
        for a in visible(sp):
            flag = a.option_strings[0]
            if "window" in flag or "window" in a.dest or "windows averaged" in a.help or "analysed" in a.help:
                allowed = {**WINDOW_FLAGS, **(COMPRESS_ONLY if words == ("compress",) else {})}
                assert allowed.get(flag) == a.dest, (words, flag, a.dest)


def test_plot_output_is_plot_dir_everywhere(capsys):
    p = build_parser()
    with_plots = []
    for words, sp in leaves(p):
        for a in visible(sp):
            assert a.option_strings[0] not in ("--plot", "--out"), words
            if "PNG" in a.help:
                assert a.option_strings == ["--plot-dir"] and a.dest == "plot_dir" and a.metavar == "DIR", words
                with_plots.append(words)
    assert sorted(with_plots) == sorted([("demo",), ("similarity",), ("attention-similarity",), ("share",),
                                         ("degeneration",), ("plot-run",)])


# --- every deprecated alias says so, every time, and maps to the new flag

# (command, old spelling, value given) -> (dest, value expected)
ALIASES = {
    (("eval", "ppl"), "--batch", "3"): ("batch_size", 3),
    (("eval", "mc"), "--batch", "3"): ("batch_size", 3),
    (("share",), "--batch", "3"): ("batch_size", 3),
    (("basis",), "--batch", "3"): ("batch_size", 3),
    (("basis-pairs",), "--batch", "3"): ("batch_size", 3),
    (("compress",), "--batch", "3"): ("batch_size", 3),
    (("quantize",), "--batch", "3"): ("batch_size", 3),
    (("prune",), "--batch", "3"): ("batch_size", 3),
    (("attention-similarity",), "--batch", "3"): ("max_windows", 3),
    (("attention-similarity",), "--batch-size", "3"): ("max_windows", 3),
    (("degeneration",), "--batch", "3"): ("max_windows", 3),
    (("degeneration",), "--batch-size", "3"): ("max_windows", 3),
    (("inherit",), "--batch", "3"): ("max_windows", 3),
    (("inherit",), "--batch-size", "3"): ("max_windows", 3),
    (("similarity",), "--plot", "d"): ("plot_dir", "d"),
    (("attention-similarity",), "--plot", "d"): ("plot_dir", "d"),
    (("share",), "--plot", "d"): ("plot_dir", "d"),
    (("degeneration",), "--plot", "d"): ("plot_dir", "d"),
    (("plot-run",), "--out", "d"): ("plot_dir", "d"),
}


def test_the_alias_table_covers_every_deprecated_alias():
    found = {(words, a.option_strings[0]) for words, sp in leaves(build_parser()) for a in sp._actions
             if isinstance(a, DeprecatedAlias) and a.option_strings != ["--target-params"]}
    assert found == {(w, old) for w, old, _ in ALIASES}


@pytest.mark.parametrize("key", sorted(ALIASES), ids=lambda k: f"{' '.join(k[0])} {k[1]}")
def test_every_deprecated_alias_prints_its_note_and_maps_to_the_new_flag(key, capsys):
    words, old, value = key
    dest, expected = ALIASES[key]
    ns = build_parser().parse_args([*BASE[words], old, value])
    assert getattr(ns, dest) == expected
    err = capsys.readouterr().err
    assert f"jaxshare {' '.join(words)}: note: {old} is deprecated" in err and "use --" in err, err
    new = "--" + dest.replace("_", "-")
    assert f"use {new}" in err, err
