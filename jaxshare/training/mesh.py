"""Device mesh and sharding rules for training: a 2-D mesh (data, fsdp).

Params and optimizer state shard one axis over `fsdp` (FSDP/ZeRO-3 style: XLA all-gathers a
weight where a layer uses it); the batch splits over data x fsdp. Axis 0 is never sharded:
for layer-stacked leaves it is the scanned L axis, and for a bank it is the unit axis, which an
index may read anywhere.
"""
from __future__ import annotations

import numpy as np

AXES = ("data", "fsdp")
# Leaves below this many elements stay replicated: sharding them costs more than it saves.
MIN_SHARD_ELEMENTS = 1 << 12


class MeshError(ValueError):
    """A mesh that cannot be built on these devices."""


def parse_mesh(spec: str) -> dict[str, int]:
    """"data=2,fsdp=4" -> {"data": 2, "fsdp": 4}; "" -> {} (the default layout)."""
    out: dict[str, int] = {}
    if not spec:
        return out
    for part in spec.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if name not in AXES or not size.strip().lstrip("-").isdigit():
            raise MeshError(f"mesh: expected 'data=N,fsdp=M', got {spec!r}")
        if int(size) < 1:
            raise MeshError(f"mesh: axis {name} must have size >= 1, got {size}")
        out[name] = int(size)
    return out


def make_mesh(spec: str = "", devices=None):
    """A Mesh over `devices` (default: all). Unset axes take what is left: by default every
    device goes to fsdp, which shards params and optimizer state and splits the batch too.
    Both axes given with a smaller product: the mesh uses the first data*fsdp devices."""
    import jax
    from jax.sharding import Mesh

    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec)
    if len(sizes) == 2 and sizes["data"] * sizes["fsdp"] < len(devices):
        # A fully given smaller mesh runs on the first devices (e.g. a 1-device reference run).
        devices = devices[: sizes["data"] * sizes["fsdp"]]
    n = len(devices)
    if "data" in sizes and "fsdp" not in sizes:
        sizes["fsdp"] = n // sizes["data"] if n % sizes["data"] == 0 else -1
    if "fsdp" in sizes and "data" not in sizes:
        sizes["data"] = n // sizes["fsdp"] if n % sizes["fsdp"] == 0 else -1
    sizes.setdefault("data", 1)
    sizes.setdefault("fsdp", n)
    if sizes["data"] * sizes["fsdp"] != n or min(sizes.values()) < 1:
        raise MeshError(f"mesh {spec!r} does not cover the {n} available devices")
    return Mesh(np.asarray(devices).reshape(sizes["data"], sizes["fsdp"]), AXES)


def leaf_spec(shape: tuple[int, ...], n_fsdp: int):
    """PartitionSpec of one param/optimizer leaf: the largest axis >= 1 divisible by n_fsdp."""
    from jax.sharding import PartitionSpec as P

    if n_fsdp <= 1 or len(shape) < 2 or int(np.prod(shape)) < MIN_SHARD_ELEMENTS:
        return P()
    axes = [a for a in range(1, len(shape)) if shape[a] % n_fsdp == 0]
    if not axes:
        return P()
    best = max(axes, key=lambda a: (shape[a], -a))
    return P(*([None] * best + ["fsdp"]))


def tree_shardings(mesh, tree):
    """NamedSharding per leaf of a tree of arrays or ShapeDtypeStructs (None leaves stay None).
    Integer leaves (bank indices, counters) are replicated."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    n = mesh.shape["fsdp"]

    def one(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, leaf_spec(tuple(x.shape), n))

    return jax.tree_util.tree_map(one, tree)


def batch_sharding(mesh, ndim: int, batch_axis: int = 0):
    """Windows split over data x fsdp along `batch_axis` (micro-batch axis of [A, B, T])."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    spec = [None] * ndim
    spec[batch_axis] = AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh):
    from jax.sharding import NamedSharding, PartitionSpec as P

    return NamedSharding(mesh, P())


def check_batch(mesh, batch_size: int) -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n:
        raise MeshError(f"batch_size {batch_size} is not divisible by the {n} devices of the mesh "
                        f"(data={mesh.shape['data']}, fsdp={mesh.shape['fsdp']})")
