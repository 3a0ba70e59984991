"""SDE methods against closed forms (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from scipy import stats

from jaxdiff import sde as sde_lib
from jaxdiff.sde import SDE, VESDE, VPSDE, SubVPSDE

TS = np.array([1e-5, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0])


def vp_closed(t, b0=0.1, b1=20.0):
    beta = b0 + t * (b1 - b0)
    lmc = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    return beta, np.exp(lmc), np.sqrt(-np.expm1(2 * lmc))


def test_defaults_and_positional_order():
    assert VPSDE() == VPSDE(0.1, 20.0, 1000)
    assert SubVPSDE() == SubVPSDE(0.1, 20.0, 1000)
    assert VESDE() == VESDE(0.01, 50.0, 1000)
    assert VPSDE(0.2, 10.0, 50).beta_max == 10.0 and VPSDE(0.2, 10.0, 50).N == 50
    for s in (VPSDE(), SubVPSDE(), VESDE()):
        assert s.T == 1.0
    # Floats are leaves, N is static.
    assert jax.tree_util.tree_leaves(VPSDE(0.2, 10.0, 50)) == [0.2, 10.0]


def test_vp_closed_forms(x64):
    s = VPSDE()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(len(TS), 3)))
    beta, mean_c, std = vp_closed(TS)
    drift, diff = s.sde(x, TS)
    np.testing.assert_allclose(drift, -0.5 * beta[:, None] * x, rtol=1e-12)
    np.testing.assert_allclose(diff, np.sqrt(beta), rtol=1e-12)
    mean, sd = s.marginal_prob(x, TS)
    np.testing.assert_allclose(mean, mean_c[:, None] * x, rtol=1e-12)
    np.testing.assert_allclose(sd, std, rtol=1e-12)


def test_subvp_closed_forms(x64):
    s = SubVPSDE()
    x = jnp.ones((len(TS), 2))
    beta, mean_c, _ = vp_closed(TS)
    discount = -np.expm1(-2 * 0.1 * TS - (20.0 - 0.1) * TS**2)
    drift, diff = s.sde(x, TS)
    np.testing.assert_allclose(drift, -0.5 * beta[:, None] * x, rtol=1e-12)
    np.testing.assert_allclose(diff, np.sqrt(beta * discount), rtol=1e-12)
    mean, sd = s.marginal_prob(x, TS)
    np.testing.assert_allclose(mean, mean_c[:, None] * x, rtol=1e-12)
    # The sub-VP std is 1 - exp(2 lmc), not its square root.
    lmc = -0.25 * TS**2 * (20.0 - 0.1) - 0.5 * TS * 0.1
    np.testing.assert_allclose(sd, -np.expm1(2 * lmc), rtol=1e-12)


def test_ve_closed_forms(x64):
    s = VESDE()
    x = jnp.ones((len(TS), 2))
    sigma = 0.01 * (50.0 / 0.01) ** TS
    drift, diff = s.sde(x, TS)
    np.testing.assert_array_equal(drift, 0.0)
    np.testing.assert_allclose(diff, sigma * np.sqrt(2 * np.log(50.0 / 0.01)), rtol=1e-12)
    mean, sd = s.marginal_prob(x, TS)
    np.testing.assert_array_equal(mean, x)
    np.testing.assert_allclose(sd, sigma, rtol=1e-12)
    assert float(s.prior_std()) == 50.0


@pytest.mark.parametrize("s", [VPSDE(), SubVPSDE(), VESDE(), VPSDE(0.5, 5.0)], ids=str)
def test_marginals_solve_the_moment_odes(s, x64):
    """The mean m(t) and variance v(t) of a linear SDE solve dm/dt = f m, dv/dt = 2 f v + g^2
    (f the drift coefficient), with m(0) = 1 and v(0) = 0 (sigma_min^2 for VE, whose kernel is
    defined with sigma(0) = sigma_min as in the paper): the marginals belong to their SDE."""
    def moments(t):
        alpha, sigma = s.marginal_coeffs(t)
        return alpha, sigma**2

    for t in (0.05, 0.3, 0.71, 0.98):
        (a, v), (da, dv) = jax.jvp(moments, (jnp.asarray(t),), (jnp.asarray(1.0),))
        drift, g = s.sde(jnp.ones((1, 1)), jnp.asarray(t))
        f = drift[0, 0]  # drift coefficient: drift = f * x
        np.testing.assert_allclose(da, f * a, rtol=1e-9)
        np.testing.assert_allclose(dv, 2 * f * v + g**2, rtol=1e-9)
    a0, v0 = moments(jnp.asarray(0.0))
    v0_expected = s.sigma_min**2 if isinstance(s, VESDE) else 0.0
    np.testing.assert_allclose([a0, v0], [1.0, v0_expected], atol=1e-12)


def test_vp_discretization_is_ddpm(x64):
    s = VPSDE(N=1000)
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    np.testing.assert_allclose(s.discrete_betas, betas, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    t = jnp.array([0.0, 0.5, 1.0])
    idx = (np.asarray(t) * 999).astype(int)
    f, G = s.discretize(x, t)
    np.testing.assert_allclose(f, np.sqrt(1 - betas[idx])[:, None] * x - x, rtol=1e-12)
    np.testing.assert_allclose(G, np.sqrt(betas[idx]), rtol=1e-12)
    # The discrete chain and the continuous marginal agree to first order in 1/N.
    t_i = np.arange(1000) / 999
    _, mean_c, _ = vp_closed(t_i)
    np.testing.assert_allclose(np.sqrt(s.alphas_cumprod), mean_c, rtol=2e-2, atol=1e-4)


def test_ve_discretization_is_smld(x64):
    s = VESDE(N=100)
    sig = np.exp(np.linspace(np.log(0.01), np.log(50.0), 100))
    np.testing.assert_allclose(s.discrete_sigmas, sig, rtol=1e-12)
    t = jnp.linspace(0.0, 1.0, 100)
    f, G = s.discretize(jnp.ones((100, 2)), t)
    np.testing.assert_array_equal(f, 0.0)
    # The variances of the steps telescope to sigma_max^2.
    np.testing.assert_allclose(np.sum(np.asarray(G) ** 2), 50.0**2, rtol=1e-10)
    np.testing.assert_allclose(G[0], 0.01, rtol=1e-12)


def test_subvp_default_discretization_is_euler_maruyama(x64):
    s = SubVPSDE(N=10)
    x = jnp.ones((2, 3))
    t = jnp.array([0.2, 0.8])
    drift, g = s.sde(x, t)
    f, G = s.discretize(x, t)
    np.testing.assert_allclose(f, drift / 10, rtol=1e-12)
    np.testing.assert_allclose(G, g * np.sqrt(0.1), rtol=1e-12)


@pytest.mark.parametrize("s", [VPSDE(), SubVPSDE(), VESDE()], ids=str)
def test_prior(s, x64):
    z = jax.random.normal(jax.random.key(0), (5, 2, 3))
    std = float(s.prior_std())
    expected = stats.multivariate_normal(np.zeros(6), std**2 * np.eye(6)).logpdf(np.asarray(z).reshape(5, 6))
    np.testing.assert_allclose(s.prior_logp(z), expected, rtol=1e-12)
    samples = s.prior_sampling(jax.random.key(1), (20000, 3), jnp.float64)
    assert samples.shape == (20000, 3) and samples.dtype == jnp.float64
    np.testing.assert_allclose(np.std(samples), std, rtol=0.02)


@pytest.mark.parametrize("pf", [False, True])
def test_reverse(pf, x64):
    s = VESDE()
    score_fn = lambda params, x, t: params * x
    rs = s.reverse(score_fn, probability_flow=pf)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3)))
    t = jnp.array([0.3, 0.6])
    f, g = s.sde(x, t)
    drift, diff = rs.sde(2.0, x, t)
    np.testing.assert_allclose(drift, f - (0.5 if pf else 1.0) * (g**2)[:, None] * 2.0 * x, rtol=1e-12)
    np.testing.assert_allclose(diff, 0.0 if pf else g, rtol=1e-12)
    fd, Gd = s.discretize(x, t)
    rf, rG = rs.discretize(2.0, x, t)
    np.testing.assert_allclose(rf, fd - (0.5 if pf else 1.0) * (Gd**2)[:, None] * 2.0 * x, rtol=1e-12)
    np.testing.assert_allclose(rG, 0.0 if pf else Gd, rtol=1e-12)


def test_jit_and_vmap_over_sde_pytrees(x64):
    x = jnp.ones((1, 2))

    @jax.jit
    def std_at_half(s):
        return s.marginal_prob(x, 0.5)[1]

    betas = jnp.array([5.0, 10.0, 20.0])
    sdes = VPSDE(beta_min=jnp.full(3, 0.1), beta_max=betas)
    out = jax.vmap(std_at_half)(sdes)
    expected = [vp_closed(0.5, 0.1, b)[2] for b in (5.0, 10.0, 20.0)]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # A per-example time under vmap of a single example.
    m = jax.vmap(lambda xi, ti: VPSDE().marginal_prob(xi[None], ti)[0][0])(
        jnp.ones((3, 2)), jnp.array([0.1, 0.5, 0.9]))
    np.testing.assert_allclose(m[:, 0], vp_closed(np.array([0.1, 0.5, 0.9]))[1], rtol=1e-12)


class OrnsteinUhlenbeck(SDE):
    """dx = -theta x dt + sqrt(2 theta) dw: defined by drift, diffusion and marginal only."""

    theta: float = 2.0
    N: int = struct.field(pytree_node=False, default=100)

    def sde(self, x, t):
        return -self.theta * x, jnp.sqrt(2 * self.theta) * jnp.ones_like(jnp.asarray(t))

    def marginal_prob(self, x, t):
        a = jnp.exp(-self.theta * jnp.asarray(t))
        return sde_lib.batch_broadcast(a, x) * x, jnp.sqrt(1 - a**2)


def test_user_defined_sde_gets_the_rest(x64):
    s = OrnsteinUhlenbeck()
    std_T = np.sqrt(1 - np.exp(-4.0))
    np.testing.assert_allclose(s.prior_std(), std_T, rtol=1e-12)
    z = jnp.ones((2, 3))
    np.testing.assert_allclose(
        s.prior_logp(z), stats.multivariate_normal(np.zeros(3), std_T**2 * np.eye(3)).logpdf(np.ones(3)),
        rtol=1e-12)
    f, G = s.discretize(z, jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(f, -2.0 * z / 100, rtol=1e-12)
    np.testing.assert_allclose(G, 2.0 * np.sqrt(0.01), rtol=1e-12)
    alpha, sigma = s.marginal_coeffs(jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(alpha, np.exp(-2.0 * np.array([0.0, 0.5])), rtol=1e-12)
    assert s.with_steps(7).N == 7
    drift, _ = s.reverse(lambda p, x, t: -x, probability_flow=True).sde(None, z, jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(drift, -2.0 * z + 0.5 * 4.0 * z, rtol=1e-12)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"time t of shape \(3,\).*\(2, 4\)"):
        VPSDE().sde(jnp.ones((2, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match="N must be >= 1, got 0"):
        VPSDE().with_steps(0)
