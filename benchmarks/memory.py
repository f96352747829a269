"""Peak RSS of every heavy command (issue 15), each in a fresh process, next to transformers' own
load and eval of the same checkpoint in the same run.

    python -m benchmarks.memory [--models smollm2,qwen2-1.5b] [--big-dir DIR] [--work DIR] [--json]
    flock $JAXSHARE_CACHE/.locks/heavy.lock python -m benchmarks.memory --models qwen2-1.5b --held-lock --cases basis

Models: `smollm2` (SmolLM2-135M, from its registered Q4_1 GGUF) and `qwen2-1.5b`, a random-weight
Qwen2-1.5B-shaped HF checkpoint made with transformers (benchmarks.make_random_qwen2, bf16 on disk,
made once in --big-dir and reused). Commands: convert (fp32 and bf16), eval ppl, parity, share,
basis (20%) and export; transformers: from_pretrained alone, and from_pretrained plus the same PPL
windows. A 1.5B command runs under `flock $JAXSHARE_CACHE/.locks/heavy.lock`, so that two heavy jobs
on one machine do not measure each other. Defaults keep the 1.5B checkpoint and the scratch outputs
under $JAXSHARE_CACHE/bench.

Peak RSS is the command's own (wait4's ru_maxrss through a small launcher, benchmarks.train_memory;
it covers the command's waited-for children, flock's python included). `net` subtracts a process
that only does the same imports. Results: benchmarks/results/memory.json, written after every case.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, machine, stamp
from benchmarks.train_memory import child_env, run_measured
from jaxshare.storage.fetch import cache_dir as _cache_dir

BENCH = _cache_dir() / "bench"
LOCK = str(_cache_dir() / ".locks" / "heavy.lock")
PY = sys.executable
IMPORTS = ("import jax, jax.numpy, transformers, tokenizers, numpy, jaxshare.cli.main, jaxshare.io.load, "
           "jaxshare.io.convert, jaxshare.io.native, jaxshare.io.hf, jaxshare.eval.perplexity")
TORCH_IMPORTS = "import torch, transformers, transformers.models.qwen2.modeling_qwen2, transformers.models.llama.modeling_llama"

TF_EVAL = """
import sys, math, numpy as np, torch, transformers
src, data, seq_len, windows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
if windows:
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_windows, tokenize_corpus
    tok = transformers.AutoTokenizer.from_pretrained(src)
    w = token_windows(tokenize_corpus(tok, load_corpus(data)), seq_len, windows)
    nll = 0.0
    with torch.inference_mode():
        for x in w:  # one window at a time: transformers' loss materializes [T, V] logits
            nll += float(model(torch.as_tensor(x[None].astype(np.int64)), labels=torch.as_tensor(x[None].astype(np.int64))).loss) * (seq_len - 1)
    print("ppl", math.exp(nll / (len(w) * (seq_len - 1))))
