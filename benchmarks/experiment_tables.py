"""The docs' tables of the experiments' result files, registered in benchmarks.tables.

leaderboard_ppl, leaderboard_acc: benchmarks/results/leaderboard.jsonl (`python -m experiments.leaderboard`;
the chance row from leaderboard_chance.json, which its --report writes). quantize:
experiments/results/quantize.jsonl (`python -m experiments.quantize`).
"""
from __future__ import annotations

from benchmarks.table_format import MIB, ppl2, table

LEADERBOARD_LABELS = {  # arm -> its row in the PPL table, in experiments.leaderboard's ARMS order
    "directshare": "DirectShare (qk, keep=mean)",
    "directshare+postshare": "DirectShare + PostShare ({tokens} tokens)",
    "basis": "Basis Sharing n=2",
    "svd-llm": "SVD-LLM",
    "inherit": "inherit (first {layers} layers, untrained)",
    "inheritune": "Inheritune (same layers, {tokens} tokens)",
    "magnitude": "magnitude, q/k/v (unstructured, stores zeros)",
    "magnitude-linear": "magnitude-linear (unstructured, stores zeros)",
}
ACC_LABELS = {"dense": "dense", "basis": "Basis Sharing n=2", "svd-llm": "SVD-LLM", "magnitude-linear": "magnitude-linear",
              "directshare+postshare": "DirectShare + PostShare", "inheritune": "Inheritune ({layers} layers)",
              "directshare": "DirectShare", "inherit": "inherit ({layers} layers)"}


def _limit_rows(rows: list[dict], limit: int) -> list[dict]:
    """The rows at one --limit, a later row for the same arm and budget replacing an earlier one."""
    out = {}
    for r in rows:
        if r["limit"] == limit:
            out[(r["arm"], r["budget"], r["how"].get("checkpoint"))] = r
    return list(out.values())


def _main_limit(rows: list[dict]) -> int:
    """The --limit every arm ran at: the one with the most rows."""
    limits = [r["limit"] for r in rows]
    return max(sorted(set(limits)), key=limits.count)


def leaderboard_ppl(rows: list[dict]) -> str:
    rows = _limit_rows(rows, _main_limit(rows))
    dense = next(r for r in rows if r["arm"] == "dense")
    grid = [r for r in rows if r["arm"] != "dense" and "checkpoint" not in r["how"]]
    budgets = sorted({r["budget"] for r in grid})
    at = {(r["arm"], r["budget"]): r for r in grid}
    best = {b: min((r for r in grid if r["budget"] == b and not r["arm"].startswith("magnitude")),
                   key=lambda r: r["ppl"]["wiki:test"]) for b in budgets}
    lines = []
    for arm, label in LEADERBOARD_LABELS.items():
        mine = [at[(arm, b)] for b in budgets if (arm, b) in at]
        if not mine:
            continue
        tokens = {r["how"].get("trained_tokens") for r in mine}
        layers = " / ".join(str(r["how"]["layers"]) for r in mine if "layers" in r["how"])
        cells = []
        for b in budgets:
            r = at.get((arm, b))
            if r is None:
                cells.append("cannot reach")
                continue
            bold = "**{}**" if r is best[b] else "{}"
            cells.append(" / ".join(bold.format(ppl2(r["ppl"][c])) for c in ("wiki:test", "canterbury")))
        trained = ", ".join(f"{t:,}" for t in sorted(t for t in tokens if t))
        lines.append([label.format(tokens=trained, layers=layers), *cells])
    intro = (f"Wiki test PPL / canterbury PPL (dense: {dense['ppl']['wiki:test']:.2f} / "
             f"{dense['ppl']['canterbury']:.2f}); best model-shrinking arm in bold:")
    text = [intro, "", table(["arm", *(f"−{b:.0%}" for b in budgets)], lines)]
    for r in rows:
        if "checkpoint" in r["how"]:
            h = r["how"]
            text += ["", (f"{r['arm'].capitalize()}'s own setting (the first {h['layers']} layers, "
                          f"{h['trained_tokens']:,} tokens; −{r['removed']:.1%}, {r['params'] / 1e6:.1f}M): "
                          f"{r['ppl']['wiki:test']:,.2f} / {r['ppl']['canterbury']:,.2f}.")]
    return "\n".join(text)


