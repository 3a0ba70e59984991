"""Toy distributions as random-access sources (example ``i`` is a pure function of ``(seed, i)``).

A source is indexable and has a length, so the same grain pipeline (shuffle, shard, batch,
checkpointable iterator) serves toy data and image datasets, and a resumed run sees exactly the
same examples. ``'mixture'`` has an exact score and density (:func:`toy_mixture`, a
:class:`jaxdiff.analytic.GaussianMixture`), used for the sliced Wasserstein evaluation.
"""

from __future__ import annotations

import numpy as np

from jaxdiff.analytic import GaussianMixture

__all__ = ["ToySource", "toy_mixture", "sample_toy", "TOY_NAMES"]

TOY_NAMES = ("mixture", "checkerboard", "rings")


def _mixture_params(dim: int):
    k = 8
    angles = 2 * np.pi * np.arange(k) / k
    means = np.zeros((k, dim))
    means[:, 0], means[:, 1] = 1.5 * np.cos(angles), 1.5 * np.sin(angles)
    weights = np.full(k, 1.0 / k)
    stds = np.full(k, 0.2)
    return weights, means, stds


def toy_mixture(dim: int = 2) -> GaussianMixture:
    """The ``'mixture'`` toy distribution: 8 equal Gaussians (std 0.2) on a circle of radius 1.5 in
    the first two coordinates (zero mean in the others), as an exact :class:`GaussianMixture`."""
    if dim < 2:
        raise ValueError(f"toy data needs dim >= 2, got {dim}")
    w, m, s = _mixture_params(dim)
    return GaussianMixture.create(w, m, stds=s)


def sample_toy(name: str, rng: np.random.Generator, n: int, dim: int = 2) -> np.ndarray:
    """``n`` float32 samples ``(n, dim)`` of the toy distribution ``name`` drawn with ``rng``.

    'mixture': see :func:`toy_mixture`. 'checkerboard': uniform on the 8 dark squares of a 4x4
    board on ``[-2, 2]^2``. 'rings': two concentric circles (radii 0.75, 1.75, std 0.05).
    Coordinates beyond the first two are standard normal * 0.2 for the last two.
    """
    if name not in TOY_NAMES:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {TOY_NAMES}")
    if dim < 2:
        raise ValueError(f"toy data needs dim >= 2, got {dim}")
    out = np.zeros((n, dim))
    if name == "mixture":
        w, m, s = _mixture_params(dim)
        comp = rng.choice(len(w), size=n, p=w)
        out = m[comp] + s[comp, None] * rng.standard_normal((n, dim))
    elif name == "checkerboard":
        u = rng.uniform(0.0, 1.0, (n, 2))
        cell = rng.integers(0, 8, n)
        row, col = cell // 2, 2 * (cell % 2) + ((cell // 2) % 2)
        out[:, 0], out[:, 1] = col + u[:, 0] - 2.0, row + u[:, 1] - 2.0
        out[:, 2:] = 0.2 * rng.standard_normal((n, dim - 2))
    else:
        radius = np.where(rng.uniform(size=n) < 0.5, 0.75, 1.75)
        ang = rng.uniform(0, 2 * np.pi, n)
        r = radius + 0.05 * rng.standard_normal(n)
        out[:, 0], out[:, 1] = r * np.cos(ang), r * np.sin(ang)
        out[:, 2:] = 0.2 * rng.standard_normal((n, dim - 2))
    return out.astype(np.float32)


class ToySource:
    """Random-access toy data source: ``source[i]`` is ``{'x': float32 (dim,)}``, ``len(source)
    == size``. Examples are drawn in chunks of ``CHUNK``: chunk ``c`` comes from a generator
    seeded by ``(seed, c)``, so example ``i`` is a pure function of ``(seed, i)``;
    ``__getitems__`` reads many at once. Pickle-able (grain workers)."""

    CHUNK = 1024

    def __init__(self, name: str, *, dim: int = 2, size: int = 1 << 16, seed: int = 0):
        if name not in TOY_NAMES:
            raise ValueError(f"unknown toy distribution {name!r}; choose one of {TOY_NAMES}")
        if size < 1:
            raise ValueError(f"toy size must be >= 1, got {size}")
        self.name, self.dim, self.size, self.seed = name, int(dim), int(size), int(seed)
        sample_toy(name, np.random.default_rng(0), 1, dim)  # validates dim
        self._chunks: dict = {}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_chunks"] = {}
        return d

    def __len__(self) -> int:
        return self.size

    def _chunk(self, c: int) -> np.ndarray:
        if c not in self._chunks:
            if len(self._chunks) >= 128:
                self._chunks.clear()
            rng = np.random.default_rng([self.seed, c])
            self._chunks[c] = sample_toy(self.name, rng, self.CHUNK, self.dim)
        return self._chunks[c]

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"toy index {i} out of range [0, {self.size})")
        return i

    def __getitem__(self, i: int) -> dict:
        c, r = divmod(self._check(i), self.CHUNK)
        return {"x": self._chunk(c)[r]}

    def __getitems__(self, indices) -> list:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"ToySource({self.name!r}, dim={self.dim}, size={self.size}, seed={self.seed})"
