"""The trainer's `inheritune` mode: one ordinary Trainer run per growth stage, driven from here
(the method package keeps the growth itself, `inheritune.grow`, and knows no Trainer).

run_dir/inheritune.json   the plan (stages, reference loss) and each finished stage's report
run_dir/stage_NN/init     the stage's starting model (native), written atomically
run_dir/stage_NN/         a Trainer run dir (checkpoints, final/, hf/, result.json)
A kill at any point resumes with `jaxshare train resume run_dir`: finished stages are skipped,
an interrupted stage resumes from its checkpoint, a stage that had not started starts.
"""
from __future__ import annotations

import dataclasses as dc
import json
import math
from pathlib import Path

from jaxshare.core.params import count_params
from jaxshare.data.tokens import token_ids, token_windows
from jaxshare.eval.perplexity import perplexity_of_windows
from jaxshare.inheritune.grow import check_stages, grow_params
from jaxshare.inheritune.inherit import InheritError, inherit
from jaxshare.io.load import load_model, resolve
from jaxshare.io.native import is_native, load_native, save_native
from jaxshare.training import rundir
from jaxshare.training.config import dump_config
from jaxshare.training.trainer import Trainer

STATE = "inheritune.json"


def _stage_dir(run_dir: Path, i: int, n: int) -> Path:
    return run_dir / f"stage_{i:02d}_{n}L"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _held_out_loss(params, cfg, windows, batch_size: int) -> float:
    return perplexity_of_windows(params, cfg, windows, batch_size, desc="reference")["nll"]


def _plan(tc, model) -> dict:
    """Stages, the reference (a spec or None) and its held-out loss; checked before any training."""
    L = model.cfg.n_layers
    stages = check_stages(tc.stages, tc.grow) or [L]
    if stages[0] > L:
        raise InheritError(f"the first stage has {stages[0]} layers but {tc.model} has only {L}")
    ref_spec = tc.reference or (tc.model if L > stages[0] else "")
    ref = None
    if ref_spec:
        resolve(ref_spec)
        ref = model if ref_spec == tc.model else load_model(ref_spec, "fp32")
    if tc.grow == "reference" and len(stages) > 1:
        if ref is None:
            raise InheritError("grow=reference needs a reference model (set reference=MODEL)")
        if stages[-1] > ref.cfg.n_layers:
            raise InheritError(f"the last stage has {stages[-1]} layers; the reference has {ref.cfg.n_layers}")
    ref_loss = None
    if ref is not None:
        windows = token_windows(token_ids(tc.eval_data, ref.tokenizer), tc.seq_len, tc.eval_windows,
                                vocab_size=ref.cfg.vocab_size, what=f"eval data {tc.eval_data}")
        ref_loss = _held_out_loss(ref.params, ref.cfg, windows, tc.eval_batch_size)
    return {"stages": stages, "grow": tc.grow, "reference": ref_spec or None, "reference_loss": ref_loss,
            "done": []}, ref


def _stage_init(tc, i: int, n: int, state: dict, model, ref, run_dir: Path) -> Path:
    """The starting checkpoint of stage i: the model (inherited to n layers) or the previous stage's
    trained model grown to n layers."""
    init = _stage_dir(run_dir, i, n) / "init"
    if is_native(init):
        return init
    extra = {"derived_from": str(model.source)}
    if i == 0:
        if model.cfg.n_layers > n:
            params, cfg, extra = inherit(model.params, model.cfg, n, {**model.meta.get("extra", {}), **extra})
        else:
            params, cfg, extra = model.params, model.cfg, {**model.meta.get("extra", {}), **extra}
    else:
        prev = Path(state["done"][-1]["final"])
        cfg, params, meta = load_native(prev)
        params, cfg = grow_params(params, cfg, n, tc.grow, (ref.params, ref.cfg) if ref is not None else None)
        extra = {"derived_from": str(prev), "grown": {"from_layers": meta["config"]["n_layers"], "how": tc.grow}}
    save_native(init, cfg, params, model.tokenizer, extra=extra, overwrite=True)
    return init


