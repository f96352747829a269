"""Attention-degeneration analysis (docs/methods.md §3), per layer and head, on a batch of real text.

- rank at tau: average the post-softmax map over the batch ([T, T]); with singular values s,
  energy = s^2 / sum s^2; rank = the smallest r whose cumulative energy reaches tau.
- single-column mass: the share of all attention probability landing in the most-attended key
  column of the batch-averaged map (1.0 = every query looks at one token).
- a layer is degenerate when more than `head_frac` of its heads have rank <= rank_max or
  mass >= mass_min.

Everything runs jit-compiled inside the decoder's layer scan (`hidden_states(layer_fn=...)`):
each layer's maps exist only while that layer runs, and only [H] metrics (plus a small corner of
each averaged map, for the example plots) leave the scan. The spectrum is taken per layer in
chunks of heads (`lax.map(batch_size=chunk)`), so peak memory is one layer's maps, not [L, H, T, T].
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare import plots
from jaxshare.core.config import ModelConfig
from jaxshare.core.model import attention_probs, attention_scale, decoder_layer, hidden_states, norm, qk_rope
from jaxshare.errors import JaxshareError

# Cumulative energies are float32 sums; a map whose energy reaches tau exactly (the identity at
# tau = 0.9 with T = 10) must not miss it by one rounding step.
ENERGY_TOL = 1e-6


class AnalysisError(JaxshareError, ValueError):
    """Analysis settings that cannot give a meaningful number."""


def check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and 0 < tau <= 1):
        raise AnalysisError(f"--tau must be in (0, 1], got {tau}")
    return float(tau)


def spectrum_energy(m_TT: jax.Array) -> jax.Array:
    """Squared singular values of one map, descending [T] (the SVD itself, values only)."""
    s = jnp.linalg.svd(m_TT.astype(jnp.float32), compute_uv=False)
    return s * s


def head_metrics(avg_HTT: jax.Array, tau, chunk: int = 4) -> tuple[jax.Array, jax.Array]:
    """(rank [H] int32, mass [H] float32) of batch-averaged maps [H, T, S]; SVDs in chunks of heads."""
    H, T, S = avg_HTT.shape
    e_HS = jax.lax.map(spectrum_energy, avg_HTT, batch_size=min(chunk, H))
    cum_HS = jnp.cumsum(e_HS, axis=-1) / jnp.maximum(jnp.sum(e_HS, axis=-1, keepdims=True), 1e-30)
    rank = jnp.minimum(jnp.sum(cum_HS < tau - ENERGY_TOL, axis=-1) + 1, e_HS.shape[-1]).astype(jnp.int32)
    mass = jnp.max(jnp.sum(avg_HTT, axis=-2), axis=-1) / T  # column sums over all T query rows
    return rank, mass


def _analysis_layer(tau, chunk: int, corner: int):
    """A decoder layer (hidden_states' layer_fn) that also returns this layer's metrics."""

    def layer_fn(x_BTD, layer, cfg: ModelConfig, rope, q_pos_BT, window, kv=None):
        q, k = qk_rope(norm(x_BTD, layer.attn_norm, cfg), layer.attn, cfg, rope)  # q/k norms included
        p = attention_probs(q, k, q_pos_BT, q_pos_BT, window, attention_scale(cfg))  # [B, K, G, T, T], this layer only
        B, K, G, T, _ = p.shape
        avg_HTT = jnp.mean(p, axis=0).reshape(K * G, T, T)
        rank, mass = head_metrics(avg_HTT, tau, chunk)
        x_BTD, _ = decoder_layer(x_BTD, layer, cfg, rope, q_pos_BT, window)
        return x_BTD, {"rank": rank, "mass": mass, "corner": avg_HTT[:, :corner, :corner]}

    return layer_fn


@partial(jax.jit, static_argnames=("cfg", "chunk", "corner"))
def _scan(params, cfg: ModelConfig, tokens_BT, tau, chunk: int, corner: int):
    _, aux = hidden_states(params, cfg, tokens_BT, layer_fn=_analysis_layer(tau, chunk, corner))
    return aux


def analyze(params, cfg: ModelConfig, tokens_BT, tau: float = 0.9, rank_max: int = 1, mass_min: float = 0.5,
            head_frac: float = 0.5, chunk: int = 4, corner: int = 64) -> dict:
    """Per-(layer, head) rank and mass, per-layer summaries, degenerate flags (numpy / lists)."""
    tau = check_tau(tau)
    if not (0 <= mass_min <= 1):
        raise AnalysisError(f"--mass-min must be in [0, 1], got {mass_min}")
    if not (0 <= head_frac < 1):
        raise AnalysisError(f"--head-frac must be in [0, 1), got {head_frac}")
    if rank_max < 0 or chunk < 1:
        raise AnalysisError(f"--rank-max must be >= 0 and --chunk >= 1, got {rank_max}, {chunk}")
    tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
    aux = _scan(params, cfg, tokens_BT, jnp.float32(tau), chunk, min(corner, tokens_BT.shape[1]))
    rank, mass = np.asarray(aux["rank"]), np.asarray(aux["mass"], np.float64)
    return summarize(rank, mass, tau, rank_max, mass_min, head_frac) | {"corner": np.asarray(aux["corner"])}


def summarize(rank_LH: np.ndarray, mass_LH: np.ndarray, tau: float, rank_max: int, mass_min: float,
              head_frac: float) -> dict:
    degenerate_LH = (rank_LH <= rank_max) | (mass_LH >= mass_min)
    frac_L = degenerate_LH.mean(axis=1)
    return {"rank": rank_LH, "mass": mass_LH, "layer_rank_mean": rank_LH.mean(axis=1),
            "layer_mass_mean": mass_LH.mean(axis=1), "degenerate_heads": degenerate_LH,
            "degenerate_fraction": frac_L, "degenerate": frac_L > head_frac,
            "thresholds": {"tau": tau, "rank_max": rank_max, "mass_min": mass_min, "head_frac": head_frac}}


def auto_k(res: dict, run_frac: float = 0.75) -> tuple[int, str]:
    """k for `inherit --auto`: the layers before the deep run of degenerate layers, i.e. the first
    degenerate layer l >= 1 with at least `run_frac` of layers l..L-1 degenerate. With no such
    layer, half the depth (the paper's default), and the reason says so."""
    deg = np.asarray(res["degenerate"], bool)
    L = len(deg)
    th = res["thresholds"]
    for l in range(1, L):
        if deg[l] and deg[l:].mean() >= run_frac:
            return l, (f"layers {l}..{L - 1}: {int(deg[l:].sum())} of {L - l} degenerate (more than "
                       f"{th['head_frac']:.0%} of heads with rank <= {th['rank_max']} at tau={th['tau']} or "
                       f"single-column mass >= {th['mass_min']}); inheriting the {l} layers before them")
    return max(1, L // 2), (f"no deep run of degenerate layers ({int(deg.sum())} of {L} degenerate at {th}); "
                            f"inheriting half the depth, {max(1, L // 2)} layers")


def to_json(res: dict) -> dict:
    keys = ("rank", "mass", "layer_rank_mean", "layer_mass_mean", "degenerate_fraction", "degenerate")
    out = {k: np.asarray(res[k]).tolist() for k in keys}
    out["degenerate_layers"] = np.flatnonzero(res["degenerate"]).tolist()
    out["thresholds"] = res["thresholds"]
    return out


def write_plots(res: dict, out_dir, title: str) -> list:
    """Heatmaps (layer x head) of rank and mass, per-layer curves, example maps shallow vs deep."""
    d = Path(out_dir)
    L = res["rank"].shape[0]
    files = [plots.grid(res["rank"], d / "degeneration_rank.png", f"rank at tau={res['thresholds']['tau']} ({title})",
                        "rank", "head", "layer"),
             plots.grid(res["mass"], d / "degeneration_mass.png", f"single-column mass ({title})", "mass", "head",
                        "layer", vmin=0.0, vmax=1.0),
             plots.lines(list(range(L)), {"mean rank": res["layer_rank_mean"].tolist()}, d / "degeneration_rank_curve.png",
                         f"mean rank per layer ({title})", "layer", "rank at tau"),
             plots.lines(list(range(L)), {"mean mass": res["layer_mass_mean"].tolist(),
                                          "degenerate head fraction": res["degenerate_fraction"].tolist()},
                         d / "degeneration_mass_curve.png", f"single-column mass per layer ({title})", "layer", "share")]
    shown = sorted({1 % L, L // 4, L // 2, (3 * L) // 4, L - 1})
    panels = {f"layer {l}, head 0": res["corner"][l, 0] for l in shown}
    files.append(plots.panels(panels, d / "degeneration_examples.png",
                              f"batch-averaged attention, first {res['corner'].shape[-1]} tokens ({title})"))
    return files
