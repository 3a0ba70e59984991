"""The probability-flow ODE sampler: pathwise exactness on Gaussian data and honest NFE counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff.samplers import get_solver, ode_sampler, solve_ode


def exact_flow_map(gauss, sde, x_T, t_end):
    """For Gaussian data the probability-flow ODE keeps C_t^{-1/2} (x_t - alpha_t m) constant
    (C_t = alpha_t^2 S + sigma_t^2 I), so x_eps is a closed-form affine map of x_T."""
    U, lam, m = gauss.eigvecs[0], gauss.eigvals[0], gauss.means[0]
    aT, sT = sde.marginal_coeffs(jnp.asarray(sde.T))
    ae, se = sde.marginal_coeffs(jnp.asarray(t_end))
    xi = ((x_T - aT * m) @ U) / jnp.sqrt(aT**2 * lam + sT**2)
    return ae * m + (xi * jnp.sqrt(ae**2 * lam + se**2)) @ U.T


@pytest.mark.parametrize("sde", [jd.VPSDE(), jd.SubVPSDE(), jd.VESDE()], ids=lambda s: type(s).__name__)
def test_pathwise_exact_on_gaussian_data(sde, x64):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    gauss = jd.GaussianMixture.create([1.0], rng.normal(size=(1, 4)), (a @ a.T / 4 + 0.3 * np.eye(4))[None])
    shape, key, eps = (256, 4), jax.random.key(1), 1e-3
    x, nfe = ode_sampler(sde, gauss.score_fn(sde), shape, rtol=1e-7, atol=1e-7, eps=eps,
                         dtype=jnp.float64)(None, key)
    x_T = sde.prior_sampling(jax.random.split(key)[0], shape, jnp.float64)
    expected = exact_flow_map(gauss, sde, x_T, eps)
    np.testing.assert_allclose(x, expected, atol=1e-5 * float(sde.prior_std()))
    # Loose tolerances are cheaper and less exact: the error scales with the tolerance.
    x_loose, nfe_loose = ode_sampler(sde, gauss.score_fn(sde), shape, rtol=1e-3, atol=1e-3, eps=eps,
                                     dtype=jnp.float64)(None, key)
    assert int(nfe_loose) < int(nfe)
    err_loose = float(jnp.max(jnp.abs(x_loose - expected)))
    assert 1e-6 < err_loose < 0.1


@pytest.mark.parametrize("solver", ["dopri5", "tsit5", "bosh3", "heun"])
def test_reported_nfe_counts_every_evaluation(solver):
    calls = []

    def vector_field(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return -y * (1.0 + t)

    for tol in (1e-3, 1e-6):
        calls.clear()
        y, nfe = jax.jit(lambda y0, tol=tol: solve_ode(vector_field, y0, 1.0, 1e-3, None, solver=solver,
                                              rtol=tol, atol=tol))(jnp.ones(3))
        jax.block_until_ready(y)
        assert int(nfe) == len(calls), (solver, tol, int(nfe), len(calls))
        np.testing.assert_allclose(y, np.exp(-(1e-3 + 0.5e-6) + 1.5), rtol=50 * tol)


def test_noise_removal_adds_one_reverse_diffusion_step():
    sde = jd.VESDE()
    gauss = jd.GaussianMixture.create([1.0], np.zeros((1, 2)), stds=1.0)
    sf = gauss.score_fn(sde)
    key = jax.random.key(3)
    x_plain, n_plain = ode_sampler(sde, sf, (16, 2), rtol=1e-4, atol=1e-4)(None, key)
    x_den, n_den = ode_sampler(sde, sf, (16, 2), rtol=1e-4, atol=1e-4, noise_removal=True)(None, key)
    assert int(n_den) == int(n_plain) + 1
    # At eps the reverse-diffusion mean step adds G^2 * score with G^2 = sigma_0^2 (the first level).
    t = jnp.full((16,), 1e-3)
    g2 = sde.discretize(x_plain, t)[1] ** 2
    np.testing.assert_allclose(x_den, x_plain + g2[:, None] * sf(None, x_plain, t), rtol=1e-5)


def test_solver_table():
    for name in ("dopri5", "tsit5", "bosh3", "heun"):
        solver, nfe = get_solver(name)
        assert nfe(10) > 0
