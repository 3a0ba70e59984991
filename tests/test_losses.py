"""Denoising score matching losses on Gaussian data, whose optimal loss is known exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from jaxdiff import VESDE, VPSDE, GaussianMixture, SubVPSDE, losses

S = 1.5  # data std
D = 2
EPS = 1e-5


def gaussian_data(key, n):
    return jax.random.normal(key, (n, D), jnp.float64) * S


def scaled_exact(sde):
    exact = GaussianMixture.create([1.0], np.zeros((1, D)), stds=S, dtype=jnp.float64).score_fn(sde)
    return lambda c, x, t: c * exact(None, x, t)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=str)
def test_exact_score_gives_the_closed_form_minimum(sde, x64):
    """At the exact score the per-example loss has mean alpha^2 s^2 / (alpha^2 s^2 + sigma^2) over
    z and x_0, so the loss is its average over t ~ U(eps, T); the gradient in a score scale is zero."""
    loss_fn = losses.score_matching_loss(sde, scaled_exact(sde), eps=EPS)
    n = 200_000
    batch = gaussian_data(jax.random.key(0), n)
    key = jax.random.key(1)

    def expected_integrand(t):
        a, s = (float(v) for v in sde.marginal_coeffs(jnp.asarray(t)))
        return a**2 * S**2 / (a**2 * S**2 + s**2)

    expected = integrate.quad(expected_integrand, EPS, 1.0, limit=200)[0] / (1.0 - EPS)
    loss, aux = loss_fn(1.0, key, batch)
    se = np.std(aux["losses"]) / np.sqrt(n)
    assert abs(float(loss) - expected) < 4 * se, (float(loss), expected, se)

    per_example_grad = jax.jacfwd(lambda c: loss_fn(c, key, batch)[1]["losses"])
    g1 = per_example_grad(1.0)
    assert abs(float(g1.mean())) < 4 * float(g1.std()) / np.sqrt(n)
    for c in (0.8, 1.25):  # a wrong scale has a clearly signed gradient and a larger loss
        gc = per_example_grad(c)
        assert np.sign(float(gc.mean())) == np.sign(c - 1.0)
        assert abs(float(gc.mean())) > 10 * float(gc.std()) / np.sqrt(n)
        assert float(loss_fn(c, key, batch)[0]) > float(loss)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=str)
def test_likelihood_weighting_is_g2_weighting(sde, x64):
    """|s + z / std|^2 g^2 = |s std + z|^2 g^2 / std^2, example by example, with the same draws."""
    score_fn = lambda p, x, t: -x * p
    batch = gaussian_data(jax.random.key(2), 64)
    key = jax.random.key(3)
    _, plain = losses.score_matching_loss(sde, score_fn)(0.7, key, batch)
    _, lw = losses.score_matching_loss(sde, score_fn, likelihood_weighting=True)(0.7, key, batch)
    t = plain["t"]
    np.testing.assert_array_equal(t, lw["t"])
    _, g = sde.sde(batch, t)
    _, std = sde.marginal_prob(batch, t)
    np.testing.assert_allclose(lw["losses"], plain["losses"] * g**2 / std**2, rtol=1e-10)


def test_reduce_mean_vs_sum_is_the_dimension(x64):
    sde = VESDE()
    score_fn = lambda p, x, t: -x * p
    batch = jnp.ones((8, 3, 4, 2))
    key = jax.random.key(4)
    m, _ = losses.score_matching_loss(sde, score_fn, reduce_mean=True)(0.1, key, batch)
    s, _ = losses.score_matching_loss(sde, score_fn, reduce_mean=False)(0.1, key, batch)
    np.testing.assert_allclose(s, 24 * m, rtol=1e-12)


def _discrete_exact(std_table, n):
    def score_fn(params, x, t):
        i = jnp.floor(t * (n - 1)).astype(jnp.int32)  # how discrete networks read t (paper code)
        return -x / (std_table[i] ** 2)[:, None]
    return score_fn


@pytest.mark.parametrize("kind", ["ddpm", "smld"])
def test_discrete_losses_use_the_discrete_schedule(kind):
    """With x_0 = 0, the discrete perturbation is std_i z and the score -x / std_i^2 cancels it
    exactly, provided the loss perturbs with the discrete table and calls the network at t_i."""
    n = 1000
    if kind == "ddpm":
        sde = VPSDE(N=n)
        table = jnp.sqrt(1.0 - sde.alphas_cumprod)
        loss_factory = losses.ddpm_loss
    else:
        sde = VESDE(N=n)
        table = sde.discrete_sigmas
        loss_factory = losses.smld_loss
    batch = jnp.zeros((512, 3), jnp.float32)  # float32: where floor(i / (N-1) * (N-1)) can be i-1
    loss, aux = loss_factory(sde, _discrete_exact(table, n))(None, jax.random.key(5), batch)
    assert float(loss) < 1e-12
    np.testing.assert_array_equal(jnp.floor(aux["t"] * (n - 1)).astype(int), aux["labels"])
    assert len(np.unique(aux["labels"])) > 200  # indices cover the schedule
    # The continuous-time std at the same t is not the discrete one for the VP SDE: the test can fail.
    if kind == "ddpm":
        _, std_c = sde.marginal_prob(batch, aux["t"])
        wrong = lambda p, x, t: -x / (sde.marginal_prob(x, t)[1] ** 2)[:, None]
        assert float(loss_factory(sde, wrong)(None, jax.random.key(5), batch)[0]) > 1e-6


def test_rng_kwarg_and_jit_grad(x64):
    sde = VPSDE()
    seen = {}

    def score_fn(params, x, t, rng):
        seen["rng"] = rng
        drop = jax.random.bernoulli(rng, 0.9, x.shape)
        return -x * params * drop

    loss_fn = losses.score_matching_loss(sde, score_fn, rng_kwarg="rng")
    batch = gaussian_data(jax.random.key(6), 32)
    (l, _), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(1.0, jax.random.key(7), batch)
    assert np.isfinite(l) and np.isfinite(g) and "rng" in seen


def test_get_loss_dispatch_and_errors():
    s = lambda p, x, t: x
    assert losses.get_loss(VPSDE(), s, continuous=False) is not None
    with pytest.raises(ValueError, match="discrete training is defined for VPSDE and VESDE, not SubVPSDE"):
        losses.get_loss(SubVPSDE(), s, continuous=False)
    with pytest.raises(ValueError, match="DDPM loss needs a VPSDE, got VESDE"):
        losses.ddpm_loss(VESDE(), s)
    with pytest.raises(ValueError, match=r"batch must be an array of shape \(B, ...\)"):
        losses.score_matching_loss(VPSDE(), s)(None, jax.random.key(0), jnp.ones(3))


def test_dsm_per_example_is_the_one_body():
    """The shared DSM body: |s std + z|^2 (mean or sum over dimensions), or with g2 the likelihood
    weighting |s + z / std|^2 g2, on numbers worked out by hand."""
    score = jnp.array([[1.0, -2.0], [0.5, 0.0]])
    z = jnp.array([[0.0, 1.0], [-1.0, 2.0]])
    std = jnp.array([[2.0], [0.5]])
    # example 0: (2, -4 + 1) -> 4 + 9 = 13; example 1: (0.25 - 1, 2) -> 0.5625 + 4 = 4.5625
    np.testing.assert_allclose(losses.dsm_per_example(score, z, std, reduce_mean=False),
                               [13.0, 4.5625])
    np.testing.assert_allclose(losses.dsm_per_example(score, z, std), [6.5, 2.28125])
    # likelihood weighting: example 0: (1, -1.5) -> 3.25 * 3; example 1: (-1.5, 4) -> 18.25 * 0.5
    np.testing.assert_allclose(
        losses.dsm_per_example(score, z, std, g2=jnp.array([3.0, 0.5]), reduce_mean=False),
        [9.75, 9.125])


def test_smld_default_reduction_is_get_losss():
    """smld_loss and get_loss(..., continuous=False) reduce the same way by default (the mean)."""
    sde = VESDE(N=100)
    score_fn = lambda p, x, t: -x * p
    batch = jax.random.normal(jax.random.key(8), (16, 3, 2))
    key = jax.random.key(9)
    direct, aux = losses.smld_loss(sde, score_fn)(0.3, key, batch)
    via_config, _ = losses.get_loss(sde, score_fn, continuous=False)(0.3, key, batch)
    summed, _ = losses.smld_loss(sde, score_fn, reduce_mean=False)(0.3, key, batch)
    np.testing.assert_allclose(direct, via_config, rtol=1e-6)
    np.testing.assert_allclose(summed, 6 * direct, rtol=1e-5)
