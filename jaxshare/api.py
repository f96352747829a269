"""The verbs of `import jaxshare as js`: a Model in, `(Model, report)` out; writers `write(model, path)`.

    import jaxshare as js

    m = js.load("smollm2-135m")
    plan = {"steps": [{"share": {"ratio": 0.25, "keep": "mean"}},
                      {"basis": {"ratios": {"up": 0.3, "down": 0.3}}},
                      {"quantize": {"bits": 8, "method": "gptq"}}]}    # or a plan YAML file
    small, report = js.apply_plan(m, plan)         # calibrates as the plan says (books:train by default)
    docs = [open("text.txt").read()]
    print(js.perplexity(small.params, small.cfg, small.tokenizer, docs, seq_len=512, max_windows=8)["ppl"])
    js.save(small, "out/native")                   # banks, bases and int8 codes as they are
    js.export_hf(small, "out/hf")                  # dense weights + sharing.json, basis.json, quant.json
    js.export_gguf(small, "out/small.gguf")        # dense materialized weights in q8_0 (GGUF has no banks)
    again = js.load("out/native")                  # the same structure (js.load("out/hf") too)

(tests/test_api.py runs this script on a tiny model, with calibration windows given as `grams=`.)

Each method verb is its `jaxshare.methods` Method (the one `jaxshare compress --plan` and the CLI
subcommands use), so options are checked the same way everywhere. The forms of the first release
(`js.save(out, cfg, params)`, `js.export_hf(params, cfg, out)`, `js.direct_share(params, cfg, r)`,
`js.compress(params, cfg, grams, r)`) still work for one release and warn (DeprecationWarning).

Calibration (`grams=`) is taken as the grams themselves ({input: [L, d, d]}, what `js.collect_grams`
and `js.calibrate` give), as token windows [N, T] (grams collected on this model), or as a corpus
name or file (`js.calibrate` with its defaults for a CPU: 32 windows of 512 tokens).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from jaxshare.basis.calibrate import calibrate, collect_grams
from jaxshare.compose.apply import run_plan
from jaxshare.compose.plan import Plan, parse_plan, read_plan
from jaxshare.io.load import Model
from jaxshare.methods import METHODS, BasisOptions, HealOptions, InheritOptions, PruneOptions, ShareOptions
from jaxshare.quant.model import QuantSpec

CALIB_WINDOWS, CALIB_SEQ_LEN = 32, 512  # the CLI's CPU-sized calibration (cli/basis.py)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"js.{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=3)


def _model(model) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"expected a js.Model (what js.load returns), got {type(model).__name__}")
    return model


def grams_for(model: Model, calib, windows: int = CALIB_WINDOWS, seq_len: int = CALIB_SEQ_LEN, seed: int = 0):
    """Calibration grams of `model` from grams, token windows [N, T] or a corpus (None stays None)."""
    if calib is None or isinstance(calib, dict) or hasattr(calib, "items"):
        return calib
    if isinstance(calib, (str, Path)):
        return calibrate(model, str(calib), windows, seq_len, seed)[0]
    return collect_grams(model.params, model.cfg, np.asarray(calib, np.int32))


# ---------------------------------------------------------------- writers

def save(model, path=None, *args, overwrite: bool = False, **kwargs) -> Path:
    """Write a native jaxshare checkpoint of `model` (its compressed kinds and metadata included)."""
    from jaxshare.io.native import save_native

    if not isinstance(model, Model):  # save(out_dir, cfg, params, tokenizer=None, extra=None, ...)
        _deprecated("save(out_dir, cfg, params, ...)", "js.save(model, path)")
        return save_native(model, path, *args, overwrite=overwrite, **kwargs)
    return save_native(path, model.cfg, model.params, model.tokenizer, extra=model.extra, overwrite=overwrite,
                       **kwargs)


def export_hf(model, path=None, *args, dtype="fp32", overwrite: bool = False, **kwargs) -> Path:
    """Write an HF directory (dense weights transformers reads, plus each kind's manifest and side
    files, so js.load restores the compression)."""
    from jaxshare.io.hf import export_hf as write

    if not isinstance(model, Model):  # export_hf(params, cfg, out_dir, tokenizer=None, ...)
        _deprecated("export_hf(params, cfg, out_dir, ...)", "js.export_hf(model, path)")
        return write(model, path, *args, dtype=dtype, overwrite=overwrite, **kwargs)
    kwargs.setdefault("info", model.extra)
    return write(model.params, model.cfg, path, model.tokenizer, dtype=dtype, overwrite=overwrite, **kwargs)


def export_gguf(model, path, *, gguf_type: str = "q8_0", overwrite: bool = False) -> Path:
    """Write a llama.cpp GGUF file. Shared and basis weights are written dense (GGUF cannot gather an
    index: the file is not smaller than a dense model's, and says so); quantized leaves whose codes the
    GGUF type stores as they are (q8_0/q4_0/q4_1 with groups of 32) are copied, others re-quantized."""
    from jaxshare.io import registry
    from jaxshare.io.gguf_export import export_gguf as write

    m = _model(model)
    # the tokenizer is copied from the GGUF the model came from (a registered model's cached source too)
    name = m.extra.get("registered") if m.kind == "registered" else None
    source = m.source if m.kind == "gguf" else registry.registered_gguf(name) if name else None
    return write(m.params, m.cfg, path, m.tokenizer, gguf_type, overwrite, source_gguf=source,
                 name=f"{m.cfg.family} via jaxshare")


# ---------------------------------------------------------------- method verbs

def direct_share(model, *args, **kwargs):
    """(Model, report): `direct_share(model, ratio, match="qk", keep="root", share_o=False,
    correct="none", grams=None)`, DirectShare of `ratio` of the attention units; keep="data" or
    correct="qk"/"qkv" fit on calibration `grams`."""
    if not isinstance(model, Model):  # direct_share(params, cfg, ratio, match, keep, share_o, mesh)
        from jaxshare.headshare.directshare import direct_share as old

        _deprecated("direct_share(params, cfg, ratio, ...)", "js.direct_share(model, ratio)")
        return old(model, *args, **kwargs)
    return _share(model, *args, **kwargs)


def _share(model: Model, ratio: float, match: str = "qk", keep: str = "root", share_o: bool = False,
           correct: str = "none", grams=None):
    opts = ShareOptions(ratio, match, keep, correct, share_o)
    return METHODS["share"].apply(model, opts, grams_for(model, grams) if opts.data_aware else None)


def basis_share(model, ratio: float | None = None, *, grams=None, types=None, ratios: dict | None = None,
                ranks: dict | None = None, group_size: int = 2, method: str = "basis", shared=None):
    """(Model, report): Basis Sharing (method "basis"), SVD-LLM ("svd-llm") or plain SVD ("svd") of
    the linear weights: one `ratio` for `types` (default: every type still dense), or per-type
    `ratios` or exact `ranks`. grams: calibration (not needed by "svd")."""
    m = _model(model)
    opts = BasisOptions(ratio=ratio, types=None if types is None else tuple(types), ratios=ratios, ranks=ranks,
                        group_size=group_size, method=method, shared=None if shared is None else tuple(shared))
    return METHODS["basis"].apply(m, opts, grams_for(m, grams) if METHODS["basis"].needs_grams(opts) else None)


def quantize(model, spec: QuantSpec | None = None, *, grams=None, **options):
    """(Model, report): weight-only quantization of every linear weight, whatever form it has (dense,
    bank rows, a basis and its coefficients). spec: a QuantSpec, or its fields as keywords
    (bits, group, sym, method "rtn"/"gptq", damp, act_order); GPTQ needs calibration `grams`."""
    m = _model(model)
    if spec is not None and options:
        raise TypeError("give a QuantSpec or its fields as keywords, not both")
    spec = spec if spec is not None else QuantSpec(**options)
    return METHODS["quantize"].apply(m, spec, grams_for(m, grams) if METHODS["quantize"].needs_grams(spec) else None)


def inherit(model, k: int):
    """(Model, report): the first k layers (Inheritune), every compressed kind sliced with them."""
    return METHODS["inherit"].apply(_model(model), InheritOptions(k))


def prune(model, mlp: float = 0.0, kv_groups: float = 0.0, *, compensate: bool = False, per_layer: bool = False,
          calib=None):
    """(Model, report): structured width pruning to a smaller dense model. mlp: share of each layer's
    MLP channels removed; kv_groups: share of its KV groups removed with their query heads (a whole
    number of groups); compensate: refit down and o on the kept channels by least squares. calib:
    calibration (grams, token windows or a corpus; needed when a ratio is above 0) that ranks the
    channels by their activations. per_layer: as many MLP channels removed from the model as a whole,
    each layer its own share (per-layer widths; exports pad to the widest layer). The report: params
    before/after, fraction removed, kept sizes."""
    m = _model(model)
    opts = PruneOptions(mlp, kv_groups, compensate, per_layer)
    METHODS["prune"].check(opts, m.cfg)  # refusals before a calibration pass
    return METHODS["prune"].apply(m, opts, grams_for(m, calib) if opts.active else None)


def heal(student, teacher, **options):
    """(Model, report): distill `student` (any kind) from `teacher`, the dense model it was compressed
    from (KD over the full vocabulary; recipe `heal`). options: HealOptions' fields (tokens, data,
    eval_data, trains "all"/"compressed"/"lora", lora_rank, lora_alpha, merge, temperature,
    ce_weight, lr, seq_len, batch_size, eval_windows, run_dir). The report holds the held-out PPL
    before and after, the teacher's, and the fraction of the gap recovered (in nats)."""
    return METHODS["heal"].apply(_model(student), HealOptions(**options), teacher=_model(teacher))


def apply_plan(model, plan, grams=None):
    """(Model, report): every step of a plan (a Plan, its dict form, or a YAML file) in order, on one
    calibration (`grams`; default: the plan's own calibration section, read with the model's tokenizer)."""
    m = _model(model)
    if not isinstance(plan, Plan):
        plan = parse_plan(plan) if isinstance(plan, dict) else read_plan(plan)
    if plan.needs_grams():
        if grams is None:
            c = plan.calibration or {}
            m.need_tokenizer("the plan's calibration")
            grams = calibrate(m, c["data"], c["windows"], c["seq_len"], c["seed"])[0]
        else:
            grams = grams_for(m, grams)
    else:
        grams = None
    return run_plan(m, plan, grams)


def compress(*args, **kwargs):
    """Deprecated: Basis Sharing of (params, cfg, grams, ratio, ...) -> (params, manifest, report).
    Use js.basis_share(model, ratio, grams=...) (or js.apply_plan for what `jaxshare compress` does)."""
    from jaxshare.basis.compress import compress as old

    _deprecated("compress (Basis Sharing)", "js.basis_share(model, ratio, grams=...), or js.apply_plan(model, plan) "
                "for what the `jaxshare compress` command does")
    return old(*args, **kwargs)

