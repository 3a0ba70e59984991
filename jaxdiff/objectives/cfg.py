"""Classifier-free guidance (Ho & Salimans 2022) as pure functions over any conditional score.

* :func:`guided_score`: ``guided(params, x, t, cond) = (1 + w) s(x, t, cond) - w s(x, t, null)``,
  both scores from ONE call of the conditional score on the concatenated batch ``2B``. The result
  is again a conditional score ``(params, x, t, cond)``, so every registry sampler runs guided
  sampling unchanged: ``get_sampler(name, sde, guided, shape)(params, key, cond=labels)`` (the
  samplers pass ``cond`` as the score's 4th positional argument, docs/sampler_interface.md).
  ``cond`` is any pytree whose leaves have the batch as leading axis: class labels ``(B,)``, or an
  observation ``(B, ...)`` with a null observation.
* :func:`drop_conditions`: label dropout, ``cond`` replaced by ``null_cond`` with probability
  ``p`` per example (one Bernoulli draw per example, shared by every leaf of ``cond``).
* :func:`cfg_loss`: denoising score matching of a conditional score with label dropout (the
  loss of :func:`jaxdiff.losses.score_matching_loss`, built from :func:`jaxdiff.losses.perturb`
  and :func:`jaxdiff.losses.dsm_per_example`), ``loss_fn(params, key, batch) -> (loss, aux)``
  with ``batch`` a dict holding ``'x'`` and the condition (``'label'`` by default, as the data
  pipeline yields it) or a pair ``(x, cond)``.
* :func:`network_cond_score`: a network score ``score_fn(params, x, t, *, rng=None, y=None)``
  (:func:`jaxdiff.scores.get_score_fn`) as ``cond_score_fn(params, x, t, y)``.
* :func:`mixture_cond_score`: exact ground truth, a class-conditional Gaussian mixture (one
  mixture per class): ``cond_score_fn(params, x, t, y)`` with ``y = K`` (the null label) the exact
  unconditional score.

The null label of a class-conditional network with ``K`` classes is ``K``: its label embedding
has ``K + 1`` rows (``config.model.num_classes = K + 1``). :func:`jaxdiff.inverse.guidance.
classifier_free_score_fn` is the older form whose ``params`` carry labels and scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import losses as losses_lib
from jaxdiff.analytic import GaussianMixture
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["guided_score", "drop_conditions", "null_like", "cfg_loss", "network_cond_score",
           "mixture_cond_score", "split_batch"]


def _check_prob(p, name: str = "cond_drop_prob") -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {p!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    return p


def _batch_cond(cond, b: int):
    """``cond`` with every leaf of leading axis ``b`` (a scalar leaf is broadcast to ``(b,)``)."""

    def one(c):
        c = jnp.asarray(c)
        if c.ndim == 0:
            return jnp.broadcast_to(c, (b,))
        if c.shape[0] != b:
            raise ValueError(f"every leaf of cond needs the batch ({b}) as its leading axis, got "
                             f"a leaf of shape {c.shape}")
        return c

    return jax.tree.map(one, cond)


def null_like(cond, null_cond):
    """``null_cond`` broadcast to the structure and shapes of the batched ``cond``.

    ``null_cond`` is a pytree of ``cond``'s structure, or a single array (a scalar null label, or
    one null observation of a leaf's event shape) used for every leaf; each of its leaves is
    broadcast to the matching leaf of ``cond`` and cast to its dtype.
    """
    leaves, treedef = jax.tree.flatten(cond)
    if not leaves:
        raise ValueError("cond has no array leaves")
    null_leaves = jax.tree.leaves(null_cond)
    if len(null_leaves) == 1 and len(leaves) > 1:
        null_leaves = null_leaves * len(leaves)
    elif jax.tree.structure(null_cond) != treedef and len(null_leaves) != len(leaves):
        raise ValueError(f"null_cond of structure {jax.tree.structure(null_cond)} does not match "
                         f"cond of structure {treedef}")
    out = []
    for c, n in zip(leaves, null_leaves):
        c, n = jnp.asarray(c), jnp.asarray(n)
        try:
            out.append(jnp.broadcast_to(n.astype(c.dtype), c.shape))
        except ValueError:
            raise ValueError(f"null_cond leaf of shape {n.shape} does not broadcast to the cond "
                             f"leaf of shape {c.shape}") from None
    return jax.tree.unflatten(treedef, out)


def guided_score(cond_score_fn: Callable, w, null_cond) -> Callable:
    """Classifier-free guidance ``(1 + w) s(x, t, cond) - w s(x, t, null_cond)``.

    Args:
      cond_score_fn: a conditional score ``cond_score_fn(params, x, t, cond)`` trained with
        condition dropout (``cond = null_cond`` gives the unconditional score); it must treat
        examples independently.
      w: the guidance scale: a number or an array, scalar or ``(B,)`` (``w = 0``: the
        conditional score, ``w = -1``: the unconditional one).
      null_cond: the null condition (see :func:`null_like`): the null label ``K`` of a network
        with ``K`` classes, or a null observation.

    Returns:
      ``guided(params, x, t, cond) -> score`` of ``x``'s shape: ONE call of ``cond_score_fn`` on
      ``concat([x, x])``, ``concat([t, t])`` (``(2B,)``) and ``concat([cond, null])`` per
      evaluation, so a sampler's NFE is unchanged (each call is twice as wide).
    """
    if not callable(cond_score_fn):
        raise ValueError(f"cond_score_fn must be callable, got {type(cond_score_fn).__name__}")
    if isinstance(w, (int, float)) and not jnp.isfinite(w):
        raise ValueError(f"guidance scale w must be finite, got {w!r}")

    def guided(params: Any, x: Array, t: Array, cond) -> Array:
        if cond is None:
            raise ValueError("guided score needs a condition: call it (or the sampler) with "
                             "cond=labels")
        b = x.shape[0]
        cond = _batch_cond(cond, b)
        null = null_like(cond, null_cond)
        tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), (b,))
        both = cond_score_fn(params, jnp.concatenate([x, x]), jnp.concatenate([tt, tt]),
                             jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null))
        s_c, s_u = both[:b], both[b:]
        ww = batch_broadcast(jnp.asarray(w, x.dtype), x)
        return ((1.0 + ww) * s_c - ww * s_u).astype(x.dtype)

    return guided


def drop_conditions(key: Array, cond, null_cond, p: float):
    """Replace ``cond`` by ``null_cond`` per example with probability ``p``.

    Returns:
      ``(cond_used, dropped)``: the pytree fed to the network and the ``(B,)`` bool mask of the
      examples whose condition was dropped.
    """
    p = _check_prob(p)
    leaves = jax.tree.leaves(cond)
    if not leaves:
        raise ValueError("cond has no array leaves")
    b = jnp.shape(leaves[0])[0]
    cond = _batch_cond(cond, b)
    null = null_like(cond, null_cond)
    dropped = jax.random.bernoulli(key, p, (b,))
    used = jax.tree.map(lambda c, n: jnp.where(batch_broadcast(dropped, c), n, c), cond, null)
    return used, dropped


def split_batch(batch, cond_key: str = "label"):
    """``(x, cond)`` of a batch: a dict with ``'x'`` and ``cond_key``, or a pair ``(x, cond)``."""
    if isinstance(batch, dict):
        missing = [k for k in ("x", cond_key) if k not in batch]
        if missing:
            raise ValueError(f"the batch needs keys 'x' and {cond_key!r}, missing {missing}; "
                             f"it has {sorted(batch)}")
        return batch["x"], batch[cond_key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"a conditional batch is a dict {{'x', {cond_key!r}}} or a pair (x, cond), "
                     f"got {type(batch).__name__}")


def cfg_loss(sde, cond_score_fn: Callable, *, cond_drop_prob: float, null_cond,
             cond_key: str = "label", reduce_mean: bool = True,
             likelihood_weighting: bool = False, eps: float = 1e-5,
             rng_kwarg: str | None = None) -> Callable:
    """Continuous-time denoising score matching of a conditional score with condition dropout.

    ``t ~ U(eps, T)``, ``x_t = mean(t) x_0 + std(t) z`` (:func:`jaxdiff.losses.perturb`); the
    condition of each example is replaced by ``null_cond`` with probability ``cond_drop_prob``;
    per-example loss :func:`jaxdiff.losses.dsm_per_example` of
    ``cond_score_fn(params, x_t, t, cond_used)`` (weighting ``std^2``, or ``g^2`` with
    ``likelihood_weighting``). One network call of batch ``B``.

    Args:
      sde: the forward SDE.
      cond_score_fn: ``cond_score_fn(params, x, t, cond)`` (with ``rng_kwarg``: also
        ``rng=key`` for dropout).
      cond_drop_prob: the probability ``p`` of dropping an example's condition, in ``[0, 1]``.
      null_cond: the null condition (the null label ``K``; see :func:`null_like`).
      cond_key: the batch key of the condition (the pipeline's ``'label'``).

    Returns:
      ``loss_fn(params, key, batch) -> (loss, aux)``; ``batch`` a dict with ``'x'`` and
      ``cond_key`` or a pair ``(x, cond)``; ``aux``: ``losses`` ``(B,)``, ``t``, ``dropped``
      (the mask) and ``cond`` (the conditions fed to the network).
    """
    p = _check_prob(cond_drop_prob)

    def loss_fn(params, key, batch):
        x, cond = split_batch(batch, cond_key)
        losses_lib.check_batch(x)
        k_t, k_z, k_drop, k_net = jax.random.split(key, 4)
        t = jax.random.uniform(k_t, (x.shape[0],), x.dtype, eps, sde.T)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        x_t, std = losses_lib.perturb(sde, x, t, z)
        used, dropped = drop_conditions(k_drop, _batch_cond(cond, x.shape[0]), null_cond, p)
        score = losses_lib.call_net(cond_score_fn, rng_kwarg, k_net, params, x_t, t, used)
        g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2 if likelihood_weighting else None
        losses = losses_lib.dsm_per_example(score, z, std, g2=g2, reduce_mean=reduce_mean)
        return jnp.mean(losses), {"losses": losses, "t": t, "dropped": dropped, "cond": used}

    return loss_fn


def network_cond_score(score_fn: Callable) -> Callable:
    """``cond_score_fn(params, x, t, y, **kw) = score_fn(params, x, t, y=y, **kw)``: a network
    score of :func:`jaxdiff.scores.get_score_fn` (class labels as ``y=``) in the conditional-score
    convention (condition fourth, positional)."""

    def cond_score_fn(params, x, t, y, **kw):
        return score_fn(params, x, t, y=jnp.asarray(y, jnp.int32), **kw)

    return cond_score_fn


def mixture_cond_score(class_mixtures: Sequence[GaussianMixture], sde,
                       class_weights: Sequence[float] | Array | None = None):
    """Exact class-conditional scores of ``p(x | y) = class_mixtures[y]``.

    Args:
      class_mixtures: one :class:`~jaxdiff.analytic.GaussianMixture` per class (same dimension).
      sde: the linear forward SDE.
      class_weights: ``p(y)`` (default uniform).

    Returns:
      ``(cond_score_fn, unconditional)``: ``cond_score_fn(params, x, t, y)`` (``params``
      ignored) is ``grad log p_t(x | y)`` for ``y`` in ``0..K-1`` and the exact unconditional
      ``grad log p_t(x)`` for ``y = K`` (the null label); ``unconditional`` is the mixture
      ``sum_y p(y) p(x | y)``.
    """
    mixtures = list(class_mixtures)
    k = len(mixtures)
    if k == 0:
        raise ValueError("class_mixtures is empty")
    dims = {m.dim for m in mixtures}
    if len(dims) != 1:
        raise ValueError(f"class mixtures have different dimensions {sorted(dims)}")
    cw = np.full((k,), 1.0 / k) if class_weights is None else np.asarray(class_weights, float)
    if cw.shape != (k,) or bool(np.any(cw < 0)):
        raise ValueError(f"class_weights must be {k} non-negative numbers, got {class_weights!r}")
    cw = cw / cw.sum()
    uncond = GaussianMixture(
        jnp.concatenate([jnp.log(cw[i]) + m.log_weights for i, m in enumerate(mixtures)]),
        jnp.concatenate([m.means for m in mixtures]),
        jnp.concatenate([m.eigvals for m in mixtures]),
        jnp.concatenate([m.eigvecs for m in mixtures]), mixtures[0].event_shape)
    parts = mixtures + [uncond]

    def cond_score_fn(params, x, t, y):
        del params
        y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), x.shape[:1])
        scores = jnp.stack([m.score_t(sde, x, t) for m in parts])         # (K + 1, B, ...)
        return jnp.take_along_axis(
            scores, y.reshape((1, -1) + (1,) * (x.ndim - 1)), axis=0)[0].astype(x.dtype)

    return cond_score_fn, uncond
