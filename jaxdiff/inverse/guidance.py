"""Class-conditional sampling: classifier guidance and classifier-free guidance.

Both return a plain ``score_fn(params, x, t)`` whose ``params`` carry the labels and the guidance
scale next to the network parameters, so every sampler of the library (PC, ODE, inverse solvers)
runs guided sampling unchanged, and one compilation serves every label and scale:

* :func:`classifier_guided_score_fn`: ``s(x, t) + scale * grad_x log p_t(y | x)`` with a
  noise-conditional classifier (Song et al. 2021, Sec. 5.3; Dhariwal & Nichol 2021). With the
  exact classifier and ``scale = 1`` this *is* the conditional score ``grad log p_t(x | y)`` (Bayes).
* :func:`classifier_free_score_fn`: ``(1 + w) s(x, t, y) - w s(x, t, null)`` (Ho & Salimans 2022).

:func:`mixture_classifier` is the exact noise-conditional classifier of a Gaussian mixture (the
posterior component probabilities of the perturbed mixture), for tests and toys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["GuidanceParams", "classifier_guided_score_fn", "classifier_free_score_fn",
           "mixture_classifier"]


class GuidanceParams(NamedTuple):
    """Parameters of a guided score function (a pytree).

    Fields:
      score: parameters of the score network.
      labels: ``(B,)`` int class labels (or a scalar for all examples).
      scale: guidance scale (scalar or ``(B,)``).
      classifier: parameters of the classifier (classifier guidance only; ``None`` otherwise).
    """

    score: Any
    labels: Array
    scale: Array
    classifier: Any = None


def _labels(labels, batch):
    labels = jnp.asarray(labels)
    if labels.ndim > 1 or (labels.ndim == 1 and labels.shape[0] not in (1, batch)):
        raise ValueError(f"labels must be a scalar or of shape ({batch},), got {labels.shape}")
    return jnp.broadcast_to(labels, (batch,))


def classifier_guided_score_fn(score_fn: Callable, logits_fn: Callable) -> Callable:
    """Score of ``p_t(x) p_t(y | x)^scale``.

    Args:
      score_fn: unconditional ``score_fn(params, x, t)``.
      logits_fn: noise-conditional classifier ``logits_fn(params, x, t) -> (B, num_classes)``
        logits of ``p_t(y | x)``; it must treat examples independently.

    Returns:
      ``guided(gparams, x, t)`` with ``gparams`` a :class:`GuidanceParams`
      (``score``, ``labels``, ``scale``, ``classifier``).
    """

    def guided(gparams: GuidanceParams, x, t):
        labels = _labels(gparams.labels, x.shape[0])

        def log_p_y(x_):
            logp = jax.nn.log_softmax(logits_fn(gparams.classifier, x_, t), axis=-1)
            return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

        grad = jax.grad(log_p_y)(x)
        scale = batch_broadcast(jnp.asarray(gparams.scale, x.dtype), x)
        return score_fn(gparams.score, x, t) + scale * grad.astype(x.dtype)

    return guided


def classifier_free_score_fn(cond_score_fn: Callable, null_label: int | None = None) -> Callable:
    """Classifier-free guidance ``(1 + w) s(x, t, y) - w s(x, t, null)``.

    Args:
      cond_score_fn: conditional score ``cond_score_fn(params, x, t, labels)`` (the library's
        one convention: condition fourth, positional); ``labels=None`` (or ``null_label``) gives
        the unconditional score (the network trained with label dropout).
      null_label: the label meaning "no class" for networks with a null embedding; then both scores
        come from one batched call of size ``2B``. ``None``: two calls, the second with ``None`` as the label.

    Returns:
      ``guided(gparams, x, t)`` with ``gparams`` a :class:`GuidanceParams` (``scale`` is ``w``;
      ``w = 0`` is plain conditional sampling). Every call costs two network evaluations per example.
    """

    def guided(gparams: GuidanceParams, x, t):
        b = x.shape[0]
        labels = _labels(gparams.labels, b)
        w = batch_broadcast(jnp.asarray(gparams.scale, x.dtype), x)
        if null_label is None:
            cond = cond_score_fn(gparams.score, x, t, labels)
            uncond = cond_score_fn(gparams.score, x, t, None)
        else:
            tt = jnp.broadcast_to(jnp.asarray(t), (b,))
            both = cond_score_fn(gparams.score, jnp.concatenate([x, x]), jnp.concatenate([tt, tt]),
                                 jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
            cond, uncond = both[:b], both[b:]
        return (1.0 + w) * cond - w * uncond

    return guided


def mixture_classifier(mixture, sde) -> Callable:
    """Exact noise-conditional classifier of a Gaussian mixture (classes = components).

    Args:
      mixture: a :class:`jaxdiff.analytic.GaussianMixture`.
      sde: the linear forward SDE.

    Returns:
      ``logits_fn(params, x, t) -> (B, K)`` (``params`` ignored) whose ``log_softmax`` is
      ``log p_t(k | x)`` exactly, for ``x`` of shape ``(B, *event_shape)`` and ``t`` scalar or ``(B,)``.
    """

    def one(xi, ti):
        m = mixture.at(sde, ti)
        diff = xi.reshape(-1)[None, :] - m.means                     # (K, D)
        proj = jnp.einsum("kdj,kd->kj", m.eigvecs, diff)
        return m.log_weights - 0.5 * (jnp.sum(proj**2 / m.eigvals, -1)
                                      + jnp.sum(jnp.log(m.eigvals), -1))

    def logits_fn(params, x, t):
        del params
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return jax.vmap(one)(x, t)

    return logits_fn
