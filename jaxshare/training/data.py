"""Training batches over windows of token ids (jaxshare.data.tokens: tokenize once, windows), in
a deterministic per-epoch shuffle. The position (windows consumed so far) is the whole data
state: a checkpoint stores it and `batch_at(position)` replays from there.
"""
from __future__ import annotations

import numpy as np


class Batches:
    """Deterministic batches over packed windows: epoch e visits the windows in the order of
    permutation(seed, e); a batch is the next `per_step` windows, crossing epochs as needed."""

    def __init__(self, windows: np.ndarray, seed: int):
        self.windows = windows
        self.seed = seed
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))}
        return self._perm_cache[epoch]

    def batch_at(self, position: int, count: int) -> np.ndarray:
        """[count, seq_len] windows number position .. position+count-1 of the stream."""
        n = len(self.windows)
        idx = []
        for p in range(position, position + count):
            idx.append(self._perm(p // n)[p % n])
        return self.windows[np.asarray(idx)]


def steps_for(cfg, n_windows: int) -> int:
    """Optimizer steps of a run: steps, or tokens / tokens-per-step, or epochs * windows / per-step."""
    import math

    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.steps:
        return cfg.steps
    if cfg.tokens:
        return max(1, math.ceil(cfg.tokens / (per_step * cfg.seq_len)))
    return max(1, math.ceil(cfg.epochs * n_windows / per_step))
