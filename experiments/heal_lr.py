"""Is KD's loss to cross-entropy on the pruned students a learning-rate effect? (issue 24)

experiments/heal.py heals every arm at one lr fixed before any run (2e-4), and there pure KD loses
to CE on every compensated pruned student. The lr was never tuned for either loss, and one that
suits CE need not suit KD (AdamW normalises the gradient's scale, not its direction or noise: KD's
target is a full distribution, CE's one token). This check heals one student with CE and KD at
several lrs, the same tokens and schedule as experiments/heal.py, and scores them on the first
--windows windows of wiki:validation, never on wiki:test: the held-out split of experiments/heal.py
plays no part in what is concluded here.

  python -m experiments.heal_lr [--student prune] [--budget 0.1] [--arms ce@2e-4,kd@2e-4,ce@6e-4,kd@6e-4]
  python -m experiments.heal_lr --report      # experiments/results/heal_lr.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from experiments import heal

ROWS = heal.RESULTS / "heal_lr.jsonl"
SPLIT = "wiki:validation"


def arms(spec: str) -> list[tuple[str, float]]:
    out = []
    for a in spec.split(","):
        name, _, lr = a.partition("@")
        if name not in ("ce", "kd", "kd+ce") or not lr:
            raise SystemExit(f"--arms: '{a}' is not HEAL@LR with HEAL one of ce, kd, kd+ce")
        out.append((name, float(lr)))
    return out


def run(args) -> None:
    heal.RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(ln) for ln in ROWS.read_text().splitlines()] if ROWS.is_file() else []
    have = {(r["student"], r["budget"], r["heal"], r.get("lr"), r["tokens_asked"]) for r in rows}
    todo = [("dense", None, "none", None), (args.student, args.budget, "none", None)] + \
        [(args.student, args.budget, h, lr) for h, lr in arms(args.arms)]
    for student, budget, h, lr in todo:
        tokens = 0 if h == "none" else args.tokens
        if (student, budget, h, lr, tokens) in have:
            continue
        print(f"== {student} {budget} {h} lr {lr}", file=sys.stderr, flush=True)
        st = heal.stamp("experiments.heal_lr")
        args.lr = lr if lr is not None else args.lr
        try:
            row = heal.child("base" if h == "none" else "arm", args, student=student, budget=budget,
                             heal=None if h == "none" else h, eval_data=SPLIT)
        except subprocess.CalledProcessError as e:
            row = {"student": student, "budget": budget, "heal": h, "error": f"exit {e.returncode}"}
        row.update(lr=lr, tokens_asked=tokens, eval_data=SPLIT, **st)
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")


def report() -> list[str]:
    rows = [json.loads(ln) for ln in ROWS.read_text().splitlines() if ln.strip()]
    lines = []
    dense = next((r for r in rows if r["student"] == "dense" and "final" in r), None)
    for student, budget in dict.fromkeys((r["student"], r["budget"]) for r in rows if r["student"] != "dense"):
        mine = [r for r in rows if (r["student"], r["budget"]) == (student, budget) and "final" in r]
        base = next((r for r in mine if r["heal"] == "none"), None)
        lines += [f"{student} -{budget:.0%}, healed on the same tokens of wiki:train; scored on {SPLIT}, "
                  f"{len(mine[0]['final']['window_nll'])} windows of 512 tokens"
                  + (f"; dense PPL {dense['final']['ppl']:.2f}" if dense else ""), "",
                  "| heal | lr | tokens | PPL [95% CI] | recovered (nats) |", "| --- | --- | --- | --- | --- |"]
        for r in sorted(mine, key=lambda r: (r["heal"] != "none", r["heal"], r["lr"] or 0)):
            f, rec = r["final"], "-"
            if dense and base and r["heal"] != "none":
                rec = f"{(base['final']['nll'] - f['nll']) / (base['final']['nll'] - dense['final']['nll']):.1%}"
            lines.append(f"| {r['heal']} | {r['lr'] if r['lr'] is not None else '-'} | {r['tokens']} | "
                         f"{f['ppl']:.2f} [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] | {rec} |")
        best = {h: min((r for r in mine if r["heal"] == h), key=lambda r: r["final"]["nll"], default=None)
                for h in ("ce", "kd", "kd+ce")}
        lines += ["", "Paired over the same windows (mean per-window NLL difference, 95% paired bootstrap):", ""]
        pairs = [(k, c) for k in mine if k["heal"] != "none" and k["heal"] != "ce"
                 for c in mine if c["heal"] == "ce" and c["lr"] == k["lr"]]
        if best["ce"] is not None:
            pairs += [(best[h], best["ce"]) for h in ("kd", "kd+ce") if best[h] is not None]
        for k, c in _unique(pairs):
            d, lo, hi = heal.paired_diff(k, c)
            verdict = f"{k['heal']} better" if hi < 0 else "ce better" if lo > 0 else "no difference outside the noise"
            lines.append(f"- {k['heal']} lr {k['lr']:g} ({k['final']['ppl']:.2f}) - ce lr {c['lr']:g} "
                         f"({c['final']['ppl']:.2f}) = {d.mean():+.4f} nats per token [{lo:+.4f}, {hi:+.4f}] "
                         f"({k['heal']} lower on {int((d < 0).sum())} of {len(d)}): {verdict}")
        lines.append("")
    s = rows[-1]
    lines += [f"commits {', '.join(sorted({r['commit'][:10] for r in rows}))}, {s['machine']}, python {s['python']}, "
              f"jax {s['jax']}; command: `{s['command']}`"]
    (heal.RESULTS / "heal_lr.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return lines


def _unique(pairs):
    seen = set()
    for k, c in pairs:
        key = (k["heal"], k["lr"], c["lr"])
        if key not in seen:
            seen.add(key)
            yield k, c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="prune")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--arms", default="ce@2e-4,kd@2e-4,ce@6e-4,kd@6e-4")
    ap.add_argument("--tokens", type=int, default=50000)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--eval-tokens", type=int, default=1 << 30, help="tokens between evaluations (default: at the end)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    args.lr, args.lora_lr, args.rank = 2e-4, 1e-3, 16  # what heal.child passes on; lr is set per arm
    args.data = "wiki"  # its rows were measured there (heal.py's default is books)
    if args.report:
        report()
    else:
        run(args)
        report()


if __name__ == "__main__":
    main()
