"""Device mesh from config, logical-axis rules, and the shardings they imply.

Every parameter of a jaxbert model carries logical axis names (``vocab``, ``embed``, ``heads``,
``kv``, ``mlp``, ...) through ``nn.with_logical_partitioning``; activations are constrained with
``batch``/``length``/... names. A rules table maps logical names to mesh axes, MaxText style.
Changing the parallelism is changing ``config.mesh`` and ``config.logical_axis_rules`` only::

    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))   # -1: all remaining devices
    config.logical_axis_rules = DEFAULT_RULES

A logical name mapped to a mesh axis whose size does not divide that dimension is replicated
along it instead (e.g. a 30,522-row vocabulary on a 4-way tensor axis); :func:`param_shardings`
records these fallbacks so they are visible, never silent.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbert.models.params import path_str

# logical name -> mesh axis (or tuple of axes, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query k/v heads of decoder LLMs (jaxbert.models.llm.model)
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("classes", None),
)

MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(spec: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a ``Mesh`` from ``((axis, size), ...)``; one size may be -1 (fills the remaining devices).

    Axis types are left at the classic (Auto) behaviour, which ``with_sharding_constraint`` and
    Flax logical constraints need.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(name for name, _ in spec)
    sizes = [int(size) for _, size in spec]
    if len(set(names)) != len(names):
        raise ValueError(f"mesh axis names repeat: {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {list(spec)}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got {list(spec)}")
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot fill mesh {list(spec)}: "
                             f"{len(devices)} is not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {len(devices)} are available")
    try:
        from jax.experimental import mesh_utils
        arr = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # odd topologies / CPU: plain order is fine
        arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, names)


def rules_to_dict(rules: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    return {name: (tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules}


def _axes_tuple(axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
                    rules: Iterable[tuple[str, Any]], fallbacks: list | None = None, where: str = "") -> P:
    """Translate logical axis ``names`` of an array to a ``PartitionSpec`` on ``mesh``.

    Mesh axes that are absent from the mesh, have size 1, are already used by an earlier
    dimension, or do not divide the dimension are dropped (recorded in ``fallbacks``).
    """
    table = rules_to_dict(rules)
    used: set[str] = set()
    out = []
    for dim, name in enumerate(names):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r}{' of ' + where if where else ''} has no rule; "
                           f"rules cover {sorted(table)}")
        axes = [a for a in _axes_tuple(table.get(name)) if a in mesh.shape and mesh.shape[a] > 1 and a not in used]
        if shape is not None and axes:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[dim] % size:
                if fallbacks is not None:
                    fallbacks.append((where, dim, name, tuple(axes), shape[dim]))
                axes = [a for a in axes if shape[dim] % mesh.shape[a] == 0][:1]
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*out)


def param_shardings(abstract_boxed_params: Any, mesh: Mesh, rules: Iterable[tuple[str, Any]]
                    ) -> tuple[Any, list]:
    """NamedShardings for params from their logical annotations.

    ``abstract_boxed_params`` is ``jax.eval_shape(model.init, ...)['params']`` (leaves wrapped in
    ``nn.LogicallyPartitioned``). Returns ``(shardings, fallbacks)`` where shardings has the
    structure of the *unboxed* params and fallbacks lists replicated-instead-of-sharded dims.
    """
    fallbacks: list = []
    rules = tuple(rules)

    def one(path, leaf):
        if isinstance(leaf, meta.Partitioned):
            names, value = leaf.names, leaf.value
        else:
            names, value = (None,) * len(leaf.shape), leaf
        spec = logical_to_spec(names, value.shape, mesh, rules, fallbacks, where=path_str(path))
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(one, abstract_boxed_params,
                                                 is_leaf=lambda x: isinstance(x, meta.Partitioned))
    return shardings, fallbacks


def tree_shardings_like(tree: Any, param_shardings_tree: Any, params_abstract: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer-state pytree: a leaf whose trailing dict-key path and shape match a
    parameter gets that parameter's sharding (Adam moments, etc.); any other leaf is replicated.

    Works for any optax state without knowing its structure.
    """
    by_path: dict[tuple, tuple[tuple, NamedSharding]] = {}
    for (path, sh), (_, ab) in zip(jax.tree_util.tree_leaves_with_path(param_shardings_tree),
                                   jax.tree_util.tree_leaves_with_path(params_abstract)):
        by_path[tuple(getattr(k, "key", None) for k in path)] = (tuple(ab.shape), sh)
    depth = max((len(k) for k in by_path), default=0)
    replicated = NamedSharding(mesh, P())

    def one(path, leaf):
        keys = tuple(getattr(k, "key", None) for k in path)
        shape = tuple(getattr(leaf, "shape", ()))
        for n in range(min(depth, len(keys)), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and hit[0] == shape:
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, rules: Iterable[tuple[str, Any]], ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, ...]`` array: batch over the data-parallel axes, the rest replicated."""
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), None, mesh, rules)
    return NamedSharding(mesh, spec)


def data_parallel_size(mesh: Mesh, rules: Iterable[tuple[str, Any]]) -> int:
    """How many ways the batch dimension is split (product of the mesh axes ``batch`` maps to)."""
    axes = _axes_tuple(rules_to_dict(rules).get("batch"))
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, rules: Iterable[tuple[str, Any]]) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> global ``jax.Array`` s split over the batch axes.

    On one host this is a sharded ``device_put``; on many, each host contributes its rows
    (``jax.make_array_from_process_local_data``), so the same code runs on a laptop and a pod.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, rules, value.ndim)
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def check_batch_divisible(global_batch: int, mesh: Mesh, rules: Iterable[tuple[str, Any]], what: str = "batch_size"):
    """Raise a clear error when the global batch cannot be split over the data-parallel devices."""
    dp = data_parallel_size(mesh, rules)
    if global_batch % dp:
        raise ValueError(f"{what}={global_batch} is not divisible by the data-parallel size {dp} "
                         f"(mesh {dict(mesh.shape)}); choose a multiple of {dp}")
    if global_batch % jax.process_count():
        raise ValueError(f"{what}={global_batch} is not divisible by the number of processes {jax.process_count()}")
