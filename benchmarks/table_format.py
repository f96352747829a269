"""Markdown cells and tables for the generated result tables (benchmarks.tables and its modules)."""
from __future__ import annotations

GIB, MIB = 2 ** 30, 2 ** 20


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(head: list[str], rows: list[list]) -> str:
    return "\n".join([row(*head), row(*["---"] * len(head)), *(row(*r) for r in rows)])


def sig(x: float) -> str:
    """Three significant figures; whole numbers with thousands separators from 100 up."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def ppl(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}" if x < 1e5 else f"{x:.2e}".replace("e+0", "e").replace("e+", "e")


def ppl2(x: float) -> str:
    """Two decimals below 1,000, whole numbers with separators below 10^6, then 2.35e9."""
    if x < 1000:
        return f"{x:.2f}"
    if x < 1e6:
        return f"{x:,.0f}"
    mantissa, exp = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exp)}"
