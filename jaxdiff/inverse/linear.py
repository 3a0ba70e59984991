"""Linear measurement operators ``y = A x`` for inverse problems, with ``A^T`` and ``A^+``.

Every operator is a frozen pytree (its arrays are leaves, so a new mask or matrix does not
recompile a jitted sampler) acting on a batch ``x`` of shape ``(B, *event_shape)``:

* ``op(x)``          the measurement ``A x`` (shape ``(B, *obs_shape)``),
* ``op.adjoint(y)``  ``A^T y`` for the real inner product ``<A x, y> = <x, A^T y>`` (``Re`` of the
  complex one for k-space data),
* ``op.pinv(y)``     the pseudo-inverse ``A^+ y``; ``x + A^+ (y - A x)`` is the closest ``x'`` with
  ``A x' = y`` (the hard data-consistency projection of Song et al. 2022),
* ``op.project(x, y, lam)``  ``x + lam A^+ (y - A x)``.

Operators: :class:`Mask` (inpainting), :class:`AvgPool` (super-resolution), :class:`ChannelMean`
(gray scale, colorization), :class:`SubsampledFFT` (compressed-sensing MRI with a k-space mask) and
:class:`Matrix` (any dense ``A``; ``A^+`` precomputed once).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

__all__ = [
    "LinearOperator", "Mask", "AvgPool", "ChannelMean", "SubsampledFFT", "Matrix",
    "hermitian_symmetrize", "cartesian_kspace_mask",
]


class LinearOperator(struct.PyTreeNode):
    """Base class of the measurement operators. Subclasses define ``__call__``, ``adjoint`` and
    ``pinv``; ``project`` and ``noise`` follow."""

    def __call__(self, x: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def pinv(self, y: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def project(self, x: Array, y: Array, lam=1.0) -> Array:
        """Data consistency ``x + lam A^+ (y - A x)``; ``lam = 1`` gives ``A x' = y`` exactly.

        Args:
          x: ``(B, *event_shape)`` current estimate.
          y: ``(B, *obs_shape)`` (or broadcastable) target measurement.
          lam: weight in ``[0, 1]`` (scalar or per example ``(B,)``); ``lam < 1`` keeps part of the
            estimate, for noisy measurements (Song et al. 2022, Eq. 12).
        Returns:
          The projected ``x``, same shape and dtype.
        """
        lam = jnp.asarray(lam, x.real.dtype)
        lam = lam.reshape(lam.shape + (1,) * (x.ndim - lam.ndim))
        return (x + lam * self.pinv(y - self(x))).astype(x.dtype)


def _check_batched(x: Array, event_ndim: int, what: str):
    if x.ndim != event_ndim + 1:
        raise ValueError(
            f"{what} expects x of shape (B, ...) with {event_ndim} event axes, got shape {x.shape}")


class Mask(LinearOperator):
    """Inpainting: ``A x = mask * x`` with a binary ``mask`` (1 = observed) broadcastable to ``x``.

    The measurement keeps the shape of ``x`` (unobserved entries are 0), so ``A^T = A^+ = A``.
    """

    mask: Array

    def __call__(self, x):
        return self.mask.astype(x.dtype) * x

    def adjoint(self, y):
        return self.mask.astype(y.dtype) * y

    def pinv(self, y):
        return self.mask.astype(y.dtype) * y


class AvgPool(LinearOperator):
    """Super-resolution: average over non-overlapping ``factor x factor`` patches of images
    ``(B, H, W, C)`` (``H`` and ``W`` divisible by ``factor``). ``A A^T = I / factor^2`` so
    ``A^+ = factor^2 A^T`` (nearest-neighbour up-sampling)."""

    factor: int = struct.field(pytree_node=False, default=2)

    def _check(self, x):
        _check_batched(x, 3, "AvgPool")
        h, w = x.shape[1:3]
        if self.factor < 1 or h % self.factor or w % self.factor:
            raise ValueError(
                f"AvgPool factor {self.factor} must be >= 1 and divide the image size {(h, w)}")

    def __call__(self, x):
        self._check(x)
        b, h, w, c = x.shape
        f = self.factor
        return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))

    def pinv(self, y):
        _check_batched(y, 3, "AvgPool")
        f = self.factor
        return jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)

    def adjoint(self, y):
        return self.pinv(y) / self.factor**2


class ChannelMean(LinearOperator):
    """Gray scale: ``A x = mean over the last (channel) axis``, keeping it with size 1.
    ``A A^T = I / C`` so ``A^+`` broadcasts the gray value to every channel."""

    num_channels: int = struct.field(pytree_node=False, default=3)

    def __call__(self, x):
        if x.shape[-1] != self.num_channels:
            raise ValueError(
                f"ChannelMean expects {self.num_channels} channels, got x of shape {x.shape}")
        return jnp.mean(x, axis=-1, keepdims=True)

    def pinv(self, y):
        if y.shape[-1] != 1:
            raise ValueError(f"ChannelMean measurements have one channel, got shape {y.shape}")
        return jnp.broadcast_to(y, y.shape[:-1] + (self.num_channels,))

    def adjoint(self, y):
        return self.pinv(y) / self.num_channels


class SubsampledFFT(LinearOperator):
    """Compressed-sensing MRI: ``A x = mask * FFT2(x)`` (orthonormal 2-D FFT over the two spatial
    axes) for real images ``(B, H, W)`` or ``(B, H, W, C)``; ``mask`` ``(H, W)`` is the binary
    k-space sampling pattern in ``numpy.fft`` order (zero frequency at index 0).

    For real images ``A^T y = Re(IFFT2(mask * y))``. If the mask is Hermitian symmetric
    (``mask[k] == mask[-k]``, see :func:`hermitian_symmetrize`), ``A A^T = I`` on the range of
    ``A``, so ``A^+ = A^T`` and :meth:`project` is the exact projection onto ``{x: A x = y}``.
    """

    mask: Array

    def _axes(self, x):
        if x.ndim not in (3, 4):
            raise ValueError(f"SubsampledFFT expects (B, H, W) or (B, H, W, C), got {x.shape}")
        if tuple(x.shape[1:3]) != tuple(self.mask.shape):
            raise ValueError(
                f"k-space mask of shape {self.mask.shape} does not match images of shape {x.shape}")
        return (1, 2)

    def _m(self, x):
        m = self.mask.astype(x.real.dtype)
        return m if x.ndim == 3 else m[..., None]

    def __call__(self, x):
        return self._m(x) * jnp.fft.fft2(x, axes=self._axes(x), norm="ortho")

    def adjoint(self, y):
        return jnp.real(jnp.fft.ifft2(self._m(y) * y, axes=self._axes(y), norm="ortho"))

    def pinv(self, y):
        return self.adjoint(y)


class Matrix(LinearOperator):
    """A dense ``A`` of shape ``(m, D)`` acting on flattened examples (``D = prod(event_shape)``);
    measurements have shape ``(B, m)``. Build with :meth:`create` (computes ``A^+`` once)."""

    A: Array
    A_pinv: Array
    event_shape: tuple = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(cls, A, event_shape: tuple | None = None, rcond: float = 1e-10) -> Matrix:
        """``Matrix`` from ``A`` ``(m, D)``; ``event_shape`` defaults to ``(D,)``."""
        A = jnp.asarray(A)
        if A.ndim != 2:
            raise ValueError(f"A must be a matrix (m, D), got shape {A.shape}")
        event_shape = tuple(event_shape) if event_shape is not None else (A.shape[1],)
        if math.prod(event_shape) != A.shape[1]:
            raise ValueError(f"event_shape {event_shape} does not hold A's {A.shape[1]} columns")
        return cls(A, jnp.linalg.pinv(A, rtol=rcond), event_shape)

    def __call__(self, x):
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"Matrix operator expects x of shape (B, *{self.event_shape}), got {x.shape}")
        return x.reshape(x.shape[0], -1) @ self.A.T.astype(x.dtype)

    def adjoint(self, y):
        return (y @ self.A.astype(y.dtype)).reshape((y.shape[0],) + self.event_shape)

    def pinv(self, y):
        return (y @ self.A_pinv.T.astype(y.dtype)).reshape((y.shape[0],) + self.event_shape)


def hermitian_symmetrize(mask: Array) -> Array:
    """``mask OR mask[-k]`` (2-D, ``numpy.fft`` order): the smallest Hermitian-symmetric superset,
    for which :class:`SubsampledFFT` has ``A^+ = A^T`` on real images."""
    mask = jnp.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"k-space mask must be 2-D (H, W), got shape {mask.shape}")
    flipped = jnp.roll(mask[::-1, ::-1], shift=(1, 1), axis=(0, 1))
    return jnp.maximum(mask, flipped)


def cartesian_kspace_mask(key: Array, shape: tuple[int, int], acceleration: float = 4.0,
                          center_fraction: float = 0.08) -> Array:
    """A random Cartesian (phase-encoding column) undersampling mask in ``numpy.fft`` order.

    Keeps the ``center_fraction`` lowest-frequency columns and random others so that about
    ``1 / acceleration`` of the columns are sampled, then makes the mask Hermitian symmetric.

    Args:
      key: PRNG key.
      shape: ``(H, W)`` of the images.
      acceleration: undersampling factor (>= 1).
      center_fraction: fraction of fully sampled low-frequency columns, in ``[0, 1]``.
    Returns:
      Float mask ``(H, W)`` of 0 and 1.
    """
    h, w = shape
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if not 0.0 <= center_fraction <= 1.0:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}")
    freqs = np.abs(np.fft.fftfreq(w) * w)
    n_center = max(1, int(round(center_fraction * w)))
    center = jnp.asarray(freqs <= (n_center - 1) / 2.0 + 1e-9)
    p = max(0.0, (w / acceleration - n_center) / max(w - n_center, 1))
    cols = jnp.logical_or(center, jax.random.uniform(key, (w,)) < p)
    mask = jnp.broadcast_to(cols[None, :], (h, w)).astype(jnp.float32)
    return hermitian_symmetrize(mask)