def run_inheritune(tc, resuming: bool = False, until_stage: int | None = None, overwrite: bool = False,
                   sets: list[str] | None = None) -> dict:
    """Train every stage of an `inheritune` config (resuming finished and interrupted stages).
    `until_stage`: stop after that many stages (what a kill at a stage boundary leaves).
    `overwrite`: a new run may replace an earlier jaxshare run in run_dir (training/rundir.py);
    `sets`: the resume overrides, also applied to the interrupted stage."""
    run_dir = Path(tc.run_dir)
    state_path = run_dir / STATE
    clear = False if resuming else rundir.check_new_run_dir(run_dir, overwrite)
    resolve(tc.model)
    model = load_model(tc.model, "fp32")
    if resuming and state_path.is_file():
        state = json.loads(state_path.read_text())
        ref = None
        if state["reference"]:
            ref = model if state["reference"] == tc.model else load_model(state["reference"], "fp32")
    else:
        state, ref = _plan(tc, model)
        if clear:  # only now, with the plan checked: an earlier run goes, our marker comes first
            rundir.clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_marker(run_dir)
        dump_config(tc, run_dir / "config.yaml")
        _write_json(state_path, state)
    ref_loss = state["reference_loss"]
    stages = state["stages"]
    status = "completed"
    for i, n in enumerate(stages):
        if i < len(state["done"]):
            continue
        if until_stage is not None and i >= until_stage:
            return {"status": "stopped", "stage": i, "run_dir": str(run_dir)}
        if state["done"] and tc.stop_at_reference and ref_loss is not None and state["done"][-1]["loss"] <= ref_loss:
            break
        sdir = _stage_dir(run_dir, i, n)
        init = _stage_init(tc, i, n, state, model, ref, run_dir)
        ckpts = sdir / "checkpoints"
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):  # a partial save is no checkpoint
            trainer = Trainer.resume(sdir, sets)
        else:
            # Each stage draws its batches with its own seed, so stages do not replay one order.
            stage_tc = dc.replace(tc, model=str(init), run_dir=str(sdir), stages="", reference="", seed=tc.seed + i)
            trainer = Trainer(stage_tc, inside_run=True)
        res = trainer.run()
        if res["status"] == "preempted":
            return {**res, "run_dir": str(run_dir)}
        loss = math.log(res["eval_ppl"])
        state["done"].append({"stage": i, "layers": n, "params": count_params(trainer.shared), "steps": res["steps"],
                              "tokens": res["tokens"], "loss": loss, "ppl": res["eval_ppl"], "reference_loss": ref_loss,
                              "final": res["final"], "hf": res.get("hf")})
        _write_json(state_path, state)
    last = state["done"][-1]
    reached = ref_loss is not None and last["loss"] <= ref_loss
    result = {"status": status, "mode": "inheritune", "stages": state["done"], "reference": state["reference"],
              "reference_loss": ref_loss, "reached_reference": reached,
              "steps": sum(s["steps"] for s in state["done"]), "tokens": sum(s["tokens"] for s in state["done"]),
              "eval_ppl": last["ppl"], "eval_data": tc.eval_data, "eval_windows": tc.eval_windows,
              "seq_len": tc.seq_len, "final": last["final"], "run_dir": str(run_dir)}
    if last.get("hf"):
        result["hf"] = last["hf"]
    _write_json(run_dir / "result.json", result)
    return result


def stage_table(result: dict) -> str:
    """The per-stage report as text."""
    ref = result["reference_loss"]
    lines = [f"{'stage':>5} {'layers':>6} {'params':>10} {'tokens':>8} {'loss':>8} {'PPL':>9} {'reference':>9}"]
    for s in result["stages"]:
        lines.append(f"{s['stage']:>5} {s['layers']:>6} {s['params'] / 1e6:>9.2f}M {s['tokens']:>8} {s['loss']:>8.4f} "
                     f"{s['ppl']:>9.3f} {'-' if ref is None else f'{ref:.4f}':>9}")
    return "\n".join(lines)