"""


def param_count(native: Path) -> int:
    from jaxshare.io.tensorfile import TensorReader

    with TensorReader(native / "params.safetensors") as f:
        return sum(int(__import__("math").prod(f.shape(k))) for k in f.keys())


def new_calib_dirs(before: set) -> list[Path]:
    from jaxshare.storage.fetch import cache_dir

    d = cache_dir() / "calib"
    return [p for p in d.iterdir() if p.name not in before] if d.is_dir() else []


def books_mc_task(path: Path, items: int = 20, context_words: int = 48, choice_words: int = 6) -> Path:
    """The eval mc case's task (the BIG-bench tasks need an sdist the index no longer serves): from
    books:test, each item a passage's opening words, then its true next words among three spans of
    other passages. A memory figure needs only the shapes, near social_iqa's (a context of about 60
    tokens, 3 or 4 short choices); this is no benchmark of the model."""
    import random

    from jaxshare.data.corpora import load_corpus

    docs = [d.split() for d in load_corpus("books:test")]
    rng = random.Random(0)
    rows = []
    for i in range(items):
        words = docs[i % len(docs)]
        start = rng.randrange(0, len(words) - context_words - choice_words)
        cut = start + context_words
        choices = [" ".join(words[cut:cut + choice_words])]
        for j in rng.sample([k for k in range(len(docs)) if k != i % len(docs)], 3):
            at = rng.randrange(0, len(docs[j]) - choice_words)
            choices.append(" ".join(docs[j][at:at + choice_words]))
        gold = rng.randrange(4)
        choices[0], choices[gold] = choices[gold], choices[0]
        rows.append({"inputs": " ".join(words[start:cut]), "choices": choices, "gold": gold})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cases(model: str, src: Path, work: Path, seq_len: int, windows: int, calib: tuple[int, int]) -> list[tuple]:
    """(name, argv, cleanup paths) in order; later cases read what convert wrote."""
    nat, data = work / "native", "canterbury"
    js = [PY, "-m", "jaxshare"]
    cw, cs = calib
    return [
        ("baseline_imports", [PY, "-c", IMPORTS], []),
        ("convert", js + ["convert", str(src), str(nat), "--overwrite"], []),
        ("convert_bf16", js + ["convert", str(src), str(work / "native16"), "--dtype", "bf16", "--overwrite"],
         [work / "native16"]),
        ("eval_ppl", js + ["eval", "ppl", str(nat), "--data", data, "--seq-len", str(seq_len), "--max-windows",
                           str(windows), "--batch-size", "8", "--json"], []),
        ("parity", js + ["parity", str(src), "--data", data, "--seq-len", str(seq_len), "--max-windows", "2", "--json"],
         []),
        ("share", js + ["share", str(nat), str(work / "share"), "--ratio", "0.3", "--overwrite", "--json"],
         [work / "share"]),
        ("export", js + ["export", str(nat), str(work / "hf"), "--overwrite"], []),
        ("baseline_torch_imports", [PY, "-c", TORCH_IMPORTS], []),
        # transformers reads the HF form of the same weights: our export (SmolLM2) or the source dir (1.5B)
        ("transformers_load", [PY, "-c", TF_EVAL, "HF", data, str(seq_len), "0"], []),
        ("transformers_load_eval_ppl", [PY, "-c", TF_EVAL, "HF", data, str(seq_len), str(windows)], []),
        ("basis", js + ["basis", str(nat), str(work / "basis"), "--ratio", "0.2", "--calib-windows", str(cw),
                        "--calib-seq-len", str(cs), "--seed", str(int(time.time()) % 100000), "--overwrite", "--json"],
         [work / "basis"]),
        # the other subcommands that hold a whole model (issue 26: every one at 1.5B)
        ("generate", js + ["generate", str(nat), "--prompt", "The capital of France is", "--max-new-tokens", "32",
                           "--json"], []),
        ("quantize", js + ["quantize", str(nat), str(work / "q4"), "--bits", "4", "--method", "rtn", "--overwrite",
                           "--json"],
         [work / "q4"]),
        ("quantize_gptq", js + ["quantize", str(nat), str(work / "q4g"), "--bits", "4", "--method", "gptq",
                                "--calib-windows", str(cw), "--calib-seq-len", str(cs), "--overwrite", "--json"],
         [work / "q4g"]),
        ("inherit", js + ["inherit", str(nat), str(work / "inherit"), "--layers", "15" if model == "smollm2" else "14", "--overwrite", "--json"],
         [work / "inherit"]),
        ("export_gguf", js + ["export", str(nat), str(work / "m.gguf"), "--format", "gguf", "--overwrite"],
         [work / "m.gguf"]),
        ("prune", js + ["prune", str(nat), str(work / "prune"), "--mlp", "0.2", "--compensate", "--calib-windows",
                        str(cw), "--calib-seq-len", str(cs), "--overwrite", "--json"], []),
        ("eval_mc", js + ["eval", "mc", str(nat), "--tasks", str(books_mc_task(work / "books_mc.jsonl")), "--json"],
         [work / "books_mc.jsonl"]),
        ("datashare", js + ["share", str(nat), str(work / "datashare"), "--ratio", "0.3", "--keep", "data",
                            "--calib", "books:train", "--calib-windows", str(cw), "--calib-seq-len", str(cs), "--overwrite", "--json"],
         [work / "datashare"]),
        ("compress", js + ["compress", str(nat), str(work / "plan"), "--ratio", "0.1", "--methods", "share,inherit",
                           "--calib-windows", str(cw), "--calib-seq-len", str(cs), "--sens-windows", "2",
                           "--heldout-windows", "2", "--overwrite", "--json"], [work / "plan"]),
        # 2 plain training steps of 4 x 512 tokens (AdamW over every weight), no checkpoint
        ("train", js + ["train", "plain", "--set", f"model={nat}", "--set", f"data={data}", "--set", "steps=2",
                        "--set", f"seq_len={seq_len}", "--set", "eval_windows=2", "--set", "checkpoint_every=0",
                        "--set", "warmup_steps=0",
                        "--set", f"run_dir={work / 'train_run'}", "--overwrite", "--json"], [work / "train_run"]),
        # LoRA healing of the pruned model from its dense teacher: the recipe a 24 GiB machine can
        # run at 1.5B (full healing needs AdamW state for every weight); 2 steps of seq_len tokens
        ("heal_lora", js + ["heal", str(work / "prune"), str(work / "healed"), "--teacher", str(nat), "--data",
                            data, "--eval-data", "botchan", "--steps", "2", "--trains", "lora", "--seq-len",
                            str(seq_len), "--run-dir", str(work / "heal_run"), "--set", "eval_windows=2", "--overwrite", "--json"],
         [work / "healed", work / "heal_run", work / "prune"]),
    ]


def run_model(model: str, src: Path, hf_for_tf: Path | None, work: Path, locked: bool, out: dict, path: Path,
              seq_len: int, windows: int, calib: tuple[int, int], only: set | None) -> None:
    work.mkdir(parents=True, exist_ok=True)
    env = child_env()
    res = out["models"].setdefault(model, {"source": str(src), "cases": {}})
    from jaxshare.storage.fetch import cache_dir

    for name, argv, cleanup in cases(model, src, work, seq_len, windows, calib):
        if only and name not in only and not name.startswith("baseline"):
            continue
        argv = [str(hf_for_tf or work / "hf") if a == "HF" else a for a in argv]
        cmd = (["flock", LOCK] if locked and not name.startswith("baseline") else []) + argv  # imports only: no lock
        calib_before = {p.name for p in (cache_dir() / "calib").iterdir()} if (cache_dir() / "calib").is_dir() else set()
        r = run_measured(cmd, env)
        for p in new_calib_dirs(calib_before):  # the grams this run wrote (GBs at 1.5B): ours to remove
            shutil.rmtree(p, ignore_errors=True)
        st = stamp("benchmarks.memory")  # cases of several runs share the file: each says its commit
        entry = {"argv": argv[1:] if argv[0] == PY else argv, "rc": r["rc"], "wall_s": round(r["wall_s"], 1),
                 "peak_rss_bytes": r["peak_rss_bytes"], "locked": locked,
                 **{k: st[k] for k in ("commit", "dirty", "date") if k in st}}
        if r["rc"] != 0:
            entry["stderr_tail"] = r["stderr"][-1500:]
        last = r["stdout"].strip().splitlines()[-1] if r["stdout"].strip() else ""
        if last.startswith("{"):
            keep = ("ppl", "batch_size", "max_abs_logit_diff", "ppl_rel_diff", "achieved_ratio", "params_after",
                    "params_before", "units_freed", "bytes_after", "bytes_before", "layers", "tokens", "steps",
                    "seq_len", "eval_windows", "adapter_params")
            entry["result"] = {k: v for k, v in json.loads(last).items() if k in keep}
        elif last.startswith("ppl "):
            entry["result"] = {"ppl": float(last.split()[1])}
        res["cases"][name] = entry
        print(f"{model} {name}: rc {r['rc']}, {entry['wall_s']} s, peak {r['peak_rss_bytes'] / 2**30:.2f} GiB",
              file=sys.stderr)
        for p in cleanup:
            remove(p)
        summarize(res, work / "native")
        save(path, out, model, res)
    for p in (work / "native", work / "hf", work / "prune"):  # prune stays for heal_lora, which --only may skip
        remove(p)


def remove(p: Path) -> None:
    """Remove what a case wrote, a folder or one file (an exported .gguf): rmtree alone skips files."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def save(path: Path, out: dict, model: str, res: dict) -> None:
    """Write this model's entry, keeping the other models' (another run may be writing them)."""
    cur = json.loads(path.read_text()) if path.is_file() else {}
    cur = {**cur, **{k: v for k, v in out.items() if k != "models"}}
    cur.setdefault("models", {})[model] = res
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(cur, indent=2) + "\n")
    tmp.replace(path)


