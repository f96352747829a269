"""Training batches with grain: a deterministic, per-process sharded, checkpointable iterator.

The stream is global and independent of the device layout: window number i of the run is
`MapDataset.source(windows).shuffle(seed).repeat()[i]` (grain reshuffles every epoch with seed +
epoch). Step s reads windows s*A*B .. (s+1)*A*B - 1 as [A, B, T] (A micro-batches of B). A process
reads only the rows [lo, hi) of B that its devices hold, so each host loads 1/P of every batch;
the trainer assembles the global batch with `make_array_from_process_local_data`. The iterator's
state (grain's `next_index`, = steps consumed) is saved by orbax beside the params, one small
JSON per process, so a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

import math

import numpy as np

from jaxshare.optional import require

# grain's MapDataset.range needs an end; a run never reaches it.
_ENDLESS = 1 << 62


def _grain():
    # deferred on purpose: grain is optional (the `train` extra), and only a training run reads batches
    return require("grain", "train", "training (its data iterator)")


def window_stream(windows: np.ndarray, seed: int):
    """grain MapDataset: the run's endless stream of windows, reshuffled every epoch."""
    grain = _grain()

    return grain.MapDataset.source(windows).shuffle(seed=seed).repeat()


def batch_dataset(stream, micro: int, batch: int, rows: tuple[int, int]):
    """grain MapDataset whose item s is this process's [A, hi-lo, T] slice of step s's batch."""
    grain = _grain()

    lo, hi = rows
    A, B = micro, batch

    def load(s):
        base = s * A * B
        return np.stack([np.stack([stream[base + a * B + b] for b in range(lo, hi)]) for a in range(A)])

    return grain.MapDataset.range(_ENDLESS).map(load)


def batch_iterator(windows: np.ndarray, seed: int, micro: int, batch: int, rows: tuple[int, int] | None = None):
    """A checkpointable grain iterator of process-local batches [A, rows, T] (all rows by default).
    Threads off: items are cheap slices and the order must not depend on scheduling."""
    grain = _grain()

    rows = rows or (0, batch)
    ds = batch_dataset(window_stream(windows, seed), micro, batch, rows)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def steps_for(cfg, n_windows: int) -> int:
    """Optimizer steps of a run: steps, or tokens / tokens-per-step, or epochs * windows / per-step."""
    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.steps:
        return cfg.steps
    if cfg.tokens:
        return max(1, math.ceil(cfg.tokens / (per_step * cfg.seq_len)))
    return max(1, math.ceil(cfg.epochs * n_windows / per_step))
