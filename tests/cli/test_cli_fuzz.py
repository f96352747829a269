"""Property-based robustness of the command line (issue 9): whatever the arguments (boundary and
random numbers, empty strings, unknown flags, missing positionals), `jaxshare` ends with exit code
0 or 2, prints no traceback, and leaves nothing behind but complete outputs.

Every subcommand runs in-process on a tiny random model. The two whose valid runs are long (demo,
train) run for real up to the point where the long work would start: their entry points are
replaced by a stub that stops there, so everything that parses and validates is exercised."""
import contextlib
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from jaxshare.cli.main import main
from tests.tiny_model import save_text, save_tiny_model

SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))

INTS = ["0", "-1", "1", "2", "3", "16", "1000000", "99999999999999999999999", "1e3", "nan", "inf", "-inf", "",
        "abc", "2.5", "-0"]
FLOATS = ["0", "-1", "1", "0.5", "0.1", "0.999", "1.5", "nan", "inf", "-inf", "1e308", "-1e-300", "", "x", "1e-9"]
TEXTS = ["", " ", "w1 w2", "hello", "-", "--", "\x00", "é"]


def mostly(good, bad):
    """good three times in four (so that whole commands run too), else bad."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 3 else good)


def values(pool, valid=()):
    """A value for a flag: mostly a valid one, else a boundary one or a random integer."""
    bad = st.one_of(st.sampled_from(pool), st.integers(-10, 10**6).map(str))
    return mostly(st.sampled_from(list(valid)), bad) if valid else bad


class Reached(Exception):
    """Raised by the stubs where a demo or a training run would start its long work."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs every example reads (never written to): a native tiny model, its HF source, a text,
    a finished run's metrics; the cache lives here too, so a calibration never touches ~/.cache."""
    root = tmp_path_factory.mktemp("fuzz")
    hf = save_tiny_model(root / "hf")
    text = save_text(root / "text.txt")
    run = root / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "ce": 2.0, "lw": 0.0}\n'
                                       '{"step": 1, "eval_ppl": 7.0}\n')
    from jaxshare.storage.fetch import cache_dir

    real = cache_dir()
    (root / "cache").mkdir()
    for name in ("corpora", "registry", "models"):  # named corpora stay where they were fetched
        if (real / name).is_dir():
            (root / "cache" / name).symlink_to(real / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXSHARE_CACHE", str(root / "cache"))
        assert main(["convert", str(hf), str(root / "native")]) == 0
        import jaxshare.cli.demo
        import jaxshare.training.trainer

        def stop(*a, **kw):
            raise Reached

        class StubTrainer:
            def __init__(self, *a, **kw):
                raise Reached

            @classmethod
            def resume(cls, *a, **kw):
                raise Reached

        mp.setattr(jaxshare.cli.demo, "run_demo", stop)
        mp.setattr(jaxshare.training.trainer, "Trainer", StubTrainer)
        yield {"root": root, "native": root / "native", "hf": hf, "text": text, "run": run, "n": [0]}


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def complete(out: Path) -> bool:
    """An output directory we wrote in full: its manifest is there and no temporary sibling is left."""
    marks = ("jaxshare.json", "config.json", "basis_pairs.json", "loss.png", "similarity_*.png", "shared_units_*.png",
             "attention_layer_similarity.png", "degeneration.json")
    return out.is_dir() and any(f.is_file() for m in marks for f in out.glob(m))


def run_cli(world, argv: list[str]) -> tuple[int, str, str, Path]:
    """Run one argv in a fresh working directory; (code, stdout, stderr, that directory)."""
    world["n"][0] += 1
    work = world["root"] / f"ex{world['n'][0]}"
    work.mkdir()
    argv = [a.replace("WORK", str(work)) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            except Reached:
                code = 0
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue(), work


def check(world, argv):
    before = snapshot(world["root"] / "hf") | {"native:" + p for p in snapshot(world["native"])}
    code, out, err, work = run_cli(world, argv)
    if currently_in_test_context():
        event(f"{' '.join(argv[:2])}: exit {code}")  # pytest --hypothesis-show-statistics shows the mix
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, (argv, err[-3000:])
    if code == 2:
        assert "error:" in err, (argv, err[-2000:])
    made = sorted(snapshot(work))
    if code != 0:
        assert made == [], (argv, made)
    else:
        tops = {m.split(os.sep)[0] for m in made}
        for top in tops:
            assert not top.startswith("."), (argv, made)  # a temporary sibling was left behind
            assert complete(work / top), (argv, top, made)
    after = snapshot(world["root"] / "hf") | {"native:" + p for p in snapshot(world["native"])}
    assert after == before, argv  # inputs are never written to
    return code, err, made


def command(words, positionals, flags, unknown=st.sampled_from(["--no-such-flag", "-z", "--json=1", "extra"])):
    """argv strategy: the words, each positional or a hole, a random subset of flags with values."""

    @st.composite
    def build(draw):
        argv = list(words)
        for pos in positionals:
            if draw(st.integers(0, 9)) < 9:  # mostly present: a missing positional is a usage error
                argv.append(draw(pos))
        for flag, val in flags.items():
            if draw(st.integers(0, 2)) == 2:
                argv += [flag] if val is None else [flag, draw(val)]
        if draw(st.integers(0, 7)) == 7:
            argv.insert(draw(st.integers(1, len(argv))), draw(unknown))
        return argv

    return build()


def model(world):
    return mostly(st.sampled_from([str(world["native"]), str(world["hf"])]),
                  st.sampled_from(["", "no-such-model", "WORK/missing", "-"]))


def corpus(world):
    return mostly(st.just(str(world["text"])), st.sampled_from(["", "no-such-corpus", "WORK/missing.txt"]))


def test_parse_time_errors_for_every_flag_value_of_every_subcommand(world):
    """Bad numbers never reach a command: for each numeric flag, a bad value is exit 2 at once."""
    bad = {"--seq-len": ["1", "0", "-3", "nan", "x", ""], "--max-windows": ["0", "-1", "1.5", "inf"],
           "--batch-size": ["0", "-2", "nan"], "--temperature": ["-1", "nan", "inf", "-1e-9"],
           "--top-p": ["0", "-0.5", "1.0001", "nan"], "--max-new-tokens": ["0", "-4"], "--seed": ["-1", "4294967296"],
           "--ratio": ["-0.1", "1", "nan", "inf"], "--group-size": ["0", "-1"], "--calib-windows": ["0", "-1"],
           "--calib-seq-len": ["1", "0"], "--max-shard-mb": ["0", "-1", "inf", "nan"]}
    native = str(world["native"])
    cmds = {"eval ppl": ["eval", "ppl", native, "--data", "canterbury"], "parity": ["parity", native],
            "generate": ["generate", native, "--prompt", "hi"], "demo": ["demo"],
            "attention-similarity": ["attention-similarity", native], "share": ["share", native, "WORK/o"],
            "basis": ["basis", native, "WORK/o"], "basis-pairs": ["basis-pairs", native, "WORK/o"],
            "export": ["export", native, "WORK/o"], "quantize": ["quantize", native, "WORK/o"]}
    from jaxshare.cli.main import build_parser

    checked = 0
    for prog, base in cmds.items():
        sp = build_parser()._subparsers._group_actions[0].choices[base[0]]
        if base[0] == "eval":
            sp = sp._subparsers._group_actions[0].choices["ppl"]
        flags = {s for a in sp._actions for s in a.option_strings}
        for flag, vals in bad.items():
            if flag not in flags:
                continue
            for v in vals:
                code, _, err, _ = run_cli(world, [*base, flag, v])
                assert code == 2 and f"jaxshare {prog}: error: argument {flag}" in err, (prog, flag, v, err)
                checked += 1
    assert checked > 60


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_light_commands_never_traceback_or_leave_partial_output(world, data):
    w = world
    out = mostly(st.just("WORK/out"), st.sampled_from(["", str(w["native"]), str(w["text"])]))
    plot = mostly(st.just("WORK/plots"), st.just(""))
    one = st.sampled_from
    cmds = [
        command(["eval", "ppl"], [model(w), st.just("--data"), corpus(w)],
                {"--seq-len": values(INTS, ["16"]), "--max-windows": values(INTS, ["2"]),
                 "--batch-size": values(INTS, ["2"]), "--compute-dtype": one(["fp32", "bf16", "fp16"]),
                 "--param-dtype": one(["fp32", "bf16", "x"]), "--json": None}),
        command(["generate"], [model(w)],
                {"--prompt": one(TEXTS), "--max-new-tokens": values(INTS, ["3"]),
                 "--temperature": values(FLOATS, ["0"]), "--top-p": values(FLOATS, ["1"]), "--seed": values(INTS, ["0"]), "--chat": None, "--json": None}),
        command(["share"], [model(w), out],
                {"--ratio": values(FLOATS, ["0", "0.2"]), "--match": one(["qk", "q", "separate", "qkvo", ""]),
                 "--keep": one(["root", "mean", "x"]), "--share-o": None, "--plot-dir": plot, "--json": None}),
        command(["basis"], [model(w), out],
                {"--ratio": values(FLOATS, ["0.5"]), "--group-size": values(INTS, ["1", "2"]),
                 "--method": one(["svd", "basis", "x"]), "--shared": one(["q", "q,up", "", "qq", "q,,k"]),
                 "--private": one(["k", "q", ""]), "--calib": corpus(w),
                 "--calib-windows": values(["0", "1000000"], ["2"]), "--calib-seq-len": values(["1", "99999"], ["16"]),
                 "--seed": values(INTS, ["0", "1"]), "--json": None}),
        command(["convert"], [model(w), out], {"--dtype": one(["fp32", "bf16", "int8"]), "--allow-bin": None,
                                               "--json": None}),
        command(["export"], [model(w), out], {"--dtype": one(["fp32", "bf16"]),
                                              "--max-shard-mb": values(FLOATS, ["0.01", "2048"]), "--json": None}),
        command(["similarity"], [model(w)], {"--match": one(["qk", "v", "x"]), "--plot-dir": plot, "--json": None}),
        command(["attention-similarity"], [model(w)],
                {"--data": corpus(w), "--seq-len": values(["1", "-2", "9999"], ["16"]), "--plot-dir": plot,
                 "--max-windows": values(INTS, ["2"]), "--batch": values(INTS, ["2"]), "--json": None}),
        command(["fetch"], [one(["model", "data", "x", ""]), one(["", "nope", "-", "wiki:nope"])], {}),
        command(["plot-run"], [one([str(w["run"]), "", "WORK/nope"])], {"--plot-dir": plot, "--json": None}),
    ]
    check(w, data.draw(st.one_of(cmds)))


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_long_commands_validate_everything_before_their_work(world, data):
    w = world
    keys = ["steps", "seq_len", "batch_size", "lr", "gamma", "ratio", "mesh", "eval_every", "tokens", "nonsense"]
    sets = st.lists(st.tuples(st.sampled_from(keys), values(INTS + FLOATS)).map(lambda kv: f"{kv[0]}={kv[1]}"),
                    max_size=4)
    cmds = [
        command(["demo"], [], {"--model": model(w), "--seq-len": values(INTS), "--max-windows": values(INTS),
                               "--plot-dir": st.sampled_from(["WORK/demo", ""]), "--json": None}),
        sets.flatmap(lambda s: command(["train", "postshare"], [], {
            "--config": st.sampled_from(["smollm2_postshare", "nope", ""]), "--json": None}).map(
            lambda argv: [*argv, *[x for kv in s for x in ("--set", kv)]])),
        command(["train", "resume"], [st.sampled_from([str(w["run"]), "", "WORK/none"])], {"--json": None}),
        command(["parity"], [model(w)], {"--data": corpus(w), "--seq-len": st.sampled_from(["8", "1", "0", "9999"]),
                                         "--max-windows": st.sampled_from(["1", "0", "-1"]), "--json": None}),
    ]
    check(w, data.draw(st.one_of(cmds)))


@pytest.mark.parametrize("argv", [
    ["eval", "ppl", "NATIVE", "--data", "TEXT", "--seq-len", "16", "--max-windows", "2", "--batch-size", "2"],
    ["generate", "NATIVE", "--prompt", "w1 w2", "--max-new-tokens", "3"],
    ["share", "NATIVE", "WORK/out", "--ratio", "0.5", "--plot-dir", "WORK/plots"],
    ["basis", "HF", "WORK/out", "--calib", "TEXT", "--calib-windows", "2", "--calib-seq-len", "16", "--ratio", "0.5"],
    ["convert", "HF", "WORK/out", "--dtype", "bf16"],
    ["export", "NATIVE", "WORK/out", "--max-shard-mb", "0.01"],
    ["similarity", "NATIVE", "--plot-dir", "WORK/plots"],
    ["attention-similarity", "NATIVE", "--data", "TEXT", "--seq-len", "16", "--max-windows", "2"],
    ["plot-run", "RUN", "--plot-dir", "WORK/plots"],
], ids=lambda a: a[0])
def test_valid_runs_exit_0_with_complete_outputs(world, argv):
    """The property's other half, for certain: a valid command succeeds and what it wrote is whole."""
    names = {"NATIVE": world["native"], "HF": world["hf"], "TEXT": world["text"], "RUN": world["run"]}
    argv = [str(names.get(a, a)) for a in argv]
    code, err, made = check(world, argv)
    assert code == 0, err[-2000:]
    assert bool(made) == any(a.startswith("WORK/") for a in argv), made  # wrote exactly when asked to


# -- training run dirs (issue 22): resume with random overrides; run dirs of random prior content ------

from jaxshare.training.trainer import Trainer as RealTrainer  # noqa: E402 (before `world` stubs it)

FIXED = ["model", "data", "eval_data", "seq_len", "batch_size", "ratio", "match", "mode", "seed", "gamma",
         "warmup_steps", "run_dir", "stages"]
RESUMABLE_SAMPLE = ["steps", "tokens", "lr", "eval_every", "checkpoint_every", "progress", "mesh", "log_every",
                    "keep_checkpoints", "export_hf"]


def _train_sets(world, run_dir) -> list[str]:
    kv = dict(model=world["native"], data=world["text"], eval_data=world["text"], run_dir=run_dir, seq_len=16,
              batch_size=2, steps=2, eval_windows=2, mesh="data=1,fsdp=1", progress="false", export_hf="false")
    return [x for k, v in kv.items() for x in ("--set", f"{k}={v}")]


@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_resume_with_random_overrides_refuses_fixed_keys_and_keeps_config(world, data):
    """Allowed keys reach the trainer (the stub) or give one line; any other key is refused by name,
    before config.yaml or anything else in the run dir is touched."""
    from jaxshare.training.config import build_config, dump_config

    run = world["root"] / "resumable"
    if not run.exists():
        dump_config(build_config({}, _train_sets(world, run)[1::2]), run / "config.yaml")
        (run / "checkpoints" / "2").mkdir(parents=True)
    before = (run / "config.yaml").read_bytes()
    kvs = data.draw(st.lists(st.tuples(st.sampled_from(FIXED + RESUMABLE_SAMPLE + ["nonsense"]),
                                       values(INTS + FLOATS + ["data=1,fsdp=1", "true"], ["4", "0.001"])), max_size=4))
    argv = ["train", "resume", str(run), *[x for k, v in kvs for x in ("--set", f"{k}={v}")]]
    code, err, _ = check(world, argv)
    fixed = [k for k, _ in kvs if k in FIXED]
    if "nonsense" in [k for k, _ in kvs]:
        assert code == 2 and "unknown config key 'nonsense'" in err, err
    elif fixed:
        assert code == 2 and f"--set {fixed[0]}" in err and "cannot change in a run under way" in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
    assert (run / "config.yaml").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]


def _ours(run: Path) -> None:
    from jaxshare.training.rundir import write_marker

    write_marker(run)


PRIOR = {  # name -> how to make it; ours (what jaxshare writes) or foreign (anything else)
    "marker": (True, _ours),
    "config.yaml": (True, lambda r: (r / "config.yaml").write_text("mode: plain\n")),
    "metrics.jsonl": (True, lambda r: (r / "metrics.jsonl").write_text('{"step": 1}\n')),
    "checkpoints/3": (True, lambda r: (r / "checkpoints" / "3").mkdir(parents=True)),
    "final": (True, lambda r: ((r / "final").mkdir(), (r / "final" / "jaxshare.json").write_text("{}"))),
    "tensorboard": (True, lambda r: ((r / "tensorboard").mkdir(), (r / "tensorboard" / "events.out.tfevents.1").write_text(""))),
    "NOTES.md": (False, lambda r: (r / "NOTES.md").write_text("mine")),
    "checkpoints/notes.txt": (False, lambda r: ((r / "checkpoints").mkdir(exist_ok=True),
                                                (r / "checkpoints" / "notes.txt").write_text("mine"))),
    "hf (no export marker)": (False, lambda r: ((r / "hf").mkdir(), (r / "hf" / "config.json").write_text("{}"))),
    "data/": (False, lambda r: ((r / "data").mkdir(), (r / "data" / "x.txt").write_text("mine"))),
    "result.json link": (False, lambda r: (r / "result.json").symlink_to(r.parent / "elsewhere.json")),
}


@settings(max_examples=12, **SETTINGS)
@example(prior=["marker", "config.yaml", "checkpoints/3", "final", "tensorboard", "metrics.jsonl"], overwrite=True)
@example(prior=["marker", "config.yaml", "NOTES.md"], overwrite=True)
@example(prior=["config.yaml", "metrics.jsonl", "checkpoints/3"], overwrite=True)
@given(prior=st.lists(st.sampled_from(sorted(PRIOR)), unique=True, max_size=5), overwrite=st.booleans())
def test_train_into_a_run_dir_of_random_prior_content_deletes_only_what_it_wrote(world, prior, overwrite):
    """The real trainer up to its first compute (the step loop's setup raises there): a refused
    start changes nothing; an accepted one had only our entries to clear, and clears only those."""
    world["n"][0] += 1
    run = world["root"] / f"rd{world['n'][0]}" / "run"
    run.mkdir(parents=True)
    (run.parent / "elsewhere.json").write_text("mine")
    for name in prior:
        PRIOR[name][1](run)
    before = {str(p.relative_to(run)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
              for p in run.rglob("*")}
    foreign = [n for n in prior if not PRIOR[n][0]]

    def stop(*a, **kw):
        raise Reached

    with pytest.MonkeyPatch.context() as mp:
        import jaxshare.training.trainer as trainer_module

        mp.setattr(trainer_module, "Trainer", RealTrainer)
        mp.setattr(RealTrainer, "_plan_and_params", stop)
        argv = ["train", "postshare", *_train_sets(world, run), *(["--overwrite"] if overwrite else [])]
        code, out, err, _ = run_cli(world, argv)
    assert code in (0, 2) and "Traceback" not in err, err[-3000:]
    if currently_in_test_context():
        event(f"exit {code}")
    after = {str(p.relative_to(run)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
             for p in run.rglob("*")}
    assert (run.parent / "elsewhere.json").read_text() == "mine"
    if code == 2:
        assert after == before and len(err.strip().splitlines()) == 1, err
        assert prior == [] or not overwrite or foreign or "marker" not in prior  # refused for a reason
        return
    assert not foreign and (prior == [] or (overwrite and "marker" in prior)), (prior, overwrite)
    assert sorted(after) == ["config.yaml", "jaxshare_run.json"]  # the earlier run's entries went; nothing else


# -- paths (issue 22): non-UTF-8 names, URLs, files where folders go and folders where files go -----------

NOT_UTF8 = os.fsdecode(b"x\xfdy")  # a name whose bytes are not UTF-8 (as a shell passes it)


@pytest.fixture(scope="module")
def path_world(world):
    """Inputs under odd names: the native model and the text under a non-UTF-8 name and in fsspec's
    memory:// filesystem, a file named like a .gguf and a folder named like one (outputs taken by the
    wrong kind)."""
    import fsspec

    root = world["root"]
    odd = Path(os.fsdecode(os.fsencode(str(root)) + b"/odd\xfd"))
    odd.mkdir()
    shutil.copytree(world["native"], odd / "native")
    shutil.copy(world["text"], odd / "text.txt")
    fs = fsspec.filesystem("memory")
    fs.put(str(world["native"]), "/fuzz22/native", recursive=True)
    fs.put(str(world["text"]), "/fuzz22/text.txt")
    (root / "taken.gguf").write_bytes(b"GGUF not ours")
    (root / "folder.gguf").mkdir()
    yield {**world, "odd": odd}
    fs.rm("/fuzz22", recursive=True)


URLS = ["gs://b/x", "s3://b/x", "az://c/x", "https://example.invalid/x", "memory://fuzz22/missing", "nope://x"]


def paths_check(world, argv) -> int:
    """One command with odd paths: exit 0 or 2, no traceback, one error line, only whole outputs."""
    with pytest.MonkeyPatch.context() as mp:  # whatever is installed here: no network, no cloud
        import importlib

        from jaxshare.storage import paths

        for mod in ("gcsfs", "s3fs", "adlfs", "aiohttp"):
            mp.setitem(sys.modules, mod, None)
        registry = importlib.import_module("fsspec.registry")._registry
        for s in ("gs", "gcs", "s3", "az", "abfs", "http", "https"):
            mp.delitem(registry, s, raising=False)
        mp.setattr(paths, "_READY", set(), raising=False)  # schemes already checked
        code, out, err, work = run_cli(world, argv)
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, (argv, err[-3000:])
    lines = [ln for ln in err.replace("\r", "\n").splitlines()
             if ln.strip() and "%|" not in ln and not ln.startswith(("usage:", " ", "warning:", "Adding merges"))]
    if code == 2:
        assert len(lines) == 1 and "error:" in lines[0], (argv, err[-2000:])
        assert sorted(snapshot(work)) == [], argv
    for top in {m.split(os.sep)[0] for m in snapshot(work)}:
        assert not top.startswith("."), (argv, top)  # a temporary sibling was left behind
        p = work / top
        assert (p.is_file() and p.suffix == ".gguf") or complete(p), (argv, top)
    return code


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_odd_paths_are_one_line_or_success(path_world, data):
    w = path_world
    model = st.sampled_from([str(w["native"]), str(w["odd"] / "native"), "memory://fuzz22/native", *URLS])
    text = st.sampled_from([str(w["text"]), str(w["odd"] / "text.txt"), "memory://fuzz22/text.txt",
                            *[u + ".txt" for u in URLS]])
    out = st.sampled_from(["WORK/out", f"WORK/{NOT_UTF8}", "WORK/out.gguf", str(w["root"] / "taken.gguf"),
                           str(w["root"] / "folder.gguf"), str(w["text"]), *URLS])
    plot = st.sampled_from(["WORK/plots", f"WORK/{NOT_UTF8}", str(w["text"]), str(w["text"]) + "/sub"])
    cmds = [
        st.tuples(st.just(["export"]), model, out).map(lambda t: [*t[0], t[1], t[2]]),
        st.tuples(st.just(["convert"]), model, out).map(lambda t: [*t[0], t[1], t[2]]),
        st.tuples(st.just(["share"]), model, out).map(lambda t: [*t[0], t[1], t[2], "--ratio", "0.25"]),
        st.tuples(st.just(["eval", "ppl"]), model, text).map(
            lambda t: [*t[0], t[1], "--data", t[2], "--seq-len", "16", "--max-windows", "2"]),
        st.tuples(st.just(["similarity"]), model, plot).map(lambda t: [*t[0], t[1], "--plot-dir", t[2]]),
        st.tuples(model, text).map(lambda t: ["train", "plain", "--set", f"model={t[0]}", "--set", f"data={t[1]}",
                                              "--set", "run_dir=WORK/run", "--set", "batch_size=8",
                                              "--set", "seq_len=16"]),
        st.sampled_from(URLS).map(lambda u: ["train", "resume", u]),
    ]
    argv = data.draw(st.one_of(cmds))
    code = paths_check(w, argv)
    if currently_in_test_context():
        event(f"{argv[0]}: exit {code}")
