"""Colorization through the orthogonal decoupling of the gray channel (Song et al. 2021, App. I.3).

An orthogonal 3x3 matrix ``M`` whose first column is ``(1, 1, 1)/sqrt(3)`` maps RGB to coordinates
whose first channel is ``sqrt(3) * gray`` and the other two are orthogonal to it. Since the
forward SDEs are isotropic, the diffusion in decoupled coordinates is the same SDE, with the score
``decouple(score(couple(u)))``; colorization is then inpainting of channel 0 in the decoupled space.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.inverse.inpainting import inpaint_sampler
from jaxdiff.inverse.observation import Observation

__all__ = ["DECOUPLE", "decouple", "couple", "colorize_sampler"]

#: Orthogonal matrix (columns: gray direction, then two chroma directions).
DECOUPLE = np.stack([
    np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
    np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0),
    np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0),
], axis=1)


def decouple(x):
    """RGB ``(..., 3)`` -> decoupled ``(..., 3)``: ``x @ M``; channel 0 is ``sqrt(3) * mean(x)``."""
    if x.shape[-1] != 3:
        raise ValueError(f"decouple expects 3 channels in the last axis, got shape {x.shape}")
    return x @ jnp.asarray(DECOUPLE, x.dtype)


def couple(u):
    """Inverse of :func:`decouple`: ``u @ M^T``."""
    if u.shape[-1] != 3:
        raise ValueError(f"couple expects 3 channels in the last axis, got shape {u.shape}")
    return u @ jnp.asarray(DECOUPLE.T, u.dtype)


def colorize_sampler(sde, score_fn, shape: tuple[int, ...], *, method: str = "pc", **kwargs):
    """Sample color images ``(B, ..., 3)`` whose channel mean is a given gray image.

    Args:
      sde, score_fn: the prior (on RGB data).
      shape: ``(B, ..., 3)``.
      method, kwargs: as :func:`jaxdiff.inverse.inpainting.linear_inverse_sampler`.

    Returns:
      ``sample(params, key, cond) -> (x, nfe)``, jitted; ``cond`` is the gray image, of shape
      ``(B, ..., 1)`` (or a leading 1); ``mean(x, -1) == gray`` exactly (up to rounding).
    """
    if shape[-1] != 3:
        raise ValueError(f"colorization needs 3 channels, got shape {shape}")

    def dec_score(params, u, t):
        return decouple(score_fn(params, couple(u), t))

    inner = inpaint_sampler(sde, dec_score, shape, method=method, **kwargs)
    chan0 = jnp.zeros((3,)).at[0].set(1.0)

    @jax.jit
    def sample(params, key, cond=None):
        gray = cond
        if gray is None or gray.shape[-1] != 1 or gray.ndim != len(shape):
            raise ValueError(f"colorize_sampler takes cond=gray of shape (B, ..., 1) matching "
                             f"{shape}, got {None if gray is None else gray.shape}")
        y = jnp.sqrt(3.0).astype(gray.dtype) * gray * chan0.astype(gray.dtype)
        u, nfe = inner(params, key, Observation.inpainting(y, chan0))
        return couple(u), nfe

    return sample
