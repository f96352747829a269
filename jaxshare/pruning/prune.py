"""Width pruning of a dense model: how many channels and groups each layer keeps (refusing what
cannot be honoured, in one line), which ones (importance.py), the slicing (shrink.py) and the
optional least-squares compensation of down and o (compensate.py), with one report."""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.compressed import is_compressed
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import get_type
from jaxshare.core.params import Params, count_params, param_bytes, replace_leaves
from jaxshare.errors import MethodError
from jaxshare.pruning import compensate as comp
from jaxshare.pruning.importance import keep_per_layer, keep_top, kv_importance, mlp_importance, output_energy
from jaxshare.pruning.ragged import to_ragged
from jaxshare.pruning.shrink import shrink_kv, shrink_mlp
from jaxshare.core import host

WHOLE = 0.01  # a KV ratio may miss a whole number of groups by this much (0.333 of 3 groups is 1)
LAYER_CAP = 1.5  # per_layer: no layer loses more than this many times the uniform count (2 was worse on
# wiki:validation at -20%: experiments/prune_select.py)


def _check_ratio(key: str, r) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
        raise MethodError(f"{key} must be a ratio in [0, 1), got {r!r}")
    return float(r)


def mlp_keep_count(cfg: ModelConfig, r: float) -> int:
    """MLP channels each layer keeps: d_ff minus round(r * d_ff)."""
    F = cfg.d_ff
    n = int(round(_check_ratio("mlp", r) * F))
    if r > 0 and n == 0:
        raise MethodError(f"mlp {r} removes no channel of the {F} per layer; give at least {1 / F:.3g}")
    if n >= F:
        raise MethodError(f"mlp {r} removes all {F} MLP channels of every layer; give a smaller ratio")
    return F - n


def kv_keep_count(cfg: ModelConfig, r: float) -> int:
    """KV groups each layer keeps; the ratio must remove a whole number of them."""
    K = cfg.n_kv_heads
    exact = _check_ratio("kv_groups", r) * K
    n = int(round(exact))
    if abs(exact - n) > WHOLE or (r > 0 and n == 0):
        steps = ", ".join(f"{i / K:.3g}" for i in range(1, K))
        raise MethodError(f"kv_groups {r} removes {exact:.3g} of the {K} KV groups per layer, not a whole number; "
                          + (f"use one of {steps}" if K > 1 else "this model has one KV group per layer, which "
                             "cannot be removed"))
    if n >= K:
        raise MethodError(f"kv_groups {r} removes all {K} KV groups of every layer; give a smaller ratio")
    return K - n


def pruned_config(cfg: ModelConfig, mlp: float, kv_groups: float) -> ModelConfig:
    """The config after pruning (refusals first, before any compute)."""
    f, k = mlp_keep_count(cfg, mlp), kv_keep_count(cfg, kv_groups)
    return dataclasses.replace(cfg, d_ff=f, n_kv_heads=k, n_heads=k * cfg.groups)


def check_dense(params: Params, types) -> None:
    for t in types:
        leaf = get_type(params.layers, t)
        if leaf is None:
            continue
        if is_compressed(leaf):
            raise MethodError(f"prune needs dense {t} weights, and {t} is already {type(leaf).__name__} in the input "
                              "model; prune first, then share, basis or quantize")


def check_grams(grams, cfg: ModelConfig, need: tuple) -> None:
    sizes = {"down_in": cfg.d_ff, "o_in": cfg.n_heads * cfg.head_dim}
    if grams is None:
        raise MethodError("pruning ranks channels by their calibration activations: give calibration grams")
    for name in need:
        g = grams.get(name) if hasattr(grams, "get") else None
        if g is None or len(g) != cfg.n_layers or tuple(np.shape(g[0])) != (sizes[name],) * 2:
            raise MethodError(f"calibration grams {name} do not match this model ({cfg.n_layers} layers of "
                              f"{sizes[name]} x {sizes[name]}); collect them on the model being pruned")


