"""Feature extraction, jitted and sharded over devices, and cached dataset statistics.

A *feature function* is ``fn(params, images) -> (features (B, D), logits (B, K))`` for images
``(B, H, W, C)`` in ``[0, 1]``. :func:`make_feature_fn` jits one with the batch split over a mesh
axis (params replicated); :func:`extract_features` runs it over an array or an iterable of batches,
padding the last batch to a multiple of the device count; :func:`cached_statistics` computes the
mean / covariance of a dataset's features once and keeps them as ``.npz`` in the workdir.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.eval.inception import FIDInceptionV3, load_inception_params, preprocess
from jaxdiff.eval.metrics import feature_statistics
from jaxdiff.parallel import padded_batches

Array = jax.Array

__all__ = ["make_feature_fn", "inception_feature_fn", "extract_features", "cached_statistics",
           "iterate_batches"]


def make_feature_fn(apply_fn: Callable, mesh: jax.sharding.Mesh | None = None,
                    axis: str = "data") -> Callable:
    """Jit ``apply_fn(params, images) -> pytree of (B, ...)`` with the batch sharded on ``axis``.

    Args:
      apply_fn: pure function of ``(params, images)``.
      mesh: a mesh with the axis ``axis``; ``None`` jits on the default device.
      axis: mesh axis the batch is split over (params are replicated).

    Returns:
      the jitted function; its batch size must be a multiple of ``mesh.shape[axis]``
      (:func:`extract_features` pads for you). Attribute ``num_shards`` holds that multiple.
    """
    if mesh is None:
        fn = jax.jit(apply_fn)
        shards = 1
    else:
        if axis not in mesh.shape:
            raise ValueError(f"mesh has axes {tuple(mesh.shape)}, not {axis!r}")
        batch = NamedSharding(mesh, P(axis))
        fn = jax.jit(apply_fn, in_shardings=(NamedSharding(mesh, P()), batch),
                     out_shardings=batch)
        shards = mesh.shape[axis]

    def sharded(params, images):
        return fn(params, images)

    sharded.num_shards = shards  # type: ignore[attr-defined]
    return sharded


def inception_feature_fn(params_or_path: str | Any, mesh=None, *, dtype=jnp.float32):
    """``(fn, params)`` for the FID Inception: ``fn(params, images)`` -> ``(pool3, logits)``.

    ``params_or_path`` is a parameter tree or a file from :mod:`jaxdiff.eval.convert_inception`.
    Images are ``(B, H, W, 1|3)`` in ``[0, 1]``; they are resized to 299 inside the jitted call.
    """
    params = (load_inception_params(params_or_path) if isinstance(params_or_path, str)
              else params_or_path)
    model = FIDInceptionV3(dtype=dtype)
    fn = make_feature_fn(lambda p, x: model.apply({"params": p}, preprocess(x)), mesh)
    return fn, params


def iterate_batches(images, batch_size: int) -> Iterable[np.ndarray]:
    """Consecutive ``batch_size`` slices of an array (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def extract_features(fn: Callable, params: Any, images: np.ndarray | Iterable,
                     *, batch_size: int = 250, max_examples: int | None = None):
    """Run a feature function over images, batch by batch; returns host numpy arrays.

    Args:
      fn: from :func:`make_feature_fn` (any ``fn(params, x) -> pytree of (B, ...)`` works).
      params: its parameters.
      images: an array ``(N, H, W, C)``, or an iterable of such batches (e.g. a tfds / grain
        loader yielding arrays, or dicts with an ``'image'`` entry).
      batch_size: batch size when ``images`` is an array.
      max_examples: stop after this many examples.

    Returns:
      the concatenated outputs (same pytree structure as ``fn``'s, each ``(N, ...)``).
    """
    shards = getattr(fn, "num_shards", 1)
    batches = iterate_batches(images, batch_size) if hasattr(images, "shape") else images
    outs = []
    for b, n in padded_batches(batches, shards, max_examples):
        out = jax.device_get(fn(params, b))
        outs.append(jax.tree_util.tree_map(lambda o, n=n: np.asarray(o)[:n], out))
    if not outs:
        raise ValueError("no images to extract features from")
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outs)


def cached_statistics(path: str, compute: Callable[[], np.ndarray], *, tag: str,
                      keep_features: int = 0) -> dict:
    """Mean / covariance of a dataset's features, computed once and cached at ``path`` (.npz).

    Args:
      path: cache file (``<workdir>/eval/stats_<name>.npz``, say).
      compute: ``() -> features (N, D)``; called only when the cache is missing or stale.
      tag: identifies what was computed (dataset, split, network, resolution...). A cache with a
        different tag is recomputed, so changing the data or network never reuses stale numbers.
      keep_features: also keep the first ``keep_features`` feature vectors (for KID).

    Returns:
      ``{'mu': (D,), 'sigma': (D, D), 'num_examples': N, 'features': (min(N, keep), D)}``.
    """
    if os.path.exists(path):
        with np.load(path) as f:
            if str(f["tag"]) == tag and f["features"].shape[0] >= min(keep_features,
                                                                        int(f["num_examples"])):
                return {"mu": f["mu"], "sigma": f["sigma"],
                        "num_examples": int(f["num_examples"]),
                        "features": f["features"][:keep_features] if keep_features
                        else f["features"][:0]}
    feats = np.asarray(compute())
    mu, sigma = feature_statistics(feats)
    kept = feats[:keep_features].astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=mu, sigma=sigma, num_examples=feats.shape[0], features=kept,
             tag=np.array(tag))
    os.replace(tmp, path)
    return {"mu": mu, "sigma": sigma, "num_examples": int(feats.shape[0]), "features": kept}
