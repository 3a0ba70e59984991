"""Small networks that train in minutes on a CPU: a residual MLP for vectors and a small U-Net
for 8x8 to 32x32 images. Same call convention as the big networks:
``apply({'params': p}, x, labels, train=False, y=None)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import layers
from jaxdiff.models.ncsnpp import _check_image, _ClassEmbed, _labels_vector

Array = jax.Array

__all__ = ["MLP", "SmallUNet", "TimeEmbedding"]


class TimeEmbedding(nn.Module):
    """Time-label embedding followed by a 2-layer MLP: ``(B,) -> (B, features or 4 nf)``.

    ``embedding_type='positional'``: sinusoidal of the label (``t*999`` or an index);
    ``'fourier'``: Gaussian Fourier features of ``log(label)`` (VE labels are ``sigma(t)``).
    """

    nf: int
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    act: Any = nn.swish
    dtype: Any = jnp.float32
    features: int | None = None

    @nn.compact
    def __call__(self, labels: Array) -> Array:
        et = self.embedding_type.lower()
        if et == "positional":
            temb = layers.get_timestep_embedding(labels, self.nf)
        elif et == "fourier":
            temb = layers.GaussianFourierProjection(self.nf // 2, self.fourier_scale)(
                jnp.log(labels.astype(jnp.float32)))
        else:
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {et!r}")
        width = self.features or 4 * self.nf
        temb = nn.Dense(width, kernel_init=layers.default_init(), dtype=self.dtype)(temb)
        return nn.Dense(width, kernel_init=layers.default_init(), dtype=self.dtype)(self.act(temb))


class MLP(nn.Module):
    """Residual MLP score network for vectors ``x`` of shape ``(B, D)``.

    Each of ``num_layers`` blocks: ``h + Dense(act(LayerNorm(h) + Dense(temb)))``; output
    ``Dense(D)``. ``num_classes > 0`` adds a class embedding (``y`` of shape ``(B,)``).
    """

    nf: int = 128
    num_layers: int = 3
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    nonlinearity: str = "swish"
    dropout: float = 0.0
    num_classes: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        if x.ndim != 2:
            raise ValueError(f"MLP expects vectors of shape (B, D), got {x.shape}")
        act = layers.get_act(self.nonlinearity)
        B, D = x.shape
        labels = _labels_vector(labels, B)
        temb = TimeEmbedding(self.nf, self.embedding_type, self.fourier_scale, act,
                             self.dtype, features=self.nf)(labels)
        if self.num_classes:
            if y is None:
                raise ValueError(f"class-conditional MLP (num_classes={self.num_classes}) "
                                 "needs class labels y")
            temb = _ClassEmbed(self.num_classes, self.nf, name="label_embed")(temb, y, B)
        elif y is not None:
            raise ValueError("class labels y were given but the network has num_classes=0")
        h = nn.Dense(self.nf, dtype=self.dtype)(x.astype(self.dtype))
        for _ in range(self.num_layers):
            z = nn.LayerNorm(dtype=self.dtype)(h)
            z = z + nn.Dense(self.nf, dtype=self.dtype)(act(temb))
            z = nn.Dense(self.nf, dtype=self.dtype)(act(z))
            z = nn.Dropout(self.dropout)(z, deterministic=not train)
            h = h + nn.Dense(self.nf, dtype=self.dtype)(act(z))
        out = nn.Dense(D, dtype=self.dtype)(act(nn.LayerNorm(dtype=self.dtype)(h)))
        return out.astype(x.dtype)


class SmallUNet(nn.Module):
    """A small DDPM-style U-Net (GroupNorm, swish, time embedding per residual block, optional
    attention at ``attn_resolutions``, average-pool down / nearest up). NHWC images whose side is
    divisible by ``2**(len(ch_mult)-1)``."""

    nf: int = 32
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: Sequence[int] = ()
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    nonlinearity: str = "swish"
    dropout: float = 0.0
    num_classes: int = 0
    centered: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        ch_mult = tuple(self.ch_mult)
        n = len(ch_mult)
        _check_image(x, n)
        act = layers.get_act(self.nonlinearity)
        B, C = x.shape[0], x.shape[-1]
        dt = self.dtype
        labels = _labels_vector(labels, B)
        temb = TimeEmbedding(self.nf, self.embedding_type, self.fourier_scale, act, dt)(labels)
        if self.num_classes:
            if y is None:
                raise ValueError(f"class-conditional U-Net (num_classes={self.num_classes}) "
                                 "needs class labels y")
            temb = _ClassEmbed(self.num_classes, 4 * self.nf, name="label_embed")(temb, y, B)
        elif y is not None:
            raise ValueError("class labels y were given but the network has num_classes=0")
        block = lambda ch: layers.ResnetBlockDDPMpp(  # noqa: E731
            act=act, out_ch=ch, dropout=self.dropout, skip_rescale=True, dtype=dt)
        h = x if self.centered else 2 * x - 1.0
        hs = [layers.ddpm_conv3x3(self.nf, dtype=dt)(h.astype(dt))]
        for i in range(n):
            for _ in range(self.num_res_blocks):
                h = block(self.nf * ch_mult[i])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = layers.AttnBlockpp(skip_rescale=True, dtype=dt)(h)
                hs.append(h)
            if i != n - 1:
                hs.append(layers.DownsamplePP(with_conv=False, dtype=dt)(hs[-1]))
        h = block(h.shape[-1])(hs[-1], temb, train)
        for i in reversed(range(n)):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.nf * ch_mult[i])(jnp.concatenate([h, hs.pop()], -1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = layers.AttnBlockpp(skip_rescale=True, dtype=dt)(h)
            if i != 0:
                h = layers.UpsamplePP(with_conv=True, dtype=dt)(h)
        h = act(layers.group_norm(h.shape[-1], dtype=dt)(h))
        h = layers.ddpm_conv3x3(C, init_scale=0.0, dtype=dt)(h)
        return h.astype(x.dtype)
