"""Does a heal on books carry to other text? The healed checkpoints scored on a text none of them saw.

`experiments.heal --data books` trains on books:train and scores books:test, which come from the same
books: its control (the dense model trained with ce on the same tokens) showed that much of a heal's
gain there is the books themselves. This scores the same checkpoints on another text (by default
botchan, a novel outside the books, from the sentencepiece sdist), on the same windows for every
model, with a bootstrap 95% interval of each PPL and, for each model, its mean per-window NLL minus
the untrained dense model's with a paired bootstrap 95% interval.

  python -m experiments.heal_transfer [--corpus botchan] [--windows 32] [--seq-len 512]
      [--models NAME=PATH,...]   # default: the dense model, the -20% pruned student and its books
                                 # heals at 50k and 200k tokens, the 200k control, the -20% plan
                                 # student and its 50k heal (runs/heal_books/)

Writes experiments/results/heal_transfer_books.json (stamped) and its table heal_transfer_books.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmarks import common
from experiments.heal import ROOT, TEACHER, held_out, score
from experiments.prune import paired

RESULTS = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "heal_books"
MODELS = {
    "dense (not trained)": TEACHER,
    "prune -20% (not healed)": str(RUNS / "students" / "prune_0.2"),
    "prune -20% + ce 50k": str(RUNS / "prune_0.2_ce_50000" / "final"),
    "prune -20% + ce 200k": str(RUNS / "prune_0.2_ce_200000" / "final"),
    "dense + ce 200k (the control)": str(RUNS / "dense_ce_200000" / "final"),
    "plan -20% (not healed)": str(RUNS / "students" / "plan_0.2"),
    "plan -20% + ce 50k": str(RUNS / "plan_0.2_ce_50000" / "final"),
}


def parse_models(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"--models wants NAME=PATH,..., got {item!r}")
        out[name] = path
    return out


def report(res: dict) -> str:
    rows = res["models"]
    base = rows[0]
    lines = [f"PPL on {res['corpus']} ({res['windows']} windows of {res['seq_len']} tokens, the same for every "
             f"model; none of them trained on it), and each model's mean per-window NLL minus the "
             f"{base['name']} model's, with a paired bootstrap 95% interval:", "",
             f"| model | params | PPL [95% CI] | minus {base['name']}, nats per token [95% CI] | lower on |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        p = r.get("vs_first")
        diff = "-" if p is None else f"{p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]"
        lower = "-" if p is None else f"{p['lower_on']} of {p['of']}"
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['ppl']:.2f} [{r['ci95'][0]:.2f}, "
                     f"{r['ci95'][1]:.2f}] | {diff} | {lower} |")
    lines += ["", f"From `experiments/results/heal_transfer_books.json`: commit {res['commit'][:10]}, "
                  f"{res['machine']['cpu']}; command: `{res['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="botchan", help="the held-out text (a named corpus; not books)")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--models", type=parse_models, default=MODELS, help="NAME=PATH,... (the first is the reference)")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from the JSON")
    args = ap.parse_args(argv)
    out = RESULTS / "heal_transfer_books.json"
    if args.report:
        out.with_suffix(".md").write_text(report(json.loads(out.read_text())))
        return 0
    missing = [f"{n} ({p})" for n, p in args.models.items() if p != TEACHER and not Path(p).exists()]
    if missing:
        print(f"heal_transfer: missing checkpoints: {', '.join(missing)} (run experiments.heal --data books "
              "first)", file=sys.stderr)
        return 1
    from jaxshare.io.load import load_model

    windows = held_out(load_model(TEACHER).tokenizer, args.seq_len, args.windows, args.corpus)
    if len(windows) < args.windows:
        print(f"heal_transfer: {args.corpus} has {len(windows)} windows of {args.seq_len} tokens, not "
              f"{args.windows}", file=sys.stderr)
        return 1
    rows = []
    for i, (name, path) in enumerate(args.models.items(), 1):
        print(f"[{i}/{len(args.models)}] {name}: {path}", file=sys.stderr, flush=True)
        rows.append({"name": name, "path": path, **score(path, windows)})
        if len(rows) > 1:
            mean, lo, hi, lower = paired(rows[-1], rows[0])
            rows[-1]["vs_first"] = {"mean": mean, "ci95": [lo, hi], "lower_on": lower, "of": len(windows)}
        print(f"    ppl {rows[-1]['ppl']:.2f}", file=sys.stderr, flush=True)
    res = {**common.stamp("experiments.heal_transfer"), "corpus": args.corpus, "windows": len(windows),
           "seq_len": args.seq_len, "models": rows}
    out.write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(report(res))
    print(report(res))
    return 0 if all(math.isfinite(r["ppl"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
