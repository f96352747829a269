"""The leaderboard's report: its tables, the chance row and the plots (`python -m experiments.leaderboard --report`).

The wiki rows (benchmarks/results/leaderboard.jsonl) keep their table with accuracy and a PNG of PPL
and mean accuracy against parameters; a run on another corpus (leaderboard_DATA.jsonl) gets the
table benchmarks.tables renders from its rows and a PNG of PPL with bootstrap intervals.
"""
from __future__ import annotations

import json

import numpy as np

from experiments.leaderboard import RESULTS, arm_order, rows_path


def mean_acc(r: dict, key: str = "acc") -> tuple[float, float]:
    """Mean over the tasks and its standard error (the tasks' stderrs, independent items)."""
    v = list(r["mc"].values())
    return float(np.mean([t[key] for t in v])), float(np.sqrt(sum(t[f"{key}_stderr"] ** 2 for t in v)) / len(v))


def chance_acc(task: str, limit: int) -> float:
    """What guessing scores on the first `limit` items: the mean of 1 / (number of choices)."""
    from jaxshare.eval.tasks import load_rows

    return float(np.mean([1 / len(r["choices"]) for r in load_rows(task)[:limit]]))


def write_chance(rows: list) -> None:
    """leaderboard_chance.json: what guessing scores on the first `limit` items of each task, for every
    --limit the rows ran at (the chance row of the docs' table, benchmarks.tables)."""
    from benchmarks.common import stamp

    tasks = list(rows[0]["mc"])
    chance = {str(limit): {t: chance_acc(t, limit) for t in tasks} for limit in sorted({r["limit"] for r in rows})}
    out = {"what": "mean of 1 / (number of choices) over the first `limit` items of each task (jaxshare.eval.tasks)",
           "stamp": stamp("experiments.leaderboard"), "chance": chance}
    (RESULTS / "leaderboard_chance.json").write_text(json.dumps(out, indent=2) + "\n")


def fmt_ppl(x: float) -> str:
    return f"{x:.2f}" if x < 1000 else f"{x:,.0f}"


def table(rows: list) -> list[str]:
    tasks = list(rows[0]["mc"])
    head = ("| arm | budget | removed | params | trained on | wiki PPL | canterbury PPL | " + " | ".join(tasks)
            + " | mean acc | mean acc_norm |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        (acc, se), (norm, se_n) = mean_acc(r), mean_acc(r, "acc_norm")
        tok = r["how"].get("trained_tokens")
        lines.append(f"| {r['arm']} | {r['budget']:.0%} | {r['removed']:.2%} | {r['params'] / 1e6:.1f}M | "
                     f"{f'{tok:,} tokens' if tok else '-'} | {fmt_ppl(r['ppl']['wiki:test'])} | {fmt_ppl(r['ppl']['canterbury'])} | "
                     + " | ".join(f"{r['mc'][t]['acc']:.3f}/{r['mc'][t]['acc_norm']:.3f}" for t in tasks)
                     + f" | {acc:.3f} ± {se:.3f} | {norm:.3f} ± {se_n:.3f} |")
    r0 = rows[0]
    chance = [chance_acc(t, r0["limit"]) for t in tasks]
    lines.append("| chance (1 / choices) | | | | | | | " + " | ".join(f"{c:.3f}" for c in chance)
                 + f" | {np.mean(chance):.3f} | {np.mean(chance):.3f} |")
    lines.append(f"\nacc/acc_norm per task, first {r0['limit']} items of each (mean ± its standard error); PPL on "
                 f"the first {r0['windows']} windows of {r0['seq_len']} tokens.\n")
    return lines


def report_data(data: str) -> None:
    """Beside a run on DATA other than wiki: the table (benchmarks.tables renders it from the rows) and
    a PNG of PPL against parameters with each point's bootstrap 95% interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import tables

    path = rows_path(data)
    name = path.stem
    rows = tables.load(path)
    c = f"{data}:test"
    md = tables.render(name, [rows]) if name in tables.TABLES else None
    if md is not None:
        tables.paths(name)[1].write_text(md)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    series = {}
    for r in rows:
        if r["arm"] != "dense" and "checkpoint" not in r["how"]:
            series.setdefault(r["arm"], []).append(r)
    for arm in sorted(series, key=arm_order):
        pts = sorted(series[arm], key=lambda r: r["params"])
        x = [r["params"] / 1e6 for r in pts]
        y = [r["ppl"][c] for r in pts]
        err = [[r["ppl"][c] - r["ci95"][c][0] for r in pts], [r["ci95"][c][1] - r["ppl"][c] for r in pts]]
        ax.errorbar(x, y, yerr=err, fmt="o-" if len(pts) > 1 else "o", capsize=3, label=arm)
    dense = next(r for r in rows if r["arm"] == "dense")
    ax.axhline(dense["ppl"][c], color="gray", ls="--", lw=1, label=f"dense ({dense['ppl'][c]:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M; magnitude: non-zeros)")
    ax.set_ylabel(f"{c} PPL (log), bootstrap 95% interval")
    ax.set_title(f"{dense['model']}: {dense['windows']} windows of {dense['seq_len']} tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    print(md or f"wrote {path.with_suffix('.png')}")


def report() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (RESULTS / "leaderboard.jsonl").read_text().splitlines() if x.strip()]
    rows.sort(key=lambda r: (r["arm"] != "dense", r["budget"], arm_order(r["arm"]), r["how"].get("trained_tokens") or 0))
    by_limit = {}
    for r in rows:
        by_limit.setdefault(r["limit"], []).append(r)
    lines = []
    for limit in sorted(by_limit):
        lines += [f"### --limit {limit}", ""] + table(by_limit[limit])
    (RESULTS / "leaderboard.md").write_text("\n".join(lines))
    write_chance(rows)
    main_rows = max(by_limit.values(), key=len)  # the limit every arm ran at
    big = by_limit[max(by_limit)]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.4))

    def series(rs):  # one line per arm and training budget; a row trained elsewhere is its own point
        out = {}
        for r in rs:
            tok = r["how"].get("trained_tokens")
            out.setdefault(f"{r['arm']}{f' ({tok:,} tok)' if tok else ''}", []).append(r)
        return sorted(out.items(), key=lambda kv: arm_order(kv[1][0]["arm"]))

    for i, (label, rs) in enumerate(series(main_rows)):
        pts = sorted((r["params"] / 1e6, r["ppl"]["wiki:test"]) for r in rs)
        ax0.plot(*zip(*pts), "o-" if len(pts) > 1 else "o", label=label)
    for i, (label, rs) in enumerate(series(big)):
        x, y, e = zip(*sorted((r["params"] / 1e6 + 0.35 * i, *mean_acc(r)) for r in rs))  # offset: no overlap
        ax1.errorbar(x, y, yerr=e, fmt="o", capsize=3, label=label)
    tasks = list(big[0]["mc"])
    ax1.axhline(np.mean([chance_acc(t, max(by_limit)) for t in tasks]), color="gray", ls="--", lw=1, label="chance")
    ax0.set_yscale("log")
    ax0.set_xlabel("parameters (M)")
    ax0.set_ylabel("wiki test PPL (log)")
    ax0.set_title(f"{main_rows[0]['model']}: perplexity vs parameters")
    ax0.legend(fontsize=7)
    ax1.set_xlabel("parameters (M)")
    ax1.set_ylabel(f"mean acc over {len(big[0]['mc'])} tasks (± stderr)")
    ax1.set_title(f"accuracy vs parameters (first {max(by_limit)} items per task)")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "leaderboard.png", dpi=120)
    print("\n".join(lines))
