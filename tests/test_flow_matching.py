"""Flow matching / rectified flow (jaxdiff.objectives.flow) against closed forms: a Gaussian
mixture's exact velocity E[eps - x0 | x_t] of the linear path, computed directly from the
component posteriors (independently of the velocity <-> score conversions under test)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.analytic import GaussianMixture
from jaxdiff.objectives import flow
from jaxdiff.samplers.registry import get_sampler


def _mixture():
    return GaussianMixture.create(
        [0.3, 0.7], jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
        jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]), dtype=jnp.float64)


def _exact_velocity(mix, x, t):
    """E[eps - x0 | x_t = x] at scalar t from the component posteriors of x0."""
    a, s = 1.0 - t, t
    resp = mix.perturb(a, s).responsibilities(x)                       # (B, K)
    proj = jnp.einsum("kdj,bkd->bkj", mix.eigvecs, x[:, None] - a * mix.means)
    gain = a * mix.eigvals / (a**2 * mix.eigvals + s**2)               # (K, D)
    x0_k = mix.means + jnp.einsum("kdj,bkj->bkd", mix.eigvecs, gain * proj)
    x0 = jnp.einsum("bk,bkd->bd", resp, x0_k)
    eps = (x - a * x0) / s
    return eps - x0


def _points(key, n=64):
    return 1.5 * jax.random.normal(key, (n, 2), jnp.float64)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_conversions_match_exact_mixture(t):
    with jax.enable_x64(True):
        sde, mix = flow.RectifiedFlowSDE(), _mixture()
        x = _points(jax.random.PRNGKey(0))
        v = _exact_velocity(mix, x, t)
        score = mix.score_t(sde, x, t)
        tt = jnp.full((x.shape[0],), t)
        np.testing.assert_allclose(flow.score_to_velocity(sde, score, x, tt), v, rtol=1e-9,
                                   atol=1e-9)
        np.testing.assert_allclose(flow.velocity_to_score(sde, v, x, tt), score, rtol=1e-9,
                                   atol=1e-9)
        x0, eps = flow.velocity_to_x0_eps(sde, v, x, tt)
        np.testing.assert_allclose(x0, x - t * v, atol=1e-12)
        np.testing.assert_allclose((1 - t) * x0 + t * eps, x, atol=1e-12)
        np.testing.assert_allclose(flow.x0_to_velocity(sde, x0, x, tt), v, atol=1e-9)
        np.testing.assert_allclose(flow.eps_to_velocity(sde, eps, x, tt), v, atol=1e-9)
        # the wrapper, and the probability-flow drift of the SDE, are the flow velocity
        sfn = flow.velocity_score_fn(sde, lambda p, y, s: _exact_velocity(mix, y, t))
        np.testing.assert_allclose(sfn(None, x, t), score, rtol=1e-9, atol=1e-9)
        rsde = sde.reverse(mix.score_fn(sde), probability_flow=True)
        np.testing.assert_allclose(rsde.sde(None, x, tt)[0], v, rtol=1e-9, atol=1e-9)


def test_sde_is_the_linear_path_and_satisfies_fokker_planck():
    with jax.enable_x64(True):
        sde = flow.RectifiedFlowSDE()
        ts = jnp.linspace(0.01, sde.T, 7)
        alpha, sigma = sde.marginal_coeffs(ts)
        np.testing.assert_allclose(alpha, 1 - ts, atol=1e-14)
        np.testing.assert_allclose(sigma, ts, atol=1e-14)
        f = sde.sde(jnp.ones((7, 1)), ts)[0][:, 0]      # drift at x = 1: f(t)
        g2 = sde.sde(jnp.ones((7, 1)), ts)[1] ** 2
        a_fn = lambda t: sde.marginal_coeffs(t)[0]       # noqa: E731
        s_fn = lambda t: sde.marginal_coeffs(t)[1]       # noqa: E731
        da = jax.vmap(jax.grad(a_fn))(ts)
        np.testing.assert_allclose(da, f * alpha, rtol=1e-10)   # d mean / dt = f mean
        for v0 in (0.25, 1.0, 4.0):                              # d var / dt = 2 f var + g^2
            var = lambda t, v0=v0: a_fn(t) ** 2 * v0 + s_fn(t) ** 2  # noqa: E731
            np.testing.assert_allclose(jax.vmap(jax.grad(var))(ts), 2 * f * var(ts) + g2,
                                       rtol=1e-10)
        assert abs(float(sde.prior_std()) - sde.T) < 1e-12


def _moments_close(x, mix, n_se=4.0):
    x = np.asarray(x)
    n = x.shape[0]
    cov = np.asarray(mix.cov())
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - np.asarray(mix.mean())) < n_se * se_mean), x.mean(0)
    # var of the sample variance ~ (m4 - var^2) / n; bound it with a sample estimate
    xc = x - x.mean(0)
    se_var = np.sqrt(np.var(xc**2, axis=0) / n)
    assert np.all(np.abs(xc.var(0) - np.diag(cov)) < n_se * se_var), (xc.var(0), np.diag(cov))


def test_flow_ode_with_exact_velocity_maps_prior_to_data():
    with jax.enable_x64(True):
        sde, mix = flow.RectifiedFlowSDE(), _mixture()

        def vel(params, x, t):   # per-example t (all equal inside the Heun solver)
            return _exact_velocity(mix, x, t[0])

        # t = 1 is fine for the velocity (finite there); stop just above 0 (eps-scale)
        _, x = flow.reflow_pairs(sde, vel, None, jax.random.PRNGKey(1), (4000, 2),
                                 num_steps=100, t_min=1e-4)
        _moments_close(x, mix)
        # and the registry's adaptive probability-flow ODE on the SDE object
        sample = get_sampler("ode", sde, mix.score_fn(sde), (4000, 2), dtype=jnp.float64,
                             eps=1e-4)
        xs, nfe = sample(None, jax.random.PRNGKey(2))
        assert int(nfe) > 0
        _moments_close(xs, mix)


@pytest.mark.parametrize("name,kw", [("ddim", {}), ("dpm_solver++_2m", {}), ("unipc", {}),
                                     ("edm", {}), ("pc", {"predictor": "euler_maruyama"})])
def test_registry_samplers_run_on_flow_sde(name, kw):
    with jax.enable_x64(True):
        sde, mix = flow.RectifiedFlowSDE(), _mixture()
        steps = 200 if name == "pc" else 20
        sample = get_sampler(name, sde, mix.score_fn(sde), (2000, 2), dtype=jnp.float64,
                             num_steps=steps, **kw)
        x, _ = sample(None, jax.random.PRNGKey(3))
        assert np.all(np.isfinite(np.asarray(x)))
        # loose: discretisation error of a few-step sampler, 6 SE of the mean
        _moments_close(x, mix, n_se=6.0)


def test_loss_at_exact_velocity_equals_closed_form_minimum():
    with jax.enable_x64(True):
        stds = jnp.array([0.5, 1.5])
        mix = GaussianMixture.create([1.0], jnp.array([[0.3, -0.2]]), stds=stds[None],
                                     dtype=jnp.float64)
        sde = flow.RectifiedFlowSDE()
        m = mix.means[0]

        def vel(p, x, t):   # _exact_velocity with one diagonal component, per-example t
            a, s = 1.0 - t[:, None], t[:, None]
            x0 = m + a * stds**2 / (a**2 * stds**2 + s**2) * (x - a * m)
            return (x - a * x0) / s - x0

        xc = _points(jax.random.PRNGKey(6), 8)
        np.testing.assert_allclose(vel(None, xc, jnp.full((8,), 0.3)),
                                   _exact_velocity(mix, xc, 0.3), atol=1e-12)
        loss_fn = jax.jit(flow.flow_matching_loss(vel, sde=sde))
        data = mix.sample(jax.random.PRNGKey(4), 20000)
        loss, aux = loss_fn(None, jax.random.PRNGKey(5), data)
        # Var(eps - x0 | x_t) = s^2 / ((1-t)^2 s^2 + t^2) per coordinate; mean over d, t ~ U(0, T)
        ts = np.linspace(0.0, sde.T, 200001)
        s2 = np.asarray(stds)[:, None] ** 2
        integrand = np.mean(s2 / ((1 - ts) ** 2 * s2 + ts**2), axis=0)
        closed = np.trapezoid(integrand, ts) / sde.T
        se = float(np.std(np.asarray(aux["losses"])) / np.sqrt(data.shape[0]))
        assert abs(float(loss) - closed) < 4 * se, (float(loss), closed, se)
        assert float(jnp.min(aux["t"])) >= 0 and float(jnp.max(aux["t"])) <= sde.T
        # a shifted velocity costs |c|^2 more (same draws)
        shifted = jax.jit(flow.flow_matching_loss(lambda p, x, t: vel(p, x, t) + 0.3, sde=sde))
        loss2, _ = shifted(None, jax.random.PRNGKey(5), data)
        assert abs(float(loss2 - loss) - 0.09) < 0.01


def test_logit_normal_times_and_bad_input():
    t = flow.sample_times(jax.random.PRNGKey(0), 20000, jnp.float32, t_min=0.0, t_max=1.0,
                          time_sampling="logit_normal")
    logit = np.log(np.asarray(t) / (1 - np.asarray(t)))
    assert abs(logit.mean()) < 4 / np.sqrt(20000) and abs(logit.std() - 1) < 0.03
    with pytest.raises(ValueError, match="t_end"):
        flow.RectifiedFlowSDE(t_end=1.0)
    with pytest.raises(ValueError, match="time_sampling"):
        flow.flow_matching_loss(lambda p, x, t: x, time_sampling="cosine")
    with pytest.raises(ValueError, match="t_min"):
        flow.flow_matching_loss(lambda p, x, t: x, t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="num_steps"):
        flow.reflow_pairs(flow.RectifiedFlowSDE(), lambda p, x, t: x, None,
                          jax.random.PRNGKey(0), (2, 2), num_steps=0)
