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


def write_result(name: str, obj: dict, as_json: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    obj = {"benchmark": name, "machine": machine(), "commit": commit, "argv": sys.argv[1:],
           "command": " ".join(["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]), **obj}
    path.write_text(json.dumps(obj, indent=2) + "\n")
    if as_json:
        print(json.dumps(obj))
    else:
        print(f"wrote {path}", file=sys.stderr)
    return path
