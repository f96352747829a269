"""The docs' tables of the experiments' result files, registered in benchmarks.tables.

leaderboard_books: benchmarks/results/leaderboard_books.jsonl (`python -m experiments.leaderboard`).
leaderboard_ppl, leaderboard_acc: benchmarks/results/leaderboard.jsonl (wiki, historical) (`python -m experiments.leaderboard`;
the chance row from leaderboard_chance.json, which its --report writes; the PPL table's summary of
who is lowest also reads experiments/results/prune.jsonl, `python -m experiments.prune`, for its
bootstrap intervals). quantize: experiments/results/quantize_books.jsonl (`python -m experiments.quantize`).
The sentences under a table are generated with it, so the docs never type a figure of it by hand.
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
SHORT = {"directshare": "DirectShare", "directshare+postshare": "DirectShare + PostShare", "basis": "Basis Sharing",
         "svd-llm": "SVD-LLM", "inherit": "inherit", "inheritune": "Inheritune", "magnitude": "magnitude (q/k/v)",
         "magnitude-linear": "magnitude-linear", "prune-mlp": "width pruning (MLP)",
         "prune-mlp+kv": "width pruning (MLP + k/v)", "prune-mlp+comp": "width pruning (MLP, compensated)",
         "prune-mlp+kv+comp": "width pruning (MLP + k/v, compensated)",
         "prune-mlp-pl": "width pruning (MLP, per-layer widths)",
         "prune-mlp-pl+comp": "width pruning (MLP, per-layer widths, compensated)"}
HEALED_SHORT = {"basis": "Basis Sharing", "datashare": "data-aware head sharing", "inherit": "inherit",
                "plan": "budgeted plan", "prune-mlp": "width pruning (MLP, compensated)"}
HEAL_LABELS = {"ce": "CE", "kd": "KD", "kd+ce": "KD + CE", "kd+lora": "KD + LoRA"}
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


def _below(a: float, b: float) -> str:
    """How far a lies below b, as "4.7% below" (or above)."""
    return f"{abs(1 - a / b):.1%} {'below' if a < b else 'above'}"


def leaderboard_summary(grid: list[dict], dense: dict) -> str:
    """Who is lowest at each budget among the arms that shrink the model, by how much, and what the
    PPL of 4 windows (no interval) can and cannot say."""
    budgets = sorted({r["budget"] for r in grid})
    parts = []
    for b in budgets:
        ranked = sorted((r for r in grid if r["budget"] == b and not r["arm"].startswith("magnitude")),
                        key=lambda r: r["ppl"]["wiki:test"])
        first, second = ranked[0], ranked[1]
        w, c = (first["ppl"][k] / second["ppl"][k] for k in ("wiki:test", "canterbury"))
        parts.append(f"at −{b:.0%} {SHORT[first['arm']]} {first['ppl']['wiki:test']:.2f}, "
                     f"{_below(first['ppl']['wiki:test'], second['ppl']['wiki:test'])} {SHORT[second['arm']]}'s "
                     f"{second['ppl']['wiki:test']:.2f} (canterbury: {_below(first['ppl']['canterbury'], second['ppl']['canterbury'])})")
    text = "**Lowest wiki PPL among the arms that shrink the model**: " + "; ".join(parts) + "."
    trained = sorted({SHORT[r["arm"]] for r in grid if r["how"].get("trained_tokens")})
    tokens = sorted({r["how"]["trained_tokens"] for r in grid if r["how"].get("trained_tokens")})
    if trained:
        text += (f" {' and '.join(trained)} also saw {', '.join(f'{t:,}' for t in tokens)} training tokens "
                 "the others did not.")
    lowest = {b: min((r for r in grid if r["budget"] == b), key=lambda r: r["ppl"]["wiki:test"]) for b in budgets}
    if all(r["arm"].startswith("magnitude") for r in lowest.values()):
        top = budgets[-1]
        text += (" Unstructured magnitude pruning, which stores the same dense bytes, is lowest of all at every budget ("
                 + ", ".join(f"{SHORT[r['arm']]} at −{b:.0%}" for b, r in lowest.items())
                 + f"; +{lowest[top]['ppl']['wiki:test'] / dense['ppl']['wiki:test'] - 1:.1%} over dense at −{top:.0%}).")
    text += (f" Each figure is {dense['windows']} windows of {dense['seq_len']} tokens with no interval, so a gap of a "
             "few percent here is not a win on its own.")
    return text


def prune_summary(rows: list[dict]) -> str:
    """Basis Sharing against SVD-LLM, and width pruning against both, with bootstrap intervals: a
    method wins only where its interval lies clear of the other's."""
    by = {(r["arm"], r["budget"]): r for r in rows}

    def cell(r):
        return f"{r['ppl']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"

    parts = []
    for b in sorted({r["budget"] for r in rows if r["arm"] == "basis"}):
        basis, svd = by.get(("basis", b)), by.get(("svd-llm", b))
        if basis is None or svd is None:
            continue
        lo, hi = sorted((basis, svd), key=lambda r: r["ppl"])
        verdict = (f"{SHORT[lo['arm']]} wins (its interval lies below the other's)" if lo["ci95"][1] < hi["ci95"][0]
                   else "the intervals overlap, so neither wins")
        part = f"at −{b:.0%} Basis Sharing {cell(basis)} and SVD-LLM {cell(svd)}: {verdict}"
        prune = [r for r in rows if r["budget"] == b and r["arm"].startswith("prune")]
        if prune:
            best = min(prune, key=lambda r: r["ppl"])
            clear = best["ci95"][1] < lo["ci95"][0]
            part += (f"; {SHORT[best['arm']]} {cell(best)} is {lo['ppl'] / best['ppl']:.1f}× to "
                     f"{hi['ppl'] / best['ppl']:.1f}× lower than both, "
                     + ("outside their intervals" if clear else "but not outside their intervals"))
        parts.append(part)
    r0 = rows[0]
    return (f"On {r0['windows']} windows of {r0['seq_len']} tokens with bootstrap 95% intervals "
            f"(`python -m experiments.prune`, not healed): " + "; ".join(parts) + ".")


