"""Samplers from ``config.sampling`` and image grids."""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

__all__ = ["build_sampler", "to_uint8", "save_image_grid", "save_scatter"]


def build_sampler(config, sde, score_fn, shape, *, sharding=None):
    """``sample(params, key) -> (x, nfe)`` for ``config.sampling``.

    ``method='pc'`` uses ``predictor`` / ``corrector`` ('none' for no corrector), ``snr``,
    ``n_steps_each``, ``probability_flow``, ``noise_removal``; ``'ode'`` the adaptive
    probability-flow solver with ``rtol`` / ``atol``; any other name of
    ``jaxdiff.samplers.registry`` (``ddim``, ``dpm_solver++_2m``, ``edm`` ...) gets ``num_steps``.
    ``num_steps=0`` means the SDE's ``N``.
    """
    s = config.sampling
    num_steps = s.num_steps or sde.N
    if s.method == "pc":
        from jaxdiff.samplers import pc_sampler
        return pc_sampler(sde, score_fn, tuple(shape),
                          predictor=None if s.predictor == "none" else s.predictor,
                          corrector=None if s.corrector == "none" else s.corrector,
                          snr=s.snr, n_corrector_steps=s.n_steps_each,
                          probability_flow=s.probability_flow, num_steps=num_steps,
                          denoise=s.noise_removal, eps=s.eps, sharding=sharding)
    if s.method == "ode":
        from jaxdiff.samplers import ode_sampler
        return ode_sampler(sde, score_fn, tuple(shape), rtol=s.rtol, atol=s.atol, eps=s.eps,
                           denoise=s.noise_removal, sharding=sharding)
    from jaxdiff.samplers.registry import get_sampler
    return get_sampler(s.method, sde, score_fn, tuple(shape), num_steps=num_steps,
                       sharding=sharding)


def to_uint8(x: np.ndarray, centered: bool) -> np.ndarray:
    """Model-space images (``[0, 1]`` or centered ``[-1, 1]``) -> uint8, clipped."""
    x = np.asarray(x, np.float32)
    if centered:
        x = (x + 1.0) / 2.0
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def save_image_grid(path: str, images: np.ndarray, *, centered: bool, pad: int = 1,
                    scale: int = 0) -> np.ndarray:
    """Write ``(N, H, W, C)`` images as a square PNG grid; returns the grid (uint8).

    ``scale`` enlarges pixels (nearest) so that small images are visible; 0 picks a scale giving
    at least 256 pixels per side.
    """
    from PIL import Image
    imgs = to_uint8(images, centered)
    n, h, w, c = imgs.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    if scale == 0:
        scale = max(1, int(math.ceil(256 / grid.shape[0])))
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return grid


def save_scatter(path: str, points: np.ndarray, *, reference: Optional[np.ndarray] = None,
                 size: int = 256, extent: float = 3.0) -> None:
    """Write 2-D points (first two coordinates) as a PNG scatter plot (black; ``reference`` in
    grey beneath), without matplotlib."""
    from PIL import Image
    img = np.full((size, size), 255, np.uint8)

    def draw(p, value):
        p = np.asarray(p)[:, :2]
        ij = np.round((p + extent) / (2 * extent) * (size - 1)).astype(int)
        ok = np.all((ij >= 0) & (ij < size), axis=1)
        img[size - 1 - ij[ok, 1], ij[ok, 0]] = value

    if reference is not None:
        draw(reference, 180)
    draw(points, 0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(img).save(path)
