"""Building blocks shared by the score networks (Flax Linen, NHWC images).

Names and structure follow ``layers.py`` / ``layerspp.py`` of the score_sde code (``NIN`` with
params ``W``/``b``, ``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ...), which keeps checkpoint
conversion a rename plus a layout change. Every module takes ``dtype`` (activation dtype; params
stay float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import up_or_down_sampling as uds
from jaxdiff.models.initializers import default_init

Array = jax.Array
Dtype = Any

__all__ = [
    "default_init", "get_act", "get_timestep_embedding", "GaussianFourierProjection", "NIN",
    "ddpm_conv1x1", "ddpm_conv3x3", "group_norm", "AttnBlock", "AttnBlockpp", "Combine",
    "ResnetBlockDDPM", "ResnetBlockDDPMpp", "ResnetBlockBigGANpp", "Upsample", "Downsample",
    "UpsamplePP", "DownsamplePP", "resolve_dtype",
]


def resolve_dtype(dtype) -> Dtype:
    """``'float32'`` / ``'bfloat16'`` / ``'float16'`` (or a dtype) -> a jnp dtype."""
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        return names[dtype]
    return jnp.dtype(dtype).type if dtype is not None else jnp.float32


def get_act(name: str) -> Callable[[Array], Array]:
    """Activation by name: ``'swish'``/``'silu'``, ``'relu'``, ``'elu'``, ``'lrelu'``."""
    acts = {
        "swish": nn.swish, "silu": nn.swish, "relu": nn.relu, "elu": nn.elu,
        "lrelu": lambda x: nn.leaky_relu(x, 0.2),
    }
    key = str(name).lower()
    if key not in acts:
        raise ValueError(f"nonlinearity must be one of {sorted(acts)}, got {name!r}")
    return acts[key]


def get_timestep_embedding(timesteps: Array, embedding_dim: int,
                           max_positions: int = 10000) -> Array:
    """Sinusoidal embedding of DDPM / transformers.

    Args:
      timesteps: ``(B,)`` float or int labels.
      embedding_dim: output width ``D``.
    Returns:
      ``(B, D)``: ``[sin(t w_i), cos(t w_i)]`` with ``w_i = max_positions^(-i/(D/2-1))``.
    """
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a vector (B,), got shape {timesteps.shape}")
    half_dim = embedding_dim // 2
    if half_dim < 2:
        raise ValueError(f"embedding_dim must be >= 4, got {embedding_dim}")
    scale = math.log(max_positions) / (half_dim - 1)
    emb = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -scale)
    emb = timesteps.astype(jnp.float32)[:, None] * emb[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    return emb


class GaussianFourierProjection(nn.Module):
    """Gaussian Fourier features ``[sin(2 pi W x), cos(2 pi W x)]`` with fixed random ``W``
    (param ``W`` of shape ``(embedding_size,)``, ``N(0, scale^2)``, excluded from gradients)."""

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        W = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        W = jax.lax.stop_gradient(W)
        x_proj = x[:, None] * W[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class NIN(nn.Module):
    """1x1 convolution written as a contraction over the last axis (params ``W`` ``(in, out)``
    and ``b``), as in DDPM."""

    num_units: int
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_dim = x.shape[-1]
        W = self.param("W", default_init(scale=self.init_scale), (in_dim, self.num_units))
        b = self.param("b", nn.initializers.zeros, (self.num_units,))
        x = x.astype(self.dtype)
        return jnp.tensordot(x, W.astype(self.dtype), axes=1) + b.astype(self.dtype)


def ddpm_conv1x1(features: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
    """1x1 convolution with DDPM initialisation."""
    return nn.Conv(features, (1, 1), strides=(stride, stride), padding="SAME", use_bias=bias,
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype, name=name)


def ddpm_conv3x3(features: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 padding: Any = "SAME", dtype: Dtype = jnp.float32,
                 name: str | None = None) -> nn.Conv:
    """3x3 convolution with DDPM initialisation."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=padding, use_bias=bias,
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype, name=name)