def summarize(res: dict, native: Path) -> None:
    c = res["cases"]
    if native.is_dir() and "params" not in res:
        res["params"] = param_count(native)
    n = res.get("params")
    base = c.get("baseline_imports", {}).get("peak_rss_bytes")
    tbase = c.get("baseline_torch_imports", {}).get("peak_rss_bytes")
    for name, e in c.items():
        if name.startswith("baseline") or e["rc"] != 0:
            continue
        b = tbase if name.startswith("transformers") else base
        if b:
            e["net_rss_bytes"] = e["peak_rss_bytes"] - b
        if n:
            e["peak_over_fp32_params"] = round(e["peak_rss_bytes"] / (4 * n), 3)
            if b:
                e["net_over_fp32_params"] = round((e["peak_rss_bytes"] - b) / (4 * n), 3)
                if name == "convert_bf16":
                    e["net_over_bf16_params"] = round((e["peak_rss_bytes"] - b) / (2 * n), 3)
    tf = c.get("transformers_load_eval_ppl", {}).get("peak_rss_bytes")
    if tf:
        res["ratio_to_transformers_load_eval"] = {k: round(e["peak_rss_bytes"] / tf, 3) for k, e in c.items()
                                                  if not k.startswith(("baseline", "transformers")) and e["rc"] == 0}


