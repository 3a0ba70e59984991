"""Offline quality metrics for the embedded digits: a small classifier trained once, cached.

The classifier (an MLP with a 64-unit penultimate layer) is trained on the digits training
split at the model's resolution and stored as ``.npz`` in the workdir. Its penultimate (64-d)
features give a "digits FID" between generated samples and the held-out split, and its predictions
give class coverage, the class-histogram distance to the data, and a digits Inception Score — numbers
that need no download and can be compared between runs of the default config.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.eval.inception import _flatten, _unflatten
from jaxdiff.eval.metrics import feature_statistics, frechet_distance, inception_score

Array = jax.Array

__all__ = ["DigitsClassifier", "train_digits_classifier", "load_or_train_digits_classifier",
           "digits_features", "digits_metrics", "NUM_CLASSES"]

NUM_CLASSES = 10


class DigitsClassifier(nn.Module):
    """Small MLP: ``(B, H, W, 1)`` images in ``[0, 1]`` -> ``(features (B, 64), logits (B, 10))``.

    (An MLP, not a CNN: on 8x8 / 16x16 digits it is as accurate, and trains in seconds on a CPU.)
    """

    features: int = 64
    hidden: int = 256

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"DigitsClassifier expects (B, H, W, 1) images, got {x.shape}")
        x = 2.0 * x.astype(jnp.float32).reshape(x.shape[0], -1) - 1.0
        x = nn.relu(nn.Dense(self.hidden, name="hidden1")(x))
        h = nn.relu(nn.Dense(self.features, name="hidden2")(x))
        return h, nn.Dense(NUM_CLASSES, name="out")(h)


def train_digits_classifier(key: Array, images, labels, *, steps: int = 300,
                            batch_size: int = 256, lr: float = 3e-3,
                            weight_decay: float = 1e-4) -> dict:
    """Train :class:`DigitsClassifier` with AdamW (one jitted ``lax.scan`` over the steps).

    Args:
      key: PRNG key (init and minibatch draws).
      images: ``(N, H, W, 1)`` in ``[0, 1]`` (float) or uint8.
      labels: ``(N,)`` ints in ``[0, 10)``.
      steps, batch_size, lr, weight_decay: optimisation.

    Returns:
      the parameter tree.
    """
    x = _to_unit(images)
    y = jnp.asarray(labels, jnp.int32)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if int(jnp.min(y)) < 0 or int(jnp.max(y)) >= NUM_CLASSES:
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES}), got range "
                         f"[{int(jnp.min(y))}, {int(jnp.max(y))}]")
    model = DigitsClassifier()
    k_init, k_train = jax.random.split(key)
    params = model.init(k_init, x[:1])["params"]
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def run(params, key):
        def step(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (batch_size,), 0, x.shape[0])
            g = jax.grad(loss_fn)(p, x[idx], y[idx])
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
        return p

    return jax.device_get(run(params, k_train))


def _to_unit(images) -> Array:
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def load_or_train_digits_classifier(path: str, key: Array, images, labels, *, tag: str = "",
                                    **train_kwargs) -> dict:
    """The classifier cached at ``path`` (``.npz``), trained on ``(images, labels)`` if absent.

    ``tag`` (plus the image shape and count) identifies the training data: a cache made for other
    data is retrained and overwritten. Returns the parameter tree.
    """
    full_tag = f"{tag}|{tuple(np.shape(images))}|{sorted(train_kwargs.items())}"
    if os.path.exists(path):
        with np.load(path) as f:
            if str(f["__tag__"]) == full_tag:
                return _unflatten({k: f[k] for k in f.files if k != "__tag__"})
    params = train_digits_classifier(key, images, labels, **train_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    arrays: dict[str, Any] = {"__tag__": np.array(full_tag), **_flatten(params)}
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return params


_apply = jax.jit(lambda p, x: DigitsClassifier().apply({"params": p}, x))


def digits_features(params: dict, images, *, batch_size: int = 1000
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features ``(N, 64)`` and logits ``(N, 10)`` of images in ``[0, 1]`` / uint8."""
    x = _to_unit(images)
    outs = [jax.device_get(_apply(params, x[i:i + batch_size]))
            for i in range(0, x.shape[0], batch_size)]
    return (np.concatenate([o[0] for o in outs]).astype(np.float64),
            np.concatenate([o[1] for o in outs]).astype(np.float64))


def digits_metrics(params: dict, samples, reference, *, coverage_share: float = 0.5,
                   ref_stats: tuple | None = None) -> dict:
    """Compare generated digits with reference (held-out) digits through the classifier.

    Args:
      params: classifier parameters.
      samples: generated images ``(N, H, W, 1)`` in ``[0, 1]`` (clip model outputs first).
      reference: real images of the same shape (uint8 or ``[0, 1]``).
      coverage_share: a class counts as covered when it receives at least this fraction of its
        uniform share ``N / 10`` of the predictions.
      ref_stats: optional precomputed ``(mu, sigma)`` of the reference features.

    Returns:
      ``digits_fid`` (Fréchet distance of penultimate features), ``digits_class_coverage``
      (fraction of the 10 classes covered), ``digits_class_tv`` (total variation between the
      predicted-class histograms of samples and reference), ``digits_is`` (Inception-Score analogue,
      at most 10), ``digits_confidence`` (mean max probability), ``digits_num_samples``.
    """
    fs, ls = digits_features(params, samples)
    if ref_stats is None:
        fr, lr = digits_features(params, reference)
        ref_stats = feature_statistics(fr)
        ref_hist = np.bincount(lr.argmax(1), minlength=NUM_CLASSES) / lr.shape[0]
    else:
        lr = digits_features(params, reference)[1]
        ref_hist = np.bincount(lr.argmax(1), minlength=NUM_CLASSES) / lr.shape[0]
    n = fs.shape[0]
    hist = np.bincount(ls.argmax(1), minlength=NUM_CLASSES) / n
    probs = np.exp(ls - ls.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return {
        "digits_fid": frechet_distance(*feature_statistics(fs), *ref_stats),
        "digits_class_coverage": float(np.mean(hist >= coverage_share / NUM_CLASSES)),
        "digits_class_tv": float(0.5 * np.abs(hist - ref_hist).sum()),
        "digits_is": inception_score(ls, splits=1)[0],
        "digits_confidence": float(probs.max(1).mean()),
        "digits_num_samples": int(n),
    }
