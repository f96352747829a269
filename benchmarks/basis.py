"""Basis Sharing costs: (1) group-SVD wall time and peak RSS, eigendecomposition path vs the
concatenated SVD, at a shape where n * d_out >> d_in, each in a fresh process; (2) prefill
throughput of the compressed SmolLM2-135M vs dense at CR 0.2 and 0.5.

    python -m benchmarks.basis [--json] [--n 4 --d-in 1024 --d-out 11008] [--batch 4 --seq-len 512] [--reps 5]

Both parts take --reps rounds after a warm-up, the sides taking turns within each round (each SVD
path in a fresh process per round), and report the median and min-max. Peak RSS is the child's VmHWM; `inputs_only` is a child that builds the same inputs (float64
weights and whitening factor) and stops, so `net` = peak - inputs_only is what the path costs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


from benchmarks.common import RESULTS, timeit_interleaved, write_result

SETUP = """
import numpy as np
from jaxshare.basis.factor import group_factor, rank
rng = np.random.default_rng(0)
n, d_in, d_out = {n}, {d_in}, {d_out}
ws = [rng.standard_normal((d_in, d_out)) / np.sqrt(d_in) for _ in range(n)]
x = rng.standard_normal((2 * d_in, d_in))
s = np.linalg.cholesky(x.T @ x).T
k = rank(n, d_in, d_out, 0.2)
"""
HWM = """
import re
print("VMHWM", re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def measure(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + "\n" + HWM], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-2000:]}")
    out = dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line[:5] in ("VMHWM", "SECON"))
    return {"wall_s": time.perf_counter() - t0, "path_s": float(out.get("SECONDS", "nan")),
            "peak_rss_bytes": int(out["VMHWM"]) * 1024}


def svd_paths(n: int, d_in: int, d_out: int, reps: int) -> dict:
    setup = SETUP.format(n=n, d_in=d_in, d_out=d_out)
    timed = "import time\nt0 = time.perf_counter()\nb, c = group_factor(ws, s, k, {p!r})\n" \
            "print('SECONDS', time.perf_counter() - t0)"
    res = {"inputs_only": measure(setup)}
    runs: dict = {"concat": [], "eig": []}
    for i in range(reps):
        for path in runs:
            runs[path].append(measure(setup + timed.format(p=path)))
            r = runs[path][-1]
            print(f"round {i + 1}/{reps} {path}: {r['path_s']:.1f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
    for path, rs in runs.items():
        t = [r["path_s"] for r in rs]
        peak = int(statistics.median(r["peak_rss_bytes"] for r in rs))
        res[path] = {"path_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "times_s": t, "reps": reps,
                     "peak_rss_bytes": peak, "peak_rss_max_bytes": max(r["peak_rss_bytes"] for r in rs),
                     "net_rss_bytes": peak - res["inputs_only"]["peak_rss_bytes"]}
    res["eig_over_concat_peak_rss"] = res["eig"]["peak_rss_bytes"] / res["concat"]["peak_rss_bytes"]
    res["eig_over_concat_net_rss"] = res["eig"]["net_rss_bytes"] / max(res["concat"]["net_rss_bytes"], 1)
    res["eig_over_concat_time"] = res["eig"]["path_s"] / res["concat"]["path_s"]
    # a ratio counts only where the two sides' ranges do not overlap
    res["time_outside_noise"] = res["eig"]["max_s"] < res["concat"]["min_s"] or res["concat"]["max_s"] < res["eig"]["min_s"]
    from jaxshare.basis.factor import rank

    res["shape"] = {"n": n, "d_in": d_in, "d_out": d_out, "rank": rank(n, d_in, d_out, 0.2)}
    return res


def prefill(batch: int, seq_len: int, calib_windows: int, calib_seq_len: int, reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxshare.basis.compress import compress
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.core.model import forward
    from jaxshare.io.load import load_model

    m = load_model("smollm2-135m")
    grams, info = calibrate(m, "books:train", calib_windows, calib_seq_len)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, m.cfg.vocab_size, (batch, seq_len)), jnp.int32)
    res = {"batch": batch, "seq_len": seq_len, "calibration": info}
    models = {"dense": m.params}
    for r in (0.2, 0.5):
        models[f"basis_cr{r}"] = compress(m.params, m.cfg, grams, r, 2, progress=False)[0]
    ts = timeit_interleaved({name: (lambda p=params: jax.block_until_ready(forward(p, m.cfg, toks)))
                             for name, params in models.items()}, reps=reps)
    for name, t in ts.items():
        res[name] = {**t, "tokens_per_s": batch * seq_len / t["median_s"]}
        print(f"{name}: {res[name]['tokens_per_s']:.0f} tok/s (median of {reps})", file=sys.stderr, flush=True)
    d = ts["dense"]
    for r in (0.2, 0.5):
        b = ts[f"basis_cr{r}"]
        res[f"speed_ratio_cr{r}"] = res[f"basis_cr{r}"]["tokens_per_s"] / res["dense"]["tokens_per_s"]
        res[f"outside_noise_cr{r}"] = b["max_s"] < d["min_s"] or d["max_s"] < b["min_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--d-in", type=int, default=1024)
    ap.add_argument("--d-out", type=int, default=11008)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=64, help="reuses the sweep's cached statistics")
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--skip-prefill", action="store_true")
    ap.add_argument("--reuse-group-svd", action="store_true", help="keep group_svd from the existing results file")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds after a warm-up, both parts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    prev = RESULTS / "basis.json"
    if args.reuse_group_svd and prev.is_file():
        res = {"group_svd": {**json.loads(prev.read_text())["group_svd"], "reused_from_previous_run": True}}
    else:
        res = {"group_svd": svd_paths(args.n, args.d_in, args.d_out, args.reps)}
    if not args.skip_prefill:
        res["prefill"] = prefill(args.batch, args.seq_len, args.calib_windows, args.calib_seq_len, args.reps)
    g = res["group_svd"]
    print(f"eig/concat: peak RSS {g['eig_over_concat_peak_rss']:.2f}x, net {g['eig_over_concat_net_rss']:.2f}x, "
          f"time {g['eig_over_concat_time']:.2f}x", file=sys.stderr)
    if "prefill" in res:
        p = res["prefill"]
        print(f"prefill vs dense: CR 0.2 {p['speed_ratio_cr0.2']:.2f}x, CR 0.5 {p['speed_ratio_cr0.5']:.2f}x",
              file=sys.stderr)
    write_result("basis", res, args.json)


if __name__ == "__main__":
    main()