def leaderboard_ppl(rows: list[dict], prune: list[dict] | None = None) -> str:
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
    from experiments.leaderboard import healed

    for r in rows:
        if "checkpoint" in r["how"] and healed(r["arm"]) is None:
            h = r["how"]
            text += ["", (f"{r['arm'].capitalize()}'s own setting (the first {h['layers']} layers, "
                          f"{h['trained_tokens']:,} tokens; −{r['removed']:.1%}, {r['params'] / 1e6:.1f}M): "
                          f"{r['ppl']['wiki:test']:,.2f} / {r['ppl']['canterbury']:,.2f}.")]
    text += ["", leaderboard_summary(grid, dense)]
    heal_rows = [r for r in rows if "checkpoint" in r["how"] and healed(r["arm"]) is not None]
    if heal_rows:
        text += ["", healed_table(heal_rows, grid)]
    if prune:
        text += ["", prune_summary(prune)]
    return "\n".join(text)


PRUNE_LABELS = {"prune-mlp": "width pruning, MLP (compensated)",
                "prune-mlp+kv": "width pruning, MLP + one KV group (compensated)"}
# arms that are one method in two settings: a win is claimed against the lowest arm of another method
METHOD_OF = {"prune-mlp+kv": "prune-mlp", "directshare+postshare": "directshare", "inheritune": "inherit"}


