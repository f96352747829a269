"""The calibration grams of a plan carried over to the pruned model.

A plan collects its grams once, on the model it starts from (compose/apply.py). After a pruning step
down's input has F' channels and o's input K' G d, so a later step that reads those grams (GPTQ
packs every linear weight, down and o included) must see the kept rows and columns only: the
starting model's statistics of the channels that remain (in the first layer exactly those of the
pruned model; later layers see a residual stream the earlier pruning changed slightly, the same
one-pass approximation a plan makes after a share step). They are sliced lazily, one layer at a
time, as calibrate's on-disk store is read.
"""
from __future__ import annotations

import numpy as np


class KeptGrams:
    """The grams of one input restricted to kept indices per layer: g[i] ([n, n]), g[[i, j]] or
    g[a:b] ([m, n, n]); np.asarray(g) reads them all."""

    def __init__(self, grams_L, keep_LN: np.ndarray):
        self.grams_L, self.keep_LN = grams_L, keep_LN

    def __len__(self) -> int:
        return int(self.keep_LN.shape[0])

    @property
    def shape(self) -> tuple:
        n = int(self.keep_LN.shape[1])
        return (len(self), n, n)

    def _one(self, i: int) -> np.ndarray:
        keep = self.keep_LN[int(i)]
        return np.asarray(self.grams_L[int(i)])[np.ix_(keep, keep)]

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._one(idx)
        layers = range(len(self))[idx] if isinstance(idx, slice) else list(idx)
        return np.stack([self._one(i) for i in layers])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def carry(grams, keep: dict):
    """grams (a dict or store of {input: per-layer grams}) with the inputs in keep ({input: [L, n]})
    restricted to the kept indices; the other inputs as they were."""
    if grams is None or not keep:
        return grams
    return {**dict(grams), **{name: KeptGrams(grams[name], k) for name, k in keep.items()}}
