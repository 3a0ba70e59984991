"""NCSN++ / DDPM++ (Song et al. 2021) and DDPM (Ho et al. 2020) U-Nets in Flax Linen (NHWC).

The call order of the top-level submodules equals the order of ``all_modules`` in
score_sde_pytorch (``models/ncsnpp.py``, ``models/ddpm.py``); :mod:`jaxdiff.convert` relies on it.
Networks output an unscaled tensor of the input's shape; dividing by sigma (``scale_by_sigma``)
and the eps / x0 / v / score interpretation happen in :func:`jaxdiff.scores.get_score_fn`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers

Array = jax.Array

__all__ = ["NCSNpp", "DDPM"]


def _check_image(x: Array, num_resolutions: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected NHWC images (B, H, W, C), got shape {x.shape}")
    H, W = x.shape[1], x.shape[2]
    f = 2 ** (num_resolutions - 1)
    if H % f or W % f:
        raise ValueError(
            f"image size {H}x{W} must be divisible by 2**(len(ch_mult)-1) = {f}")


def _labels_vector(labels: Array, batch: int) -> Array:
    labels = jnp.asarray(labels)
    if labels.ndim == 0:
        labels = jnp.broadcast_to(labels, (batch,))
    if labels.shape != (batch,):
        raise ValueError(f"labels must be a scalar or of shape ({batch},), got {labels.shape}")
    return labels


class _ClassEmbed(nn.Module):
    """Adds a learned class embedding to the time embedding (zero-init, so a fresh conditional
    network starts as the unconditional one)."""

    num_classes: int
    features: int

    @nn.compact
    def __call__(self, temb: Array | None, y: Array, batch: int) -> Array:
        y = jnp.asarray(y)
        if y.shape != (batch,):
            raise ValueError(f"class labels y must have shape ({batch},), got {y.shape}")
        e = nn.Embed(self.num_classes, self.features,
                     embedding_init=nn.initializers.normal(1.0), name="embedding")(y)
        return e if temb is None else temb + e.astype(temb.dtype)


def _check_channels(channels: int, num_channels: int | None) -> None:
    if num_channels is not None and channels != num_channels:
        raise ValueError(f"input has {channels} channels, the model was configured for "
                         f"num_channels={num_channels}")


def _embed_conditions(net: nn.Module, temb: Array | None, y: Array | None, act,
                      batch: int) -> Array | None:
    """The conditioning of the U-Nets, called inside ``net``'s compact ``__call__`` (``nf``,
    ``conditional``, ``num_classes``, ``dtype``): the two-layer time-embedding MLP
    (``Dense_0``, ``Dense_1``, width ``4 nf``; ``None`` when not ``conditional``), then the class
    embedding ``label_embed`` of ``y`` when ``num_classes > 0``."""
    width = net.nf * 4
    if net.conditional:
        temb = nn.Dense(width, kernel_init=layers.default_init(), dtype=net.dtype)(temb)
        temb = nn.Dense(width, kernel_init=layers.default_init(), dtype=net.dtype)(act(temb))
    else:
        temb = None
    if net.num_classes:
        if y is None:
            raise ValueError("this network is class-conditional (num_classes="
                             f"{net.num_classes}): pass class labels y")
        return _ClassEmbed(net.num_classes, width, name="label_embed")(temb, y, batch)
    if y is not None:
        raise ValueError("class labels y were given but the network has num_classes=0")
    return temb


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ backbone.

    Attributes mirror ``config.model`` keys (see :func:`jaxdiff.models.configs.ncsnpp`).
    ``num_classes > 0`` adds a class-label embedding (``y``) to the time embedding; ``centered``
    is ``config.data.centered`` (inputs in [0, 1] are mapped to [-1, 1] when False).

    Call: ``apply({'params': p}, x (B, H, W, C), labels (B,), train=False, y=None)`` ->
    ``(B, H, W, C)``. ``labels`` are the time labels (``t*999`` / index for positional
    embedding, ``sigma(t)`` for Fourier embedding of ``log sigma``).
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    num_classes: int = 0
    centered: bool = True
    num_channels: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        act = layers.get_act(self.nonlinearity)
        nf = self.nf
        ch_mult = tuple(self.ch_mult)
        num_res_blocks = self.num_res_blocks
        attn_resolutions = tuple(self.attn_resolutions)
        num_resolutions = len(ch_mult)
        _check_image(x, num_resolutions)
        B = x.shape[0]
        in_dtype = x.dtype
        dt = self.dtype
        fir_kernel = tuple(self.fir_kernel)
        skip_rescale = self.skip_rescale
        resblock_type = self.resblock_type.lower()
        progressive = self.progressive.lower()
        progressive_input = self.progressive_input.lower()
        embedding_type = self.embedding_type.lower()
        combine_method = self.progressive_combine.lower()
        if progressive not in ("none", "output_skip", "residual"):
            raise ValueError(f"progressive must be 'none'|'output_skip'|'residual', got {progressive!r}")
        if progressive_input not in ("none", "input_skip", "residual"):
            raise ValueError(
                f"progressive_input must be 'none'|'input_skip'|'residual', got {progressive_input!r}")
        if resblock_type not in ("ddpm", "biggan"):
            raise ValueError(f"resblock_type must be 'ddpm' or 'biggan', got {resblock_type!r}")
        if combine_method not in ("sum", "cat"):
            raise ValueError(f"progressive_combine must be 'sum' or 'cat', got {combine_method!r}")
        channels = x.shape[-1]
        _check_channels(channels, self.num_channels)
        labels = _labels_vector(labels, B)
        rescale = lambda a: (a / np.sqrt(2.0)).astype(a.dtype)  # noqa: E731

        # time / noise-level embedding
        temb: Array | None
        if embedding_type == "fourier":
            temb = layers.GaussianFourierProjection(
                embedding_size=nf, scale=self.fourier_scale)(jnp.log(labels.astype(jnp.float32)))
        elif embedding_type == "positional":
            temb = layers.get_timestep_embedding(labels, nf)
        else:
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")

        temb = _embed_conditions(self, temb, y, act, B)

        AttnBlock = functools.partial(layers.AttnBlockpp, init_scale=self.init_scale,
                                      skip_rescale=skip_rescale, dtype=dt)
        Upsample = functools.partial(layers.UpsamplePP, with_conv=self.resamp_with_conv,
                                     fir=self.fir, fir_kernel=fir_kernel, dtype=dt)
        if progressive == "output_skip":
            pyramid_upsample = functools.partial(layers.UpsamplePP, fir=self.fir,
                                                 fir_kernel=fir_kernel, with_conv=False, dtype=dt)
        elif progressive == "residual":
            pyramid_upsample = functools.partial(layers.UpsamplePP, fir=self.fir,
                                                 fir_kernel=fir_kernel, with_conv=True, dtype=dt)
        Downsample = functools.partial(layers.DownsamplePP, with_conv=self.resamp_with_conv,
                                       fir=self.fir, fir_kernel=fir_kernel, dtype=dt)
        if progressive_input == "input_skip":
            pyramid_downsample = functools.partial(layers.DownsamplePP, fir=self.fir,
                                                   fir_kernel=fir_kernel, with_conv=False, dtype=dt)
        elif progressive_input == "residual":
            pyramid_downsample = functools.partial(layers.DownsamplePP, fir=self.fir,
                                                   fir_kernel=fir_kernel, with_conv=True, dtype=dt)
        ResnetBlock: Any
        if resblock_type == "ddpm":
            ResnetBlock = functools.partial(layers.ResnetBlockDDPMpp, act=act, dropout=self.dropout,
                                            init_scale=self.init_scale, skip_rescale=skip_rescale,
                                            dtype=dt)
        else:
            ResnetBlock = functools.partial(layers.ResnetBlockBigGANpp, act=act,
                                            dropout=self.dropout, fir=self.fir,
                                            fir_kernel=fir_kernel, init_scale=self.init_scale,
                                            skip_rescale=skip_rescale, dtype=dt)

        if not self.centered:
            x = 2 * x - 1.0
        x = x.astype(dt)

        # Downsampling block
        input_pyramid: Any = x if progressive_input != "none" else None
        hs = [layers.ddpm_conv3x3(nf, dtype=dt)(x)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    h = Downsample()(hs[-1])
                else:
                    h = ResnetBlock(down=True)(hs[-1], temb, train)
                if progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = layers.Combine(method=combine_method, dtype=dt)(input_pyramid, h)
                elif progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = rescale(input_pyramid + h) if skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = AttnBlock()(h)
        h = ResnetBlock()(h, temb, train)

        pyramid: Any = None
        # Upsampling block
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_resolutions:
                h = AttnBlock()(h)
            if progressive != "none":
                if i_level == num_resolutions - 1:
                    if progressive == "output_skip":
                        pyramid = act(layers.group_norm(h.shape[-1], dtype=dt)(h))
                        pyramid = layers.ddpm_conv3x3(channels, init_scale=self.init_scale,
                                                      dtype=dt)(pyramid)
                    else:  # residual
                        pyramid = act(layers.group_norm(h.shape[-1], dtype=dt)(h))
                        pyramid = layers.ddpm_conv3x3(h.shape[-1], bias=True, dtype=dt)(pyramid)
                else:
                    if progressive == "output_skip":
                        pyramid = pyramid_upsample()(pyramid)
                        pyramid_h = act(layers.group_norm(h.shape[-1], dtype=dt)(h))
                        pyramid_h = layers.ddpm_conv3x3(channels, bias=True,
                                                        init_scale=self.init_scale,
                                                        dtype=dt)(pyramid_h)
                        pyramid = pyramid + pyramid_h
                    else:  # residual
                        pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                        pyramid = rescale(pyramid + h) if skip_rescale else pyramid + h
                        h = pyramid
            if i_level != 0:
                if resblock_type == "ddpm":
                    h = Upsample()(h)
                else:
                    h = ResnetBlock(up=True)(h, temb, train)
        assert not hs

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(layers.group_norm(h.shape[-1], dtype=dt)(h))
            h = layers.ddpm_conv3x3(channels, init_scale=self.init_scale, dtype=dt)(h)
        return h.astype(in_dtype)


class DDPM(nn.Module):
    """The DDPM U-Net of Ho et al. (``models/ddpm.py`` of score_sde), NHWC.

    Call: ``apply({'params': p}, x (B, H, W, C), labels (B,), train=False, y=None)``.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    nonlinearity: str = "swish"
    num_classes: int = 0
    centered: bool = True
    num_channels: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        act = layers.get_act(self.nonlinearity)
        nf = self.nf
        ch_mult = tuple(self.ch_mult)
        num_resolutions = len(ch_mult)
        attn_resolutions = tuple(self.attn_resolutions)
        _check_image(x, num_resolutions)
        B = x.shape[0]
        in_dtype = x.dtype
        dt = self.dtype
        channels = x.shape[-1]
        _check_channels(channels, self.num_channels)
        labels = _labels_vector(labels, B)

        temb = layers.get_timestep_embedding(labels, nf) if self.conditional else None
        temb = _embed_conditions(self, temb, y, act, B)

        ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, dropout=self.dropout,
                                        dtype=dt)
        h = x if self.centered else 2 * x - 1.0
        h = h.astype(dt)
        hs = [layers.ddpm_conv3x3(nf, dtype=dt)(h)]
        for i_level in range(num_resolutions):
            for _ in range(self.num_res_blocks):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_resolutions:
                    h = layers.AttnBlock(dtype=dt)(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dt)(hs[-1]))

        h = hs[-1]
        h = ResnetBlock()(h, temb, train)
        h = layers.AttnBlock(dtype=dt)(h)
        h = ResnetBlock()(h, temb, train)

        for i_level in reversed(range(num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_resolutions:
                h = layers.AttnBlock(dtype=dt)(h)
            if i_level != 0:
                h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=dt)(h)
        assert not hs
        h = act(layers.group_norm(h.shape[-1], groups=min(32, h.shape[-1]), dtype=dt)(h))
        h = layers.ddpm_conv3x3(channels, init_scale=0.0, dtype=dt)(h)
        return h.astype(in_dtype)
