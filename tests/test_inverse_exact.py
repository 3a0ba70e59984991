"""Exact checks of single inverse-problem / Tweedie formulas, each written so that a one-line
wrong implementation (a missing factor, a wrong time, a wrong variable) fails:

* CCDF's start ``x_{t0} = alpha(t0) x_hat + sigma(t0) z``: exactly, and through the sampler (an
  exact data sample as the estimate makes the run from ``t0`` sample the data distribution);
* Noise2Score's Poisson step ``(y + zeta/2) exp(zeta score)`` against ``exp E[log x | y]`` of a
  gamma prior (digamma identities: error O(1/n^2); ``zeta`` instead of ``zeta/2`` is O(1/n));
* data consistency after the corrector as well as after the predictor (score_sde's
  controllable_generation), at the corrector's own time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff import inverse as inv
from jaxdiff.inverse.consistency import init_from_prior, observation_at


@pytest.mark.parametrize("sde", [jd.VPSDE(), jd.SubVPSDE()], ids=["vp", "subvp"])
def test_ccdf_start_is_the_forward_marginal_of_the_estimate(sde, x64):
    """Unobserved part alpha(t0) x_hat + sigma(t0) z, observed part alpha(t0) y + sigma(t0) z."""
    op = inv.Mask(jnp.array([1.0, 0.0]))
    y = jnp.broadcast_to(jnp.array([[0.7, 0.0]]), (64, 2))
    x_hat = jnp.array([[0.3, -1.2]])
    t0 = 0.4
    x, z = init_from_prior(sde, op, y, jax.random.key(0), (64, 2), jnp.float64, t=t0,
                           x_hat=x_hat)
    alpha, sigma = sde.marginal_coeffs(jnp.asarray(t0))
    assert float(alpha) < 0.8   # the alpha factor is far from 1 here
    np.testing.assert_allclose(x[:, 1], alpha * -1.2 + sigma * z[:, 1], rtol=1e-12)
    np.testing.assert_allclose(x[:, 0], alpha * 0.7 + sigma * z[:, 0], rtol=1e-12)
    x2, z2 = init_from_prior(sde, None, y, jax.random.key(0), (64, 2), jnp.float64, t=t0,
                             x_hat=x_hat)
    np.testing.assert_allclose(x2, alpha * x_hat + sigma * z2, rtol=1e-12)


def test_ccdf_from_exact_data_samples_samples_the_data(x64):
    """Gaussian data N(3, 1): with exact data samples as estimates, x_{t0} is an exact sample of
    p_{t0} and the reverse run from t0 = 0.5 returns N(3, 1) (mean / std within 4 standard
    errors plus the discretisation bias). Without the alpha(t0) factor the start would be
    N(3, 1 + sigma^2) instead of N(3 alpha, alpha^2 + sigma^2): the mean is off by ~0.6."""
    sde = jd.VPSDE()
    data = jd.GaussianMixture.create([1.0], np.array([[3.0]]), stds=1.0)
    n = 20000
    ccdf = inv.ccdf_sampler(sde, data.score_fn(sde), (n, 1), t0=0.5, num_steps=400,
                            corrector=None, dtype=jnp.float64)
    x_hat = data.sample(jax.random.key(1), n)
    x, nfe = ccdf(None, jax.random.key(2), inv.Estimate(x_hat))
    assert int(nfe) == 200
    m, s = float(jnp.mean(x)), float(jnp.std(x))
    se = 1.0 / np.sqrt(n)
    assert abs(m - 3.0) < 4 * se + 0.01, m
    assert abs(s - 1.0) < 4 * se / np.sqrt(2) + 0.02, s


def test_poisson_tweedie_is_exp_posterior_mean_log(x64):
    """y = zeta n, n ~ Poisson(x / zeta), x / zeta ~ Gamma(a, rate b): the posterior of x / zeta
    is Gamma(n + a, b + 1), so exp E[log x | y] = zeta exp(digamma(n + a)) / (b + 1). The score
    of the (gamma-function extended) negative binomial gives Noise2Score's estimate
    zeta (n + 1/2) exp(digamma(n + a) - digamma(n + 1)) / (b + 1): relative error
    (n + 1/2) / exp(digamma(n + 1)) - 1 = O(1 / (24 n^2)); with zeta instead of zeta / 2 it is
    ~1 / (2 n)."""
    from jax.scipy.special import digamma, gammaln
    a, b = 3.0, 2.0

    def log_pmf(n):
        return (gammaln(a + n) - gammaln(a) - gammaln(n + 1) + a * jnp.log(b / (b + 1))
                - n * jnp.log(b + 1))

    for zeta in (1.0, 0.25):
        n = jnp.array([5.0, 20.0, 80.0])
        yv = zeta * n
        score = jax.vmap(jax.grad(lambda v, zeta=zeta: log_pmf(v / zeta)))(yv)
        est = inv.poisson_tweedie(yv, score, zeta)
        exp_mean_log = zeta * jnp.exp(digamma(n + a)) / (b + 1)
        rel = np.abs(np.asarray(est / exp_mean_log) - 1.0)
        assert np.all(rel < 1.0 / (20.0 * np.asarray(n) ** 2)), (zeta, rel)
        # the closed form of the estimate itself (score identity)
        np.testing.assert_allclose(
            est, zeta * (n + 0.5) * jnp.exp(digamma(n + a) - digamma(n + 1)) / (b + 1),
            rtol=1e-12)


@pytest.mark.parametrize("after_corrector", [True, False])
def test_consistency_after_the_corrector_at_its_own_time(after_corrector, x64):
    """One corrector-predictor step of the inverse PC sampler from an inconsistent state (known
    coordinate 5): the predictor must see the known coordinate at the forward marginal of the
    observation at the step's time t, alpha(t) y + sigma(t) z (not the corrector's output, not
    the marginal at t - dt); the score records what each update saw."""
    sde = jd.VPSDE(N=40)                      # dt = 0.025
    n, t = 20000, 0.5
    op = inv.Mask(jnp.array([1.0, 0.0]))
    y = jnp.broadcast_to(jnp.array([[3.0, 0.0]]), (n, 2))
    seen = []

    def score_fn(params, x, t):
        seen.append(np.asarray(x))
        return -x

    step = inv.consistency.consistent_pc_step(sde, score_fn, op, y, 1.0,
                                              after_corrector=after_corrector)
    x0 = jnp.broadcast_to(jnp.array([5.0, 0.0]), (n, 2))
    with jax.disable_jit():                   # the corrector's fori_loop runs in Python
        step.update(None, jax.random.key(0), x0, jnp.full((n,), t))
    assert len(seen) == 2 and step.nfe == 2              # corrector (Langevin), then predictor
    np.testing.assert_array_equal(seen[0], x0)
    known = seen[1][:, 0]
    if not after_corrector:          # the plain step: the predictor sees the corrector's output
        assert np.mean(known) > 4.0
        return
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(jnp.asarray(t)))
    # mean alpha(t) 3 and std sigma(t), within 4 standard errors
    assert abs(np.mean(known) - alpha * 3.0) < 4 * sigma / np.sqrt(n), (np.mean(known), alpha)
    assert abs(np.std(known) / sigma - 1.0) < 4 / np.sqrt(2 * n), np.std(known)
    a_prev, _ = sde.marginal_coeffs(jnp.asarray(t - 0.025))
    assert abs(float(a_prev) - alpha) * 3.0 > 8 * sigma / np.sqrt(n)   # t - dt would be caught
    # the observation pushed to time t is what the projection used
    np.testing.assert_allclose(observation_at(sde, op, y[:1], jnp.array([t]), None)[0, 0],
                               alpha * 3.0, rtol=1e-12)


def test_inverse_pc_samplers_use_the_corrector_consistency_by_default(x64):
    """pc_inverse_sampler (so inpaint_sampler) and ccdf_sampler default to the projection after
    the corrector, and the option reaches the step (same key: different samples without it;
    the known coordinate is exact either way)."""
    import inspect
    for fn in (inv.pc_inverse_sampler, inv.ccdf_sampler):
        assert inspect.signature(fn).parameters["consistency_after_corrector"].default is True
    mix = jd.GaussianMixture.create([0.3, 0.7], np.array([[-1.5, -1.5], [1.5, 1.5]]), stds=0.6)
    sde = jd.VPSDE(N=40)              # (the Langevin corrector of VP needs beta_max / N < 1)
    obs = inv.Observation.inpainting(jnp.array([[0.5, 0.0]]), jnp.array([1.0, 0.0]))
    key = jax.random.key(3)
    for make, c in ((inv.pc_inverse_sampler, obs),
                    (lambda *a, **k: inv.ccdf_sampler(*a, t0=0.5, **k),
                     inv.Estimate(jnp.zeros((1, 2)), obs))):
        out = [make(sde, mix.score_fn(sde), (16, 2), dtype=jnp.float64,
                    consistency_after_corrector=v)(None, key, c)[0] for v in (True, False)]
        assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3
        np.testing.assert_allclose(out[0][:, 0], 0.5, rtol=1e-12)