def leaderboard_books(rows: list[dict]) -> str:
    """The leaderboard on one held-out text with bootstrap 95% intervals (experiments.leaderboard
    --data books): PPL [interval] per arm and budget, the lowest model-shrinking arm in bold, and
    under the table whether it wins: its interval clear of the lowest arm of another method, and the
    paired difference over the same windows."""
    from experiments.leaderboard import ARMS
    from experiments.prune import paired

    rows = list({(r["arm"], r["budget"], r["how"].get("trained_tokens")): r for r in rows}.values())
    c = f"{rows[0]['data']}:test"
    dense = next(r for r in rows if r["arm"] == "dense")
    grid = [r for r in rows if r["arm"] != "dense" and "checkpoint" not in r["how"]]
    budgets = sorted({r["budget"] for r in grid})
    at = {(r["arm"], r["budget"]): r for r in grid}
    ranked = {b: sorted((r for r in grid if r["budget"] == b and not r["arm"].startswith("magnitude")),
                        key=lambda r: r["ppl"][c]) for b in budgets}

    def cell(r):
        lo, hi = r["ci95"][c]
        return f"{ppl2(r['ppl'][c])} [{ppl2(lo)}, {ppl2(hi)}]"

    labels = {**LEADERBOARD_LABELS, **PRUNE_LABELS}
    lines = []
    for arm in (a for a in ARMS if a in labels):
        mine = [at[(arm, b)] for b in budgets if (arm, b) in at]
        if not mine:
            continue
        tokens = ", ".join(f"{t:,}" for t in sorted({r["how"].get("trained_tokens") or 0 for r in mine}) if t)
        layers = " / ".join(str(r["how"]["layers"]) for r in mine if "layers" in r["how"])
        cells = [("**{}**" if ranked[b][0] is at[(arm, b)] else "{}").format(cell(at[(arm, b)]))
                 if (arm, b) in at else "cannot reach" for b in budgets]
        lines.append([labels[arm].format(tokens=tokens, layers=layers), *cells])
    text = [f"{c} PPL [bootstrap 95% interval] on the first {dense['windows']} windows of {dense['seq_len']} tokens "
            f"(dense: {cell(dense)}); the lowest arm that shrinks the model in bold:", "",
            table(["arm", *(f"−{b:.0%}" for b in budgets)], lines)]
    parts = []
    for b in budgets:
        first = ranked[b][0]
        method = METHOD_OF.get(first["arm"], first["arm"])
        second = next(r for r in ranked[b] if METHOD_OF.get(r["arm"], r["arm"]) != method)
        d, lo, hi, n = paired({"window_nll": first["window_nll"][c]}, {"window_nll": second["window_nll"][c]})
        clear = first["ci95"][c][1] < second["ci95"][c][0]
        verdict = ("it wins: its interval lies below the other's" if clear else
                   "the intervals overlap, so it does not win on them" + (
                       "; paired over the same windows it is lower outside the noise" if hi < 0 else
                       "; paired over the same windows the difference is inside the noise"))
        parts.append(f"at −{b:.0%} {SHORT[first['arm']]} {ppl2(first['ppl'][c])} against {SHORT[second['arm']]} "
                     f"{ppl2(second['ppl'][c])} ({d:+.4f} nats per token [{lo:+.4f}, {hi:+.4f}], lower on {n} of "
                     f"{len(first['window_nll'][c])} windows): {verdict}")
    text += ["", "**Lowest arm that shrinks the model, against the lowest of another method**: " + "; ".join(parts)
             + "."]
    trained = sorted({SHORT[r["arm"]] for r in grid if r["how"].get("trained_tokens")})
    if trained:
        text[-1] += (f" {' and '.join(trained)} saw training tokens of {rows[0]['data']}:train the others did not.")
    lowest = {b: min((r for r in grid if r["budget"] == b), key=lambda r: r["ppl"][c]) for b in budgets}
    mag = [f"−{b:.0%} ({SHORT[r['arm']]} {ppl2(r['ppl'][c])})" for b, r in lowest.items() if r["arm"].startswith("magnitude")]
    if mag:
        text[-1] += (" Unstructured magnitude pruning, which stores the same dense bytes, is lowest of all at "
                     + ", ".join(mag) + ".")
    from experiments.leaderboard import healed

    heal_rows = [r for r in rows if "checkpoint" in r["how"] and healed(r["arm"]) is not None]
    if heal_rows:
        text += ["", healed_table(heal_rows, grid, rows[0]["data"])]
    return "\n".join(text)


def healed_label(arm: str) -> str:
    from experiments.leaderboard import healed

    student, heal = healed(arm)
    return HEALED_SHORT[student] + (f" + {HEAL_LABELS[heal]}" if heal else " (not healed)")


def healed_table(rows: list[dict], grid: list[dict], data: str = "wiki") -> str:
    """The experiments/heal.py checkpoints run through the leaderboard (--checkpoints STUDENT+HEAL=DIR),
    at the grid's --limit and windows, and how the lowest of them compares with the grid's lowest
    model-shrinking arm at the same budget. wiki shows test / canterbury PPL; another corpus its test
    PPL with the bootstrap interval (it has no second held-out text)."""
    from experiments.leaderboard import arm_order

    c = f"{data}:test"
    rows = sorted(rows, key=lambda r: (r["budget"], arm_order(r["arm"]), r["how"].get("trained_tokens") or 0))

    def ppl(r):
        if data == "wiki":
            return f"{ppl2(r['ppl'][c])} / {ppl2(r['ppl']['canterbury'])}"
        lo, hi = r["ci95"][c]
        return f"{ppl2(r['ppl'][c])} [{ppl2(lo)}, {ppl2(hi)}]"

    out = [[healed_label(r["arm"]), f"−{r['budget']:.0%}", f"{r['removed']:.2%}", f"{r['params'] / 1e6:.1f}M",
            f"{r['how']['trained_tokens']:,}" if r["how"].get("trained_tokens") else "-", ppl(r)] for r in rows]
    runs = "runs/heal" if data == "wiki" else f"runs/heal_{data}"
    what = "wiki test PPL / canterbury PPL" if data == "wiki" else f"{c} PPL [bootstrap 95% interval]"
    text = [f"Healed students of `experiments/heal.py` (`--checkpoints STUDENT+HEAL={runs}/.../final`; each "
            f"trained on its tokens of {data}:train, which the untrained arms above did not see), {what} on the "
            "same windows:", "",
            table(["student + heal", "budget", "removed", "params", "trained on (tokens)", "PPL"], out)]
    parts = []
    for b in sorted({r["budget"] for r in rows}):
        mine = [r for r in rows if r["budget"] == b and r["how"].get("trained_tokens")]
        others = [r for r in grid if r["budget"] == b and not r["arm"].startswith("magnitude")]
        if not mine or not others:
            continue
        h, u = min(mine, key=lambda r: r["ppl"][c]), min(others, key=lambda r: r["ppl"][c])
        parts.append(f"at −{b:.0%} {healed_label(h['arm'])} ({h['how']['trained_tokens']:,} tokens) "
                     f"{ppl2(h['ppl'][c])}, {u['ppl'][c] / h['ppl'][c]:.1f}× lower than "
                     f"the grid's {SHORT[u['arm']]} ({ppl2(u['ppl'][c])})")
        if data != "wiki":
            from experiments.prune import paired

            d, lo, hi, n = paired({"window_nll": h["window_nll"][c]}, {"window_nll": u["window_nll"][c]})
            parts[-1] += (f" ({d:+.4f} nats per token [{lo:+.4f}, {hi:+.4f}] paired over the same windows, lower on "
                          f"{n} of {len(h['window_nll'][c])})")
    if parts:
        text += ["", "**Lowest healed arm against the grid's lowest model-shrinking arm**: " + "; ".join(parts) + "."]
    return "\n".join(text)


