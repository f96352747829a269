"""PostShare on SmolLM2-135M at ratio 0.3: base, DirectShare, PostShare (after tying),
DirectShare+PostShare, and the control (plain fine-tune without the penalty, then DirectShare
on the same pairs). Every trained run uses the same data, budget, optimizer and seed.

Training on DATA:train, DATA being --data (books by default; wiki needs the BIG-bench sdist, see
docs/models.md). PPL on a fixed subset: the first W windows of S tokens of DATA:test (wiki adds
canterbury; books holds the Canterbury texts, so it is not held out there) (METHODS.md protocol).
Results go to benchmarks/results/NAME.json (NAME postshare_DATA; wiki: postshare), a markdown
table (NAME.md) and curves (NAME_curves.png, NAME_lw.png). Each finished piece is cached in the
JSON, so a re-run skips what is done.

  python -m experiments.postshare --steps 20 --seq-len 128 --lr 1e-3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import stamp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def corpora(data: str) -> tuple[str, ...]:
    return ("wiki:test", "canterbury") if data == "wiki" else (f"{data}:test",)
MODES = ("postshare", "direct+post", "plain")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--dtype", default="fp32", help="compute dtype (fp32 on CPU: no bf16 speed-up there)")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--data", default="books", help="corpus: training on DATA:train, PPL on DATA:test")
    ap.add_argument("--run-root", default=None, help="default runs/postshare_exp (wiki) or runs/postshare_exp_DATA")
    ap.add_argument("--name", default=None, help="default postshare (wiki) or postshare_DATA")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of the trained runs")
    ap.add_argument("--report-only", action="store_true", help="rebuild table and plots from the JSON")
    ap.add_argument("--seed-from", help="a results JSON whose base / directshare PPL to reuse (same eval setup)")
    args = ap.parse_args()
    tag = "" if args.data == "wiki" else f"_{args.data}"  # the wiki results keep their names
    args.name = args.name or f"postshare{tag}"
    args.run_root = args.run_root or str(ROOT / "runs" / f"postshare_exp{tag}")

    import jaxshare as js
    from jaxshare import perplexity_of_windows
    from jaxshare.headshare.directshare import direct_share  # on the params pytree this study trains
    from jaxshare.training.config import build_config
    from jaxshare.training.trainer import Trainer

    out_json = RESULTS / f"{args.name}.json"
    res = json.loads(out_json.read_text()) if out_json.is_file() else {}
    res.update(setup={k: v for k, v in vars(args).items()}, model="smollm2-135m",
               eval=f"first {args.windows} windows x {args.eval_seq_len} tokens of each corpus")
    res.setdefault("ppl", {})
    if args.seed_from:
        old = json.loads(Path(args.seed_from).read_text())
        if old["eval"] == res["eval"] and old["setup"]["ratio"] == args.ratio:
            for k in ("base", "directshare"):
                res["ppl"].setdefault(k, old["ppl"][k])
    res.setdefault("runs", {})

    def save():
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps({**res, "provenance": stamp("experiments.postshare")}, indent=2) + "\n")

    if args.report_only:
        res["setup"] = json.loads(out_json.read_text())["setup"]
        report(res, args.name)
        save()
        return

    m = js.load("smollm2-135m", "fp32")
    windows = {c: js.token_windows(js.token_ids(c, m.tokenizer), args.eval_seq_len, args.windows) for c in corpora(args.data)}

    def ppl_all(params, label):
        if label not in res["ppl"]:
            res["ppl"][label] = {c: perplexity_of_windows(params, m.cfg, w, 4, desc=label)["ppl"] for c, w in windows.items()}
            save()
            print(label, res["ppl"][label], flush=True)

    ppl_all(m.params, "base")
    shared, info = direct_share(m.params, m.cfg, args.ratio, "qk")
    res["accounting"] = info["report"]
    ppl_all(shared, "directshare")
    del shared

    for mode in args.modes.split(","):
        label = {"postshare": "postshare", "direct+post": "directshare+postshare", "plain": "plain+directshare"}[mode]
        if label in res["ppl"]:
            continue
        run_dir = Path(args.run_root) / mode.replace("+", "_")
        tc = build_config({"mode": mode, "run_dir": str(run_dir), "steps": args.steps, "seq_len": args.seq_len,
                           "batch_size": args.batch_size, "lr": args.lr, "gamma": args.gamma, "ratio": args.ratio,
                           "warmup_steps": max(1, args.steps // 10), "eval_every": 0, "checkpoint_every": 0,
                           "export_hf": False, "dtype": args.dtype, "data": f"{args.data}:train",
                           "eval_data": f"{args.data}:validation",
                           "eval_windows": 4, "progress": False})
        if (run_dir / "checkpoints").exists():
            import shutil

            shutil.rmtree(run_dir)  # an unfinished earlier attempt: start the run over
        t0 = time.perf_counter()
        tr = Trainer(tc, overwrite=True)  # a rerun replaces this script's earlier run of the mode
        result = tr.run()
        result["wall_s"] = time.perf_counter() - t0
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        result["curve"] = [{k: r[k] for k in ("step", "loss", "ce", "lw", "tok_per_s")} for r in rows if "loss" in r]
        res["runs"][mode] = result
        if mode != "direct+post":
            ppl_all(tr.trained, f"{mode} (dense, before tying)")
        ppl_all(tr.shared, label)
        del tr

    report(res, args.name)
    save()


def report(res: dict, name: str) -> None:
    from jaxshare import plots

    p = res["ppl"]
    data = res["setup"].get("data", "wiki")  # the results before --data were all wiki
    CORPORA = corpora(data)
    lines = [f"SmolLM2-135M, ratio {res['setup']['ratio']}, {res['eval']}; training: {data}:train, "
             f"{res['setup']['steps']} steps x {res['setup']['batch_size']} x {res['setup']['seq_len']} tokens, "
             f"lr {res['setup']['lr']}, gamma {res['setup']['gamma']}\n",
             "| model | " + " | ".join(CORPORA) + " |", "| --- |" + " --- |" * len(CORPORA)]
    for label, v in p.items():
        lines.append(f"| {label} | " + " | ".join(f"{v[c]:.3f}" for c in CORPORA) + " |")
    rec = {}
    if "postshare" in p:
        for c in CORPORA:
            lost = p["directshare"][c] - p["base"][c]
            rec[c] = (p["directshare"][c] - p["postshare"][c]) / lost if lost > 0 else float("nan")
        lines.append("\nPostShare recovery of the PPL lost by DirectShare: " +
                     ", ".join(f"{c} {r:.1%}" for c, r in rec.items()))
    ctrl = {}
    if "postshare" in p and "plain+directshare" in p:  # the part the penalty earns over the same fine-tune
        for c in CORPORA:
            lost = p["directshare"][c] - p["base"][c]
            ctrl[c] = (p["plain+directshare"][c] - p["postshare"][c]) / lost if lost > 0 else float("nan")
        lines.append("Of which beyond the control (plain fine-tune + DirectShare): " +
                     ", ".join(f"{c} {r:.1%}" for c, r in ctrl.items()))
    res["recovery"], res["recovery_beyond_control"] = rec, ctrl
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    runs = res.get("runs", {})
    if runs:
        n = max(len(r["curve"]) for r in runs.values())
        xs = list(range(1, n + 1))
        series = {f"{mode} CE": [c["ce"] for c in r["curve"]] for mode, r in runs.items()}
        plots.lines(xs, series, RESULTS / f"{name}_curves.png", f"training CE ({data}:train)", "step", "CE")
        lw = {f"{mode} L_w": [c["lw"] for c in r["curve"]] for mode, r in runs.items() if mode != "direct+post"}
        if lw:
            plots.lines(xs, lw, RESULTS / f"{name}_lw.png", "pair distance L_w", "step", "L_w")


if __name__ == "__main__":
    main()