def select(grams, cfg: ModelConfig, mlp: float, kv_groups: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(keep_LF, keep_LK): the kept channel and group indices per layer (None where nothing is pruned)."""
    f, k = mlp_keep_count(cfg, mlp), kv_keep_count(cfg, kv_groups)
    keep_LF = keep_top(mlp_importance(grams, cfg), f) if f < cfg.d_ff else None
    keep_LK = keep_top(kv_importance(grams, cfg), k) if k < cfg.n_kv_heads else None
    return keep_LF, keep_LK


def select_per_layer(grams, cfg: ModelConfig, mlp: float, w_down) -> list[np.ndarray] | None:
    """Each layer's kept MLP channels when the model as a whole removes as many as `mlp` uniformly
    would, each layer at most LAYER_CAP times that many (and never all): those of least energy in
    the residual stream go first (importance.output_energy)."""
    f = mlp_keep_count(cfg, mlp)
    if f == cfg.d_ff:
        return None
    n = cfg.d_ff - f
    energy = output_energy(mlp_importance(grams, cfg), w_down)
    return keep_per_layer(energy, cfg.n_layers * n, min(cfg.d_ff - 1, int(LAYER_CAP * n)))


def shrink_mlp_ragged(params: Params, cfg: ModelConfig, keep: list, down_rows: list | None):
    """Per-layer widths: gate/up/down (and their channel biases) as Ragged banks (pruning/ragged.py);
    down_rows: compensated rows per layer in place of the sliced ones."""
    from jaxshare.pruning.ragged import CHANNEL_AXIS, Ragged, ragged_index

    mlp, new = params.layers.mlp, {}
    for path, axis in CHANNEL_AXIS.items():
        leaf = getattr(mlp, path.rsplit(".", 1)[1])
        if leaf is not None:
            new[path] = to_ragged(leaf, keep, axis)
    if down_rows is not None:
        rows = np.concatenate(list(down_rows) + [np.zeros((1, cfg.d_model), down_rows[0].dtype)])
        new["layers.mlp.w_down"] = Ragged(jax.device_put(rows, may_alias=True),
                                          jnp.asarray(ragged_index([len(k) for k in keep])), 0)
    width = max(len(k) for k in keep)
    return replace_leaves(params, new), dataclasses.replace(cfg, d_ff=width)


def group_rows(keep_LK: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """[L, K' G d]: the rows of o's 2-D view ([K G d, D], head-major) of the kept groups."""
    block = cfg.groups * cfg.head_dim
    return (keep_LK[:, :, None] * block + np.arange(block)).reshape(keep_LK.shape[0], -1).astype(np.int32)


def _fit(w_LND, grams_L, keep_LR: np.ndarray, refit: bool) -> tuple[np.ndarray | None, dict]:
    """Per layer: the refit rows (refit; [L, R, D] in w's dtype, filled a layer at a time: a list
    of float64 layers stacked at the end held 2 x 2.5 GB at a 1.5B model's down projection) and
    the calibration error of slicing, and of the refit."""
    L = len(keep_LR)
    errs_sliced, errs_fit = [], []
    ragged = not isinstance(keep_LR, np.ndarray)  # per-layer widths: a list of per-layer rows
    out = None if not refit else [None] * L if ragged else host.empty((L, keep_LR.shape[1], w_LND.shape[-1]),
                                                                       w_LND.dtype)
    for i in range(L):
        w, g, keep = np.asarray(w_LND[i], np.float64), np.asarray(grams_L[i], np.float64), keep_LR[i]
        errs_sliced.append(comp.rel_error(w, g, keep, w[keep]))
        if refit:
            fit = comp.refit(w, g, keep)
            errs_fit.append(comp.rel_error(w, g, keep, fit))
            out[i] = fit.astype(w_LND.dtype) if ragged else fit
        del w, g
    rep = {"rel_calib_error_sliced": float(np.mean(errs_sliced))}
    if refit:
        rep["rel_calib_error_compensated"] = float(np.mean(errs_fit))
    return out, rep


def _free(old, new) -> None:
    """Delete the buffers of `old`'s leaves that `new` replaced (consume: the caller's params are
    not used again, and the dense and pruned copies of a 1.5B model's MLP need not coexist)."""
    keep = {id(x) for x in jax.tree_util.tree_leaves(new)}
    for x in jax.tree_util.tree_leaves(old):
        if id(x) not in keep and isinstance(x, jax.Array) and not x.is_deleted():
            x.delete()


def prune(params: Params, cfg: ModelConfig, grams, mlp: float = 0.0, kv_groups: float = 0.0,
          compensate: bool = False, consume: bool = False, per_layer: bool = False) -> tuple[Params, ModelConfig, dict]:
    """(params, cfg, report) of the width-pruned model: every layer keeps the same number of MLP
    channels (mlp: the share removed) and KV groups (kv_groups), each its own most active ones.
    per_layer: the same number of MLP channels removed from the model as a whole, each layer its
    own count (select_per_layer), held as Ragged banks; cfg.d_ff is then the widest layer.
    consume: delete each replaced dense leaf's buffer (the caller's `params` become unusable)."""
    t0 = time.perf_counter()
    pb, bb = count_params(params), param_bytes(params)  # before any leaf is consumed
    new_cfg = pruned_config(cfg, mlp, kv_groups)
    types = (["gate", "up", "down"] if mlp > 0 else []) + (["q", "k", "v", "o"] if kv_groups > 0 else [])
    check_dense(params, types)
    report = {"mlp": mlp, "kv_groups": kv_groups, "compensate": compensate,
              "d_ff": [cfg.d_ff, new_cfg.d_ff], "n_kv_heads": [cfg.n_kv_heads, new_cfg.n_kv_heads],
              "n_heads": [cfg.n_heads, new_cfg.n_heads], "per_type": {}}
    if types:
        check_grams(grams, cfg, (("down_in",) if mlp > 0 else ()) + (("o_in",) if kv_groups > 0 else ()))
    keep_LF, keep_LK = (None, None) if not types else select(grams, cfg, 0.0 if per_layer else mlp, kv_groups)
    if per_layer and mlp > 0:
        keep_LF = select_per_layer(grams, cfg, mlp, params.layers.mlp.w_down)
    out = params
    if keep_LF is not None:
        w_down = params.layers.mlp.w_down
        fit, report["per_type"]["down"] = _fit(w_down, grams["down_in"], keep_LF, compensate)
        before = out
        if per_layer:
            out, new_cfg = shrink_mlp_ragged(out, new_cfg, keep_LF, fit)
            report["d_ff"][1] = new_cfg.d_ff
            report["widths"] = [len(k) for k in keep_LF]
        else:
            out, _ = shrink_mlp(out, cfg, keep_LF, down=None if fit is None else host.adopt(fit), consume=consume)
        del fit
        if consume:
            _free(before, out)
    if keep_LK is not None:
        wo = params.layers.attn.wo  # [L, K, G, d, D]
        wo_LND = np.asarray(wo).reshape(cfg.n_layers, -1, cfg.d_model)
        fit, report["per_type"]["o"] = _fit(wo_LND, grams["o_in"], group_rows(keep_LK, cfg), compensate)
        before = out
        out, _ = shrink_kv(out, cfg, keep_LK)
        if fit is not None:
            shape = (cfg.n_layers, new_cfg.n_kv_heads) + wo.shape[2:]
            out = replace_leaves(out, {"layers.attn.wo": host.adopt(fit.reshape(shape))})
            del fit
        if consume:
            _free(before, out)
    pa = count_params(out)
    report.update(params_before=pb, params_after=pa, fraction_removed=1 - pa / pb,
                  bytes_before=bb, bytes_after=param_bytes(out),
                  seconds=time.perf_counter() - t0)
    return out, new_cfg, report
