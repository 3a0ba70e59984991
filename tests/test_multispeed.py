"""Multi-speed (non-uniform) SDE: closed-form marginals, consistency of drift/diffusion with the
marginals, exact reduction to the uniform SDE, and the core sampler / likelihood on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import likelihood
from jaxdiff.analytic import GaussianMixture
from jaxdiff.eval.distances import component_fractions, sliced_wasserstein
from jaxdiff.multispeed import MultiSpeedSDE, block_speeds, joint_speeds
from jaxdiff.samplers import pc_sampler
from jaxdiff.sde import VESDE, VPSDE, SubVPSDE

SPEEDS = np.array([0.5, 1.0, 3.0])


def _vp_alpha_sigma(tau, bmin=0.1, bmax=20.0):
    lmc = -0.25 * tau**2 * (bmax - bmin) - 0.5 * tau * bmin
    return np.exp(lmc), np.sqrt(1.0 - np.exp(2 * lmc))


@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_marginals_closed_form(x64, t):
    x = jnp.array([[1.5, -2.0, 0.7], [0.3, 0.2, -1.0]])
    tau = np.minimum(np.asarray(SPEEDS) * t, 1.0)
    # VP: alpha = exp(lmc(tau)), sigma = sqrt(1 - alpha^2), per coordinate.
    mean, std = MultiSpeedSDE.create(VPSDE(), SPEEDS).marginal_prob(x, t)
    a, s = _vp_alpha_sigma(tau)
    np.testing.assert_allclose(mean, a * np.asarray(x), rtol=1e-12)
    np.testing.assert_allclose(std, np.broadcast_to(s, x.shape), rtol=1e-12)
    # sub-VP: sigma = 1 - alpha^2.
    _, std = MultiSpeedSDE.create(SubVPSDE(), SPEEDS).marginal_prob(x, t)
    np.testing.assert_allclose(std, np.broadcast_to(1 - a**2, x.shape), rtol=1e-12)
    # VE: mean x, sigma = sigma_min (sigma_max / sigma_min)^tau.
    mean, std = MultiSpeedSDE.create(VESDE(), SPEEDS).marginal_prob(x, t)
    np.testing.assert_allclose(mean, x, rtol=1e-12)
    np.testing.assert_allclose(std, np.broadcast_to(0.01 * 5000.0**tau, x.shape), rtol=1e-12)
    # marginal_coeffs of a batch of times.
    sde = MultiSpeedSDE.create(VPSDE(), SPEEDS)
    alpha, sigma = sde.marginal_coeffs(jnp.array([t, t]))
    assert alpha.shape == (2, 3)
    np.testing.assert_allclose(alpha[1], a, rtol=1e-12)
    np.testing.assert_allclose(sigma[0], s, rtol=1e-12)


@pytest.mark.parametrize("base", [VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)])
def test_drift_and_diffusion_match_marginals(x64, base):
    """For a linear SDE dx = f x dt + g dw: d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2.
    A missing sqrt(speed), a missing factor of speed, or a frozen coordinate still moving breaks it."""
    sde = MultiSpeedSDE.create(base, SPEEDS)
    for t in [0.1, 0.25, 0.5, 0.8]:
        dalpha = jax.jacfwd(lambda s: sde.marginal_coeffs(s)[0])(jnp.asarray(t))
        dvar = jax.jacfwd(lambda s: sde.marginal_coeffs(s)[1] ** 2)(jnp.asarray(t))
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t))
        f, g = sde.sde(jnp.ones((1, 3)), jnp.asarray(t))
        np.testing.assert_allclose(dalpha, f[0] * alpha, rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(dvar, 2 * f[0] * sigma**2 + g[0] ** 2, rtol=1e-6, atol=1e-10)
    # the fast coordinate (speed 3) is frozen after t = 1/3
    f, g = sde.sde(jnp.ones((1, 3)), 0.5)
    assert f[0, 2] == 0.0 and g[0, 2] == 0.0 and g[0, 1] > 0


@pytest.mark.parametrize("base", [VPSDE(), SubVPSDE(), VESDE()])
def test_equal_speeds_reduce_to_uniform(base):
    sde = MultiSpeedSDE.create(base, jnp.ones((2, 2, 1)))
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (3, 2, 2, 1))
    t = jnp.array([0.01, 0.4, 0.97])
    for a, b in zip(sde.marginal_prob(x, t), base.marginal_prob(x, t)):
        b = b if jnp.ndim(b) != 1 else b[:, None, None, None]
        np.testing.assert_allclose(a, jnp.broadcast_to(b, x.shape), rtol=1e-6)
    f1, g1 = sde.sde(x, t)
    f0, g0 = base.sde(x, t)
    np.testing.assert_allclose(f1, f0, rtol=1e-6)
    np.testing.assert_allclose(g1, jnp.broadcast_to(g0[:, None, None, None], x.shape), rtol=1e-6)
    np.testing.assert_allclose(sde.prior_logp(x), base.prior_logp(x), rtol=1e-6)
    np.testing.assert_allclose(sde.prior_sampling(key, x.shape), base.prior_sampling(key, x.shape),
                               rtol=1e-6)
    # a full sampler run with a shared (uniform) score gives the same samples bit for bit.
    score = lambda p, x, t: -x * p
    s1, _ = pc_sampler(sde, score, (4, 2, 2, 1), num_steps=20, predictor="euler_maruyama")(1.0, key)
    s0, _ = pc_sampler(base.with_steps(20), score, (4, 2, 2, 1), predictor="euler_maruyama",
                       num_steps=20)(1.0, key)
    np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-6)


def test_constant_speed_is_time_rescaling(x64):
    sde = MultiSpeedSDE.create(VPSDE(), 0.5)
    x = jnp.ones((2, 3))
    for a, b in zip(sde.marginal_prob(x, 0.8), VPSDE().marginal_prob(x, 0.4)):
        np.testing.assert_allclose(a, jnp.broadcast_to(b, x.shape), rtol=1e-12)


def shared_t_score_fn(mix, sde):
    """Exact score for a batch that shares one time (what the samplers pass): one perturbation per
    call instead of one per example (``mix.score_fn`` handles per-example times)."""
    def score_fn(params, x, t):
        t = jnp.asarray(t)
        return mix.at(sde, t.reshape(-1)[0]).score(x).astype(x.dtype)
    return score_fn


def _mixture3():
    return GaussianMixture.create(
        [0.3, 0.7], jnp.array([[-1.5, 0.5, 1.0], [1.0, -0.5, -1.0]]),
        jnp.stack([jnp.array([[0.3, 0.1, 0.0], [0.1, 0.2, 0.05], [0.0, 0.05, 0.25]]),
                   jnp.array([[0.2, -0.08, 0.02], [-0.08, 0.3, 0.0], [0.02, 0.0, 0.15]])]))


def test_exact_score_matches_autodiff_of_log_density(x64):
    """The non-co-diagonal perturbation (analytic.perturb_diag) against autodiff of the density of
    alpha * x + sigma * z, computed independently by Gaussian convolution of each component."""
    mix = _mixture3()
    sde = MultiSpeedSDE.create(VPSDE(), SPEEDS)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    t = 0.2
    alpha, sigma = sde.marginal_coeffs(jnp.asarray(t))

    def logp(xi):
        out = []
        for k in range(2):
            m = alpha * mix.means[k]
            c = jnp.diag(alpha) @ mix.covs[k] @ jnp.diag(alpha) + jnp.diag(sigma**2)
            out.append(mix.log_weights[k] + jax.scipy.stats.multivariate_normal.logpdf(xi, m, c))
        return jax.nn.logsumexp(jnp.stack(out))

    np.testing.assert_allclose(mix.score_t(sde, x, t), jax.vmap(jax.grad(logp))(x), rtol=1e-9)
    np.testing.assert_allclose(mix.log_prob_t(sde, x, t), jax.vmap(logp)(x), rtol=1e-9)


def test_pc_sampler_with_exact_score_samples_the_data():
    """Core PC sampler, unchanged, on a multi-speed VP SDE with the exact multi-speed score."""
    mix = _mixture3()
    sde = MultiSpeedSDE.create(VPSDE(), jnp.array([1.0, 2.0, 4.0]))
    n = 2000
    sample = pc_sampler(sde, shared_t_score_fn(mix, sde), (n, 3), num_steps=300,
                        predictor="euler_maruyama", eps=1e-3)
    x, nfe = sample(None, jax.random.PRNGKey(0))
    kr, kp, kq = jax.random.split(jax.random.PRNGKey(1), 3)
    ref, ref2 = mix.sample(kr, n), mix.sample(kq, n)
    floor = float(sliced_wasserstein(kp, ref, ref2))
    sw = float(sliced_wasserstein(kp, x, ref))
    # the same sampler with the (wrong) uniform-speed score lands far off
    wrong, _ = pc_sampler(sde, shared_t_score_fn(mix, VPSDE()), (n, 3), num_steps=300,
                          predictor="euler_maruyama")(None, jax.random.PRNGKey(0))
    sw_wrong = float(sliced_wasserstein(kp, wrong, ref))
    assert int(nfe) == 300
    assert sw < 2.5 * floor + 0.01, (sw, floor)
    assert sw_wrong > 4 * sw, (sw_wrong, sw)
    np.testing.assert_allclose(component_fractions(mix, x), mix.weights, atol=0.03)


def test_log_likelihood_exact_on_multispeed(x64):
    """Core likelihood, unchanged, with the exact score: matches the exact log-density."""
    mix = _mixture3()
    sde = MultiSpeedSDE.create(VPSDE(), jnp.array([1.0, 2.0, 4.0]))
    x = mix.sample(jax.random.PRNGKey(3), 4)
    fn = likelihood.log_likelihood(sde, shared_t_score_fn(mix, sde), hutchinson=None,
                                   rtol=1e-6, atol=1e-6)
    logp, _, _ = fn(None, jax.random.PRNGKey(0), x)
    # the residual (~5e-3) is the prior's neglect of alpha(1) x_0 = 0.0066 x_0, as for the VP SDE
    np.testing.assert_allclose(logp, mix.log_prob(x), atol=1.5e-2)


def test_speeds_helpers_and_errors():
    sp = block_speeds((4, 4, 1), [((slice(2, None), slice(None)), 4.0)], default=1.0)
    assert sp.shape == (4, 4, 1) and float(sp[3, 0, 0]) == 4.0 and float(sp[0, 0, 0]) == 1.0
    np.testing.assert_array_equal(joint_speeds(2, 1, 0.25), [1.0, 1.0, 0.25])
    with pytest.raises(ValueError, match="positive"):
        MultiSpeedSDE.create(VPSDE(), jnp.array([1.0, -2.0]))
    with pytest.raises(ValueError, match="positive"):
        block_speeds((3,), [(slice(0, 1), 0.0)])
    with pytest.raises(ValueError, match=r"\(3,\)"):
        MultiSpeedSDE.create(VPSDE(), jnp.ones(3)).marginal_prob(jnp.ones((2, 4)), 0.5)
    with pytest.raises(TypeError, match="SDE"):
        MultiSpeedSDE.create("vp", 1.0)


def test_jit_vmap_and_pytree():
    sde = MultiSpeedSDE.create(VPSDE(), SPEEDS, N=50)
    leaves = jax.tree_util.tree_leaves(sde)
    assert any(getattr(l, "shape", None) == (3,) for l in leaves)
    x = jnp.ones((2, 3))

    @jax.jit
    def f(sde, x):
        return sde.marginal_prob(x, 0.5)[1]

    np.testing.assert_allclose(f(sde, x), sde.marginal_prob(x, 0.5)[1])
    # vmap over a family of speeds
    stds = jax.vmap(lambda s: sde.replace(speeds=s).marginal_prob(x, 0.5)[1])(
        jnp.stack([SPEEDS, 2 * SPEEDS]))
    assert stds.shape == (2, 2, 3)
    assert sde.with_steps(7).N == 7
