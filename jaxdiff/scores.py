"""Turning a network into a score function ``score_fn(params, x, t)`` for an SDE.

As in Song et al. 2021 (``models/utils.get_score_fn``):

* VP / sub-VP: the network gets the label ``t * 999`` (continuous) or the discrete index
  ``t * (N - 1)`` (VP, discrete) and predicts the noise: ``score = -output / std(t)``.
* VE: the network gets ``sigma(t)`` (continuous) or the reversed index
  ``round((T - t) (N - 1))`` (discrete, index 0 = ``sigma_max``) and predicts the score; with
  ``scale_by_sigma`` the output is divided by ``sigma``.

Other parameterizations (with ``x_t = alpha(t) x_0 + sigma(t) eps``):

* ``'eps'``: ``score = -out / sigma``;
* ``'x0'``: ``score = -(x - alpha out) / sigma^2``;
* ``'v'`` (``v = alpha eps - sigma x_0``): ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``,
  ``score = -eps / sigma``;
* ``'score'``: ``score = out`` (``/ sigma`` with ``scale_by_sigma``).

Any other :class:`jaxdiff.sde.SDE` with ``marginal_coeffs`` works with continuous labels
``t * 999`` (pass ``label_fn`` to change that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib
from jaxdiff.sde import batch_broadcast

Array = jax.Array

__all__ = ["get_score_fn", "get_model_fn", "PARAMETERIZATIONS", "time_labels",
           "output_to_score"]

PARAMETERIZATIONS = ("eps", "x0", "v", "score")


def get_model_fn(model, *, train: bool = False) -> Callable:
    """``model_fn(params, x, labels, *, rng=None, y=None) -> output``: one ``apply`` call.

    With ``train=True`` dropout is active and ``rng`` (a PRNG key) is required.
    """

    def model_fn(params, x, labels, *, rng=None, y=None):
        kwargs = {}
        if y is not None:
            kwargs["y"] = y
        if train:
            if rng is None:
                raise ValueError("train=True needs a PRNG key: call score_fn(..., rng=key)")
            return model.apply({"params": params}, x, labels, train=True, rngs={"dropout": rng},
                               **kwargs)
        return model.apply({"params": params}, x, labels, train=False, **kwargs)

    return model_fn


def _default_parameterization(sde) -> str:
    return "score" if isinstance(sde, sde_lib.VESDE) else "eps"


def time_labels(sde, t: Array, *, continuous: bool = True) -> tuple[Array, Array, Array]:
    """The network's time labels and the marginal coefficients at ``t``.

    Args:
      sde: a :class:`jaxdiff.sde.SDE`.
      t: ``(B,)`` times.
      continuous: continuous labels (``t*999`` / ``sigma(t)``) or discrete indices.

    Returns:
      ``(labels, alpha, sigma)``, each ``(B,)``; for discrete labels ``alpha``, ``sigma`` are
      those of the discrete schedule (``sqrt(alphas_cumprod[i])`` / ``discrete_sigmas``).
    """
    t = jnp.asarray(t)
    if isinstance(sde, sde_lib.VESDE):
        if continuous:
            sigma = sde.sigma(t)
            return sigma, jnp.ones_like(sigma), sigma
        idx = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
        sigma = sde.discrete_sigmas[sde.N - 1 - idx]
        return idx, jnp.ones_like(sigma), sigma
    if isinstance(sde, sde_lib.VPSDE) and not continuous:
        labels = t * (sde.N - 1)
        idx = labels.astype(jnp.int32)
        acp = sde.alphas_cumprod[idx]
        return labels, jnp.sqrt(acp), jnp.sqrt(1.0 - acp)
    if not continuous and not isinstance(sde, sde_lib.SubVPSDE):
        raise ValueError(
            f"discrete labels are defined for VPSDE and VESDE only, got {type(sde).__name__}")
    # VP / sub-VP (sub-VP always uses continuous labels, as in the paper) and other SDEs
    alpha, sigma = sde.marginal_coeffs(t)
    return t * 999.0, alpha, sigma


def output_to_score(out: Array, x: Array, alpha: Array, sigma: Array, parameterization: str,
                    scale_by_sigma: bool = False) -> Array:
    """Convert a network output into a score given ``x_t = alpha x_0 + sigma eps``.

    Args:
      out, x: ``(B, ...)``. alpha, sigma: ``(B,)``.
      parameterization: 'eps' | 'x0' | 'v' | 'score'.
      scale_by_sigma: divide a 'score' output by sigma (NCSN / VE models).
    Returns:
      The score, shape of ``x``.
    """
    a = batch_broadcast(alpha, x).astype(out.dtype)
    s = batch_broadcast(sigma, x).astype(out.dtype)
    if parameterization == "eps":
        return -out / s
    if parameterization == "x0":
        return -(x - a * out) / (s * s)
    if parameterization == "v":
        eps = (s * x + a * out) / (a * a + s * s)
        return -eps / s
    if parameterization == "score":
        return out / s if scale_by_sigma else out
    raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")


def get_score_fn(sde, model, *, continuous: bool = True, parameterization: str | None = None,
                 scale_by_sigma: bool = False, train: bool = False,
                 label_fn: Callable[[Array], Array] | None = None) -> Callable:
    """Wrap a network (from :func:`jaxdiff.models.get_model`) as a score function.

    Args:
      sde: a :class:`jaxdiff.sde.SDE` (VPSDE, SubVPSDE, VESDE, or any linear SDE with
        ``marginal_coeffs``).
      model: a Linen module called as ``apply({'params': p}, x, labels, train=, y=)``, or any
        callable ``model(params, x, labels, *, rng=None, y=None)``.
      continuous: continuous time labels (``t*999`` VP/sub-VP, ``sigma(t)`` VE) or discrete
        indices (VP: ``t*(N-1)``; VE: ``round((T-t)(N-1))``), as the network was trained.
      parameterization: 'eps' | 'x0' | 'v' | 'score'; default 'eps' for VP / sub-VP and
        'score' for VE, as in the paper.
      scale_by_sigma: divide a 'score' output by ``sigma(t)`` (the paper's VE NCSN++).
      train: dropout on (``rng`` required at call time).
      label_fn: optional ``t -> labels`` overriding the default labels.

    Returns:
      ``score_fn(params, x, t, *, rng=None, y=None) -> score`` with ``x`` ``(B, ...)`` and ``t``
      a scalar or ``(B,)``; pure and jittable.
    """
    if parameterization is None:
        parameterization = _default_parameterization(sde)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    if scale_by_sigma and parameterization != "score":
        raise ValueError("scale_by_sigma applies to the 'score' parameterization only, got "
                         f"parameterization={parameterization!r}")
    if not continuous and not isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE, sde_lib.VESDE)):
        raise ValueError(
            f"discrete labels are defined for VPSDE and VESDE only, got {type(sde).__name__}")
    model_fn = model if not hasattr(model, "apply") else get_model_fn(model, train=train)

    def score_fn(params: Any, x: Array, t: Array, *, rng: Array | None = None,
                 y: Array | None = None) -> Array:
        t = jnp.asarray(t, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {t.shape}")
        t = jnp.broadcast_to(t, (x.shape[0],))
        labels, alpha, sigma = time_labels(sde, t, continuous=continuous)
        if label_fn is not None:
            labels = label_fn(t)
        out = model_fn(params, x, labels, rng=rng, y=y)
        if out.shape != x.shape:
            raise ValueError(f"network output shape {out.shape} differs from x shape {x.shape}")
        return output_to_score(out, x, alpha, sigma, parameterization, scale_by_sigma)

    return score_fn
