"""What every subcommand shares: argument types that refuse bad values while parsing (one usage line,
exit 2, before any model is loaded), a help formatter that shows defaults, printing of results, and
the output-destination check.

The library functions keep their own checks for Python callers; these types exist so that a typo on
the command line costs nothing and names the flag."""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from jaxshare.errors import MissingDependency, UsageError
from jaxshare.optional import check
from jaxshare.storage.atomic import OutputError, check_destination, check_plot_dir

MODEL_HELP = "a registered name (smollm2-135m), an HF directory, a .gguf file, or a jaxshare checkpoint"
DATA_HELP = "a named corpus (books[:split], canterbury, botchan, wiki[:split], xsum[:split]) or a .txt/.jsonl file"
SEED_MAX = 2**32 - 1  # jax.random.key and numpy's default_rng both take any value in [0, 2^32)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option that has a value; on/off switches and options whose
    default is None (their help says what None means) are left alone."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or "%(default)" in text or "(default:" in text):
            return text
        return text + " (default: %(default)s)"


def _number(kind, text: str):
    try:
        value = kind(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None):
    """An integer type for argparse: low <= value (<= high)."""

    def check(text: str) -> int:
        value = _number(int, text)
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text}")
        return value

    check.__name__ = "integer"
    return check


def float_in(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """A float type for argparse: finite and inside the interval (open ends as flagged)."""
    if high is None:
        span = f"{'>' if low_open else '>='} {low:g}"
    else:
        span = "in " + ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")

    def check(text: str) -> float:
        value = _number(float, text)
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value

    check.__name__ = "number"
    return check


def nonempty(text: str) -> str:
    if text == "":
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# One type per concept, used by every subcommand that has the flag.
COUNT = int_at_least(1)            # windows, batch sizes, group sizes, new tokens
SEQ_LEN = int_at_least(2)          # a window scores T-1 predictions, so T >= 2
SEED = int_at_least(0, SEED_MAX)
TEMPERATURE = float_in(0.0)
TOP_P = float_in(0.0, 1.0, low_open=True)
SHARE_RATIO = float_in(0.0, 1.0, high_open=True)  # 0 reproduces the dense model (docs/methods.md §1)
BASIS_RATIO = float_in(0.0, 1.0, low_open=True, high_open=True)
SHARD_MB = float_in(0.0, float(2**30), low_open=True)  # up to a pebibyte: int(mb * 2^20) stays exact


def memory_size(text: str) -> int:
    """A byte count: 12G, 12GB, 12GiB, 800M, 3.5G or plain bytes (K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 12G, 800M or a byte count, got {text!r}")
    value = float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text!r}")
    return int(value)


memory_size.__name__ = "size"
PARAM_DTYPE_HELP = "dtype the weights are loaded and held in (bf16 halves the memory of the model)"
STORAGE_DTYPE_HELP = "dtype the weights are held and stored in (fp32 or bf16)"


def storage_dtype_arg(p) -> None:
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=STORAGE_DTYPE_HELP)


def param_dtype_arg(p) -> None:
    p.add_argument("--param-dtype", choices=["fp32", "bf16"], default="fp32", help=PARAM_DTYPE_HELP)


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's dest and says so on stderr
    (every time it is used: a script that still says it should hear about it)."""

    def __init__(self, option_strings, dest, new: str = "", why: str = "", **kw):
        kw.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)
        self.new, self.why = new, why

    def __call__(self, parser, namespace, values, option_string=None):
        why = f" ({self.why})" if self.why else ""
        print(f"{parser.prog}: note: {option_string} is deprecated{why}, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


class RefusedDtype(argparse.Action):
    """`--dtype` on a command that writes no model: refused with the flag to use instead. It used
    to be the compute dtype on some of these and the storage dtype elsewhere; a silent alias would
    keep two meanings under one name."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        have = [f"{flag} for {what}" for flag, what in (("--compute-dtype", "the forward pass"),
                                                         ("--param-dtype", "the dtype the weights are held in"))
                if flag in parser._option_string_actions]
        instead = f"use {' or '.join(have)}" if have else "leave it out: this command runs in fp32"
        parser.error(f"argument --dtype: is the storage dtype of commands that write a model; "
                     f"this one writes none, {instead}")


def refuse_dtype_arg(p) -> None:
    p.add_argument("--dtype", action=RefusedDtype)


BATCH_SIZE_HELP = "windows per forward pass (speed and memory only; results do not depend on it)"


def batch_size_arg(p, default: int, help: str = BATCH_SIZE_HELP) -> None:
    """--batch-size, a speed setting on every command that has it; --batch is its old spelling."""
    p.add_argument("--batch-size", type=COUNT, default=default, help=help)
    p.add_argument("--batch", action=DeprecatedAlias, dest="batch_size", new="--batch-size", type=COUNT)


def calibration_args(p, windows: int, seq_len: int, what: str = "calibration") -> None:
    """--calib, --calib-windows, --calib-seq-len, --batch-size and --seed of a command that
    calibrates on text (quantize's GPTQ, prune): one spelling and one meaning everywhere."""
    p.add_argument("--calib", default="books:train", help=f"{what} corpus or file (a bare corpus name means its train split)")
    p.add_argument("--calib-windows", type=COUNT, default=windows, help="calibration windows")
    p.add_argument("--calib-seq-len", type=SEQ_LEN, default=seq_len, help="tokens per calibration window")
    batch_size_arg(p, 4, "calibration windows per forward pass (speed and memory only)")
    p.add_argument("--seed", type=SEED, default=0, help="which calibration windows are drawn")


def sample_windows_arg(p, default: int, help: str) -> None:
    """--max-windows on an analysis: how many windows of --data it reads, which changes its result.
    --batch-size / --batch were its spelling here, and mean a speed setting everywhere else."""
    p.add_argument("--max-windows", type=COUNT, default=default, help=help)
    for old in ("--batch-size", "--batch"):
        p.add_argument(old, action=DeprecatedAlias, dest="max_windows", new="--max-windows", type=COUNT,
                       why="here it was the number of windows analysed")


def plot_dir(text: str) -> str:
    """A directory for plots: refused while parsing, before any model loads, when it is a file, lies
    under a file or cannot be written (an existing directory is fine: plots replace their own names),
    or when matplotlib (the `plots` extra) is not installed."""
    nonempty(text)
    try:
        check("matplotlib", "plots", "plotting")
        check_plot_dir(text)
    except (OutputError, MissingDependency) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def plot_dir_arg(p, help: str, old: tuple[str, ...] = ("--plot",), **kw) -> None:
    """--plot-dir DIR, the one spelling of "where PNGs go"; old spellings stay as noted aliases."""
    p.add_argument("--plot-dir", metavar="DIR", type=plot_dir, help=help, **kw)
    for o in old:
        p.add_argument(o, action=DeprecatedAlias, dest="plot_dir", new="--plot-dir", type=plot_dir, metavar="DIR")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose "unrecognized arguments" error names the subcommand that was parsed
    (argparse itself reports them from the top-level parser: "jaxshare: error: ..."), and that takes
    no abbreviations: with them `--ov` meant `--overwrite` and `--batch` slipped past its deprecation
    note as a prefix of `--batch-size`. Subparsers are made with this class, so they inherit it
    (argparse does not pass allow_abbrev from a parser to its subparsers)."""

    def __init__(self, *a, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        # {dest: option string} of the options on the command line, as opposed to defaulted: a command
        # refuses by name a flag its chosen method would ignore (`refuse_given`). Subparsers run first
        # and their namespace is copied into ours, so merge rather than replace.
        given = dict(getattr(ns, "_given", None) or {})
        for s in sys.argv[1:] if args is None else args:
            if s == "--":
                break
            action = self._option_string_actions.get(s.split("=", 1)[0]) if s.startswith("-") else None
            if action is not None and action.dest not in (argparse.SUPPRESS, "help"):
                given.setdefault(action.dest, s.split("=", 1)[0])
        ns._given = given
        return ns, extras

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            leaf = getattr(ns, "_parser", None) or self
            leaf.error("unrecognized arguments: " + " ".join(extras))
        if hasattr(ns, "_parser"):
            del ns._parser
        return ns


def refuse_given(args, dests, why: str) -> None:
    """Refuse, in one line naming the flag, any of `dests` given on the command line: accepted and
    then ignored, it would also be recorded as if it had been used."""
    given = getattr(args, "_given", None) or {}
    for dest in dests:
        if dest in given:
            raise UsageError(f"{given[dest]} {why}")


def emit(args, obj: dict, text: str) -> None:
    """One JSON object on stdout with --json, else the human line(s)."""
    print(json.dumps(obj) if getattr(args, "json", False) else text)


def check_out_dir(out, overwrite: bool, sources=()) -> Path:
    """Refuse an output destination before any model is loaded or computed (the write itself is
    atomic and checks again). The one place that decides; subcommands call only this. `sources`:
    the command's inputs (MODEL), which the output may neither contain nor lie inside."""
    return check_destination(out, overwrite, sources)


COMPUTE_DTYPE_HELP = ("dtype of the forward pass; where a --param-dtype flag exists it sets the dtype the "
                      "weights are held in, else they are fp32")


def compute_dtype_arg(p) -> None:
    p.add_argument("--compute-dtype", choices=["fp32", "bf16"], default="fp32", help=COMPUTE_DTYPE_HELP)