def group_norm(channels: int, groups: int | None = None, dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.GroupNorm:
    """GroupNorm with ``eps=1e-6`` and ``min(C // 4, 32)`` groups unless ``groups`` is given."""
    g = groups if groups is not None else max(1, min(channels // 4, 32))
    if channels % g:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {g} groups")
    return nn.GroupNorm(num_groups=g, epsilon=1e-6, dtype=dtype, name=name)


def _skip_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    """``x + h``, divided by ``sqrt(2)`` with ``skip_rescale`` (NCSN++)."""
    return (x + h) / jnp.sqrt(2.0).astype(h.dtype) if skip_rescale else x + h


def _attention(x: Array, q: Array, k: Array, v: Array) -> Array:
    B, H, W, C = x.shape
    w = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (int(C) ** (-0.5))
    w = jnp.reshape(w, (B, H, W, H * W))
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(q.dtype)
    w = jnp.reshape(w, (B, H, W, H, W))
    return jnp.einsum("bhwHW,bHWc->bhwc", w, v)


class AttnBlock(nn.Module):
    """DDPM channel-wise self-attention over all pixels (GroupNorm with 32 groups)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = x.shape[-1]
        h = group_norm(C, groups=min(32, C), dtype=self.dtype, name="GroupNorm_0")(x)
        q = NIN(C, dtype=self.dtype, name="NIN_0")(h)
        k = NIN(C, dtype=self.dtype, name="NIN_1")(h)
        v = NIN(C, dtype=self.dtype, name="NIN_2")(h)
        h = _attention(x, q, k, v)
        h = NIN(C, init_scale=0.0, dtype=self.dtype, name="NIN_3")(h)
        return x + h


class AttnBlockpp(nn.Module):
    """NCSN++ self-attention (GroupNorm ``min(C//4, 32)`` groups, optional skip rescaling)."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = x.shape[-1]
        h = group_norm(C, dtype=self.dtype, name="GroupNorm_0")(x)
        q = NIN(C, dtype=self.dtype, name="NIN_0")(h)
        k = NIN(C, dtype=self.dtype, name="NIN_1")(h)
        v = NIN(C, dtype=self.dtype, name="NIN_2")(h)
        h = _attention(x, q, k, v)
        h = NIN(C, init_scale=self.init_scale, dtype=self.dtype, name="NIN_3")(h)
        return _skip_sum(x, h, self.skip_rescale)


class Combine(nn.Module):
    """Combine a pyramid branch ``x`` (1x1 conv to ``y``'s width) with ``y`` by 'cat' or 'sum'."""

    method: str = "cat"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = ddpm_conv1x1(y.shape[-1], dtype=self.dtype, name="Conv_0")(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {self.method!r}")


def _resample(x: Array, up: bool, fir: bool, fir_kernel: tuple[int, ...]) -> Array:
    """2x FIR (``fir``) or nearest / average-pool resampling without a convolution."""
    if up:
        return uds.upsample_2d(x, fir_kernel, factor=2) if fir else uds.naive_upsample_2d(x, 2)
    return uds.downsample_2d(x, fir_kernel, factor=2) if fir else uds.naive_downsample_2d(x, 2)


def _resample_pp(x: Array, *, up: bool, out_ch: int, with_conv: bool, fir: bool,
                 fir_kernel: tuple[int, ...], dtype: Dtype) -> Array:
    """The body of the (NCSN++ and DDPM) resampling layers; called inside a module's compact
    ``__call__``, so ``Conv_0`` / ``Conv2d_0`` are that module's submodules. Without FIR: nearest
    upsampling then a 3x3 conv, or a stride-2 3x3 conv ('SAME', i.e. pad (0, 1)) / 2x2 average
    pooling; with FIR: FIR resampling, or the fused FIR conv ``Conv2d_0``."""
    if fir and with_conv:
        return uds.Conv2d(out_ch, kernel=3, up=up, down=not up, resample_kernel=fir_kernel,
                          use_bias=True, kernel_init=default_init(), dtype=dtype,
                          name="Conv2d_0")(x)
    if fir:
        return _resample(x, up, True, fir_kernel)
    if up:
        x = uds.naive_upsample_2d(x, factor=2)
        return ddpm_conv3x3(out_ch, dtype=dtype, name="Conv_0")(x) if with_conv else x
    if with_conv:
        return ddpm_conv3x3(out_ch, stride=2, padding=((0, 1), (0, 1)), dtype=dtype,
                            name="Conv_0")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class Upsample(nn.Module):
    """DDPM nearest-neighbour upsampling, optionally followed by a 3x3 conv."""

    with_conv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _resample_pp(x, up=True, out_ch=x.shape[-1], with_conv=self.with_conv, fir=False,
                            fir_kernel=(), dtype=self.dtype)


class Downsample(nn.Module):
    """DDPM downsampling: stride-2 3x3 conv ('SAME', i.e. pad (0, 1)) or 2x2 average pooling."""

    with_conv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _resample_pp(x, up=False, out_ch=x.shape[-1], with_conv=self.with_conv,
                            fir=False, fir_kernel=(), dtype=self.dtype)


class UpsamplePP(nn.Module):
    """NCSN++ upsampling: nearest (+conv) or FIR (+fused conv ``Conv2d_0``)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _resample_pp(x, up=True, out_ch=self.out_ch or x.shape[-1],
                            with_conv=self.with_conv, fir=self.fir, fir_kernel=self.fir_kernel,
                            dtype=self.dtype)


class DownsamplePP(nn.Module):
    """NCSN++ downsampling: stride-2 conv / average pooling, or FIR (+fused conv)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _resample_pp(x, up=False, out_ch=self.out_ch or x.shape[-1],
                            with_conv=self.with_conv, fir=self.fir, fir_kernel=self.fir_kernel,
                            dtype=self.dtype)


def _residual(block: nn.Module, x: Array, temb: Array | None, train: bool, *,
              out_ch: int, groups: int | None, init_scale: float,
              resample=None) -> tuple[Array, Array]:
    """The shared body of the residual blocks, called inside ``block``'s compact ``__call__``
    (which has ``act``, ``dropout``, ``dtype``): GN-act, optional ``resample`` of both branches,
    conv, + Dense(act(temb)), GN-act-dropout-conv(``init_scale``). ``groups``: GroupNorm groups
    (None: ``min(C // 4, 32)``). Returns ``(x, h)``: the (resampled) input and the residual."""
    C = x.shape[-1]
    dt = block.dtype
    h = block.act(group_norm(C, groups=None if groups is None else min(groups, C), dtype=dt,
                             name="GroupNorm_0")(x))
    if resample is not None:
        h, x = resample(h), resample(x)
    h = ddpm_conv3x3(out_ch, dtype=dt, name="Conv_0")(h)
    if temb is not None:
        h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=dt,
                         name="Dense_0")(block.act(temb))[:, None, None, :]
    h = block.act(group_norm(out_ch, groups=None if groups is None else min(groups, out_ch),
                             dtype=dt, name="GroupNorm_1")(h))
    h = nn.Dropout(block.dropout)(h, deterministic=not train)
    return x, ddpm_conv3x3(out_ch, init_scale=init_scale, dtype=dt, name="Conv_1")(h)


def _ddpm_shortcut(block: nn.Module, x: Array, out_ch: int) -> Array:
    """DDPM skip branch: identity, or ``Conv_2`` (3x3, ``conv_shortcut``) / ``NIN_0`` when the
    width changes."""
    if x.shape[-1] == out_ch:
        return x
    if block.conv_shortcut:
        return ddpm_conv3x3(out_ch, dtype=block.dtype, name="Conv_2")(x)
    return NIN(out_ch, dtype=block.dtype, name="NIN_0")(x)


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block: GN-act-conv, + Dense(temb), GN-act-dropout-conv(init 0), NIN skip."""

    act: Callable = nn.swish
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        x, h = _residual(self, x, temb, train, out_ch=out_ch, groups=32, init_scale=0.0)
        return _ddpm_shortcut(self, x, out_ch) + h


class ResnetBlockDDPMpp(nn.Module):
    """DDPM++ residual block (``resblock_type='ddpm'``): GroupNorm ``min(C//4, 32)``, skip rescale."""

    act: Callable = nn.swish
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        x, h = _residual(self, x, temb, train, out_ch=out_ch, groups=None,
                         init_scale=self.init_scale)
        return _skip_sum(_ddpm_shortcut(self, x, out_ch), h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block with optional (FIR or naive) up/down-sampling inside."""

    act: Callable = nn.swish
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        C = x.shape[-1]
        out_ch = self.out_ch or C
        resample = None
        if self.up or self.down:
            def resample(a):
                return _resample(a, self.up, self.fir, self.fir_kernel)
        x, h = _residual(self, x, temb, train, out_ch=out_ch, groups=None,
                         init_scale=self.init_scale, resample=resample)
        if C != out_ch or self.up or self.down:
            x = ddpm_conv1x1(out_ch, dtype=self.dtype, name="Conv_2")(x)
        return _skip_sum(x, h, self.skip_rescale)
