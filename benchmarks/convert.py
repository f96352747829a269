"""Conversion cost: wall time and peak RSS of `jaxshare convert` on the SmolLM2 GGUF and on an HF
safetensors directory, beside transformers' own loading of the same files, each in a fresh process.

    python -m benchmarks.convert [--reps 5] [--json]

Every case runs once per round, in the same order, for --reps rounds (so load on a shared machine
falls on all of them alike); each records the median, min and max wall time and peak RSS over the
rounds. Peak RSS is the child's VmHWM, read by the child itself at exit (ru_maxrss would carry the
parent's peak across fork+exec). `baseline` is a process that only imports the same libraries,
so `net` = peak - baseline is what the conversion itself costs.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

IMPORTS = "import jax, jax.numpy, transformers, orbax.checkpoint, jaxshare.io.load, jaxshare.io.native"


HWM = """
import re
print("VMHWM", re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def measure(code: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + "\n" + HWM], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {code}\n{proc.stderr[-2000:]}")
    kib = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("VMHWM")))
    return {"wall_s": time.perf_counter() - t0, "peak_rss_bytes": kib * 1024}


def summary(runs: list[dict]) -> dict:
    wall = [r["wall_s"] for r in runs]
    rss = [r["peak_rss_bytes"] for r in runs]
    return {"wall_s": statistics.median(wall), "wall_min_s": min(wall), "wall_max_s": max(wall), "wall_times_s": wall,
            "peak_rss_bytes": int(statistics.median(rss)), "peak_rss_min_bytes": min(rss),
            "peak_rss_max_bytes": max(rss), "reps": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5, help="rounds; each runs every case once")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from jaxshare.io import registry
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model
    from jaxshare.core.params import count_params

    gguf = registry.registered_gguf("smollm2-135m")
    m = load_model("smollm2-135m")
    n_params = count_params(m.params)
    fp32_bytes = 4 * n_params
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export_hf(m.params, m.cfg, Path(tmp) / "hf", m.tokenizer)
        del m
        cases = {
            "baseline_imports": f"{IMPORTS}",
            "jaxshare_convert_gguf": f"{IMPORTS}\nfrom jaxshare.cli.main import main\n"
                                     f"main(['convert', {str(gguf)!r}, {tmp + '/n1'!r}])",
            "jaxshare_convert_hf": f"{IMPORTS}\nfrom jaxshare.cli.main import main\n"
                                   f"main(['convert', {str(hf_dir)!r}, {tmp + '/n2'!r}])",
            "transformers_load_gguf": "import torch, transformers\n"
                                      f"transformers.AutoModelForCausalLM.from_pretrained({str(gguf.parent)!r}, "
                                      f"gguf_file={gguf.name!r}, dtype=torch.float32)",
            "transformers_load_hf": "import torch, transformers\n"
                                    f"transformers.AutoModelForCausalLM.from_pretrained({str(hf_dir)!r}, "
                                    "dtype=torch.float32)",
            "baseline_torch_imports": "import torch, transformers, transformers.models.llama.modeling_llama",
        }
        runs: dict = {name: [] for name in cases}
        for i in range(args.reps):
            for name, code in cases.items():
                runs[name].append(measure(code))
                r = runs[name][-1]
                print(f"round {i + 1}/{args.reps} {name}: {r['wall_s']:.1f} s, peak RSS "
                      f"{r['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
            for out in ("n1", "n2"):  # ours: the next round converts into the same place
                shutil.rmtree(Path(tmp) / out, ignore_errors=True)
    res = {name: summary(rs) for name, rs in runs.items()}
    base = res["baseline_imports"]["peak_rss_bytes"]
    tbase = res["baseline_torch_imports"]["peak_rss_bytes"]
    for name in ("jaxshare_convert_gguf", "jaxshare_convert_hf"):
        r = res[name]
        r["rss_over_fp32_bytes"] = r["peak_rss_bytes"] / fp32_bytes
        r["net_rss_over_fp32_bytes"] = (r["peak_rss_bytes"] - base) / fp32_bytes
    for name in ("transformers_load_gguf", "transformers_load_hf"):
        r = res[name]
        r["rss_over_fp32_bytes"] = r["peak_rss_bytes"] / fp32_bytes
        r["net_rss_over_fp32_bytes"] = (r["peak_rss_bytes"] - tbase) / fp32_bytes
    for src in ("gguf", "hf"):
        res[f"ratio_rss_{src}"] = res[f"jaxshare_convert_{src}"]["peak_rss_bytes"] / \
            res[f"transformers_load_{src}"]["peak_rss_bytes"]
    write_result("convert", {"params": n_params, "fp32_param_bytes": fp32_bytes, **res}, args.json)


if __name__ == "__main__":
    main()
