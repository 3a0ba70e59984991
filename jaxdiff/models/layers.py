"""Building blocks shared by the score networks (Flax Linen, NHWC images).

Names and structure follow ``layers.py`` / ``layerspp.py`` of the score_sde code (``NIN`` with
params ``W``/``b``, ``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ...), which keeps checkpoint
conversion a rename plus a layout change. Every module takes ``dtype`` (activation dtype; params
stay float32).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def default_init(scale: float = 1.0) -> Callable:
    """DDPM initialiser: variance scaling, ``fan_avg``, uniform; ``scale=0`` becomes ``1e-10``."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


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
    emb = math.log(max_positions) / (half_dim - 1)
    emb = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -emb)
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
                 dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Conv:
    """1x1 convolution with DDPM initialisation."""
    return nn.Conv(features, (1, 1), strides=(stride, stride), padding="SAME", use_bias=bias,
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype, name=name)


def ddpm_conv3x3(features: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 padding: Any = "SAME", dtype: Dtype = jnp.float32,
                 name: Optional[str] = None) -> nn.Conv:
    """3x3 convolution with DDPM initialisation."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=padding, use_bias=bias,
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype, name=name)


def group_norm(channels: int, groups: Optional[int] = None, dtype: Dtype = jnp.float32,
               name: Optional[str] = None) -> nn.GroupNorm:
    """GroupNorm with ``eps=1e-6`` and ``min(C // 4, 32)`` groups unless ``groups`` is given."""
    g = groups if groups is not None else max(1, min(channels // 4, 32))
    if channels % g:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {g} groups")
    return nn.GroupNorm(num_groups=g, epsilon=1e-6, dtype=dtype, name=name)


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
        if not self.skip_rescale:
            return x + h
        return (x + h) / jnp.sqrt(2.0).astype(h.dtype)


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


class Upsample(nn.Module):
    """DDPM nearest-neighbour upsampling, optionally followed by a 3x3 conv."""

    with_conv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        from jaxdiff.models import up_or_down_sampling as uds

        C = x.shape[-1]
        h = uds.naive_upsample_2d(x, factor=2)
        if self.with_conv:
            h = ddpm_conv3x3(C, dtype=self.dtype, name="Conv_0")(h)
        return h


class Downsample(nn.Module):
    """DDPM downsampling: stride-2 3x3 conv ('SAME', i.e. pad (0, 1)) or 2x2 average pooling."""

    with_conv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        B, H, W, C = x.shape
        if self.with_conv:
            x = ddpm_conv3x3(C, stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                             name="Conv_0")(x)
        else:
            x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return x


class UpsamplePP(nn.Module):
    """NCSN++ upsampling: nearest (+conv) or FIR (+fused conv ``Conv2d_0``)."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        from jaxdiff.models import up_or_down_sampling as uds

        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            h = uds.naive_upsample_2d(x, factor=2)
            if self.with_conv:
                h = ddpm_conv3x3(out_ch, dtype=self.dtype, name="Conv_0")(h)
        else:
            if not self.with_conv:
                h = uds.upsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = uds.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                               use_bias=True, kernel_init=default_init(), dtype=self.dtype,
                               name="Conv2d_0")(x)
        return h


class DownsamplePP(nn.Module):
    """NCSN++ downsampling: stride-2 conv / average pooling, or FIR (+fused conv)."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        from jaxdiff.models import up_or_down_sampling as uds

        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        if not self.fir:
            if self.with_conv:
                x = ddpm_conv3x3(out_ch, stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                                 name="Conv_0")(x)
            else:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        else:
            if not self.with_conv:
                x = uds.downsample_2d(x, self.fir_kernel, factor=2)
            else:
                x = uds.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                               use_bias=True, kernel_init=default_init(), dtype=self.dtype,
                               name="Conv2d_0")(x)
        return x


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block: GN-act-conv, + Dense(temb), GN-act-dropout-conv(init 0), NIN skip."""

    act: Callable = nn.swish
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(C, groups=min(32, C), dtype=self.dtype, name="GroupNorm_0")(x))
        h = ddpm_conv3x3(out_ch, dtype=self.dtype, name="Conv_0")(h)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype,
                             name="Dense_0")(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, groups=min(32, out_ch), dtype=self.dtype,
                                name="GroupNorm_1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(out_ch, init_scale=0.0, dtype=self.dtype, name="Conv_1")(h)
        if C != out_ch:
            if self.conv_shortcut:
                x = ddpm_conv3x3(out_ch, dtype=self.dtype, name="Conv_2")(x)
            else:
                x = NIN(out_ch, dtype=self.dtype, name="NIN_0")(x)
        return x + h


class ResnetBlockDDPMpp(nn.Module):
    """DDPM++ residual block (``resblock_type='ddpm'``): GroupNorm ``min(C//4, 32)``, skip rescale."""

    act: Callable = nn.swish
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(C, dtype=self.dtype, name="GroupNorm_0")(x))
        h = ddpm_conv3x3(out_ch, dtype=self.dtype, name="Conv_0")(h)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype,
                             name="Dense_0")(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, dtype=self.dtype, name="GroupNorm_1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype, name="Conv_1")(h)
        if C != out_ch:
            if self.conv_shortcut:
                x = ddpm_conv3x3(out_ch, dtype=self.dtype, name="Conv_2")(x)
            else:
                x = NIN(out_ch, dtype=self.dtype, name="NIN_0")(x)
        if not self.skip_rescale:
            return x + h
        return (x + h) / jnp.sqrt(2.0).astype(h.dtype)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block with optional (FIR or naive) up/down-sampling inside."""

    act: Callable = nn.swish
    up: bool = False
    down: bool = False
    out_ch: Optional[int] = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
        from jaxdiff.models import up_or_down_sampling as uds

        B, H, W, C = x.shape
        out_ch = self.out_ch if self.out_ch else C
        h = self.act(group_norm(C, dtype=self.dtype, name="GroupNorm_0")(x))
        if self.up:
            if self.fir:
                h = uds.upsample_2d(h, self.fir_kernel, factor=2)
                x = uds.upsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = uds.naive_upsample_2d(h, factor=2)
                x = uds.naive_upsample_2d(x, factor=2)
        elif self.down:
            if self.fir:
                h = uds.downsample_2d(h, self.fir_kernel, factor=2)
                x = uds.downsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = uds.naive_downsample_2d(h, factor=2)
                x = uds.naive_downsample_2d(x, factor=2)
        h = ddpm_conv3x3(out_ch, dtype=self.dtype, name="Conv_0")(h)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype,
                             name="Dense_0")(self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, dtype=self.dtype, name="GroupNorm_1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype, name="Conv_1")(h)
        if C != out_ch or self.up or self.down:
            x = ddpm_conv1x1(out_ch, dtype=self.dtype, name="Conv_2")(x)
        if not self.skip_rescale:
            return x + h
        return (x + h) / jnp.sqrt(2.0).astype(h.dtype)
