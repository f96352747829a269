"""The docs' measurement tables, generated from their result files.

Each function below turns one `benchmarks/results/<name>.json` into the Markdown table the docs
include (```{include} ../benchmarks/results/<name>.md```): the figures as the JSON has them,
rounded, ratios computed from its medians, and a footer naming the file, its commit and date.
The experiments' tables (benchmarks/experiment_tables.py) read the files PATHS names, JSONL too.

    python -m benchmarks.tables           # rewrite every generated .md
    python -m benchmarks.tables --check   # exit 1 listing the .md files that differ from their JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import experiment_tables
from benchmarks.table_format import GIB, MIB, ppl, sig, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def footer(source: Path, d) -> str:
    where = f"`{source.relative_to(ROOT)}`"
    if isinstance(d, list):  # JSONL rows, each with its provenance (benchmarks.common.append_row)
        commits = sorted({r["provenance"]["commit"][:10] for r in d if (r.get("provenance") or {}).get("commit")})
        if not commits:
            return f"From {where}: no stamp (`python -m benchmarks.stale` dates it by the commit that last wrote it)."
        return f"From {where}: {len(d)} rows, commit{'s' * (len(commits) > 1)} {', '.join(commits)}."
    st = d.get("stamp") or d.get("provenance") or d
    if not st.get("commit"):
        return f"From {where}: no stamp (`python -m benchmarks.stale` dates it by the commit that last wrote it)."
    dirty = " (checkout differed)" if st.get("dirty") else ""
    date = st.get("date") or "date not recorded"
    return f"From {where}: commit {st['commit'][:10]}{dirty}, {date}."


def forward(d: dict) -> str:
    def tps(r, side):  # tokens/s by median [slowest, fastest] where the file keeps the spread
        n, t = r["batch"] * r["seq_len"], r[side]
        spread = f" [{n / t['max_s']:.0f}, {n / t['min_s']:.0f}]" if "max_s" in t else ""
        return f"{n / t['median_s']:.0f}{spread}"

    rows = [[r["dtype"], r["batch"], tps(r, "jax"), tps(r, "torch"),
             f"{r['torch']['median_s'] / r['jax']['median_s']:.2f}"
             + ("" if "separated" not in r else " (ranges apart)" if r["separated"] else " (ranges overlap)")]
            for r in d["rows"]]
    return table(["dtype", "batch", "jaxshare tok/s", "torch tok/s", "ratio"], rows)


def similarity(d: dict) -> str:
    rows = []
    for key, r in d["results"].items():
        label = {"smollm2": "SmolLM2-135M (real weights)",
                 "llama7b": f"Llama-2-7B shapes (random fp32 q, k: {r.get('gib_of_weights', 0):g} GiB)"}.get(key, key)
        jit, floor, nv = r["jit_search"]["median_s"], r["gemm_floor"]["median_s"], r["naive"]
        naive = (f"~{sig(nv['seconds_total'])} s, extrapolated from {nv['pairs_timed']:,} of {nv['pairs_total']:,} "
                 f"pairs (first {nv['layers_timed']} layers)" if nv["extrapolated"]
                 else f"{sig(nv['seconds_total'])} s (all {nv['pairs_total']:,} pairs)")
        rows.append([label, f"{r['units']:,} × {r['features']:,}", f"{sig(jit)} s", f"{sig(floor)} s",
                     f"{jit / floor:.2f}" + (f" ({min(r['ratio_to_gemm_floor_per_rep']):.2f}–"
                                             f"{max(r['ratio_to_gemm_floor_per_rep']):.2f} per rep)"
                                             if "ratio_to_gemm_floor_per_rep" in r else ""), naive, f"{nv['seconds_total'] / jit:.0f}×"])
    return table(["scale", "units × features", "jit search", "GEMM floor", "search / floor", "naive loop",
                  "speed-up"], rows)


def shared_forward(d: dict) -> str:
    tps, before, after = d["tokens_per_s"], d["qkv_bytes_before"], d["qkv_bytes_after"]
    return table(["", "dense", f"{d['ratio']:.0%} shared", "ratio"], [
        ["prefill tok/s", f"{tps['dense']:.0f}", f"{tps['shared']:.0f}", f"{tps['shared'] / tps['dense']:.3f}"],
        ["q/k/v bytes", f"{before / MIB:.1f} MiB", f"{after / MIB:.1f} MiB (+{d['index_bytes']:,} B of int32 indices)",
         f"{after / before:.3f}"]])


def xla_cpu_flags(d: dict) -> str:
    def key(r):
        return tuple(r["shape"]), r["dtype"]

    torch = {key(r): r["gflops"] for r in d["torch"]}
    arms = {name: ({key(r): r["gflops"] for r in a["rows"]} if a.get("ok") else {}) for name, a in d["xla"].items()}
    head = ["GEMM (M×K×N)", "dtype", "torch"] + ["jax default" if not a["flags"] else f"`{a['flags']}`"
                                                 for a in d["xla"].values()]
    rows = [["×".join(map(str, k[0])), k[1], f"{g:.0f}"] +
            [f"{arms[n][k]:.0f}" if k in arms[n] else "failed" for n in arms] for k, g in torch.items()]
    return table(head, rows)


MEMORY_CASES = {
    "convert": "`convert` (GGUF / HF → native, fp32)",
    "convert_bf16": "`convert --dtype bf16`",
    "eval_ppl": "`eval ppl` (batch 8, 8 windows × 512 tokens)",
    "eval_mc": "`eval mc` (20 items, 4 choices: a task file from books; before: social_iqa, 20 items)",
    "parity": "`parity` (2 windows, both sides)",
    "share": "`share --ratio 0.3`",
    "datashare": "`share --ratio 0.3 --keep data` (calibration 8 × 256)",
    "compress": "`compress --ratio 0.1 --methods share,inherit` (budgeted plan)",
    "basis": "`basis --ratio 0.2` (calibration SmolLM2 4 × 256, 1.5B 8 × 256)",
    "export": "`export` (native → HF, fp32)",
    "export_gguf": "`export --format gguf` (native → GGUF)",
    "generate": "`generate` (32 new tokens)",
    "quantize": "`quantize --bits 4 --method rtn` (group 64)",
    "quantize_gptq": "`quantize --bits 4 --method gptq` (calibration 8 × 256)",
    "inherit": "`inherit --layers` (half the layers)",
    "prune": "`prune --mlp 0.2 --compensate` (calibration 8 × 256)",
    "train": "`train plain` (2 AdamW steps of 4 × 512 tokens)",
    "heal_lora": "`heal --trains lora` (2 steps of 4 × 512 tokens, 2 held-out windows)",
    "transformers_load": "transformers `from_pretrained` fp32",
    "transformers_load_eval_ppl": "transformers load + same PPL windows",
}


def memory(d: dict) -> str:
    small, big = d["models"]["smollm2"]["cases"], d["models"]["qwen2-1.5b"]["cases"]
    fp32 = 4 * d["models"]["qwen2-1.5b"]["params"]

    def peak(cases, c):
        if c not in cases:
            return "-"
        e = cases[c]
        gib = f"{e['peak_rss_bytes'] / GIB:.2f} GiB"
        if e.get("rc", 0) == 0:
            return gib
        # a failed command's peak is where it stopped, not what it needs
        return f"killed at {gib} (out of memory)" if e["rc"] in (137, -9) else f"failed (exit {e['rc']})"

    def at(cases, c):  # cases are rerun one by one: each names its commit (unrecorded in early runs)
        return (cases.get(c) or {}).get("commit", "-")[:7] if c in cases else "-"

    rows = []
    for c, label in MEMORY_CASES.items():
        net = big.get(c, {}).get("net_rss_bytes") if big.get(c, {}).get("rc", 0) == 0 else None
        cell = "-" if net is None else f"{net / fp32:.2f}"
        if c == "convert_bf16" and net is not None:
            cell += f" ({2 * net / fp32:.2f} of bf16 bytes)"
        if c in small or c in big:
            rows.append([label, peak(small, c), peak(big, c), cell, f"{at(small, c)} / {at(big, c)}"])
    return table(["command", "SmolLM2-135M peak", "1.5B peak", "1.5B net / fp32 params", "measured at (SmolLM2 / 1.5B)"],
                 rows)


def demo(d: dict) -> str:
    s = d["summary"]
    c, data = (s["ppl"], s["ppl_data"]) if "ppl_data" in s else (s["ppl_canterbury"], "canterbury")
    win = f"{c['windows']} × {c['seq_len']}"
    units = s["layers"] * s["kv_heads"]
    rows = [["dense", data, win, f"{c['ppl']:.3f}"]]
    for r, ds in sorted(s["directshare"].items(), key=lambda kv: float(kv[0])):
        rows.append([f"DirectShare {float(r):.0%} (`qk`, root; {ds['units_freed']} of {units} units, model "
                     f"−{ds['model_fraction_removed']:.1%})", data, win, f"{ds['ppl']:.3f}"])
    b, cal = s["basis"], s["basis"]["calibration"]
    rows.append([f"Basis Sharing {b['ratio']:.0%} (n = 2, calibration {cal['windows']} × {cal['seq_len']} "
                 f"{cal['data']}; {b['params_before'] / 1e6:.1f}M → {b['params_after'] / 1e6:.1f}M params)",
                 data, win, f"{b['ppl']:.3f}"])
    if "inheritune" in s:  # demo.json files from before the demo's Inheritune step have none
        it = s["inheritune"]
        # untrained, the cut model's PPL runs to 1e9: the demo prints it so, and Inheritune trains it next
        rows.append([f"Inheritune: first {it['k']} of {s['layers']} layers, untrained "
                     f"({it['params_before'] / 1e6:.1f}M → {it['params_after'] / 1e6:.1f}M params)", data, win,
                     f"{it['ppl_untrained']:.4g}"])
    return table(["model", "corpus", "windows × seq_len", "PPL"], rows)


def parity(d: dict) -> str:
    rows = [[r["model"], r["data"], f"{r['windows']} × {r['seq_len']}", f"{r['max_abs_logit_diff']:.1e}",
             f"{r['ppl_jax']:.5f}", f"{r['ppl_reference']:.5f}", f"{r['ppl_rel_diff']:.1e}"] for r in d["results"]]
    return table(["model", "data", "windows × seq_len", "max \\|Δlogit\\|", "PPL jaxshare", "PPL transformers",
                  "rel. diff"], rows)


def basis_sweep(d: dict) -> str:
    runs = [r for r in d["runs"] if r.get("ppl")]
    sets = d["eval_sets"]
    ratios = sorted({r["ratio"] for r in runs})
    names = sorted({r["name"] for r in runs}, key=lambda n: (n.startswith("svd"), n == "svd", n))
    cell = {(r["name"], r["ratio"]): " / ".join(ppl(r["ppl"][s]) for s in sets) for r in runs}
    rows = [[n, *(cell.get((n, x), "-") for x in ratios)] for n in names]
    base = ", ".join(f"{s} {d['baseline']['ppl'][s]:.2f}" for s in sets)
    off = max(abs(r["achieved_ratio"] - r["ratio"]) for r in runs)
    return "\n".join([
        f"Uncompressed: {base}. Each cell: {' / '.join(sets)} PPL.", "",
        table(["method", *(f"CR {x:g}" for x in ratios)], rows), "",
        f"{len(runs)} of {len(names) * len(ratios)} configurations finished; achieved ratios within {off:.4f} of the "
        f"requested ones; whitening fallbacks: {sum(r.get('fallbacks', 0) for r in runs)}."
        + experiment_tables.canterbury_note(d["calibration"]["data"], sets)])


def basis(d: dict) -> str:
    g, p = d["group_svd"], d["prefill"]
    sh, cc, eig = g["shape"], g["concat"], g["eig"]

    def span(r: dict, key: str = "path_s") -> str:  # median [min, max] where the file has the range
        return f"{r[key]:.1f}" + (f" [{r['min_s']:.1f}, {r['max_s']:.1f}]" if "max_s" in r else "")

    reps = f" (median of {cc['reps']} [min, max])" if "reps" in cc else ""
    svd = table([f"group SVD, n={sh['n']}, d_in={sh['d_in']}, d_out={sh['d_out']}", "concat", "eig", "eig/concat"], [
        [f"time (s){reps}", span(cc), span(eig), f"{eig['path_s'] / cc['path_s']:.2f}"],
        ["peak RSS (MiB)", f"{cc['peak_rss_bytes'] / MIB:.0f}", f"{eig['peak_rss_bytes'] / MIB:.0f}",
         f"{eig['peak_rss_bytes'] / cc['peak_rss_bytes']:.2f}"],
        ["net RSS over inputs (MiB)", f"{cc['net_rss_bytes'] / MIB:.0f}", f"{eig['net_rss_bytes'] / MIB:.0f}",
         f"{eig['net_rss_bytes'] / cc['net_rss_bytes']:.2f}"]])
    arms = [k for k in p if k == "dense" or k.startswith("basis_cr")]
    dense = p["dense"]["median_s"]
    head = [f"SmolLM2 prefill, {p['batch']} x {p['seq_len']} fp32"] + [
        "dense" if a == "dense" else f"Basis n=2 CR {a.removeprefix('basis_cr')}" for a in arms]
    rows = [[f"tokens/s (median of {p['dense']['reps']})", *(f"{p[a]['tokens_per_s']:.0f}" for a in arms)]]
    if "max_s" in p["dense"]:
        n = p["batch"] * p["seq_len"]
        rows.append(["tokens/s [min, max]", *(f"[{n / p[a]['max_s']:.0f}, {n / p[a]['min_s']:.0f}]" for a in arms)])
    noise = ["-" if a == "dense" else ("outside the noise" if p.get(f"outside_noise_{a.removeprefix('basis_')}")
                                       else "ranges overlap") for a in arms]
    rows.append(["vs dense", *(f"{dense / p[a]['median_s']:.2f}" for a in arms)])
    if "max_s" in p["dense"]:
        rows.append(["vs dense, noise", *noise])
    return svd + "\n\n" + table(head, rows)


def heal_memory_aot(d: dict) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in d["rows"]))
    shapes = list(dict.fromkeys(r["shape"] for r in d["rows"]))
    peak = {(r["shape"], r["variant"]): (f"**{r['peak_gib']:.2f}**" if r["fits_24_gib"] else f"{r['peak_gib']:.2f}")
            for r in d["rows"]}
    rows = [[s, *(peak.get((s, v), "-") for v in variants)] for s in shapes]
    out = (table(["peak GiB", *variants], rows) +
           f"\n\nIn bold: fits {d.get('budget_gib', 24)} GiB. {d.get('config', '')}; {d.get('what', '')}.")
    c = d.get("memory_case")
    if c:
        out += (f"\n\nThe memory benchmark's `heal_lora` case (`jaxshare heal` of the width-pruned random "
                f"Qwen2-1.5B, d_ff {c['student_d_ff']}, from its dense {c['teacher_dtype']} teacher; batch "
                f"{c['batch_size']} x {c['seq_len']}, {c['dtype']} compute, LoRA rank {c['lora_rank']}, remat "
                f"{c['remat']}): arguments {c['argument']:.2f} GiB, temporaries {c['temp']:.2f}, peak "
                f"**{c['peak_gib']:.2f} GiB** by XLA's count.")
    return out


def prune_speed(d: dict) -> str:
    by = {r["side"]: r for r in d["rows"]}
    models = list(dict.fromkeys(s.split("/")[0] for s in by))

    def cells(m, side):
        r, base = by.get(f"{m}/{side}"), by.get(f"dense/{side}")
        if r is None:
            return ["-", "-"]
        f = (lambda x: f"{x:.0f}") if r["tokens_per_s"] >= 100 else (lambda x: f"{x:.1f}")
        tps = f"{f(r['tokens_per_s'])} [{f(r['tokens'] / r['max_s'])}, {f(r['tokens'] / r['min_s'])}]"
        ratio = f"{base['median_s'] / r['median_s']:.2f}"
        if m != "dense" and "paired_ratio" in r:  # each rep's dense time over this side's, same rep
            pr = r["paired_ratio"]
            ratio += f" (per rep {pr['min']:.2f}–{pr['max']:.2f}" + ("" if r["paired_separated"] else ", in the noise") + ")"
        elif m != "dense" and not r["separated"]:
            ratio += " (in the noise)"
        return [tps, ratio]

    head = [f"model (−{d['budget']:.0%})", "jaxshare prefill tok/s [min, max]", "× dense",
            "jaxshare decode tok/s [min, max]", "× dense", "transformers prefill tok/s [min, max]", "× dense"]
    return table(head, [[m, *cells(m, "jax prefill"), *cells(m, "jax decode"), *cells(m, "torch prefill")]
                        for m in models])


GOAL_S = 600  # the whole suite under 10 minutes on 2 cores (the developers' guide)


def _cpu(r: dict) -> str:
    cpu = ((r.get("provenance") or {}).get("machine") or {}).get("cpu", "")
    return "AMD EPYC" if "EPYC" in cpu else "Intel Xeon" if "Xeon" in cpu else cpu or "-"


def suite(rows: list[dict]) -> str:
    """Every logged run of the test suite, newest first, after a summary of the fresh-clone
    `.ci/run` runs made alone on the machine (the ones comparable with each other), per CPU."""
    alone = [r for r in rows if r["label"].startswith("fresh-clone .ci/run") and "alone" in r["label"]]

    def kind(r: dict) -> str:  # a new machine's run also downloads and converts the models: apart
        return _cpu(r) + (", cold model cache" if "cold model cache" in r["label"] else "")

    lines = []
    for k in dict.fromkeys(kind(r) for r in alone):
        ts = sorted(r["pytest_s"] for r in alone if kind(r) == k)
        met = sum(t <= GOAL_S for t in ts)
        mid = (ts[(len(ts) - 1) // 2] + ts[len(ts) // 2]) / 2
        lines.append(f"- {k}: {len(ts)} run{'s' if len(ts) > 1 else ''}, {met} within {GOAL_S} s of pytest; "
                     f"median {mid:.2f} s, from {ts[0]:.2f} to {ts[-1]:.2f} s.")
    head = ["logged", "tested commit", "CPU", "pytest s", ".ci/run s", "passed", "skipped", "test-seconds",
            f"≤ {GOAL_S} s", "run"]
    body = [[(r.get("provenance") or {}).get("date", "-")[:16], f"`{r.get('tested_commit', '-')[:7]}`", _cpu(r),
             f"{r['pytest_s']:.2f}", f"{r['ci_run_s']:.1f}" if r.get("ci_run_s") else "-", f"{r['passed']:,}",
             r.get("skipped", "-"), f"{r['test_seconds_summed']:,.1f}" if r.get("test_seconds_summed") else "-",
             "yes" if r["pytest_s"] <= GOAL_S else "no", r["label"].replace("|", "/")] for r in reversed(rows)]
    return ("Fresh-clone `.ci/run` runs alone on the machine, by CPU (2 cores each). A row that says cold model "
            "cache started from an empty `$JAXSHARE_CACHE`, as a new machine does (registry downloads, model "
            "conversions, transformers' reference loads); the others do not record it, and earlier tests of "
            "the same session had most likely filled it:\n\n" + "\n".join(lines)
            + "\n\n" + table(head, body))


TABLES = {f.__name__: f for f in (forward, similarity, shared_forward, xla_cpu_flags, memory, demo, parity,
                                  basis_sweep, basis, heal_memory_aot, prune_speed, suite, experiment_tables.leaderboard_ppl,
                                  experiment_tables.leaderboard_acc, experiment_tables.leaderboard_books,
                                  experiment_tables.quantize)}
# name -> (its result files, the .md it writes), relative to the repository; the rest read
# benchmarks/results/<name>.json and write benchmarks/results/<name>.md
PATHS = {
    "leaderboard_ppl": (["benchmarks/results/leaderboard.jsonl", "experiments/results/prune.jsonl"],
                        "benchmarks/results/leaderboard_ppl.md"),
    "leaderboard_acc": (["benchmarks/results/leaderboard.jsonl", "benchmarks/results/leaderboard_chance.json"],
                        "benchmarks/results/leaderboard_acc.md"),
    "leaderboard_books": (["benchmarks/results/leaderboard_books.jsonl"], "benchmarks/results/leaderboard_books.md"),
    "quantize": (["experiments/results/quantize_books.jsonl"], "experiments/results/quantize.md"),
    "basis_sweep": (["benchmarks/results/basis_sweep_books.json"], "benchmarks/results/basis_sweep.md"),
    "suite": (["benchmarks/results/suite.jsonl"], "benchmarks/results/suite.md"),
}


def paths(name: str) -> tuple[list[Path], Path]:
    """The result files a table reads and the .md it writes."""
    sources, md = PATHS.get(name, ([f"benchmarks/results/{name}.json"], f"benchmarks/results/{name}.md"))
    return [ROOT / s for s in sources], ROOT / md


def load(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def render(name: str, data: list) -> str:
    """The .md of one table from its result files' contents (in the order paths() names them)."""
    sources = paths(name)[0]
    return (f"<!-- generated by `python -m benchmarks.tables` from {', '.join(s.name for s in sources)}: do not edit -->"
            f"\n\n{TABLES[name](*data)}\n\n" + "\n".join(footer(s, d) for s, d in zip(sources, data)) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs from its JSON")
    ap.add_argument("--results", type=Path, default=None,
                    help="read the result files and write the tables in this one folder, each by its file name")
    args = ap.parse_args(argv)
    stale = []
    for name in TABLES:
        sources, md = paths(name)
        if args.results is not None:  # every file by its name in one folder
            sources, md = [args.results / p.name for p in sources], args.results / md.name
        text = render(name, [load(p) for p in sources])
        if md.exists() and md.read_text() == text:
            continue
        if args.check:
            stale.append(md.name)
        else:
            md.write_text(text)
            print(f"wrote {md}")
    if stale:
        print("out of date (run `python -m benchmarks.tables`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
