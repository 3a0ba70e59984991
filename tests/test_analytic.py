"""The Gaussian-mixture ground truth against scipy, autodiff and brute-force Bayes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import VESDE, VPSDE, GaussianMixture, SubVPSDE


def random_mixture(rng, k=3, d=3, dtype=jnp.float64):
    means = rng.normal(size=(k, d)) * 3
    a = rng.normal(size=(k, d, d))
    covs = a @ np.swapaxes(a, -1, -2) / d + 0.2 * np.eye(d)
    w = rng.uniform(0.2, 1.0, size=k)
    return GaussianMixture.create(w, means, covs, dtype=dtype), w / w.sum(), means, covs


def scipy_logpdf(x, w, means, covs):
    dens = sum(wk * stats.multivariate_normal(m, c).pdf(x) for wk, m, c in zip(w, means, covs))
    return np.log(dens)


def test_log_prob_and_score(x64):
    rng = np.random.default_rng(0)
    mix, w, means, covs = random_mixture(rng)
    x = rng.normal(size=(7, 3)) * 3
    np.testing.assert_allclose(mix.log_prob(jnp.asarray(x)), scipy_logpdf(x, w, means, covs), rtol=1e-10)
    auto = jax.vmap(jax.grad(lambda xi: mix.log_prob(xi[None])[0]))(jnp.asarray(x))
    np.testing.assert_allclose(mix.score(jnp.asarray(x)), auto, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mix.covs, covs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=str)
def test_perturbed_law_matches_closed_form(sde, x64):
    rng = np.random.default_rng(1)
    mix, w, means, covs = random_mixture(rng)
    t = np.array([0.01, 0.3, 0.8])
    x = rng.normal(size=(3, 3)) * 4
    got = mix.log_prob_t(sde, jnp.asarray(x), jnp.asarray(t))
    for i, ti in enumerate(t):
        a, s = (float(v) for v in sde.marginal_coeffs(jnp.asarray(ti)))
        exp = scipy_logpdf(x[i], w, a * means, a**2 * covs + s**2 * np.eye(3))
        np.testing.assert_allclose(got[i], exp, rtol=1e-10)
    auto = jax.vmap(jax.grad(lambda xi, ti: mix.log_prob_t(sde, xi[None], ti[None])[0]))(
        jnp.asarray(x), jnp.asarray(t))
    np.testing.assert_allclose(mix.score_fn(sde)(None, jnp.asarray(x), jnp.asarray(t)), auto, rtol=1e-9)


def test_sampling_moments(x64):
    rng = np.random.default_rng(2)
    mix, *_ = random_mixture(rng)
    x = mix.sample(jax.random.key(0), 200_000)
    np.testing.assert_allclose(x.mean(0), mix.mean(), atol=0.03)
    np.testing.assert_allclose(np.cov(np.asarray(x), rowvar=False), mix.cov(), atol=0.1)


def test_event_shape_roundtrip(x64):
    mix = GaussianMixture.create([1.0], np.zeros((1, 12)), stds=0.5, event_shape=(2, 2, 3))
    x = mix.sample(jax.random.key(1), 5)
    assert x.shape == (5, 2, 2, 3)
    assert mix.score(x).shape == x.shape
    np.testing.assert_allclose(mix.score(x), -x / 0.25, rtol=1e-12)


def test_condition_is_bayes_rule(x64):
    """The posterior of a noisy linear observation against prior x likelihood normalised on a grid."""
    mix = GaussianMixture.create([0.3, 0.7], np.array([[-2.0, 1.0], [2.0, -1.0]]),
                                 np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.7, -0.2], [-0.2, 0.5]]]))
    A = np.array([[1.0, 1.0]]) / 2
    y = np.array([0.4])
    post = mix.condition(A, y, noise_std=0.3)
    g = np.linspace(-7, 7, 281)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_un = np.asarray(mix.log_prob(jnp.asarray(xx))) + stats.norm(0, 0.3).logpdf(xx @ A[0] - y[0])
    dx = (g[1] - g[0]) ** 2
    log_norm = np.log(np.sum(np.exp(log_un)) * dx)
    np.testing.assert_allclose(post.log_prob(jnp.asarray(xx[::97])), log_un[::97] - log_norm, atol=1e-6)


def test_condition_noiseless_pins_the_observed_coordinate(x64):
    mix = GaussianMixture.create([0.5, 0.5], np.array([[-3.0, 0.0], [3.0, 2.0]]), stds=1.0)
    post = mix.condition(np.array([[1.0, 0.0]]), np.array([2.5]))
    x = post.sample(jax.random.key(0), 1000)
    np.testing.assert_allclose(x[:, 0], 2.5, atol=1e-6)
    # The far component loses all its weight: its evidence is N(2.5; -3, 1).
    assert float(post.weights[0]) < 1e-5


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        GaussianMixture.create([1.0, 2.0, 3.0], np.zeros((2, 3)), stds=1.0)
    with pytest.raises(ValueError, match=r"covs must have shape \(1, 3, 3\)"):
        GaussianMixture.create([1.0], np.zeros((1, 3)), np.eye(2)[None])
    mix = GaussianMixture.create([1.0], np.zeros((1, 3)), stds=1.0)
    with pytest.raises(ValueError, match=r"x of shape \(2, 4\) does not hold examples of dimension 3"):
        mix.log_prob(jnp.ones((2, 4)))