def leaderboard_acc(rows: list[dict], chance: dict) -> str:
    from experiments.leaderboard_report import mean_acc

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
        out.append([ACC_LABELS.get(r["arm"], r["arm"]).format(layers=r["how"].get("layers")), ppl2(r["ppl"]["wiki:test"]),
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


def quant_sets(by: dict) -> tuple[str, str]:
    """The held-out set a run scored (rows before --data were all wiki:test) and canterbury."""
    return by["fp32"].get("data", "wiki:test"), "canterbury"


def quantize(rows: list[dict]) -> str:
    by = {r["arm"]: r for r in rows}  # a rerun arm's later row wins
    sets = quant_sets(by)
    best = min(QUANT_BOLD, key=lambda a: by[a][sets[0]]["ppl"])

    def cells(arms, f):
        vals = list(dict.fromkeys(f(by[a]) for a in arms))
        return " / ".join(vals)

    out = []
    for label, arms in QUANT_ROWS:
        ppls = [" / ".join(("**{:.2f}**" if a == best else "{:.2f}").format(by[a][s]["ppl"]) for a in arms)
                for s in sets]
        if all("gguf_tensor_bytes" in by[a] for a in arms):
            sizes = [cells(arms, lambda r: f"{r['gguf_tensor_bytes'] / MIB:.1f}") + " (GGUF tensors)", "–"]
        else:
            sizes = [cells(arms, lambda r: f"{r['bytes'] / MIB:.1f}"), cells(arms, lambda r: f"{r['linear_bytes'] / MIB:.1f}")]
        out.append([label, *ppls, *sizes])
    ev, cal = by["fp32"][sets[0]], by["fp32"]["calibration"]
    return (f"SmolLM2-135M, PPL on the first {ev['windows']} × {ev['seq_len']} tokens of each set; calibration "
            f"{cal['windows']} × {cal['seq_len']} tokens of {cal['data']}, seed {cal['seed']}.\n\n"
            + table(["arm", *sets, "model MiB", "linear MiB"], out) + "\n\n" + quantize_summary(by))


def quantize_summary(by: dict) -> str:
    """int8's largest PPL cost, and how int4 GPTQ (plain and act-order) stands against RTN at one size."""
    def rel(a, s):
        return by[a][s]["ppl"] / by["fp32"][s]["ppl"] - 1

    sets = quant_sets(by)
    int8 = max(rel(a, s) for a in ("int8-rtn", "int8-gptq") for s in sets)
    text = f"int8 (RTN and GPTQ, per channel) costs at most {int8:+.1%} PPL over fp32 on either set."
    parts = []
    for s in sets:
        rtn, plain, act = (by[a][s]["ppl"] for a in ("int4-rtn-g64", "int4-gptq-g64", "int4-gptq-g64-act"))
        if plain < rtn and act < rtn:
            verdict = "beats RTN with and without act-order"
        elif act < rtn:
            verdict = "beats RTN only with act-order"
        elif plain < rtn:
            verdict = "beats RTN only without act-order"
        else:
            verdict = "does not beat RTN"
        parts.append(f"on {s} it {verdict} (act-order {act:.2f}, RTN {rtn:.2f}, plain GPTQ {plain:.2f})")
    return (text + " int4 GPTQ g64 against RTN at the same size: " + "; ".join(parts) + "."
            + canterbury_note(by["fp32"]["calibration"]["data"], sets))


def canterbury_note(calib: str, sets) -> str:
    """books is the Canterbury texts and Botchan in passages: calibrating on books:train puts most of
    canterbury's text in the calibration set, so its column measures fit, not held-out text."""
    if not calib.startswith("books") or "canterbury" not in sets:
        return ""
    return (f" The canterbury column is not held out: books holds the Canterbury texts, and most of their "
            f"passages are in {calib}, the calibration set; the held-out figures are books:test's.")
