"""Samplers from ``config.sampling`` and image grids."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image

from jaxdiff.samplers.registry import available_samplers, get_sampler, sampler_options

__all__ = ["build_sampler", "check_sampling_config", "sampler_kwargs", "to_uint8",
           "save_image_grid", "save_scatter"]

# config.sampling key -> the sampler option(s) it sets (the first one the sampler takes) and the
# value that means "not asked for" (the default of jaxdiff.train.defaults)
_OPTIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "predictor": (("predictor",), "euler_maruyama"),
    "corrector": (("corrector",), "none"),
    "snr": (("snr",), 0.16),
    "n_steps_each": (("n_corrector_steps",), 1),
    "probability_flow": (("probability_flow",), False),
    "num_steps": (("num_steps",), 0),
    "rtol": (("rtol",), 1e-5),
    "atol": (("atol",), 1e-5),
    "eps": (("eps",), None),  # None: the sampler's own end time
    # the end-of-sampling option: PC / ODE noise removal, else the Tweedie ``denoise``
    "noise_removal": (("noise_removal", "denoise"), True),
}


def _option(method: str, key: str) -> str | None:
    takes = sampler_options(method)
    return next((o for o in _OPTIONS[key][0] if o in takes), None)


def check_sampling_config(config) -> None:
    """Raise a ``ValueError`` naming the key and value when ``config.sampling`` names an unknown
    method or sets (to a non-default value) an option its sampler does not take, e.g.
    ``sampling.corrector='langevin'`` with ``method='ddim'`` or ``sampling.num_steps=20`` with
    ``method='adaptive'``."""
    s = config.sampling
    methods = available_samplers()
    if s.method not in methods:
        raise ValueError(f"config.sampling.method={s.method!r}: unknown sampler; choose one of "
                         f"{methods}")
    for key, (_, default) in _OPTIONS.items():
        if key in s and s[key] != default and _option(s.method, key) is None:
            raise ValueError(f"config.sampling.{key}={s[key]!r}: sampler {s.method!r} takes no "
                             f"such option (it takes {sorted(sampler_options(s.method))})")


def sampler_kwargs(config, sde) -> dict[str, Any]:
    """The keyword options :func:`build_sampler` passes to ``config.sampling.method``: every
    ``config.sampling`` option the sampler takes ('none' predictor/corrector -> ``None``,
    ``num_steps=0`` -> ``sde.N``, ``noise_removal`` -> the sampler's ``noise_removal`` or
    ``denoise``). Checks the config first (:func:`check_sampling_config`)."""
    check_sampling_config(config)
    s = config.sampling
    kwargs = {}
    for key in _OPTIONS:
        opt = _option(s.method, key)
        if opt is None or key not in s or s[key] is None:
            continue
        value = s[key]
        if key in ("predictor", "corrector") and value == "none":
            value = None
        if key == "num_steps":
            value = value or sde.N
        kwargs[opt] = value
    return kwargs


def build_sampler(config, sde, score_fn, shape, *, sharding=None):
    """``sample(params, key, cond=None) -> (x, nfe)`` for ``config.sampling``.

    ``method`` is any name of :func:`jaxdiff.samplers.available_samplers` (``pc``, ``ode``,
    ``ddim``, ``dpm_solver++_2m``, ``edm``, ``adaptive`` ...). It gets exactly the options of
    ``config.sampling`` it takes (see :func:`sampler_kwargs`): ``pc`` its ``predictor`` /
    ``corrector`` ('none' for none), ``snr``, ``n_steps_each``, ``probability_flow``,
    ``num_steps``; ``ode`` ``rtol`` / ``atol``; the fast samplers ``num_steps``; all of them
    ``eps`` and ``noise_removal`` (``denoise`` for the samplers whose end-of-sampling option is
    the Tweedie prediction). ``num_steps=0`` means the SDE's ``N``. An option the sampler does
    not take, set to a non-default value, raises a ``ValueError`` naming it.
    """
    return get_sampler(config.sampling.method, sde, score_fn, tuple(shape),
                       sharding=sharding, **sampler_kwargs(config, sde))


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
    imgs = to_uint8(images, centered)
    n, h, w, c = imgs.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    return write_grid(path, grid, scale)


def write_grid(path: str, grid: np.ndarray, scale: int = 0) -> np.ndarray:
    """Write a uint8 ``(H, W, C)`` grid as a PNG, pixels repeated ``scale`` times (0: enough
    for at least 256 pixels per side); returns the scaled grid."""
    if scale == 0:
        scale = max(1, int(math.ceil(256 / grid.shape[0])))
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return grid


def save_scatter(path: str, points: np.ndarray, *, reference: np.ndarray | None = None,
                 size: int = 256, extent: float = 3.0) -> None:
    """Write 2-D points (first two coordinates) as a PNG scatter plot (black; ``reference`` in
    grey beneath), without matplotlib."""
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
