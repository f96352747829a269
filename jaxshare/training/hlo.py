"""What a compiled SPMD program does per device, read from its HLO text (`compiled.as_text()`).

XLA's cost analysis (`compiled.cost_analysis()`, HloCostAnalysis) counts each while loop's body
once, whatever its trip count: a train step's layer scan and gradient-accumulation scan would be
undercounted L and A times. `step_cost` corrects that with the analysis itself: each loop body is
analysed as a module of its own and weighted by the loop's `known_trip_count`.

Collectives are counted here, per device, in one convention: the bytes of the full buffer the
operation exchanges (all-gather: its gathered result; reduce-scatter: its unscattered operand;
all-reduce, all-to-all, collective-permute: the operand), times how often the op runs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_COMP_START = re.compile(r"^(ENTRY )?%?([\w.\-]+) (\(.*)\{\s*$")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_METADATA = re.compile(r",? metadata=\{[^{}]*\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of them); fp8 kinds count one byte."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        size = _BYTES.get(dtype, 1 if dtype.startswith("f8") else 0)
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


@dataclass
class Instr:
    name: str
    shape: str
    op: str
    rest: str  # operands and attributes


@dataclass
class Computation:
    name: str
    entry: bool
    lines: list[str] = field(default_factory=list)
    instrs: list[Instr] = field(default_factory=list)


def _split_shape(s: str) -> tuple[str, str]:
    """'(f32[2], s32[]) while(...)' -> ('(f32[2], s32[])', 'while(...)')."""
    if s.startswith("("):
        depth = 0
        for i, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return s[:i + 1], s[i + 1:].lstrip()
    shape, _, rest = s.partition(" ")
    return shape, rest


def parse(text: str) -> dict[str, Computation]:
    comps: dict[str, Computation] = {}
    cur = None
    # metadata only names source lines; its stack frame ids mean nothing outside the whole module
    for line in _METADATA.sub("", text).splitlines():
        if cur is None:
            m = _COMP_START.match(line)
            if m:
                cur = comps.setdefault(m.group(2), Computation(m.group(2), bool(m.group(1))))
                cur.lines.append(line)
            continue
        cur.lines.append(line)
        if line.strip() == "}":
            cur = None
            continue
        lhs, sep, rhs = line.strip().removeprefix("ROOT ").partition(" = ")
        if not sep:
            continue
        shape, rest = _split_shape(rhs)
        op, _, args = rest.partition("(")
        cur.instrs.append(Instr(lhs.lstrip("%"), shape, op, args))
    return comps


def _callees(ins: Instr) -> list[tuple[str, int, bool]]:
    """(computation, times per execution of `ins`, is a loop body) for each computation it calls."""
    out = []
    trip = _TRIP.search(ins.rest)
    for kind, name in _CALLEE.findall(ins.rest):
        if ins.op == "while" and kind == "body":
            out.append((name, int(trip.group(1)) if trip else 1, True))
        else:
            out.append((name, 1, False))
    for group in _BRANCHES.findall(ins.rest):
        out += [(n.strip().lstrip("%"), 1, False) for n in group.split(",") if n.strip()]
    return out


def multiplicities(comps: dict[str, Computation]) -> tuple[dict[str, int], list[str]]:
    """How many times each computation runs per execution of the entry (loop bodies times their
    trip count), and the while loops whose trip count XLA did not know (counted once)."""
    entry = next(c.name for c in comps.values() if c.entry)
    order, seen = [], set()

    def visit(name):  # callers before callees: the call graph is a DAG
        if name in seen or name not in comps:
            return
        seen.add(name)
        for ins in comps[name].instrs:
            for callee, _, _ in _callees(ins):
                visit(callee)
        order.append(name)

    visit(entry)
    mult = {name: 0 for name in order}
    mult[entry] = 1
    unknown = []
    for name in reversed(order):
        for ins in comps[name].instrs:
            if ins.op == "while" and not _TRIP.search(ins.rest):
                unknown.append(ins.name)
            for callee, times, _ in _callees(ins):
                if callee in mult:
                    mult[callee] += mult[name] * times
    return mult, unknown


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def dot_flops(text: str) -> float:
    """FLOPs of the program's dot ops per execution (2 x output elements x contracted size), each
    weighted by how often its computation runs: the matmul part of step_cost, read directly."""
    comps = parse(text)
    mult, _ = multiplicities(comps)
    shapes = {i.name: i.shape for c in comps.values() for i in c.instrs}
    total = 0.0
    for c in comps.values():
        for ins in c.instrs:
            if ins.op != "dot" or not mult.get(c.name):
                continue
            lhs = _dims(shapes.get(re.findall(r"%([\w.\-]+)", ins.rest)[0], ""))
            m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.rest)
            k = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m else 1
            total += mult[c.name] * 2.0 * math.prod(_dims(ins.shape)) * k
    return total


def _group_size(rest: str, n_devices: int) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if m:  # mesh['axis_0'=1,'axis_1'=8] {'axis_1'}: the product of the named axes
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", rest)
    if m:  # iota form [groups, size]<=[n]
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([^}]*)\}", rest)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"source_target_pairs=\{(.*?)\}\s*(,|$)", rest)
    return 2 if m else n_devices


def collectives(text: str, n_devices: int) -> dict[str, dict]:
    """Per collective kind: ops executed per step, bytes per device (the convention above) and
    the group size most of its bytes move in."""
    comps = parse(text)
    mult, _ = multiplicities(comps)
    names = {i.name: i.shape for c in comps.values() for i in c.instrs}
    out = {k: {"ops": 0, "bytes": 0, "group": 1} for k in COLLECTIVES}
    weight: dict[str, dict[int, int]] = {k: {} for k in COLLECTIVES}
    for c in comps.values():
        times = mult.get(c.name, 0)
        for ins in c.instrs:
            kind = ins.op.removesuffix("-start")
            if kind not in COLLECTIVES or not times:
                continue
            operands = re.findall(r"%([\w.\-]+)", ins.rest.split(")", 1)[0])
            op_bytes = sum(shape_bytes(names.get(o, "")) for o in operands)
            res = shape_bytes(ins.shape)
            # an async start's result holds its operands beside the output
            b = max(op_bytes, res - op_bytes) if ins.op.endswith("-start") else max(op_bytes, res)
            g = _group_size(ins.rest, n_devices)
            out[kind]["ops"] += times
            out[kind]["bytes"] += times * b
            weight[kind][g] = weight[kind].get(g, 0) + times * b
    for k, w in weight.items():
        if w:
            out[k]["group"] = max(w, key=w.get)
    return out


def _closure(comps, name, acc):
    if name in acc or name not in comps:
        return acc
    acc.add(name)
    for ins in comps[name].instrs:
        for callee, _, _ in _callees(ins):
            _closure(comps, callee, acc)
    return acc


def _module_text(comps, name) -> str:
    """A module whose entry is `name` and holding every computation it calls (callees first)."""
    keep = _closure(comps, name, set())
    parts = ["HloModule sub"]
    for c in comps.values():
        if c.name in keep and c.name != name:
            parts.append("\n".join(c.lines).replace("ENTRY ", "", 1) if c.entry else "\n".join(c.lines))
    parts.append("ENTRY " + "\n".join(comps[name].lines).removeprefix("ENTRY "))
    return "\n\n".join(parts)


def step_cost(text: str, client, keys=("flops", "bytes accessed", "transcendentals")) -> dict | None:
    """XLA's cost analysis of the whole program with each loop body weighted by its trip count:
    cost(C) = once(C) + sum over the loops C runs directly of (trip * cost(body) - once(body)),
    once() being HloCostAnalysis's own figure (each body counted once). None where this jaxlib
    lacks the (private) entry points that analyse a module parsed from text."""
    try:  # deferred: jax loads after the device count is set
        from jax._src.lib import xla_client
        from jaxlib import _hlo

        analyse, from_text = xla_client._xla.hlo_module_cost_analysis, _hlo.hlo_module_from_text
    except (ImportError, AttributeError):
        return None

    comps = parse(text)
    memo: dict[str, dict] = {}

    def once(name):
        if name not in memo:
            got = analyse(client, from_text(_module_text(comps, name)))
            memo[name] = {k: float(got.get(k, 0.0)) for k in keys}
        return memo[name]

    def loops(name, seen=None):  # the while ops reachable from `name` without entering a loop body
        seen = set() if seen is None else seen
        if name in seen or name not in comps:
            return []
        seen.add(name)
        found = []
        for ins in comps[name].instrs:
            for callee, times, is_body in _callees(ins):
                found += [(callee, times)] if is_body else loops(callee, seen)
        return found

    def cost(name):
        total = dict(once(name))
        for body, trip in loops(name):
            inner, base = cost(body), once(body)
            for k in keys:
                total[k] += trip * inner[k] - base[k]
        return total

    entry = next(c.name for c in comps.values() if c.entry)
    out = cost(entry)
    out["trip_counts"] = sorted((int(t) for _, t in loops_all(comps)), reverse=True)
    return out


def loops_all(comps) -> list[tuple[str, int]]:
    return [(callee, t) for c in comps.values() for i in c.instrs for callee, t, body in _callees(i) if body]


def raw_cost(compiled) -> dict:
    """compiled.cost_analysis() as one dict (older jax returned a one-element list)."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return {k: float(v) for k, v in (ca or {}).items() if k in ("flops", "bytes accessed", "transcendentals")}


__all__ = ["COLLECTIVES", "collectives", "dot_flops", "multiplicities", "parse", "raw_cost", "shape_bytes", "step_cost"]
