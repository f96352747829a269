"""Shared benchmark plumbing: timing, machine description, JSON results."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# Result folders: a run that writes its own results is not a dirty checkout for its stamp.
RESULT_DIRS = ("benchmarks/results", "experiments/results")
VERSIONED = ("jax", "jaxlib", "numpy", "optax", "orbax-checkpoint", "transformers", "torch", "lm-eval")


def machine() -> dict:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def accelerator() -> str:
    import jax

    d = jax.devices()[0]
    return "none (CPU)" if d.platform == "cpu" else f"{len(jax.devices())} x {d.device_kind}"


def _checkout() -> dict:
    # porcelain lines are "XY path"; _git strips the output, which takes the first line's leading
    # space (" M path" -> "M path"), so the path is read after the status field, not at column 3
    lines = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    changed = [path for path in (ln.split(maxsplit=1)[-1] for ln in lines if ln.strip())
               if not path.startswith(RESULT_DIRS)]
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(changed)}


# Taken when a run starts: a commit made while it runs is not the code it measured.
START = _checkout()


def made_at(path) -> Path:
    """Where the commit that made `path` (a student, a run dir an experiment keeps) is recorded."""
    path = Path(path)
    return path.with_name(path.name + ".made_at.json")


def mark_made(path) -> None:
    """Record beside `path`, as this process starts to make it, the checkout it runs from."""
    mark = made_at(path)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({**START, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}) + "\n")


def check_reuse(path, result: str, root: Path = ROOT) -> None:
    """A rerun may reuse what an earlier run made (a student, a finished or killed training run) only
    where that code still computes what `result` (a results file, relative to the repository)
    measures: made from a clean checkout, and none of the study's measured files changed since
    (benchmarks/stale.py's rule). Otherwise the new row would carry the old code's work under the
    new commit, so this exits with one line naming `path`."""
    from benchmarks import stale

    path = Path(path).absolute()
    # the nearest mark: a checkpoint inside a run dir was made with it
    mark = next((made_at(p) for p in (path, *path.parents) if p.name and made_at(p).is_file()), made_at(path))
    fix = f"move {mark.with_name(mark.name.removesuffix('.made_at.json'))} aside (and {mark.name}) to make it afresh"
    try:
        made = json.loads(mark.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"{path} records no commit that made it (no readable {mark.name} beside it or a folder "
                         f"above it): {fix}") from None
    paths = stale.study_of(result)
    if paths is None:
        raise SystemExit(f"{result} is not a study benchmarks/stale.py knows, so reuse of {path} cannot be checked")
    changed = None if made.get("dirty") else stale.changed_since(made.get("commit", ""), paths, root)
    if changed is None:
        raise SystemExit(f"{path} was made from {'a dirty checkout' if made.get('dirty') else 'an unknown commit'} "
                         f"({mark}): {fix}")
    if changed:
        raise SystemExit(f"{path} was made at {made['commit'][:10]}, before changes to {len(changed)} file(s) "
                         f"{result} measures ({', '.join(sorted(changed)[:3])}): {fix}")


def claim(path, result: str) -> None:
    """Before a run makes or reuses `path`: check_reuse where it holds earlier work, mark_made where
    it does not exist yet."""
    if Path(path).exists():
        check_reuse(path, result)
    else:
        mark_made(path)


def stamp(module: str | None = None) -> dict:
    """Where a result came from: the commit the run started from and whether the checkout differed
    from it (outside the result folders), the date, the machine, the library versions and the exact
    command. `python -m benchmarks.stale` reads the commit to tell which results the code has moved
    past."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("jaxshare", *VERSIONED):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    module = module or f"{Path(sys.argv[0]).parent.name}.{Path(sys.argv[0]).stem}"
    return {**START, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": {**machine(), "accelerator": accelerator()}, "versions": versions,
            "command": " ".join(["python", "-m", module, *sys.argv[1:]])}


_STAMP: dict = {}


def append_row(path, row: dict, module: str | None = None) -> None:
    """Append one JSON row to a results file, stamped (stamp() of this process, taken once)."""
    if not _STAMP:
        _STAMP.update(stamp(module))
    with Path(path).open("a") as f:
        f.write(json.dumps({**row, "provenance": _STAMP}) + "\n")


def timeit(fn, reps: int, warmup: int = 1) -> dict:
    """Median and min wall seconds of fn() (fn must block until its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": reps}


def timeit_interleaved(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Wall seconds of each fns[name]() (each must block until its work is done), the sides taking
    turns within every repetition so that load on a shared machine falls on all of them alike:
    {name: {median_s, min_s, max_s, times_s, reps}}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "times_s": t, "reps": reps}
            for k, t in times.items()}


def write_result(name: str, obj: dict, as_json: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    st = stamp(f"benchmarks.{Path(sys.argv[0]).stem}")
    # a resumed result carries the stamp of the run it continues: this process's stamp replaces it
    obj = {"benchmark": name, **st, "argv": sys.argv[1:],
           **{k: v for k, v in obj.items() if k not in st and k not in ("benchmark", "argv")}}
    path.write_text(json.dumps(obj, indent=2) + "\n")
    if as_json:
        print(json.dumps(obj))
    else:
        print(f"wrote {path}", file=sys.stderr)
    return path
