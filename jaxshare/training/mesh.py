"""Device mesh and sharding of the training state: mesh axes (data, fsdp, tensor).

Where each leaf goes is decided by its logical axes (`jaxshare.core.axes`: layers, units, embed,
heads, kv_heads, head_dim, mlp, vocab) and a rules table mapping them onto the mesh axes; the
defaults shard weights over fsdp along the model width and over tensor along heads / MLP width /
vocab. A bank's unit axis and its int32 index are never split (a layer's index may read any
unit). The batch splits over data x fsdp.

ICI/DCN: `mesh` gives the axis sizes inside one slice (or one process, on CPU), `dcn_mesh` the
sizes across slices (processes); the mesh is their product, built so that each DCN step crosses
slices and the ICI axes stay inside one (`mesh_utils.create_hybrid_device_mesh`).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxshare.core import axes
from jaxshare.core.bank import trainable_mask
from jaxshare.errors import JaxshareError

AXES = ("data", "fsdp", "tensor")


class MeshError(JaxshareError, ValueError):
    """A mesh that cannot be built on these devices."""


def parse_mesh(spec: str, what: str = "mesh") -> dict[str, int]:
    """"data=2,fsdp=4" -> {"data": 2, "fsdp": 4}; "" -> {} (the default layout)."""
    out: dict[str, int] = {}
    if not spec:
        return out
    for part in spec.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if name not in AXES or not size.strip().lstrip("-").isdigit():
            raise MeshError(f"{what}: expected e.g. 'data=2,fsdp=4,tensor=1' (axes {', '.join(AXES)}), got {spec!r}")
        if int(size) < 1:
            raise MeshError(f"{what}: axis {name} must have size >= 1, got {size}")
        if name in out:
            raise MeshError(f"{what}: axis {name} given twice in {spec!r}")
        out[name] = int(size)
    return out


def _fill(sizes: dict[str, int], n: int, spec: str, where: str) -> tuple[int, ...]:
    """Axis sizes covering n devices: tensor defaults to 1; of data and fsdp, an unset one takes
    the rest (fsdp when both are unset)."""
    sizes = dict(sizes)
    sizes.setdefault("tensor", 1)
    free = [a for a in ("fsdp", "data") if a not in sizes]
    fixed = int(np.prod([sizes[a] for a in sizes]))
    if free:
        rest = n // fixed if n % fixed == 0 else -1
        sizes[free[0]] = rest
        for a in free[1:]:
            sizes[a] = 1
    shape = tuple(sizes[a] for a in AXES)
    if int(np.prod(shape)) != n or min(shape) < 1:
        raise MeshError(f"mesh {spec!r} does not cover the {n} available devices{where}")
    return shape


def make_mesh(spec: str = "", devices=None, dcn: str = ""):
    """A Mesh over `devices` (default: all) with axes (data, fsdp, tensor).

    Without `dcn`: unset axes take what is left (by default every device goes to fsdp), and a
    mesh giving both data and fsdp with fewer devices uses the first ones (a 1-device reference run). With `dcn`, `spec`
    is the per-slice (ICI) layout and `dcn` the layout across slices; a device's slice is its
    `slice_index` (TPU) or else its process."""
    devices = list(jax.devices() if devices is None else devices)
    sizes, dcn_sizes = parse_mesh(spec), parse_mesh(dcn, "dcn_mesh")
    auto = (AxisType.Auto,) * len(AXES)
    if not dcn_sizes:
        given = int(np.prod(list(sizes.values()))) if sizes else 0
        if {"data", "fsdp"} <= set(sizes) and given < len(devices):
            devices = devices[:given]
        shape = _fill(sizes, len(devices), spec, "")
        return jax.make_mesh(shape, AXES, auto, devices=devices)
    dcn_shape = tuple(dcn_sizes.get(a, 1) for a in AXES)
    granules = int(np.prod(dcn_shape))
    if len(devices) % granules:
        raise MeshError(f"dcn_mesh {dcn!r} ({granules} slices) does not divide the {len(devices)} devices")
    ici_shape = _fill(sizes, len(devices) // granules, spec, f" of one slice ({granules} slices)")
    by_process = getattr(devices[0], "slice_index", None) is None
    n_granules = len({d.process_index if by_process else d.slice_index for d in devices})
    if n_granules == 1:
        # One process and no slices (a CPU or single-host test of a pod layout): the same
        # DCN-outermost arrangement create_hybrid_device_mesh builds, over consecutive devices.
        grid = np.asarray(devices).reshape(dcn_shape + ici_shape)
        grid = grid.transpose(0, 3, 1, 4, 2, 5).reshape([d * i for d, i in zip(dcn_shape, ici_shape)])
        return Mesh(grid, AXES, axis_types=auto)
    try:
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=by_process)
    except (ValueError, AssertionError) as e:
        raise MeshError(f"mesh {spec!r} x dcn_mesh {dcn!r} cannot be laid out on these devices: {e}") from None
    return Mesh(grid, AXES, axis_types=auto)


def param_shardings(mesh, params, rules=None):
    """NamedSharding per leaf of a params tree (dense, banked or factored; arrays or
    ShapeDtypeStructs) from its logical axes."""
    return axes.tree_shardings(params, mesh, rules or axes.DEFAULT_RULES)


def state_shardings(mesh, state_shapes, params_shapes, rules=None, mask=None):
    """Shardings of the whole training state (init_state's tree): the trainable params and
    every optimizer-state subtree shaped like them follow the params' logical axes; frozen leaves
    (bank indices) follow theirs (replicated); counters, step and RNG are replicated."""
    full = param_shardings(mesh, params_shapes, rules)
    mask = trainable_mask(params_shapes) if mask is None else mask  # a recipe's own: which leaves train
    pick = lambda keep: jax.tree_util.tree_map(lambda m, s: s if m == keep else None, mask, full)  # noqa: E731
    train_sh, frozen_sh = pick(True), pick(False)
    train_def = jax.tree_util.tree_structure(state_shapes["params"])
    rep = replicated(mesh)

    def opt(node):
        if jax.tree_util.tree_structure(node) == train_def and type(node) is type(state_shapes["params"]):
            return train_sh
        return jax.tree_util.tree_map(lambda _: rep, node)

    opt_sh = jax.tree_util.tree_map(opt, state_shapes["opt_state"],
                                    is_leaf=lambda x: type(x) is type(state_shapes["params"]))
    out = {k: jax.tree_util.tree_map(lambda _: rep, v) for k, v in state_shapes.items()}
    out.update(params=train_sh, frozen=frozen_sh, opt_state=opt_sh)
    return out


def batch_sharding(mesh, ndim: int, batch_axis: int = 0):
    """Windows split over data x fsdp along `batch_axis` (micro-batch axis of [A, B, T])."""
    spec = [None] * ndim
    spec[batch_axis] = ("data", "fsdp")
    return NamedSharding(mesh, P(*spec))


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_devices(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(mesh, batch_size: int) -> None:
    n = batch_devices(mesh)
    if batch_size % n:
        raise MeshError(f"batch_size {batch_size} is not divisible by the {n} batch shards of the mesh "
                        f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")
