"""Attention-degeneration analysis: the jit analysis inside the layer scan vs the straightforward
way (the notebook way): materialize every layer's maps [L, B, H, T, T], then a numpy loop over
(layer, head) averaging over the batch and taking an SVD. Same model, same tokens, same run.

Each side runs in a fresh subprocess so peak RSS is its own (ru_maxrss); both load the same model
first, so the model's bytes are in both peaks and also reported separately (RSS after loading).
Times exclude model loading; "first" includes compilation, "warm" is a second call.

  python -m benchmarks.degeneration [--json] [--batch 8] [--seq-len 512]   (the CLI defaults)
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import write_result

TAU = 0.9


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tokens(m, batch: int, seq_len: int) -> np.ndarray:
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_windows, tokenize_corpus

    return token_windows(tokenize_corpus(m.tokenizer, load_corpus("books:validation")), seq_len, batch)


def naive(params, cfg, tokens):
    """Materialized maps, then one SVD per (layer, head) in numpy."""
    from jaxshare.eval.attention_maps import attention_maps

    maps = np.asarray(attention_maps(params, cfg, tokens))  # [L, B, H, T, T]
    L, _, H, T, _ = maps.shape
    rank, mass = np.zeros((L, H), np.int32), np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            a = maps[l, :, h].mean(0)
            e = np.linalg.svd(a, compute_uv=False) ** 2
            rank[l, h] = int(np.searchsorted(np.cumsum(e) / e.sum(), TAU - 1e-6) + 1)
            mass[l, h] = a.sum(0).max() / T
    return rank, mass


def jit(params, cfg, tokens):
    from jaxshare.inheritune.degeneration import analyze

    res = analyze(params, cfg, tokens, TAU)
    return res["rank"], res["mass"]


def worker(side: str, model: str, batch: int, seq_len: int) -> None:
    from jaxshare.io.load import load_model

    m = load_model(model, "fp32")
    tokens = _tokens(m, batch, seq_len)
    rss_model = _rss_mib()
    fn = {"naive": naive, "jit": jit}[side]
    t0 = time.perf_counter()
    rank, mass = fn(m.params, m.cfg, tokens)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rank, mass = fn(m.params, m.cfg, tokens)
    warm = time.perf_counter() - t0
    print(json.dumps({"side": side, "first_s": first, "warm_s": warm, "rss_after_model_mib": rss_model,
                      "peak_rss_mib": _rss_mib(), "rank": rank.tolist(), "mass": np.asarray(mass).tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=("naive", "jit"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.batch, args.seq_len)
        return
    out = {}
    for side in ("jit", "naive"):
        p = subprocess.run([sys.executable, "-m", "benchmarks.degeneration", "--worker", side, "--model", args.model, "--batch",
                            str(args.batch), "--seq-len", str(args.seq_len)], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"{side} worker failed:\n{p.stderr[-2000:]}")
        out[side] = json.loads(p.stdout.strip().splitlines()[-1])
    j, n = out["jit"], out["naive"]
    same_rank = float(np.mean(np.asarray(j["rank"]) == np.asarray(n["rank"])))
    mass_diff = float(np.max(np.abs(np.asarray(j["mass"]) - np.asarray(n["mass"]))))
    res = {"model": args.model, "batch": args.batch, "seq_len": args.seq_len, "tau": TAU,
           "jit": {k: v for k, v in j.items() if k not in ("rank", "mass", "side")},
           "naive": {k: v for k, v in n.items() if k not in ("rank", "mass", "side")},
           "speedup_warm": n["warm_s"] / j["warm_s"], "speedup_first": n["first_s"] / j["first_s"],
           "peak_rss_ratio": j["peak_rss_mib"] / n["peak_rss_mib"],
           "analysis_rss_ratio": (j["peak_rss_mib"] - j["rss_after_model_mib"]) /
                                 max(n["peak_rss_mib"] - n["rss_after_model_mib"], 1e-9),
           "rank_agreement": same_rank, "max_mass_diff": mass_diff,
           "targets": {"speedup": 10.0, "peak_rss_ratio": 0.5}}
    write_result("degeneration", res, args.json)
    if not args.json:
        print(f"jit {j['warm_s']:.2f} s warm ({j['first_s']:.2f} s first), peak RSS {j['peak_rss_mib']:.0f} MiB; "
              f"naive {n['warm_s']:.2f} s ({n['first_s']:.2f} s first), peak RSS {n['peak_rss_mib']:.0f} MiB; "
              f"speedup {res['speedup_warm']:.2f}x, peak RSS ratio {res['peak_rss_ratio']:.2f}; "
              f"ranks agree on {same_rank:.1%} of heads, max mass diff {mass_diff:.1e}")


if __name__ == "__main__":
    main()
