"""Bits/dim over a dataset split, with each batch sharded over the devices of a mesh."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.parallel import padded_batches

__all__ = ["dataset_bits_per_dim"]


def dataset_bits_per_dim(bpd_fn: Callable, params: Any, key: jax.Array, batches: Iterable, *,
                         mesh: jax.sharding.Mesh | None = None, axis: str = "data",
                         max_examples: int | None = None) -> dict:
    """Average bits/dim of integer images over batches (a dataset split).

    Args:
      bpd_fn: ``fn(params, key, images) -> (bpd (B,), nfe)`` from
        :func:`jaxdiff.likelihood.bits_per_dim` (dequantisation repeated ``repeats`` times there).
      params: model parameters (replicated on the mesh).
      key: PRNG key; batch ``i`` uses ``fold_in(key, i)``, so results do not depend on the mesh.
      batches: iterable of uint8 arrays ``(B, ...)`` or dicts with an ``'image'`` entry (a tfds /
        grain loader).
      mesh, axis: an ``AxisType.Auto`` mesh (as :func:`jaxdiff.parallel.make_mesh` builds; the
        adaptive solver's error norm reduces over the batch); each batch is padded to a multiple
        of ``mesh.shape[axis]`` (by repeating its last example; padded rows are dropped from the
        result) and split over that axis.
      max_examples: stop after this many examples.

    Returns:
      ``{'bits_per_dim', 'bits_per_dim_stderr', 'bpd_num_examples', 'bpd_nfe'}`` (floats / ints),
      ``bpd_nfe`` summed over batches.
    """
    shards = 1 if mesh is None else mesh.shape[axis]
    sharding = None if mesh is None else NamedSharding(mesh, P(axis))
    vals, nfe_total = [], 0
    for i, (b, n) in enumerate(padded_batches(batches, shards, max_examples)):
        if not np.issubdtype(b.dtype, np.integer):
            raise ValueError(f"batch {i}: bits/dim needs integer (uint8) images, got {b.dtype}")
        x = jax.device_put(b, sharding) if sharding is not None else b
        bpd, nfe = bpd_fn(params, jax.random.fold_in(key, i), x)
        vals.append(np.asarray(jax.device_get(bpd))[:n])
        nfe_total += int(nfe)
    if not vals:
        raise ValueError("no images for bits/dim")
    v = np.concatenate(vals).astype(np.float64)
    return {"bits_per_dim": float(v.mean()),
            "bits_per_dim_stderr": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
            "bpd_num_examples": int(len(v)), "bpd_nfe": nfe_total}
