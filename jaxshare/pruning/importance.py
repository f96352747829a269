"""Channel and KV-group importance from the calibration grams, and the channels each layer keeps.

The grams (jaxshare.basis.calibrate) are X^T X of every linear's input, summed over all calibration
tokens, computed under jit inside the layer scan; their diagonals are exactly the per-channel sums
of squared activations, so no second forward pass is needed:

- MLP channel j of layer l: sum over tokens of h_j^2, h = act(x W_gate) * (x W_up) (GPT-2: act(x W_up + b)),
  the input of `down`: diag(down_in[l])[j].
- KV group k of layer l: the squared norm of the group's attention output before W_o, summed over
  its G query heads' d dims: sum of diag(o_in[l]) over the block [k G d, (k + 1) G d).

Aggregation. Minitron (Muralidharan et al. 2024, sec. 2.2) reduces the activation over the batch
and the sequence with mean, L2 or variance and reports (batch L2, sequence mean) as the best pair
for width. We take the L2 norm over every calibration token at once (batch and sequence flattened),
squared: ranking by it equals ranking by the L2 norm, and on equal-length windows it differs from
Minitron's pair only in how windows with a few very large activations weigh. It is what the grams
hold, so the ranking costs nothing beyond the calibration Basis Sharing and GPTQ already run.
"""
from __future__ import annotations

import numpy as np

from jaxshare.core.config import ModelConfig


def layer_diagonals(g, n_layers: int) -> np.ndarray:
    """[L, d] diagonals of per-layer grams: an array [L, d, d] or a lazy store (calibrate's GramStore),
    read one layer at a time so that a store never holds all layers at once."""
    # astype copies the diagonal: np.diagonal is a view, and views kept every layer's whole gram
    # alive until the stack (28 x 8960^2 in float64, 18 GB, for Qwen2-1.5B's down projection)
    return np.stack([np.diagonal(np.asarray(g[i])).astype(np.float64) for i in range(n_layers)])


def mlp_importance(grams, cfg: ModelConfig) -> np.ndarray:
    """[L, F] sum over calibration tokens of each gated hidden unit's squared activation."""
    return layer_diagonals(grams["down_in"], cfg.n_layers)


def kv_importance(grams, cfg: ModelConfig) -> np.ndarray:
    """[L, K] squared norm of each KV group's attention output (its G query heads together), summed
    over calibration tokens. The o input is flattened head-major (K, G, d), as wo's 2-D view."""
    diag_LH = layer_diagonals(grams["o_in"], cfg.n_layers)
    return diag_LH.reshape(cfg.n_layers, cfg.n_kv_heads, cfg.groups * cfg.head_dim).sum(-1)


def output_energy(importance_LF: np.ndarray, w_down_LFD) -> np.ndarray:
    """[L, F] each channel's energy in the residual stream on the calibration tokens: sum_t h_j^2 *
    ||W_down[j]||^2 (the diagonal of X W W^T X^T, the cross terms between channels left out as in
    the ranking itself). Every layer writes into the same residual stream, so this ranks channels
    model-wide where raw activations cannot (down's rows scale them differently per layer). Chosen
    on wiki:validation over each channel's share of its layer's energy and of its activations
    (experiments/prune_select.py), never on the held-out test windows."""
    out = np.empty(importance_LF.shape, np.float64)
    for l in range(importance_LF.shape[0]):
        out[l] = importance_LF[l] * np.sum(np.square(np.asarray(w_down_LFD[l], np.float64)), axis=-1)
    return out


def keep_per_layer(score_LF: np.ndarray, n_remove: int, max_layer_remove: int) -> list[np.ndarray]:
    """Each layer's kept channels (int32, original order) after removing the n_remove channels of
    lowest score model-wide, no layer losing more than max_layer_remove of them (so no layer
    is gutted by a ranking that knows nothing of what later layers need). Ties: lower layer, then
    lower index, first."""
    L, F = score_LF.shape
    order = np.argsort(score_LF.ravel(), kind="stable")
    removed = np.zeros(L, np.int64)
    drop = np.zeros(L * F, bool)
    left = n_remove
    for flat in order:
        if left == 0:
            break
        l = flat // F
        if removed[l] < max_layer_remove:
            removed[l] += 1
            drop[flat] = True
            left -= 1
    return [np.flatnonzero(~drop[l * F:(l + 1) * F]).astype(np.int32) for l in range(L)]


def keep_top(importance_LN: np.ndarray, n_keep: int) -> np.ndarray:
    """[L, n_keep] int32: each layer's n_keep most important indices, in their original order (so the
    pruned arrays keep the source's channel order). Ties are broken by the lower index (stable sort)."""
    order_LN = np.argsort(-importance_LN, axis=1, kind="stable")
    return np.sort(order_LN[:, :n_keep], axis=1).astype(np.int32)
