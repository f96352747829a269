"""Inheritune on SmolLM2-135M (30 layers): does the half-depth inherited model, trained, reach the
reference's held-out loss? Arms (same token budget, data, optimizer and seed for every trained arm):

  reference     30 layers, no training
  first_k       the first k layers + embeddings, final norm, LM head (Inheritune), before / after
  last_k        the last k layers instead (control)
  random_k      k freshly initialised layers with the reference's embeddings, norm, head (control)
  every_other   layers 0, 2, 4, ... (k of them; control)
  grow_<n>      first_k trained, then stages k+2, k+4, ... (the reference's next layers), each
                trained on the same per-stage budget, until the reference's loss or --grow-stages ends

Held-out loss: the first W windows of S tokens of DATA:validation (METHODS.md protocol); training
on DATA:train. DATA is --data: books by default (wiki needs the BIG-bench sdist, see docs/models.md).
Each finished arm is one JSON line in experiments/results/inheritune_books.jsonl (wiki:
inheritune.jsonl); a re-run skips finished arms and resumes a killed training run from its checkpoint
(an arm dir made before a change to the code this study measures is refused: move it aside).

  nohup nice -n 5 python -m experiments.inheritune --tokens 16384 > experiments/results/inheritune_books.log 2>&1 &
  python -m experiments.inheritune --report-only [--data books]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

from benchmarks.common import append_row, check_reuse, claim

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def done_arms(path: Path) -> dict:
    if not path.is_file():
        return {}
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return {r["arm"]: r for r in rows}


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    append_row(path, row, "experiments.inheritune")


def rel(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


def arm_layers(arm: str, k: int, L: int) -> list[int] | None:
    return {"first_k": list(range(k)), "last_k": list(range(L - k, L)),
            "every_other": list(range(0, L, 2))[:k], "random_k": list(range(k))}.get(arm)


def train_arm(init_dir: Path, run_dir: Path, args) -> dict:
    """Train a native checkpoint with the plain LM loss (the trainer's inheritune mode with a single
    stage), resuming a killed run from its last checkpoint."""
    from jaxshare.training.config import build_config
    from jaxshare.training.trainer import Trainer

    if (run_dir / "result.json").is_file():
        return json.loads((run_dir / "result.json").read_text())
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        return Trainer.resume(run_dir).run()
    data = args.data
    tc = build_config(dict(mode="plain", model=str(init_dir), data=f"{data}:train", eval_data=f"{data}:validation",
                           run_dir=str(run_dir), tokens=args.tokens, steps=0, seq_len=args.seq_len,
                           batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup, ratio=0.0,
                           dtype=args.dtype, eval_every=0, eval_windows=args.windows, checkpoint_every=4,
                           keep_checkpoints=1, progress=False, export_hf=False, mesh="data=1,fsdp=1"))
    return Trainer(tc, overwrite=True).run()  # an attempt killed before its first checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=16384, help="training tokens per arm (and per growth stage)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default="fp32", help="compute dtype (fp32 on CPU: bf16 is no faster there)")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of seq-len tokens")
    ap.add_argument("--arms", default="reference,first_k,last_k,random_k,every_other,grow")
    ap.add_argument("--grow-stages", type=int, default=2, help="growth stages after the first (k+2, k+4, ...)")
    ap.add_argument("--data", default="books", choices=("books", "wiki"),
                    help="corpus: training on DATA:train, held-out loss on DATA:validation")
    ap.add_argument("--run-root", help="default: runs/inheritune_exp (wiki), runs/inheritune_exp_DATA")
    ap.add_argument("--name", help="result name; default: inheritune (wiki), inheritune_DATA")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    tag = "" if args.data == "wiki" else f"_{args.data}"  # the wiki results keep their names
    args.name = args.name or f"inheritune{tag}"
    args.run_root = args.run_root or str(ROOT / "runs" / f"inheritune_exp{tag}")
    out = RESULTS / f"{args.name}.jsonl"
    if args.report_only:
        report(out, args.name)
        return

    import jax

    from jaxshare.core.params import count_params, init_params
    from jaxshare.eval.perplexity import perplexity_of_windows
    from jaxshare.inheritune.inherit import inherit
    from jaxshare.io.load import load_model
    from jaxshare.io.native import is_native, save_native
    from jaxshare.data.tokens import token_ids, token_windows

    m = load_model(args.model, "fp32")
    L = m.cfg.n_layers
    held = token_windows(token_ids(f"{args.data}:validation", m.tokenizer), args.seq_len, args.windows)
    setup = {k: v for k, v in vars(args).items() if k not in ("report_only",)}
    done = done_arms(out)
    root = Path(args.run_root)

    def loss(params, cfg):
        return perplexity_of_windows(params, cfg, held, 4, desc="eval")["nll"]

    if "reference" not in done:
        append(out, {"arm": "reference", "layers": L, "params": count_params(m.params), "tokens": 0,
                     "loss_before": loss(m.params, m.cfg), "setup": setup})
        done = done_arms(out)
    ref_loss = done["reference"]["loss_before"]
    print(f"reference loss {ref_loss:.4f} (ppl {math.exp(ref_loss):.2f})", flush=True)

    for arm in [a for a in args.arms.split(",") if a not in ("reference", "grow")]:
        if arm in done:
            continue
        t0 = time.time()
        claim(root / arm, rel(out))  # an arm dir from older code is not this rerun's work
        ids = arm_layers(arm, args.k, L)
        params, cfg, extra = inherit(m.params, m.cfg, args.k, dict(m.meta.get("extra", {})), layer_ids=ids)
        if arm == "random_k":
            fresh = init_params(cfg, jax.random.key(0))
            params = dataclasses.replace(params, layers=fresh.layers)
        init_dir = root / arm / "init"
        if not is_native(init_dir):
            save_native(init_dir, cfg, params, m.tokenizer, extra=extra, overwrite=True)
        before = loss(params, cfg)
        res = train_arm(init_dir, root / arm / "run", args)
        after = math.log(res["eval_ppl"])  # the trainer's final eval: the same held-out windows
        append(out, {"arm": arm, "layers": ids if arm != "random_k" else f"{args.k} random", "n_layers": cfg.n_layers,
                     "params": count_params(params), "tokens": res["tokens"], "loss_before": before,
                     "loss_after": after, "ref_loss": ref_loss, "seconds": time.time() - t0, "setup": setup})
        print(f"{arm}: loss {before:.4f} -> {after:.4f} (reference {ref_loss:.4f}) in {time.time() - t0:.0f}s",
              flush=True)
        done = done_arms(out)

    if "grow" in args.arms.split(","):
        grow_arm(args, m, root, out, ref_loss, loss, setup)
    report(out, args.name)


def grow_arm(args, m, root: Path, out: Path, ref_loss: float, loss, setup) -> None:
    """Growth from the trained first_k model: each stage adds the reference's next two layers and
    trains on the same budget; one JSON line per finished stage (arm "grow_<layers>")."""
    from jaxshare.core.params import count_params
    from jaxshare.inheritune.grow import grow_params
    from jaxshare.io.native import is_native, load_native, save_native

    check_reuse(root / "first_k", rel(out))
    cfg, params, _ = load_native(root / "first_k" / "run" / "final")
    for s in range(1, args.grow_stages + 1):
        n = cfg.n_layers + 2
        stage_dir = root / f"grow_{n}"
        claim(stage_dir, rel(out))
        if not is_native(stage_dir / "init"):
            p2, c2 = grow_params(params, cfg, n, "reference", reference=(m.params, m.cfg))
            save_native(stage_dir / "init", c2, p2, m.tokenizer, extra={"derived_from": str(m.source)}, overwrite=True)
        done = done_arms(out)
        if f"grow_{n}" not in done:
            c2, p2, _ = load_native(stage_dir / "init")
            before = loss(p2, c2)
            res = train_arm(stage_dir / "init", stage_dir / "run", args)
            after = math.log(res["eval_ppl"])
            append(out, {"arm": f"grow_{n}", "n_layers": n, "params": count_params(p2), "tokens": res["tokens"],
                         "loss_before": before, "loss_after": after, "ref_loss": ref_loss, "setup": setup})
            print(f"grow stage {n} layers: {before:.4f} -> {after:.4f} (reference {ref_loss:.4f})", flush=True)
        else:
            after = done[f"grow_{n}"]["loss_after"]
        cfg, params, _ = load_native(stage_dir / "run" / "final")
        if after <= ref_loss:
            break


def report(out: Path, name: str) -> None:
    """A markdown table and a bar plot of held-out loss per arm."""
    from jaxshare import plots

    rows = done_arms(out)
    if "reference" not in rows:
        return
    ref = rows["reference"]["loss_before"]
    setup = rows["reference"]["setup"]
    data = setup.get("data", "wiki")
    lines = [f"SmolLM2-135M ({rows['reference']['layers']} layers), held-out: first {setup['windows']} windows x "
             f"{setup['seq_len']} tokens of {data}:validation; training on {data}:train, {setup['tokens']} tokens per "
             f"arm, lr {setup['lr']}, batch {setup['batch_size']} x {setup['seq_len']}, {setup['dtype']}", "",
             "| arm | layers | params | tokens | loss before | loss after | PPL after | gap to reference |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| reference | {rows['reference']['layers']} | {rows['reference']['params'] / 1e6:.1f}M | 0 | {ref:.4f} "
             f"| - | {math.exp(ref):.2f} | 0 |"]
    names, before, after = [], [], []
    for arm in ("first_k", "last_k", "random_k", "every_other"):
        if arm in rows:
            r = rows[arm]
            lines.append(f"| {arm} | {r['n_layers']} | {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['loss_before']:.4f} "
                         f"| {r['loss_after']:.4f} | {math.exp(r['loss_after']):.2f} | {r['loss_after'] - ref:+.4f} |")
            names.append(arm)
            before.append(r["loss_before"])
            after.append(r["loss_after"])
    for arm in sorted((a for a in rows if a.startswith("grow_")), key=lambda a: rows[a]["n_layers"]):
        st = rows[arm]
        lines.append(f"| grow -> {st['n_layers']} (reference layers) | {st['n_layers']} | {st['params'] / 1e6:.1f}M "
                     f"| +{st['tokens']} | {st['loss_before']:.4f} | {st['loss_after']:.4f} "
                     f"| {math.exp(st['loss_after']):.2f} | {st['loss_after'] - ref:+.4f} |")
        names.append(f"grow {st['n_layers']}")
        before.append(st["loss_before"])
        after.append(st["loss_after"])
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    curves = {}
    for arm in names:
        path = Path(setup["run_root"]) / (arm.replace("grow ", "grow_") if arm.startswith("grow") else arm) / "run" / "metrics.jsonl"
        if path.is_file():
            steps = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
            by_step = {r["step"]: r["ce"] for r in steps if "ce" in r}  # a resumed run's replay wins
            curves[arm] = [by_step[k] for k in sorted(by_step)]
    if curves:
        n = max(len(v) for v in curves.values())
        tokens_per_step = setup["batch_size"] * setup["seq_len"]
        plots.lines([tokens_per_step * (i + 1) for i in range(n)], curves, RESULTS / f"{name}_curves.png",
                    f"Inheritune on SmolLM2-135M: training loss ({data}:train)", "tokens", "loss (nats/token)", hline=ref)
    if names:
        plots.bars(names, {"before training": before, "after training": after}, RESULTS / f"{name}.png",
                   f"Inheritune on SmolLM2-135M: held-out loss ({data}:validation)", "loss (nats/token)", hline=ref)


if __name__ == "__main__":
    main()
