"""Sample-based distances for data whose exact law is known (toy and analytic cases)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["sliced_wasserstein", "component_fractions", "moment_errors"]


def sliced_wasserstein(key: Array, x: Array, y: Array, num_projections: int = 512) -> Array:
    """Sliced 2-Wasserstein distance between two equal-size sample sets.

    Both sets are flattened to ``(n, D)``; each random unit direction gives a 1-D W2 from sorted
    projections; the result is ``sqrt(mean over directions of W2^2)``.
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"sample sets must have equal shapes, got {x.shape} and {y.shape}")
    dirs = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    px = jnp.sort(x @ dirs, axis=0)
    py = jnp.sort(y @ dirs, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))


def component_fractions(mixture, x: Array) -> Array:
    """Fraction of samples whose most probable component (under ``mixture``) is each ``k``."""
    assign = jnp.argmax(mixture.responsibilities(x), axis=-1)
    return jnp.bincount(assign, length=mixture.num_components) / x.shape[0]


def moment_errors(x: Array, mean: Array, cov: Array) -> tuple[Array, Array]:
    """Max-abs errors of the sample mean and sample covariance against the given ones."""
    x = x.reshape(x.shape[0], -1)
    m = x.mean(0)
    c = jnp.cov(x, rowvar=False)
    return jnp.max(jnp.abs(m - mean)), jnp.max(jnp.abs(c - cov))
