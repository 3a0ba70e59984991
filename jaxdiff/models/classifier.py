"""Noise-conditional Wide-ResNet classifier ``p_t(y | x_t)`` for classifier guidance.

WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis) with pre-activation GroupNorm blocks;
every block adds a projection of the time embedding (as in the score networks), so the classifier
is conditioned on the same time labels (``t*999`` for VP/sub-VP, ``sigma`` for VE). Called as
``apply({'params': p}, x (B, H, W, C), labels (B,), train=False) -> logits (B, num_classes)``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import layers
from jaxdiff.models.ncsnpp import _labels_vector
from jaxdiff.models.small import TimeEmbedding

Array = jax.Array

__all__ = ["NoiseConditionalWideResNet"]


class _WideBlock(nn.Module):
    out_ch: int
    stride: int
    dropout: float
    act: Any
    dtype: Any

    @nn.compact
    def __call__(self, x, temb, train):
        C = x.shape[-1]
        h = self.act(layers.group_norm(C, dtype=self.dtype)(x))
        skip = x
        if C != self.out_ch or self.stride != 1:
            skip = nn.Conv(self.out_ch, (1, 1), strides=(self.stride,) * 2,
                           kernel_init=layers.default_init(), dtype=self.dtype)(h)
        h = nn.Conv(self.out_ch, (3, 3), strides=(self.stride,) * 2, padding="SAME",
                    kernel_init=layers.default_init(), dtype=self.dtype)(h)
        h = h + nn.Dense(self.out_ch, kernel_init=layers.default_init(),
                         dtype=self.dtype)(self.act(temb))[:, None, None, :]
        h = self.act(layers.group_norm(self.out_ch, dtype=self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = nn.Conv(self.out_ch, (3, 3), padding="SAME", kernel_init=layers.default_init(),
                    dtype=self.dtype)(h)
        return skip + h


class NoiseConditionalWideResNet(nn.Module):
    """Time-conditioned Wide-ResNet classifier.

    Attributes: ``num_classes``, ``depth`` (``6n + 4``), ``widen_factor``, ``nf`` (width of the
    time embedding, ``4 nf`` after its MLP), ``dropout``, ``embedding_type``
    ('positional'|'fourier'), ``centered`` (inputs in [-1, 1]; else [0, 1] mapped to [-1, 1]).
    """

    num_classes: int = 10
    depth: int = 16
    widen_factor: int = 4
    nf: int = 32
    dropout: float = 0.0
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    nonlinearity: str = "swish"
    centered: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        if x.ndim != 4:
            raise ValueError(f"classifier expects NHWC images, got shape {x.shape}")
        if (self.depth - 4) % 6 or self.depth < 10:
            raise ValueError(f"Wide-ResNet depth must be 6n+4 >= 10, got {self.depth}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        act = layers.get_act(self.nonlinearity)
        n = (self.depth - 4) // 6
        B = x.shape[0]
        labels = _labels_vector(labels, B)
        temb = TimeEmbedding(self.nf, self.embedding_type, self.fourier_scale, act,
                             self.dtype)(labels)
        h = x if self.centered else 2 * x - 1.0
        h = nn.Conv(16, (3, 3), padding="SAME", kernel_init=layers.default_init(),
                    dtype=self.dtype)(h.astype(self.dtype))
        for g, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0) else 1
                h = _WideBlock(width * self.widen_factor, stride, self.dropout, act,
                               self.dtype)(h, temb, train)
        h = act(layers.group_norm(h.shape[-1], dtype=self.dtype)(h))
        h = jnp.mean(h, axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=self.dtype)(h)
        return logits.astype(jnp.float32)
