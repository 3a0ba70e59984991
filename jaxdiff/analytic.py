"""Exact ground truth: Gaussian-mixture data and its perturbed scores and densities.

For a linear SDE the perturbation kernel is ``x_t = alpha(t) x_0 + sigma(t) z``, so a mixture
``sum_k w_k N(m_k, S_k)`` at time ``t`` is the mixture ``sum_k w_k N(alpha m_k, alpha^2 S_k + sigma^2 I)``.
Covariances are kept in eigen-form ``S_k = U_k diag(lam_k) U_k^T``; perturbing only changes the
eigenvalues, so scores and log-densities at any ``t`` are exact and cheap, with a different ``t`` per
example.

The mixture is a pytree; ``score_fn(sde)`` returns a ``score_fn(params, x, t)`` (``params`` ignored)
that plugs into every sampler, loss and solver of the library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

__all__ = ["GaussianMixture"]


def _flatten(x: Array, d: int) -> Array:
    if math.prod(x.shape[1:]) != d:
        raise ValueError(f"x of shape {x.shape} does not hold examples of dimension {d}")
    return x.reshape(x.shape[0], d)


class GaussianMixture(struct.PyTreeNode):
    """A mixture of ``K`` Gaussians in ``D`` dimensions, in eigen-form.

    Build with :meth:`create`. Fields: ``log_weights (K,)``, ``means (K, D)``, ``eigvals (K, D)``,
    ``eigvecs (K, D, D)`` (columns are eigenvectors). ``event_shape`` (static) is the shape of one
    example, e.g. ``(D,)`` or ``(H, W, C)``.
    """

    log_weights: Array
    means: Array
    eigvals: Array
    eigvecs: Array
    event_shape: tuple = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(
        cls,
        weights: Sequence[float] | Array,
        means: Array,
        covs: Array | None = None,
        *,
        stds: Array | None = None,
        event_shape: tuple | None = None,
        dtype=None,
    ) -> GaussianMixture:
        """Mixture from weights ``(K,)``, means ``(K, D)`` and either full covariances ``(K, D, D)``
        or standard deviations ``stds`` (scalar, ``(K,)`` or ``(K, D)``: diagonal covariances)."""
        dtype = dtype or jnp.result_type(float)
        means = jnp.asarray(means, dtype)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {means.shape}")
        k, d = means.shape
        weights = jnp.asarray(weights, dtype)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},) to match means, got {weights.shape}")
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs (K, D, D) and stds")
        if covs is not None:
            covs = jnp.asarray(covs, dtype)
            if covs.shape != (k, d, d):
                raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {covs.shape}")
            eigvals, eigvecs = jnp.linalg.eigh(0.5 * (covs + jnp.swapaxes(covs, -1, -2)))
            eigvals = jnp.maximum(eigvals, 0.0)
        else:
            stds = jnp.asarray(stds, dtype)
            stds = jnp.broadcast_to(stds.reshape((k, 1) if stds.ndim == 1 else stds.shape), (k, d))
            eigvals = stds**2
            eigvecs = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (k, d, d))
        event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold {d} values")
        return cls(jnp.log(weights / weights.sum()), means, eigvals, eigvecs, event_shape)

    # ---- basic properties -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> Array:
        return jnp.exp(self.log_weights)

    @property
    def covs(self) -> Array:
        return jnp.einsum("kij,kj,klj->kil", self.eigvecs, self.eigvals, self.eigvecs)

    def mean(self) -> Array:
        """Overall mean ``(D,)``."""
        return jnp.einsum("k,kd->d", self.weights, self.means)

    def cov(self) -> Array:
        """Overall covariance ``(D, D)`` (law of total covariance)."""
        mu = self.mean()
        dm = self.means - mu
        return jnp.einsum("k,kij->ij", self.weights, self.covs + dm[:, :, None] * dm[:, None, :])

    # ---- perturbation -----------------------------------------------------------------------
    def perturb(self, alpha: Array, sigma: Array) -> GaussianMixture:
        """Law of ``alpha x + sigma z`` for ``x`` from this mixture and ``z ~ N(0, I)``.

        Scalar ``alpha``, ``sigma`` only shift the eigenvalues. Per-coordinate ones (any shape that
        holds ``D`` values, e.g. ``event_shape``) go through :meth:`perturb_diag`.
        """
        if jnp.ndim(alpha) > 0 or jnp.ndim(sigma) > 0:
            return self.perturb_diag(alpha, sigma)
        return self.replace(means=alpha * self.means, eigvals=alpha**2 * self.eigvals + sigma**2)

    def perturb_diag(self, alpha: Array, sigma: Array) -> GaussianMixture:
        """Law of ``alpha * x + sigma * z`` with per-coordinate (element-wise) ``alpha``, ``sigma``.

        The covariances become ``diag(alpha) S_k diag(alpha) + diag(sigma^2)``, no longer
        co-diagonal with ``S_k``, so they are formed and re-decomposed (``eigh``; ``O(K D^3)``).

        Args:
          alpha, sigma: scalars or arrays of ``D`` values (e.g. of ``event_shape``).

        Returns:
          the perturbed mixture (same event shape).
        """
        d = self.dim
        dtype = self.means.dtype

        def vec(v, name):
            v = jnp.asarray(v, dtype)
            if v.ndim == 0:
                return jnp.full((d,), v)
            if v.size != d:
                raise ValueError(f"{name} of shape {v.shape} does not hold {d} per-coordinate values")
            return v.reshape(d)

        a, s = vec(alpha, "alpha"), vec(sigma, "sigma")
        covs = a[None, :, None] * self.covs * a[None, None, :] + jnp.diag(s**2)[None]
        eigvals, eigvecs = jnp.linalg.eigh(0.5 * (covs + jnp.swapaxes(covs, -1, -2)))
        return self.replace(means=a * self.means, eigvals=jnp.maximum(eigvals, 1e-30),
                            eigvecs=eigvecs)

    def at(self, sde, t: Array) -> GaussianMixture:
        """The marginal ``p_t`` of data from this mixture pushed through ``sde`` to scalar time ``t``
        (per-coordinate coefficients, as of a multi-speed SDE, are supported)."""
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t))
        return self.perturb(alpha, sigma)

    def marginal(self, index, event_shape: tuple | None = None) -> GaussianMixture:
        """The marginal law of the coordinates ``x_flat[index]`` (a mixture with the same weights).

        Args:
          index: integer indices (or a boolean mask) into the flattened ``D`` coordinates.
          event_shape: event shape of the marginal (default ``(len(index),)``).
        """
        idx = np.arange(self.dim)[np.asarray(index)]
        if idx.size == 0:
            raise ValueError("index selects no coordinate")
        covs = self.covs[:, idx][:, :, idx]
        return GaussianMixture.create(self.weights, self.means[:, idx], covs,
                                      event_shape=event_shape, dtype=self.means.dtype)

    # ---- densities and scores (x of shape (B, *event_shape)) ---------------------------------
    def _terms(self, xf: Array, means: Array, eigvals: Array):
        """Eigen-basis residuals and log-joint terms; ``means``/``eigvals`` are ``(K, D)`` or, for
        a different law per example, ``(B, K, D)``."""
        proj = jnp.einsum("kdj,bkd->bkj", self.eigvecs, xf[:, None, :] - means)   # (B, K, D)
        quad = jnp.sum(proj**2 / eigvals, axis=-1)                                # (B, K)
        logdet = jnp.sum(jnp.log(eigvals), axis=-1)                               # (K,) | (B, K)
        logn = -0.5 * (quad + logdet + self.dim * jnp.log(2 * jnp.pi))
        return proj, self.log_weights + logn

    def _score(self, xf, means, eigvals):
        proj, terms = self._terms(xf, means, eigvals)
        resp = jax.nn.softmax(terms, axis=-1)
        comp_scores = -jnp.einsum("kdj,bkj->bkd", self.eigvecs, proj / eigvals)
        return jnp.einsum("bk,bkd->bd", resp, comp_scores)

    def log_prob(self, x: Array) -> Array:
        """Log-density of each example, shape ``(B,)``."""
        _, terms = self._terms(_flatten(x, self.dim), self.means, self.eigvals)
        return jax.nn.logsumexp(terms, axis=-1)

    def responsibilities(self, x: Array) -> Array:
        """Posterior component probabilities ``(B, K)``."""
        _, terms = self._terms(_flatten(x, self.dim), self.means, self.eigvals)
        return jax.nn.softmax(terms, axis=-1)

    def score(self, x: Array) -> Array:
        """``grad_x log p(x)``, same shape as ``x``."""
        return self._score(_flatten(x, self.dim), self.means, self.eigvals).reshape(x.shape)

    def sample(self, key: Array, n: int) -> Array:
        """``n`` exact samples, shape ``(n, *event_shape)``."""
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_weights, shape=(n,))
        z = jax.random.normal(kz, (n, self.dim), self.means.dtype)
        x = self.means[comp] + jnp.einsum(
            "bdj,bj->bd", self.eigvecs[comp], jnp.sqrt(self.eigvals[comp]) * z)
        return x.reshape((n,) + self.event_shape)

    # ---- time-dependent versions (per-example t) --------------------------------------------
    def _at_times(self, sde, x, t):
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        alpha, sigma = sde.marginal_coeffs(t)
        means = alpha[:, None, None] * self.means
        eigvals = alpha[:, None, None] ** 2 * self.eigvals + sigma[:, None, None] ** 2
        return _flatten(x, self.dim), means, eigvals

    def _per_example(self, fn, sde, x, t):
        """``fn(p_t, x_i)`` per example: for SDEs with per-coordinate coefficients (multi-speed),
        whose perturbed covariances need one decomposition per time."""
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        return jax.vmap(lambda xi, ti: fn(self.at(sde, ti), xi[None])[0])(x, t)

    @staticmethod
    def _per_coordinate(sde) -> bool:
        return jnp.ndim(sde.marginal_coeffs(jnp.zeros(()))[0]) > 0

    def score_t(self, sde, x: Array, t: Array) -> Array:
        """Exact score ``grad log p_t(x)`` of the perturbed data; ``t`` scalar or ``(B,)``."""
        if self._per_coordinate(sde):
            return self._per_example(GaussianMixture.score, sde, x, t)
        return self._score(*self._at_times(sde, x, t)).reshape(x.shape)

    def log_prob_t(self, sde, x: Array, t: Array) -> Array:
        """Exact ``log p_t(x)``, shape ``(B,)``."""
        if self._per_coordinate(sde):
            return self._per_example(GaussianMixture.log_prob, sde, x, t)
        _, terms = self._terms(*self._at_times(sde, x, t))
        return jax.nn.logsumexp(terms, axis=-1)

    def score_fn(self, sde):
        """A library score function ``score_fn(params, x, t)`` (``params`` is ignored)."""
        def score_fn(params, x, t):
            del params
            return self.score_t(sde, x, t).astype(x.dtype)
        return score_fn

    # ---- conditioning on a linear-Gaussian observation --------------------------------------
    def condition(self, A: Array, y: Array, noise_std: float = 0.0) -> GaussianMixture:
        """Exact posterior ``p(x | y)`` for ``y = A x + noise_std * n`` (one observation ``y``).

        The posterior is again a mixture: each component is updated by the Kalman formulas and
        reweighted by its evidence ``N(y; A m_k, A S_k A^T + noise_std^2 I)``. A noiseless
        observation is allowed (the posterior covariances are then singular along ``A``'s rows).
        """
        A = jnp.asarray(A, self.means.dtype)
        y = jnp.asarray(y, self.means.dtype).reshape(-1)
        if A.ndim != 2 or A.shape[1] != self.dim or A.shape[0] != y.shape[0]:
            raise ValueError(f"A must have shape ({y.shape[0]}, {self.dim}), got {A.shape}")
        covs = self.covs
        m = A.shape[0]
        s_y = jnp.einsum("ij,kjl,ml->kim", A, covs, A) + noise_std**2 * jnp.eye(m)  # (K, m, m)
        cross = jnp.einsum("kij,mj->kim", covs, A)                                    # (K, D, m)
        gain = jnp.swapaxes(jnp.linalg.solve(s_y, jnp.swapaxes(cross, -1, -2)), -1, -2)
        resid = y[None] - self.means @ A.T                                             # (K, m)
        post_means = self.means + jnp.einsum("kdm,km->kd", gain, resid)
        post_covs = covs - jnp.einsum("kdm,kem->kde", gain, cross)
        sign, logdet = jnp.linalg.slogdet(s_y)
        quad = jnp.einsum("km,km->k", resid, jnp.linalg.solve(s_y, resid[..., None])[..., 0])
        log_evidence = -0.5 * (quad + logdet + m * jnp.log(2 * jnp.pi))
        log_w = self.log_weights + log_evidence
        eigvals, eigvecs = jnp.linalg.eigh(0.5 * (post_covs + jnp.swapaxes(post_covs, -1, -2)))
        return self.replace(
            log_weights=log_w - jax.nn.logsumexp(log_w),
            means=post_means,
            eigvals=jnp.maximum(eigvals, 0.0),
            eigvecs=eigvecs,
        )
