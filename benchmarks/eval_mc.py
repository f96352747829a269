"""Multiple-choice scoring throughput: jaxshare's lm-eval backend vs lm-eval's own `hf` backend
(torch), same task items, same model (our HF export of it), same batch size.

    python -m benchmarks.eval_mc [--model smollm2-135m] [--task social_iqa] [--limit 200]
                                 [--batch-size 16] [--reps 2] [--cli-reps 0] [--parity-limit 50]
                                 [--no-hf-in-process] [--in-process-only] [--json]

Two measurements, each interleaved (ours, hf, ours, hf, ...) so that a shared CPU's load falls on
both sides alike:

- In process: `lm.loglikelihood(requests)` on the task's requests as lm-eval builds them (every
  choice of every item), for jaxshare (each item's shared context run once), jaxshare with
  share_context=False (every choice its own sequence: the scoring before issue 27) and hf. Each
  backend runs once untimed first (jit compiles, torch warms up); that first call's excess over the
  median is reported as its compile/warm-up. Load and request-building times are reported too.
- With --cli-reps N: the whole command as a user runs it, in subprocesses, N timed runs a side:
  `python -m jaxshare eval mc MODEL --tasks TASK --limit L --batch-size B --json` vs
  `python -m lm_eval --model hf --model_args pretrained=<HF export>,dtype=float32 --tasks bb_TASK
  --include_path <our tasks> --limit L --batch_size B --device cpu`. Our side first runs once with
  an empty XLA compilation cache (what a first run pays: every compile), which fills the cache the
  timed runs then use (what every later run of the same model and shapes pays). Both sides'
  acc / acc_norm are recorded.

items/s counts items (questions). Parity: the per-request log-likelihoods of the backends (max
relative difference), and acc / acc_norm of `simple_evaluate` with --parity-limit items (0: skip).
The load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result


def hf_export(model: str) -> Path:
    """Our HF export of `model` in the cache (written once)."""
    from jaxshare.storage.fetch import cache_dir
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model

    out = cache_dir() / "models" / model.replace("/", "_") / "hf-export-fp32"
    if not (out / "config.json").is_file():
        m = load_model(model, "fp32")
        export_hf(m.params, m.cfg, out, m.tokenizer, dtype="fp32", overwrite=True)
    return out


def task_requests(task: str, limit: int):
    from lm_eval.tasks import get_task_dict

    from jaxshare.eval.mc import task_manager
    from jaxshare.eval.tasks import lm_eval_name

    name = lm_eval_name(task)
    t = get_task_dict([name], task_manager())[name]
    t.build_all_requests(limit=limit, rank=0, world_size=1)
    return t.instances


def spread(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs_s": times}


def cli_commands(model: str, path: Path, task: str, limit: int, batch_size: int) -> dict[str, list[str]]:
    from jaxshare.eval.tasks import lm_eval_name, task_dir

    return {
        "jaxshare": [sys.executable, "-m", "jaxshare", "eval", "mc", model, "--tasks", task, "--limit", str(limit),
                     "--batch-size", str(batch_size), "--json"],
        "hf": [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={path},dtype=float32",
               "--tasks", lm_eval_name(task), "--include_path", str(task_dir()), "--limit", str(limit),
               "--batch_size", str(batch_size), "--device", "cpu"],
    }


def run_cli(side: str, cmd: list[str], env: dict, task: str, scratch: Path) -> dict:
    """One whole command: wall seconds and its acc / acc_norm (ours: its --json; hf: its results file)."""
    from jaxshare.eval.tasks import lm_eval_name

    out = Path(tempfile.mkdtemp(dir=scratch))
    if side == "hf":
        cmd = [*cmd, "--output_path", str(out)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    if side == "jaxshare":
        res = json.loads(p.stdout.strip().splitlines()[-1])
        row = res["tasks"][task]
        return {"seconds": seconds, "acc": row["acc"], "acc_norm": row["acc_norm"], "n": row["n"],
                "evaluate_s": res["seconds"]}  # simple_evaluate's share: the rest is start-up and load
    files = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    r = json.loads(Path(files[0]).read_text())["results"][lm_eval_name(task)]
    return {"seconds": seconds, "acc": r["acc,none"], "acc_norm": r["acc_norm,none"]}


def whole_command(args, path: Path, items: int) -> dict:
    cmds = cli_commands(args.model, path, args.task, args.limit, args.batch_size)
    scratch = Path(tempfile.mkdtemp(prefix="eval_mc_cli_"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "JAX_COMPILATION_CACHE_DIR": str(scratch / "xla")}  # starts empty: the first run compiles
    cold = run_cli("jaxshare", cmds["jaxshare"], env, args.task, scratch)
    print(f"cold jaxshare run: {cold['seconds']:.1f} s", file=sys.stderr)
    runs: dict[str, list[dict]] = {"jaxshare": [], "hf": []}
    for rep in range(args.cli_reps):
        for side in ("hf", "jaxshare"):
            runs[side].append(run_cli(side, cmds[side], env, args.task, scratch))
            print(f"rep {rep + 1}/{args.cli_reps} {side}: {runs[side][-1]['seconds']:.1f} s", file=sys.stderr)
    sec = {k: [r["seconds"] for r in v] for k, v in runs.items()}
    speed = {k: items / statistics.median(v) for k, v in sec.items()}
    speed_cold = items / cold["seconds"]
    acc = {k: {m: v[0][m] for m in ("acc", "acc_norm")} for k, v in runs.items()}
    return {
        "commands": {k: " ".join(v) for k, v in cmds.items()}, "reps": args.cli_reps,
        "seconds": {k: spread(v) for k, v in sec.items()}, "items_per_s": speed,
        "speedup": speed["jaxshare"] / speed["hf"],
        "jaxshare_cold": {"seconds": cold["seconds"], "items_per_s": speed_cold,
                          "speedup": speed_cold / speed["hf"], "evaluate_s": cold["evaluate_s"]},
        "jaxshare_startup_and_load_s": statistics.median(r["seconds"] - r["evaluate_s"] for r in runs["jaxshare"]),
        "jaxshare_evaluate_s": statistics.median(r["evaluate_s"] for r in runs["jaxshare"]),
        "acc": acc, "same_acc_and_acc_norm": acc["jaxshare"] == acc["hf"],
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="social_iqa")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="timed in-process loglikelihood calls per backend")
    ap.add_argument("--cli-reps", type=int, default=0, help="timed whole-command runs per side (0: none)")
    ap.add_argument("--parity-limit", type=int, default=50, help="items of the acc parity check (0: none)")
    ap.add_argument("--no-hf-in-process", action="store_true",
                    help="time only jaxshare in process (shared context vs per pair); hf only in --cli-reps")
    ap.add_argument("--in-process-only", action="store_true",
                    help="no --cli-reps timing; results go to eval_mc_in_process.json (eval_mc.json is kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from lm_eval.models.huggingface import HFLM

    from jaxshare.eval.harness import JaxshareLM
    from jaxshare.eval.mc import evaluate
    from jaxshare.eval.tasks import task_dir

    load_before = os.getloadavg()
    path = hf_export(args.model)
    t0 = time.perf_counter()
    task_dir()  # converts the BIG-bench tasks on first use
    fixed = {"task_conversion_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    reqs = task_requests(args.task, args.limit)
    fixed["build_requests_s"] = time.perf_counter() - t0
    items = len({r.doc_id for r in reqs})
    res = {"model": args.model, "hf_export": str(path), "task": args.task, "items": items, "requests": len(reqs),
           "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
    name = "eval_mc_in_process" if args.in_process_only else "eval_mc"
    if args.cli_reps and not args.in_process_only:
        res["whole_command"] = whole_command(args, path, items)
        write_result(name, {**res, "loadavg_before": load_before}, False)  # kept if what follows fails

    t0 = time.perf_counter()
    ours = JaxshareLM(model=str(path), dtype="fp32", batch_size=args.batch_size)
    fixed["jaxshare_load_s"] = time.perf_counter() - t0
    # the tokens each way of scoring runs before padding: on a compute-bound CPU their ratio caps
    # what scoring each shared context once can gain over scoring every choice as its own sequence
    pairs = [ours._encode_pair(*r.args) for r in reqs]
    res["tokens"] = {"every_choice_own_sequence": sum(len(c) + len(x) - 1 for c, x in pairs),
                     "context_once": sum(map(len, {tuple(c) for c, _ in pairs})) + sum(len(x) - 1 for _, x in pairs)}
    res["tokens"]["ratio"] = res["tokens"]["every_choice_own_sequence"] / res["tokens"]["context_once"]
    per_pair = JaxshareLM.from_loaded(ours.loaded, dtype="fp32", batch_size=args.batch_size, share_context=False)
    t0 = time.perf_counter()
    backends = {"jaxshare": ours, "jaxshare_per_pair": per_pair}
    if not args.no_hf_in_process:
        backends["hf"] = HFLM(pretrained=str(path), dtype="float32", batch_size=args.batch_size, device="cpu")
        fixed["hf_load_s"] = time.perf_counter() - t0
    results, first = {}, {}
    for k, lm in backends.items():  # warm-up: jit compiles, torch warms up
        t0 = time.perf_counter()
        results[k] = lm.loglikelihood(reqs, disable_tqdm=True)
        first[k] = time.perf_counter() - t0
    times = {k: [] for k in backends}
    for _ in range(args.reps):
        for k, lm in backends.items():
            t0 = time.perf_counter()
            lm.loglikelihood(reqs, disable_tqdm=True)
            times[k].append(time.perf_counter() - t0)
    ll = {k: np.asarray([r[0] for r in v], np.float64) for k, v in results.items()}
    greedy = {k: [r[1] for r in v] for k, v in results.items()}

    def rel(a, b):
        return float((np.abs(ll[a] - ll[b]) / np.maximum(np.abs(ll[b]), 1e-12)).max())

    speed = {k: items / statistics.median(v) for k, v in times.items()}
    fixed.update({f"{k}_first_call_excess_s": first[k] - statistics.median(times[k]) for k in backends})
    parity = {"max_rel_loglik_diff_shared_vs_per_pair": rel("jaxshare", "jaxshare_per_pair"),
              "same_greedy_shared_vs_per_pair": greedy["jaxshare"] == greedy["jaxshare_per_pair"],
              "requests": len(reqs)}
    in_process = {"reps": args.reps, "seconds": {k: spread(v) for k, v in times.items()}, "first_call_s": first,
                  "items_per_s": speed, "shared_vs_per_pair": speed["jaxshare"] / speed["jaxshare_per_pair"]}
    if "hf" in backends:
        parity.update(max_rel_loglik_diff=rel("jaxshare", "hf"),
                      max_abs_loglik_diff=float(np.abs(ll["jaxshare"] - ll["hf"]).max()),
                      same_greedy_as_hf=greedy["jaxshare"] == greedy["hf"])
        in_process.update(speedup=speed["jaxshare"] / speed["hf"],
                          speedup_per_pair=speed["jaxshare_per_pair"] / speed["hf"])
        if args.parity_limit:
            acc = {k: evaluate(lm, [args.task], args.parity_limit)["tasks"][args.task] for k, lm in
                   (("jaxshare", ours), ("hf", backends["hf"]))}
            parity.update(acc_limit=args.parity_limit, acc=acc,
                          same_acc_and_acc_norm=all(acc["jaxshare"][m] == acc["hf"][m] for m in ("acc", "acc_norm")))
    res.update({"in_process": in_process, "fixed_costs": fixed, "parity": parity,
                "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    write_result(name, res, args.json)
    if not args.json:
        hf_part = (f", hf {speed['hf']:.2f} items/s -> {in_process['speedup']:.2f}x (per pair "
                   f"{in_process['speedup_per_pair']:.2f}x); max rel loglik diff vs hf "
                   f"{parity['max_rel_loglik_diff']:.2e}") if "hf" in speed else ""
        print(f"{args.task} x{items} items ({len(reqs)} requests), batch {args.batch_size}, in process: jaxshare "
              f"{speed['jaxshare']:.2f} items/s, per pair {speed['jaxshare_per_pair']:.2f} "
              f"({in_process['shared_vs_per_pair']:.2f}x){hf_part}; max rel loglik diff shared vs per pair "
              f"{parity['max_rel_loglik_diff_shared_vs_per_pair']:.2e}; load {load_before[0]:.1f} -> "
              f"{res['loadavg_after'][0]:.1f}")
        if "whole_command" in res:
            wc = res["whole_command"]
            print(f"whole command x{wc['reps']}: jaxshare {wc['items_per_s']['jaxshare']:.2f} items/s "
                  f"(cold cache {wc['jaxshare_cold']['items_per_s']:.2f}), hf {wc['items_per_s']['hf']:.2f} items/s "
                  f"-> {wc['speedup']:.2f}x (cold {wc['jaxshare_cold']['speedup']:.2f}x); acc equal: "
                  f"{wc['same_acc_and_acc_norm']}")


if __name__ == "__main__":
    main()
