"""InceptionV3 for FID / IS / KID, in Flax Linen, matching pytorch-fid's FID Inception.

The network is the TensorFlow "2015-12-05" Inception graph that FID is standardly computed with,
as ported by pytorch-fid (``fid_inception_v3``): torchvision's InceptionV3 layout with the
``FIDInceptionA`` / ``FIDInceptionC`` blocks (3x3 average pools that do not count padding),
``FIDInceptionE_1`` (same) and ``FIDInceptionE_2`` (a 3x3 *max* pool in the pool branch), batch
norm with ``eps=1e-3`` in inference mode, 1008 output classes and no auxiliary head.

Inputs are NHWC images in ``[0, 1]``; :func:`preprocess` resizes them bilinearly to 299x299
(half-pixel centres, no antialiasing, as ``F.interpolate(..., align_corners=False)``) and maps them
to ``[-1, 1]``. The network returns the 2048-d ``pool3`` features and the 1008 logits.

Weights are never downloaded: convert pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` once
with :mod:`jaxdiff.eval.convert_inception` and pass the resulting file to
:func:`load_inception_params`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "FIDInceptionV3", "preprocess", "inception_param_shapes", "inception_num_params",
    "load_inception_params", "save_inception_params", "INCEPTION_SIZE", "NUM_CLASSES",
    "POOL_DIM",
]

INCEPTION_SIZE = 299
NUM_CLASSES = 1008
POOL_DIM = 2048
_BN_EPS = 1e-3


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class FrozenBatchNorm(nn.Module):
    """Inference-mode batch norm with its statistics stored as parameters.

    Parameters ``scale``, ``bias``, ``mean``, ``var`` (each ``(C,)``); output
    ``(x - mean) / sqrt(var + eps) * scale + bias``.
    """

    eps: float = _BN_EPS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        mul = scale * jax.lax.rsqrt(var + self.eps)
        return (x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype))


class BasicConv2d(nn.Module):
    """Conv (no bias) -> frozen batch norm -> ReLU, as torchvision's ``BasicConv2d``.

    ``padding`` is the symmetric (torch-style) padding per spatial axis.
    """

    features: int
    kernel_size: Any
    strides: Any = 1
    padding: Any = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST, name="conv")(x)
        x = FrozenBatchNorm(dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool3_same(x: Array) -> Array:
    # TF's average pool does not count the padded zeros (count_include_pad=False).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool3_same(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool3_s2(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
    """pytorch-fid's ``FIDInceptionA`` (35x35 grid; 64 + 64 + 96 + ``pool_features`` channels)."""

    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = lambda f, k, p=0, name=None: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
        b1 = C(64, 1, name="branch1x1")(x)
        b5 = C(48, 1, name="branch5x5_1")(x)
        b5 = C(64, 5, 2, name="branch5x5_2")(b5)
        b3 = C(64, 1, name="branch3x3dbl_1")(x)
        b3 = C(96, 3, 1, name="branch3x3dbl_2")(b3)
        b3 = C(96, 3, 1, name="branch3x3dbl_3")(b3)
        bp = C(self.pool_features, 1, name="branch_pool")(_avg_pool3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision's ``InceptionB`` (``Mixed_6a``: 35x35 -> 17x17)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(384, 3, strides=2, dtype=self.dtype, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, dtype=self.dtype, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, dtype=self.dtype, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, strides=2, dtype=self.dtype, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    """pytorch-fid's ``FIDInceptionC`` (17x17 grid, factorised 7x7 convolutions, 768 channels)."""

    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        C = lambda f, k, p=0, name=None: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
        b1 = C(192, 1, name="branch1x1")(x)
        b7 = C(c7, 1, name="branch7x7_1")(x)
        b7 = C(c7, (1, 7), (0, 3), name="branch7x7_2")(b7)
        b7 = C(192, (7, 1), (3, 0), name="branch7x7_3")(b7)
        bd = C(c7, 1, name="branch7x7dbl_1")(x)
        bd = C(c7, (7, 1), (3, 0), name="branch7x7dbl_2")(bd)
        bd = C(c7, (1, 7), (0, 3), name="branch7x7dbl_3")(bd)
        bd = C(c7, (7, 1), (3, 0), name="branch7x7dbl_4")(bd)
        bd = C(192, (1, 7), (0, 3), name="branch7x7dbl_5")(bd)
        bp = C(192, 1, name="branch_pool")(_avg_pool3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision's ``InceptionD`` (``Mixed_7a``: 17x17 -> 8x8)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = lambda f, k, p=0, s=1, name=None: BasicConv2d(f, k, strides=s, padding=p,
                                                          dtype=self.dtype, name=name)
        b3 = C(192, 1, name="branch3x3_1")(x)
        b3 = C(320, 3, s=2, name="branch3x3_2")(b3)
        b7 = C(192, 1, name="branch7x7x3_1")(x)
        b7 = C(192, (1, 7), (0, 3), name="branch7x7x3_2")(b7)
        b7 = C(192, (7, 1), (3, 0), name="branch7x7x3_3")(b7)
        b7 = C(192, 3, s=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """pytorch-fid's ``FIDInceptionE_1`` (``max_pool=False``) and ``FIDInceptionE_2`` (``True``)."""

    max_pool: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        C = lambda f, k, p=0, name=None: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
        b1 = C(320, 1, name="branch1x1")(x)
        b3 = C(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([C(384, (1, 3), (0, 1), name="branch3x3_2a")(b3),
                              C(384, (3, 1), (1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = C(448, 1, name="branch3x3dbl_1")(x)
        bd = C(384, 3, 1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([C(384, (1, 3), (0, 1), name="branch3x3dbl_3a")(bd),
                              C(384, (3, 1), (1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool3_same(x) if self.max_pool else _avg_pool3_same(x)
        bp = C(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3 (pytorch-fid's ``fid_inception_v3`` without weights).

    Attributes:
      num_classes: size of the final linear layer (1008 in the TF graph).
      dtype: computation dtype (parameters stay float32); bfloat16 is fine on accelerators.

    Call: ``model.apply({'params': params}, x)`` with ``x`` of shape ``(B, H, W, 3)`` already
    preprocessed (:func:`preprocess`: 299x299, values in ``[-1, 1]``); any ``H, W >= 75`` works.
    Returns ``(pool3, logits)`` of shapes ``(B, 2048)`` and ``(B, num_classes)``, float32.
    Parameter names follow the torch state dict (``Mixed_5b/branch1x1/conv/kernel`` ...).
    """

    num_classes: int = NUM_CLASSES
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FIDInceptionV3 expects (B, H, W, 3) images, got shape {x.shape}")
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"FIDInceptionV3 needs H, W >= 75 (use preprocess), got {x.shape}")
        d = self.dtype
        x = x.astype(d)
        x = BasicConv2d(32, 3, strides=2, dtype=d, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, dtype=d, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, dtype=d, name="Conv2d_2b_3x3")(x)
        x = _max_pool3_s2(x)
        x = BasicConv2d(80, 1, dtype=d, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, dtype=d, name="Conv2d_4a_3x3")(x)
        x = _max_pool3_s2(x)
        x = FIDInceptionA(32, dtype=d, name="Mixed_5b")(x)
        x = FIDInceptionA(64, dtype=d, name="Mixed_5c")(x)
        x = FIDInceptionA(64, dtype=d, name="Mixed_5d")(x)
        x = InceptionB(dtype=d, name="Mixed_6a")(x)
        x = FIDInceptionC(128, dtype=d, name="Mixed_6b")(x)
        x = FIDInceptionC(160, dtype=d, name="Mixed_6c")(x)
        x = FIDInceptionC(160, dtype=d, name="Mixed_6d")(x)
        x = FIDInceptionC(192, dtype=d, name="Mixed_6e")(x)
        x = InceptionD(dtype=d, name="Mixed_7a")(x)
        x = FIDInceptionE(max_pool=False, dtype=d, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool=True, dtype=d, name="Mixed_7c")(x)
        pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                          precision=jax.lax.Precision.HIGHEST, name="fc")(pool3)
        return pool3, logits


def preprocess(images: Array, *, size: int = INCEPTION_SIZE, resize: bool = True) -> Array:
    """Images in ``[0, 1]`` (or uint8 in ``[0, 255]``) to the Inception's input.

    Args:
      images: ``(B, H, W, C)`` with ``C`` 1 (repeated to RGB) or 3.
      size: target side (299 for the FID network).
      resize: bilinear resize to ``size x size`` with half-pixel centres and no antialiasing (the
        same as ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``).

    Returns:
      float32 ``(B, size, size, 3)`` in ``[-1, 1]``.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, 1|3), got shape {images.shape}")
    if jnp.issubdtype(images.dtype, jnp.integer):
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if resize and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear", antialias=False)
    return 2.0 * x - 1.0


@functools.lru_cache(maxsize=4)
def inception_param_shapes(num_classes: int = NUM_CLASSES) -> Any:
    """Parameter tree of :class:`FIDInceptionV3` as ``ShapeDtypeStruct`` s (no FLOPs, no memory).

    Cached; do not modify the returned tree.
    """
    model = FIDInceptionV3(num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x), jax.random.key(0), x)["params"]


def inception_num_params(include_bn_stats: bool = False, num_classes: int = NUM_CLASSES) -> int:
    """Number of trainable parameters (torch's ``sum(p.numel() for p in parameters())``).

    ``include_bn_stats`` also counts the batch-norm running means and variances (buffers in torch).
    """
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(inception_param_shapes(num_classes)):
        name = path[-1].key
        if name in ("mean", "var") and not include_bn_stats:
            continue
        total += int(np.prod(leaf.shape))
    return total


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def save_inception_params(params: Any, path: str) -> str:
    """Write an Inception parameter tree to ``path``.

    A path ending in ``.npz`` gives one compressed-free npz (keys ``Mixed_5b/branch1x1/conv/kernel``
    ...); any other path is written as an Orbax checkpoint directory (``StandardCheckpointer``).
    Returns the path written.
    """
    params = jax.tree_util.tree_map(np.asarray, params)
    if path.endswith(".npz"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        arrays: dict[str, Any] = _flatten(params)
        np.savez(path, **arrays)
        return path
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), params, force=True)
    ckptr.wait_until_finished()
    return path


def load_inception_params(path: str, *, check_shapes: bool = True) -> dict:
    """Load Inception parameters written by :func:`save_inception_params` (npz or Orbax dir).

    With ``check_shapes`` every leaf is compared with :func:`inception_param_shapes`; a missing,
    extra or mis-shaped parameter raises ``ValueError`` naming it.
    """
    if not path:
        raise ValueError("no Inception weights given: set config.eval.inception_weights to a file "
                         "made by `python -m jaxdiff.eval.convert_inception` (see docs/eval.md)")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception weights {path!r} not found; convert pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth with `python -m jaxdiff.eval.convert_inception "
            "IN.pth OUT.npz` (weights are never downloaded)")
    if os.path.isdir(path):
        import orbax.checkpoint as ocp

        params = ocp.StandardCheckpointer().restore(os.path.abspath(path))
        params = jax.tree_util.tree_map(np.asarray, params)
    else:
        with np.load(path) as f:
            params = _unflatten({k: f[k] for k in f.files})
    if check_shapes:
        _check_tree(params, inception_param_shapes())
    return params


def _check_tree(params: Any, ref: Any) -> None:
    got = {k: v.shape for k, v in _flatten(params).items()}
    want = {k: tuple(v.shape) for k, v in _flatten_shapes(ref).items()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"Inception parameters do not match the network: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                         f"{'...' if len(extra) > 5 else ''}")
    bad = [(k, got[k], want[k]) for k in want if tuple(got[k]) != want[k]]
    if bad:
        raise ValueError(f"Inception parameter shapes differ (name, got, expected): {bad[:5]}")


def _flatten_shapes(tree: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten_shapes(v, key))
        else:
            out[key] = v
    return out