def one_harness() -> None:
    """Refuse to run beside another memory harness: each removes the calibration caches that
    appeared during its commands, and would remove the other's while that one reads them."""
    import fcntl

    path = _cache_dir() / ".locks" / "memory-harness.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w")  # held (and the lock with it) until this process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"another benchmarks.memory run holds {path}; run one at a time")
    one_harness.file = f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,qwen2-1.5b")
    ap.add_argument("--big-dir", type=Path, default=BENCH / "qwen2-1.5b-random",
                    help="the random 1.5B HF checkpoint (made here once if absent)")
    ap.add_argument("--work", type=Path, default=BENCH / "memory_work",
                    help="scratch for converted and compressed outputs (removed as the run goes)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8, help="PPL windows (eval ppl and transformers)")
    ap.add_argument("--calib", default="8x256", help="basis calibration windows x seq_len (sized for a CPU)")
    ap.add_argument("--cases", default=None, help="comma list: run only these (plus the baselines)")
    ap.add_argument("--held-lock", action="store_true",
                    help="the caller already holds the lock for the whole run (flock LOCK python -m "
                         "benchmarks.memory ...): the 1.5B commands do not take it one by one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    one_harness()
    calib = tuple(int(x) for x in args.calib.split("x"))
    only = set(args.cases.split(",")) if args.cases else None
    path = RESULTS / "memory.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    out = {"benchmark": "memory", "models": old.get("models", {}) if only else {}}
    out.update({"machine": machine(), "argv": sys.argv[1:], "lock": LOCK, **stamp("benchmarks.memory")})
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(LOCK).parent.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        if model == "smollm2":
            from jaxshare.io import registry

            run_model(model, registry.registered_gguf("smollm2-135m"), None, args.work / model, False, out, path,
                      args.seq_len, args.windows, calib, only)
        elif model == "qwen2-1.5b":
            from benchmarks.make_random_qwen2 import make

            if not (args.big_dir / "config.json").is_file():
                os.system(f"flock {LOCK} {PY} -m benchmarks.make_random_qwen2 {args.big_dir}")
            big = make(args.big_dir)
            run_model(model, big, big, args.work / model, not args.held_lock, out, path, args.seq_len, args.windows,
                      calib, only)
        else:
            sys.exit(f"unknown model {model}")
    for model, res in out["models"].items():
        for k, v in (res.get("ratio_to_transformers_load_eval") or {}).items():
            print(f"{model} {k}: peak / transformers load+eval = {v}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
