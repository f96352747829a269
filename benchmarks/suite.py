"""How long the test suite takes, and what the tests' XLA compile flags buy.

    python -m benchmarks.suite run [--label after]     # .ci/run in a fresh clone of HEAD, --durations=0
    python -m benchmarks.suite log LOG --label before --commit C   # a log of such a run, made earlier
    python -m benchmarks.suite flags [--reps 3] [-k every_kind] [tests/training/test_heal.py]
    python -m benchmarks.suite real-model [--reps 5] [SELECTION ...]
    python -m benchmarks.suite tiny [--reps 5] [SELECTION ...]

`run`/`log` append to benchmarks/results/suite.jsonl: pytest's wall time, the test count, the test
seconds summed over both workers, per file, and the 20 slowest tests. `flags` runs one pytest
selection from a cold compilation cache under XLA's default flags and under the suite's
FAST_COMPILE (tests/conftest.py), interleaved, and writes benchmarks/results/suite_flags.json.
`real-model` runs real-model (slow) tests from a cold cache with FAST_COMPILE for every compile and
as the suite runs them (their own compiles under XLA's defaults), interleaved, and writes
benchmarks/results/suite_real_model.json. `tiny` runs the slow tests of tiny models (marked `tiny`)
as the other slow tests are run and as the suite runs them (FAST_COMPILE), interleaved, and writes
benchmarks/results/suite_tiny.json.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import append_row, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DURATION = re.compile(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+?)::(\S+)$", re.M)
SUMMARY = re.compile(r"^=*\s*(?:(\d+) failed, )?(\d+) passed(?:, (\d+) skipped)?.* in ([0-9.]+)s", re.M)


def parse_log(text: str) -> dict:
    """The figures of a `pytest --durations=0` log (xdist: durations are per test, summed)."""
    files: collections.Counter = collections.Counter()
    tests = []
    for m in DURATION.finditer(text):
        files[m.group(3)] += float(m.group(1))
        tests.append((float(m.group(1)), m.group(2), f"{m.group(3)}::{m.group(4)}"))
    done = SUMMARY.findall(text)
    if not done or not tests:
        raise SystemExit("no pytest summary with --durations=0 in the log")
    failed, passed, skipped, wall = done[-1]
    real = re.findall(r"^real\s+(\d+)m([0-9.]+)s", text, re.M)
    tests.sort(reverse=True)
    return {"pytest_s": float(wall), "ci_run_s": 60 * int(real[-1][0]) + float(real[-1][1]) if real else None,
            "passed": int(passed), "failed": int(failed or 0), "skipped": int(skipped or 0),
            "test_seconds_summed": round(sum(files.values()), 1),
            "per_file_s": {k: round(v, 1) for k, v in files.most_common()},
            "slowest_20": [{"s": s, "phase": p, "test": t} for s, p, t in tests[:20]]}


def run_ci(label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(Path(tmp) / "xla"), PYTEST_ADDOPTS="--durations=0",
                   CI="true")
        t0 = time.perf_counter()
        out = subprocess.run(["bash", str(clone / ".ci" / "run")], cwd=clone, env=env, capture_output=True, text=True)
        res = parse_log(out.stdout + out.stderr)
        res["ci_run_s"] = round(time.perf_counter() - t0, 1)
    append_row(RESULTS / "suite.jsonl", {"label": label, **res}, "benchmarks.suite")


def pytest_once(selection: list[str], flags: str | None, extra_env: dict | None = None) -> float:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, **(extra_env or {}))
        if flags is None:  # XLA's defaults: conftest adds no FAST_COMPILE
            env["JAXSHARE_TEST_XLA_DEFAULTS"] = "1"
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8" + (f" {flags}" if flags else "")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-o", "addopts=", *selection],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def fast_compile() -> str:
    """The flags the suite uses, read from tests/conftest.py (importing it would set this process's XLA_FLAGS)."""
    return re.search(r'^FAST_COMPILE = "(.+)"$', (ROOT / "tests" / "conftest.py").read_text(), re.M).group(1)


def compare(name: str, selection: list[str], reps: int, arms: dict[str, tuple[str | None, dict]],
            as_json: bool) -> None:
    """Two ways of running one selection (XLA_FLAGS, extra env), each from a cold cache, interleaved
    and alternating which goes first; the first arm is the baseline of the speedup."""
    times: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(reps):
        for a in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            times[a].append(pytest_once(selection, *arms[a]))
            print(f"rep {r + 1}/{reps} {a}: {times[a][-1]:.1f} s", file=sys.stderr, flush=True)
    out = {a: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs_s": t}
           for a, t in times.items()}
    base, new = out.values()
    write_result(name, {"selection": selection, "reps": reps, "fast_compile": fast_compile(), "arms": out,
                        "speedup_median": base["median_s"] / new["median_s"],
                        "outside_noise": base["min_s"] > new["max_s"]}, as_json)


def flags(selection: list[str], reps: int, as_json: bool) -> None:
    compare("suite_flags", selection, reps, {"xla_defaults": (None, {}), "fast_compile": (fast_compile(), {})},
            as_json)


def real_model(selection: list[str], reps: int, as_json: bool) -> None:
    """The suite's FAST_COMPILE on every compile against its per-test choice (tests/conftest.py: a
    slow test's own compiles under XLA's defaults), on the same selection of slow tests."""
    compare("suite_real_model", selection, reps,
            {"fast_compile_everywhere": (fast_compile(), {"JAXSHARE_TEST_SLOW_XLA_DEFAULTS": "0"}),
             "slow_tests_xla_defaults": (fast_compile(), {})}, as_json)


def tiny(selection: list[str], reps: int, as_json: bool) -> None:
    """The slow tests of tiny models compiled like the other slow tests (XLA's defaults) against the
    suite's choice for them (FAST_COMPILE), on the same selection."""
    compare("suite_tiny", selection, reps,
            {"as_other_slow_tests": (fast_compile(), {"JAXSHARE_TEST_TINY_XLA_DEFAULTS": "1"}),
             "fast_compile": (fast_compile(), {})}, as_json)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", default="")
    lg = sub.add_parser("log")
    lg.add_argument("log")
    lg.add_argument("--label", default="")
    lg.add_argument("--commit", required=True, help="the commit the logged run tested")
    f = sub.add_parser("flags")
    f.add_argument("selection", nargs="*", default=["tests/training/test_heal.py"])
    f.add_argument("-k", default="every_kind")
    f.add_argument("--reps", type=int, default=3)
    f.add_argument("--json", action="store_true")
    rm = sub.add_parser("real-model")
    rm.add_argument("selection", nargs="*", default=["tests/test_nnx.py::test_flax_nnx_notebook_runs",
                                                     "tests/basis/test_basis.py::test_smollm2_basis_sharing_small_calibration"])
    rm.add_argument("--reps", type=int, default=5)
    rm.add_argument("--json", action="store_true")
    t = sub.add_parser("tiny")
    t.add_argument("selection", nargs="*", default=["tests/io/families/test_compress_families.py", "-m", "tiny"])
    t.add_argument("--reps", type=int, default=5)
    t.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "real-model":
        real_model(args.selection, args.reps, args.json)
    elif args.cmd == "tiny":
        tiny(args.selection, args.reps, args.json)
    elif args.cmd == "run":
        run_ci(args.label)
    elif args.cmd == "log":
        res = parse_log(Path(args.log).read_text())
        append_row(RESULTS / "suite.jsonl", {"label": args.label, "tested_commit": args.commit, **res},
                   "benchmarks.suite")
    else:
        flags([*args.selection, "-k", args.k], args.reps, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
