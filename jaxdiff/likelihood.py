"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3, App. D.2).

``log p_0(x) = log p_T(z) + int_eps^T div f~(x(t), t) dt`` where ``f~`` is the probability-flow drift
and ``z = x(T)``. The divergence is exact (``hutchinson=None``: one JVP per dimension, for small data)
or the Skilling-Hutchinson estimate ``E[v^T (df~/dx) v]`` with one fixed Rademacher or Gaussian
``v`` per solve.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.ode import solve_ode

Array = jax.Array

__all__ = ["log_likelihood", "bits_per_dim", "bpd_from_logp", "dequantize", "variational_bound",
           "bound_bits_per_dim"]


def _sum_per_example(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def log_likelihood(sde, score_fn, *, hutchinson: str | None = "rademacher",
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                   solver: str = "dopri5", max_steps: int = 8192):
    """Log-likelihood of data under the probability-flow ODE of ``score_fn``.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(params, x, t)``; it must act on each example independently.
      hutchinson: ``'rademacher'``, ``'gaussian'`` or ``None`` for the exact divergence
        (``D`` Jacobian-vector products per evaluation: for small ``D`` only).
      rtol, atol, solver, max_steps: the adaptive ODE solve (see :func:`solve_ode`).
      eps: start time of the integration (the data end).

    Returns:
      ``fn(params, key, x) -> (logp, z, nfe)``, jitted: ``logp`` of shape ``(B,)`` in nats, ``z`` the
      latent ``x(T)``, ``nfe`` the number of evaluations of the augmented vector field.
    """
    if hutchinson not in ("rademacher", "gaussian", None):
        raise ValueError(f"hutchinson must be 'rademacher', 'gaussian' or None, got {hutchinson!r}")
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(params, x, t):
        return rsde.sde(params, x, jnp.full((x.shape[0],), t, x.dtype))[0]

    def vector_field(t, state, args):
        params, probe = args
        x, _ = state
        f = lambda y: drift(params, y, t)
        if hutchinson is None:
            d = math.prod(x.shape[1:])
            basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
            fx, jvp_fn = jax.linearize(f, x)
            jvps = jax.vmap(lambda e: jvp_fn(jnp.broadcast_to(e, x.shape)))(basis)  # (d, B, ...)
            div = jnp.diagonal(jvps.reshape(d, x.shape[0], d), axis1=0, axis2=2).sum(-1)
        else:
            fx, jv = jax.jvp(f, (x,), (probe,))
            div = _sum_per_example(jv * probe)
        return fx, div

    @jax.jit
    def fn(params, key, x):
        if hutchinson == "gaussian":
            probe = jax.random.normal(key, x.shape, x.dtype)
        elif hutchinson == "rademacher":
            probe = jax.random.rademacher(key, x.shape, x.dtype)
        else:
            probe = None
        state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
        (z, delta), nfe = solve_ode(vector_field, state0, eps, sde.T, (params, probe),
                                    solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)
        return sde.prior_logp(z) + delta, z, nfe

    return fn


def dequantize(key: Array, images: Array, *, num_bits: int = 8, dtype=jnp.float32) -> Array:
    """Uniform dequantisation of integer data: ``(k + u) / 2^num_bits`` in ``[0, 1]``."""
    if not jnp.issubdtype(images.dtype, jnp.integer):
        raise ValueError(f"dequantize expects integer data (e.g. uint8), got dtype {images.dtype}")
    u = jax.random.uniform(key, images.shape, dtype)
    return (images.astype(dtype) + u) / (2**num_bits)


def bpd_from_logp(logp: Array, dim: int, *, centered: bool, num_bits: int = 8) -> Array:
    """Bits per dimension of discrete data from the log-density of its dequantised, scaled version.

    With ``x = (k + u) / 2^b`` in ``[0, 1]`` the discrete log-probability is bounded by
    ``log p(x) - D b log 2``; scaling to ``[-1, 1]`` (``centered=True``) adds ``D log 2`` to the
    log-density. So ``bpd = -logp / (D log 2) + b`` (``[0, 1]`` data) or ``+ b - 1`` (centered).
    """
    offset = num_bits - 1 if centered else num_bits
    return -logp / (dim * np.log(2.0)) + offset


def bits_per_dim(sde, score_fn, *, centered: bool, num_bits: int = 8, repeats: int = 1,
                 **likelihood_kwargs):
    """Bits/dim of integer data (e.g. uint8 images, ``(B, ...)``) under the model.

    Each example is dequantised uniformly ``repeats`` times (the paper uses several), scaled to the
    model's range (``[0, 1]``, or ``[-1, 1]`` when ``centered``), and its log-likelihood computed by
    :func:`log_likelihood`; the results are averaged per example. Feeding already-scaled float data,
    or data without dequantisation, is refused: it is the usual way to obtain negative bits/dim.

    Returns ``fn(params, key, images) -> (bpd (B,), nfe)``, jitted.
    """
    loglik = log_likelihood(sde, score_fn, **likelihood_kwargs)

    def logp_nfe(params, key, x):
        logp, _, nfe = loglik(params, key, x)
        return logp, nfe

    return _dequantized_bpd(logp_nfe, centered=centered, num_bits=num_bits, repeats=repeats)


def _dequantized_bpd(logp_fn, *, centered: bool, num_bits: int, repeats: int):
    """``fn(params, key, images) -> (bpd (B,), aux)``, jitted: ``repeats`` uniform
    dequantisations of the integer ``images``, each scaled to the model's range and scored by
    ``logp_fn(params, key, x) -> (log p(x) (B,), aux)``; bits/dim averaged over the repeats, the
    scalar ``aux`` (e.g. the NFE) summed."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    @jax.jit
    def fn(params, key, images):
        d = math.prod(images.shape[1:])

        def one(k):
            kq, kl = jax.random.split(k)
            x = dequantize(kq, images, num_bits=num_bits)
            if centered:
                x = 2.0 * x - 1.0
            logp, aux = logp_fn(params, kl, x)
            return bpd_from_logp(logp, d, centered=centered, num_bits=num_bits), aux

        bpd, aux = jax.lax.map(one, jax.random.split(key, repeats))
        return bpd.mean(0), aux.sum()

    return fn


def _time_proposal(sde, event_shape, dtype, eps: float, num_grid: int):
    """Piecewise-uniform importance density of ``t`` on ``[eps, T]``, proportional (on a log-spaced
    grid, trapezoid masses) to ``w(t) = mean_i g_i(t)^2 / sigma_i(t)^2``: the weight that makes the
    score-matching term of the bound O(1). Returns ``(edges (K+1,), cum (K+1,), dens (K,))``:
    cell ``k`` is drawn with probability ``cum[k+1] - cum[k]`` and has density ``dens[k]``."""
    edges = jnp.exp(jnp.linspace(jnp.log(eps), jnp.log(sde.T), num_grid + 1)).astype(dtype)
    zeros = jnp.zeros((1,) + tuple(event_shape), dtype)

    def w(t):
        tb = jnp.full((1,), t, dtype)
        _, g = sde.sde(zeros, tb)
        _, std = sde.marginal_prob(zeros, tb)
        g2 = jnp.broadcast_to(jnp.reshape(g, (1,) + (1,) * len(event_shape)) if jnp.ndim(g) == 1
                              else g, zeros.shape) ** 2
        return jnp.mean(g2 / jnp.broadcast_to(std, zeros.shape) ** 2)

    wk = jax.lax.map(w, edges, batch_size=64)
    mass = 0.5 * (wk[1:] + wk[:-1]) * jnp.diff(edges)
    total = jnp.sum(mass)
    cum = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(mass) / total])
    return edges, cum, mass / total / jnp.diff(edges)


def variational_bound(sde, score_fn, *, eps: float = 1e-5, importance_sampling: bool = True,
                      num_grid: int = 1024):
    """Monte-Carlo upper bound on ``-log p(x)`` of the reverse-SDE model of ``score_fn`` (Song,
    Durkan, Murray & Ermon 2021, "Maximum likelihood training of score-based diffusion models",
    Thm. 1, denoising form), integrated over ``[eps, T]``:

    ``L(x) = -E log pi(x_T) + 1/2 int_eps^T E[ g^2 (|s(x_t, t)|^2 + 2 s . z / sigma) - 2 div f ] dt``

    with ``x_t = alpha x + sigma z`` (so ``-z / sigma`` is the score of the perturbation kernel).
    With the exact score, ``E_x L(x) = H(p_eps) + KL(p_T || pi)``; any other score adds
    ``1/2 int g^2 E|s - grad log p_t|^2 dt``. This is the likelihood-weighted denoising
    score-matching loss plus the terms that make it a bound, so it is what a training loss
    "implies" for the likelihood, next to the exact probability-flow value of
    :func:`log_likelihood`.

    Args:
      sde: the forward SDE; its drift must be element-wise linear in ``x`` (true of VP, sub-VP,
        VE and the multi-speed SDEs): ``div f`` is read off ``f(1, t)``.
      score_fn: ``score_fn(params, x, t)`` with per-example ``t`` of shape ``(B,)``.
      eps: the smallest time (the bound is on the density of ``x`` at time ``eps``).
      importance_sampling: draw ``t`` from a density proportional to ``g^2 / sigma^2`` (tabulated
        on ``num_grid`` log-spaced cells, sampled exactly as a piecewise-uniform density, so the
        estimate stays unbiased); ``False``: ``t ~ U(eps, T)`` (much higher variance).
      num_grid: cells of the importance density.

    Returns:
      ``fn(params, key, x) -> (bound, aux)``, jitted: ``bound`` of shape ``(B,)`` in nats, one
      draw of ``(t, z, x_T)`` per example (average several keys for a tighter estimate); ``aux``
      has ``'prior'`` (``-log pi(x_T)``) and ``'t'``.
    """
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")

    @jax.jit
    def fn(params, key, x):
        B, dtype = x.shape[0], x.dtype
        kt, kz, kT, kc = jax.random.split(key, 4)
        if importance_sampling:
            edges, cum, dens = _time_proposal(sde, x.shape[1:], dtype, eps, num_grid)
            u = jax.random.uniform(kt, (B,), dtype)
            k = jnp.clip(jnp.searchsorted(cum, u, side="right") - 1, 0, num_grid - 1)
            v = jax.random.uniform(kc, (B,), dtype)
            t = edges[k] + v * (edges[k + 1] - edges[k])
            inv_p = 1.0 / dens[k]
        else:
            t = jax.random.uniform(kt, (B,), dtype, eps, sde.T)
            inv_p = jnp.full((B,), sde.T - eps, dtype)
        z = jax.random.normal(kz, x.shape, dtype)
        mean, std = sde.marginal_prob(x, t)
        std = jnp.broadcast_to(std, x.shape) if jnp.ndim(std) == x.ndim else \
            jnp.reshape(std, (B,) + (1,) * (x.ndim - 1))
        xt = mean + std * z
        s = score_fn(params, xt, t)
        _, g = sde.sde(xt, t)
        g = g if jnp.ndim(g) == x.ndim else jnp.reshape(g, (B,) + (1,) * (x.ndim - 1))
        f1, _ = sde.sde(jnp.ones_like(x), t)
        div_f = _sum_per_example(jnp.broadcast_to(f1, x.shape))
        # g^2 (|s|^2 + 2 s.z / sigma) = g^2 / sigma^2 (|sigma s + z|^2 - |z|^2); E z^2 = 1, so
        # -z^2 may be replaced by -(w z^2 + 1 - w) for any w(t) without bias. w = (alpha^2 /
        # (alpha^2 + sigma^2))^2 is the w that cancels the noise exactly for unit-variance Gaussian
        # data (sigma s + z ~ (1 - r) z): it removes most of the estimator's variance elsewhere too.
        alpha = sde.marginal_prob(jnp.ones_like(x), t)[0]   # linear SDE: mean = alpha x
        w = (alpha**2 / (alpha**2 + std**2)) ** 2
        resid = (std * s + z) ** 2 - w * z**2 - (1.0 - w)
        integrand = _sum_per_example(g**2 / std**2 * resid) - 2.0 * div_f
        mean_T, std_T = sde.marginal_prob(x, jnp.full((B,), sde.T, dtype))
        xT = mean_T + (jnp.broadcast_to(std_T, x.shape) if jnp.ndim(std_T) == x.ndim else
                       jnp.reshape(std_T, (B,) + (1,) * (x.ndim - 1))) * \
            jax.random.normal(kT, x.shape, dtype)
        prior = -sde.prior_logp(xT)
        return prior + 0.5 * integrand * inv_p, {"prior": prior, "t": t}

    return fn


def bound_bits_per_dim(sde, score_fn, *, centered: bool, num_bits: int = 8, repeats: int = 1,
                       **bound_kwargs):
    """Bits/dim of integer data from :func:`variational_bound` (an upper bound on the model's
    bits/dim, estimated with ``repeats`` draws of dequantisation noise, time and noise per example).

    Returns ``fn(params, key, images) -> bpd (B,)``, jitted; ``bound_kwargs`` go to
    :func:`variational_bound`. See :func:`bits_per_dim` for the data conventions.
    """
    bound = variational_bound(sde, score_fn, **bound_kwargs)

    def neg_bound(params, key, x):
        nll, _ = bound(params, key, x)
        return -nll, jnp.zeros((), jnp.int32)

    fn = _dequantized_bpd(neg_bound, centered=centered, num_bits=num_bits, repeats=repeats)
    return jax.jit(lambda params, key, images: fn(params, key, images)[0])
