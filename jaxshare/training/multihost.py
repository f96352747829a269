"""What differs when a run spans several processes (hosts): who writes, how host data becomes a
global array, and how a sharded array comes back to host memory.

- Run-level files (config, plan, metrics, result, exports) are written by process 0 only
  (`is_primary`); orbax saves and restores are joined by every process, as orbax requires.
- A host tree that every process holds whole becomes global arrays with
  `make_array_from_callback` (each process materializes only its own devices' shards).
- A batch is loaded per process: each process reads only the rows its devices hold
  (`local_rows`) and `make_array_from_process_local_data` assembles the global batch.
- No process `device_get`s an array that spans other hosts: `to_host` gathers with
  `process_allgather` (a collective every process joins) where an array is not fully addressable.
"""
from __future__ import annotations

import secrets

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxshare.errors import UsageError


def is_primary() -> bool:
    return jax.process_index() == 0


def put_global(tree, shardings):
    """Host (or single-device) arrays -> global arrays laid out as `shardings` (a matching tree);
    every process must pass the same values."""
    def put(x, s):
        if x is None:
            return None
        if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
            return jax.device_put(x, s)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree_util.tree_map(put, tree, shardings, is_leaf=lambda x: x is None)


def to_host(tree):
    """numpy copy of every leaf on every process. Arrays sharded across processes are gathered by
    one `process_allgather` of the whole tree (a collective: every process calls this at the same
    point; a barrier first, so that a process still finishing process-0-only work is not timed
    out by the collective's own shorter deadline)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    spread = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    out = [None if i in spread else np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)]
    if spread:
        barrier("jaxshare_to_host")
        gathered = multihost_utils.process_allgather([leaves[i] for i in spread], tiled=True)
        for i, g in zip(spread, gathered):
            out[i] = np.asarray(g)
    return jax.tree_util.tree_unflatten(treedef, out)


def local_rows(sharding, global_shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """[lo, hi) along `axis` of the rows this process's devices hold (one contiguous block for a
    batch split over a process-major mesh; anything else is refused)."""
    spans = {(s[axis].start or 0, global_shape[axis] if s[axis].stop is None else s[axis].stop)
             for s in sharding.addressable_devices_indices_map(global_shape).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    covered = sorted(spans)
    pos = lo
    for a, b in covered:
        if a > pos:
            raise UsageError(f"process {jax.process_index()} holds rows {covered} of the batch, not one block; "
                             "order the mesh's batch axes process-major")
        pos = max(pos, b)
    return lo, hi


def global_batch(local_ABT: np.ndarray, sharding, global_shape: tuple[int, ...]):
    """The global [A, B, T] batch from this process's rows (see local_rows)."""
    if jax.process_count() == 1:
        return jax.device_put(local_ABT, sharding)
    return jax.make_array_from_process_local_data(sharding, local_ABT, global_shape)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def shared_token() -> str:
    """A random token that every process agrees on (process 0's), e.g. for a temporary name."""
    token = secrets.randbits(31)
    if jax.process_count() > 1:
        token = int(multihost_utils.broadcast_one_to_all(np.asarray(token, np.int32)))
    return f"{token:08x}"