def leaderboard_acc(rows: list[dict], chance: dict) -> str:
    from experiments.leaderboard import mean_acc

    limit = max(r["limit"] for r in rows)
    rows = _limit_rows(rows, limit)
    budgets = [r["budget"] for r in rows if r["arm"] != "dense"]
    budget = max(sorted(set(budgets)), key=budgets.count)
    dense = next(r for r in rows if r["arm"] == "dense")
    arms = sorted((r for r in rows if r["budget"] == budget), key=lambda r: -mean_acc(r)[0])
    tasks = list(dense["mc"])
    out = []
    for r in [dense, *arms]:
        acc, se = mean_acc(r)
        out.append([ACC_LABELS[r["arm"]].format(layers=r["how"].get("layers")), ppl2(r["ppl"]["wiki:test"]),
                    *(f"{r['mc'][t]['acc']:.2f}" for t in tasks), f"{acc:.3f} ± {se:.3f}"])
    guess = chance["chance"][str(limit)]
    out.append(["chance (1 / choices)", "", *(f"{guess[t]:.3f}" for t in tasks),
                f"{sum(guess[t] for t in tasks) / len(tasks):.3f}"])
    return table([f"arm (−{budget:.0%})", "wiki PPL", *tasks, "mean acc"], out)


QUANT_ROWS = [  # label, the arms it shows (cells "a / b")
    ("fp32 (= the Q4_1 GGUF dequantized)", ["fp32"]),
    ("int8 RTN / GPTQ (per channel)", ["int8-rtn", "int8-gptq"]),
    ("int4 RTN g64", ["int4-rtn-g64"]),
    ("int4 GPTQ g64", ["int4-gptq-g64"]),
    ("int4 GPTQ g64 act-order", ["int4-gptq-g64-act"]),
    ("int4 RTN asym g32", ["int4-rtn-asym-g32"]),
    ("original Q4_1 GGUF / our Q4_1 re-export", ["gguf-q4_1-original", "gguf-q4_1-reexport"]),
    ("DirectShare 30% (qk, mean)", ["ds30"]),
    ("+ int4 GPTQ g64 / + act-order", ["ds30+int4-gptq-g64", "ds30+int4-gptq-g64-act"]),
    ("Basis Sharing 20% (n=2)", ["bs20"]),
    ("+ int8 GPTQ", ["bs20+int8-gptq"]),
    ("+ int4 GPTQ g64", ["bs20+int4-gptq-g64"]),
]
QUANT_BOLD = ("int4-rtn-g64", "int4-gptq-g64", "int4-gptq-g64-act")  # int4 g64, one size: the lowest PPL in bold
QUANT_SETS = ("wiki:test", "canterbury")


def quantize(rows: list[dict]) -> str:
    by = {r["arm"]: r for r in rows}  # a rerun arm's later row wins
    best = min(QUANT_BOLD, key=lambda a: by[a]["wiki:test"]["ppl"])

    def cells(arms, f):
        vals = list(dict.fromkeys(f(by[a]) for a in arms))
        return " / ".join(vals)

    out = []
    for label, arms in QUANT_ROWS:
        ppls = [" / ".join(("**{:.2f}**" if a == best else "{:.2f}").format(by[a][s]["ppl"]) for a in arms)
                for s in QUANT_SETS]
        if all("gguf_tensor_bytes" in by[a] for a in arms):
            sizes = [cells(arms, lambda r: f"{r['gguf_tensor_bytes'] / MIB:.1f}") + " (GGUF tensors)", "–"]
        else:
            sizes = [cells(arms, lambda r: f"{r['bytes'] / MIB:.1f}"), cells(arms, lambda r: f"{r['linear_bytes'] / MIB:.1f}")]
        out.append([label, *ppls, *sizes])
    ev, cal = by["fp32"]["wiki:test"], by["fp32"]["calibration"]
    return (f"SmolLM2-135M, PPL on the first {ev['windows']} × {ev['seq_len']} tokens of each set; calibration "
            f"{cal['windows']} × {cal['seq_len']} tokens of {cal['data']}, seed {cal['seed']}.\n\n"
            + table(["arm", *QUANT_SETS, "model MiB", "linear MiB"], out))
