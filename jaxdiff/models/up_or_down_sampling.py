"""FIR up/down-sampling (StyleGAN2's ``upfirdn2d``) in plain JAX, images in NHWC layout.

The FIR filter is applied as a depthwise convolution (``feature_group_count = C``) after zero
insertion (``lax.pad`` with interior padding), so it runs under XLA on CPU, GPU and TPU with no
custom kernel. Function names, padding and normalisation follow ``up_or_down_sampling.py`` of the
score_sde code, so networks built from them match the published checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.models.initializers import default_init

Array = jax.Array

__all__ = [
    "setup_kernel", "upfirdn2d", "upsample_2d", "downsample_2d", "naive_upsample_2d",
    "naive_downsample_2d", "upsample_conv_2d", "conv_downsample_2d", "Conv2d",
]


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalised 2-D FIR kernel: the outer product of a 1-D ``k`` (or a square 2-D ``k``) divided
    by its sum, so that a constant image keeps its value."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    s = k.sum()
    if s == 0:
        raise ValueError(f"FIR kernel {k.tolist()} sums to zero and cannot be normalised")
    return k / s


def _check_nhwc(x: Array, name: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of NHWC images (4-D), got shape {x.shape}")


def upfirdn2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Array:
    """Upsample (zero insertion), pad, FIR-filter and downsample a batch of images.

    Args:
      x: ``(N, H, W, C)`` images.
      k: 2-D FIR kernel ``(kh, kw)`` (already normalised and scaled).
      up: integer upsampling factor (``up - 1`` zeros inserted after every pixel).
      down: integer downsampling factor (keep every ``down``-th output pixel).
      pad: ``(before, after)`` padding of both spatial axes after upsampling; negative crops.

    Returns:
      ``(N, H_out, W_out, C)`` with ``H_out = (H * up + pad[0] + pad[1] - kh) // down + 1``.
    """
    _check_nhwc(x)
    if int(up) < 1 or int(down) < 1:
        raise ValueError(f"up and down must be integers >= 1, got up={up}, down={down}")
    k = np.asarray(k, dtype=np.float32)
    C = x.shape[-1]
    p0, p1 = int(pad[0]), int(pad[1])
    cfg = [(0, 0, 0), (p0, p1 + up - 1, up - 1), (p0, p1 + up - 1, up - 1), (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    # true convolution = correlation with the flipped kernel; depthwise over channels
    w = jnp.asarray(k[::-1, ::-1], dtype=x.dtype)
    w = jnp.tile(w[:, :, None, None], (1, 1, 1, C))
    return lax.conv_general_dilated(
        x, w, window_strides=(down, down), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C,
    )


def upsample_2d(x: Array, k: Sequence[float] | None = None, factor: int = 2,
                gain: float = 1.0) -> Array:
    """FIR upsampling ``(N, H, W, C) -> (N, H*factor, W*factor, C)``; a constant image stays
    constant (times ``gain``). ``k=None`` is nearest-neighbour (``[1] * factor``)."""
    kern = setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = kern.shape[0] - factor
    return upfirdn2d(x, kern, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, k: Sequence[float] | None = None, factor: int = 2,
                  gain: float = 1.0) -> Array:
    """FIR downsampling ``(N, H, W, C) -> (N, H//factor, W//factor, C)``; ``k=None`` is
    average pooling."""
    kern = setup_kernel([1] * factor if k is None else k) * gain
    p = kern.shape[0] - factor
    return upfirdn2d(x, kern, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling of NHWC images."""
    _check_nhwc(x)
    N, H, W, C = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (N, H, factor, W, factor, C))
    return x.reshape(N, H * factor, W * factor, C)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling of NHWC images by ``factor``."""
    _check_nhwc(x)
    N, H, W, C = x.shape
    return x.reshape(N, H // factor, factor, W // factor, factor, C).mean(axis=(2, 4))


def upsample_conv_2d(x: Array, w: Array, k: Sequence[float] | None = None, factor: int = 2,
                     gain: float = 1.0) -> Array:
    """Fused ``upsample_2d`` followed by a convolution with ``w`` (``(kh, kw, in, out)``),
    as a transposed convolution then one FIR pass: ``(N, H, W, in) -> (N, 2H, 2W, out)``."""
    _check_nhwc(x)
    convH, convW = w.shape[0], w.shape[1]
    if convH != convW:
        raise ValueError(f"conv kernel must be square, got {w.shape}")
    kern = setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = (kern.shape[0] - factor) - (convW - 1)
    # transposed stride-`factor` conv == correlation of the zero-inserted input, padded by kw-1
    x = lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(1, 1),
        padding=[(convH - 1, convH - 1), (convW - 1, convW - 1)],
        lhs_dilation=(factor, factor), dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return upfirdn2d(x, kern, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Array, w: Array, k: Sequence[float] | None = None, factor: int = 2,
                       gain: float = 1.0) -> Array:
    """Fused FIR filter followed by a stride-``factor`` convolution with ``w``
    (``(kh, kw, in, out)``): ``(N, H, W, in) -> (N, H//2, W//2, out)``."""
    _check_nhwc(x)
    convW = w.shape[1]
    kern = setup_kernel([1] * factor if k is None else k) * gain
    p = (kern.shape[0] - factor) + (convW - 1)
    x = upfirdn2d(x, kern, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(factor, factor), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class Conv2d(nn.Module):
    """Convolution with optional fused FIR up- or down-sampling (StyleGAN2).

    Params: ``kernel`` ``(k, k, in, out)`` (DDPM init), ``bias`` ``(out,)``.
    """

    fmaps: int
    kernel: int = 3
    up: bool = False
    down: bool = False
    resample_kernel: tuple[int, ...] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Any = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up and self.down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        if self.kernel < 1 or self.kernel % 2 != 1:
            raise ValueError(f"Conv2d kernel size must be odd and >= 1, got {self.kernel}")
        init = self.kernel_init if self.kernel_init is not None else default_init()
        w = self.param("kernel", init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
        x = x.astype(self.dtype)
        w = w.astype(self.dtype)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            b = self.param("bias", nn.initializers.zeros, (self.fmaps,))
            x = x + b.astype(self.dtype).reshape((1, 1, 1, -1))
        return x
