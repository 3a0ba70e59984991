"""Devices and hosts: multi-host initialisation, the data mesh, shardings, global batches.

One mesh axis, ``'data'``: the batch is split over it, parameters are replicated (or, with FSDP,
their largest divisible axis is split over it too); XLA inserts the gradient all-reduce. On
several hosts every process loads its own slice of each global batch and
:func:`global_batch` assembles the global ``jax.Array`` with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["maybe_initialize_distributed", "make_mesh", "data_sharding", "replicated",
           "param_shardings", "global_batch", "check_batch_size", "is_main_process",
           "padded_batches"]

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE",
                "SLURM_NTASKS", "MEGASCALE_COORDINATOR_ADDRESS")


def _in_cluster() -> bool:
    for var in _CLUSTER_ENV:
        v = os.environ.get(var, "")
        if v and not (var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE") and v == "1"):
            return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice


def maybe_initialize_distributed(parallel_config=None, *, coordinator_address: str = "",
                                 num_processes: int = 0, process_id: int = -1,
                                 mode: str = "auto") -> bool:
    """Call ``jax.distributed.initialize`` when running on several hosts.

    Args:
      parallel_config: ``config.parallel`` (overrides the keyword arguments when given):
        ``distributed`` 'auto' (initialise when a multi-host cluster is detected: Cloud TPU pod,
        SLURM, Open MPI, ``JAX_COORDINATOR_ADDRESS``), 'yes' or 'no'; ``coordinator_address``,
        ``num_processes``, ``process_id`` (empty / 0 / -1: auto-detected by JAX).

    Returns:
      Whether ``jax.distributed`` was initialised by this call. Must run before any other JAX
      computation; calling it again is a no-op.
    """
    if parallel_config is not None:
        mode = parallel_config.distributed
        coordinator_address = parallel_config.coordinator_address
        num_processes = parallel_config.num_processes
        process_id = parallel_config.process_id
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"config.parallel.distributed must be 'auto', 'yes' or 'no', got {mode!r}")
    if mode == "no" or (mode == "auto" and not _in_cluster()):
        return False
    if jax.distributed.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes:
        kwargs["num_processes"] = int(num_processes)
    if process_id >= 0:
        kwargs["process_id"] = int(process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over the first ``num_devices`` devices (0: all).

    On several hosts the mesh must span every device (``num_devices`` 0 or ``jax.device_count()``).
    """
    n_all = jax.device_count()
    n = n_all if num_devices in (0, None) else int(num_devices)
    if not 1 <= n <= n_all:
        raise ValueError(f"config.parallel.num_devices={num_devices} but {n_all} devices exist")
    if jax.process_count() > 1 and n != n_all:
        raise ValueError(f"config.parallel.num_devices={num_devices}: on {jax.process_count()} "
                         f"hosts the mesh must use all {n_all} devices")
    # Auto axes: XLA propagates the batch sharding through the network (Explicit axes would
    # make every reshape in a model declare its output sharding).
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Sharding of a batch: axis ``leading`` split over ``'data'`` (``leading=1`` for stacked
    ``(n_steps, B, ...)`` batches)."""
    return NamedSharding(mesh, P(*([None] * leading), "data"))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, P())


def param_shardings(params: Any, mesh: Mesh, *, fsdp: bool = False, min_size: int = 2**18):
    """Shardings for a params pytree (arrays or ``ShapeDtypeStruct``): replicated, or with
    ``fsdp`` the largest axis divisible by the mesh size of every leaf with at least ``min_size``
    elements split over ``'data'`` (XLA all-gathers it for the forward pass)."""
    n = mesh.shape["data"]

    def one(x):
        if not fsdp or np.prod(x.shape) < min_size:
            return replicated(mesh)
        axes = sorted(range(len(x.shape)), key=lambda a: -x.shape[a])
        for a in axes:
            if x.shape[a] % n == 0:
                spec = [None] * len(x.shape)
                spec[a] = "data"
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree.map(one, params)


def check_batch_size(name: str, batch_size: int, mesh: Mesh) -> None:
    """Raise a ``ValueError`` naming ``name`` (a config key, e.g. ``'config.eval.batch_size'``)
    unless the global ``batch_size`` splits evenly over the ``'data'`` axis of ``mesh``."""
    n = mesh.shape["data"]
    if batch_size % n:
        raise ValueError(f"{name}={batch_size} is not divisible by the {n} devices of the mesh")


def global_batch(local: Any, mesh: Mesh, *, leading: int = 0) -> Any:
    """This host's slice of a batch (numpy arrays, pytree) -> the global ``jax.Array`` batch.

    Args:
      local: arrays of shape ``(..., B_local, ...)``, the batch axis at position ``leading``;
        the global batch concatenates the hosts' slices in process order.
      mesh: the data mesh.
      leading: number of axes before the batch axis (1 for ``(n_steps, B, ...)``).

    Returns:
      The same pytree of global arrays sharded with :func:`data_sharding`.
    """
    sharding = data_sharding(mesh, leading)

    def one(x):
        x = np.asarray(x)
        n_local = len(mesh.local_devices)
        if x.shape[leading] % n_local:
            raise ValueError(f"the per-host batch {x.shape[leading]} is not divisible by the "
                             f"{n_local} local devices of the mesh")
        gshape = list(x.shape)
        gshape[leading] *= jax.process_count()
        return jax.make_array_from_process_local_data(sharding, x, tuple(gshape))

    return jax.tree.map(one, local)


def padded_batches(batches: Iterable, multiple: int, max_examples: int | None = None
                   ) -> Iterator[tuple[np.ndarray, int]]:
    """Host batches padded for a mesh: yields ``(batch, n)`` with ``batch`` a numpy array whose
    leading size is a multiple of ``multiple`` (the first ``n`` rows are the data, the rest
    repeat the last example; drop them from the results) and at most ``max_examples`` data rows
    in all. ``batches`` yields arrays or dicts with an ``'image'`` entry (tfds / grain)."""
    seen = 0
    for b in batches:
        b = np.asarray(b["image"] if isinstance(b, dict) else b)
        if max_examples is not None:
            b = b[:max_examples - seen]
        n = b.shape[0]
        if n == 0:
            return
        pad = (-n) % multiple
        if pad:
            b = np.concatenate([b, np.repeat(b[-1:], pad, axis=0)])
        yield b, n
        seen += n
        if max_examples is not None and seen >= max_examples:
            return


def is_main_process() -> bool:
    """True on process 0 (which writes metrics, images and reports)."""
    return jax.process_index() == 0
