"""EDM training (jaxdiff.objectives.edm, task 'edm') against closed forms.

Gaussian data ``N(m, diag(v))``: the optimal denoiser is ``E[y | x] = m + v / (v + s^2) (x - m)``
and its per-example error ``E|D* - y|^2 = sum v s^2 / (v + s^2)``; a Gaussian mixture's exact
denoiser is the responsibility-weighted posterior mean of its components (no score involved).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.analytic import GaussianMixture
from jaxdiff.objectives import edm
from jaxdiff.sde import VESDE


def enable_x64():
    return jax.enable_x64(True)


def _ref_coeffs(s, sd):
    """Karras et al. 2022, Table 1 (the 'ours' column), written out independently."""
    return (sd**2 / (s**2 + sd**2), s * sd / math.sqrt(s**2 + sd**2),
            1.0 / math.sqrt(s**2 + sd**2), math.log(s) / 4.0)


def test_preconditioning_matches_reference_values():
    for sd in (0.5, 0.85):
        for s in (0.002, 0.3, 1.0, 80.0):
            got = [float(c) for c in edm.edm_preconditioning(jnp.float32(s), sd)]
            np.testing.assert_allclose(got, _ref_coeffs(s, sd), rtol=1e-6)
            lam = float(edm.edm_loss_weight(jnp.float32(s), sd))
            np.testing.assert_allclose(lam, (s**2 + sd**2) / (s * sd) ** 2, rtol=1e-6)
            np.testing.assert_allclose(lam * _ref_coeffs(s, sd)[1] ** 2, 1.0, rtol=1e-6)
    # a hand value: s = sd = 0.5 -> c_skip 1/2, c_out 0.5/sqrt 2, c_in sqrt 2, c_noise ln(.5)/4
    c = [float(v) for v in edm.edm_preconditioning(jnp.float32(0.5), 0.5)]
    np.testing.assert_allclose(c, [0.5, 0.5 / math.sqrt(2), math.sqrt(2), math.log(0.5) / 4],
                               rtol=1e-6)


def _gauss_net(m, v, sd):
    """A raw network F whose EDM-preconditioned denoiser is the exact one of N(m, diag v),
    built from the reference coefficients (sigma is read back from c_noise)."""

    def net_fn(params, x_in, c_noise):
        s = jnp.exp(4.0 * c_noise)[:, None]
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / jnp.sqrt(s**2 + sd**2)
        x = x_in * jnp.sqrt(s**2 + sd**2)
        mm, vv = params
        d = mm + vv / (vv + s**2) * (x - mm)
        return (d - c_skip * x) / c_out

    return net_fn


def _gauss_min(v, p_mean, p_std, sd, n=80):
    """E_sigma lambda(sigma) mean_i v_i s^2 / (v_i + s^2): Gauss-Hermite over ln sigma."""
    u, w = np.polynomial.hermite_e.hermegauss(n)
    s = np.exp(p_mean + p_std * u)[:, None]
    lam = (s**2 + sd**2) / (s * sd) ** 2
    per = np.mean(v[None] * s**2 / (v[None] + s**2), axis=1, keepdims=True)
    return float(np.sum(w[:, None] * lam * per) / np.sqrt(2 * np.pi))


def test_loss_at_exact_denoiser_equals_closed_form_minimum():
    with enable_x64():
        m = jnp.array([0.3, -0.4, 0.1])
        v = jnp.array([0.25, 0.81, 0.04])
        sd = 0.6
        params = (m, v)
        D = edm.edm_denoiser(_gauss_net(m, v, sd), sd)
        n = 40000
        y = m + jnp.sqrt(v) * jax.random.normal(jax.random.PRNGKey(0), (n, 3), jnp.float64)
        loss_fn = jax.jit(edm.edm_loss(D, sigma_data=sd))
        loss, aux = loss_fn(params, jax.random.PRNGKey(1), y)
        se = float(jnp.std(aux["losses"]) / math.sqrt(n))
        want = _gauss_min(np.asarray(v), edm.P_MEAN, edm.P_STD, sd)
        assert abs(float(loss) - want) < 4 * se, (float(loss), want, se)
        # a fixed sigma (p_std = 0): lambda(s) mean v s^2 / (v + s^2) exactly in expectation
        s = 0.7
        loss0, aux0 = jax.jit(edm.edm_loss(D, sigma_data=sd, p_mean=math.log(s), p_std=0.0))(
            params, jax.random.PRNGKey(2), y)
        np.testing.assert_allclose(np.asarray(aux0["sigma"]), s, rtol=1e-12)
        want0 = (s**2 + sd**2) / (s * sd) ** 2 * float(jnp.mean(v * s**2 / (v + s**2)))
        se0 = float(jnp.std(aux0["losses"]) / math.sqrt(n))
        assert abs(float(loss0) - want0) < 4 * se0, (float(loss0), want0, se0)


def test_loss_gradient_vanishes_at_the_exact_family():
    """d/d(m, v) of the expected EDM loss is zero at the true (m, v): per-chunk gradients have
    mean zero (4 SE); a perturbed mean gives a gradient pointing back."""
    with enable_x64():
        m = jnp.array([0.3, -0.4])
        v = jnp.array([0.25, 0.5])
        sd = 0.5
        D = edm.edm_denoiser(_gauss_net(m, v, sd), sd)
        loss_fn = edm.edm_loss(D, sigma_data=sd)
        grad = jax.jit(jax.grad(lambda p, k, b: loss_fn(p, k, b)[0]))
        chunks = 64
        keys = jax.random.split(jax.random.PRNGKey(3), chunks)

        def grads(params):
            gs = []
            for k in keys:
                ky, kl = jax.random.split(k)
                y = m + jnp.sqrt(v) * jax.random.normal(ky, (2000, 2), jnp.float64)
                g = grad(params, kl, y)
                gs.append(np.concatenate([np.asarray(g[0]), np.asarray(g[1])]))
            return np.stack(gs)

        g = grads((m, v))
        mean, se = g.mean(0), g.std(0) / math.sqrt(chunks)
        assert np.all(np.abs(mean) < 4 * se), (mean, se)
        g_off = grads((m + jnp.array([0.2, 0.0]), v)).mean(0)
        assert g_off[0] > 0 and abs(g_off[0]) > 10 * se[0], (g_off, se)


def _mixture():
    return GaussianMixture.create(
        jnp.array([0.3, 0.7]), jnp.array([[1.0, -0.5], [-1.0, 0.8]]),
        jnp.array([[[0.2, 0.05], [0.05, 0.1]], [[0.05, 0.0], [0.0, 0.3]]]), dtype=jnp.float64)


def _mixture_denoiser(gm):
    """E[y | x] for y ~ gm, x = y + sigma z: sum_k r_k(x) (m_k + S_k (S_k + s^2 I)^-1 (x - m_k))."""

    def D(params, x, sigma):
        sigma = jnp.broadcast_to(sigma, (x.shape[0],))

        def one(xi, si):
            p = gm.perturb(1.0, si)
            r = p.responsibilities(xi[None])[0]
            covs = gm.covs
            A = covs + si**2 * jnp.eye(2)[None]
            post = gm.means + jnp.einsum("kij,kj->ki", covs,
                                         jnp.linalg.solve(A, (xi[None] - gm.means)[..., None])[..., 0])
            return jnp.sum(r[:, None] * post, axis=0)

        return jax.vmap(one)(x, sigma)

    return D


def test_denoiser_to_score_is_the_exact_mixture_score_on_ve():
    with enable_x64():
        gm = _mixture()
        sde = VESDE(0.002, 80.0)
        score_fn = edm.denoiser_to_score(_mixture_denoiser(gm), sde)
        x = jax.random.normal(jax.random.PRNGKey(4), (16, 2), jnp.float64) * 1.5
        t = jnp.linspace(0.05, 0.95, 16)
        np.testing.assert_allclose(np.asarray(score_fn(None, x, t)),
                                   np.asarray(gm.score_t(sde, x, t)), rtol=1e-9, atol=1e-9)
        # scalar t, and the inverse map
        np.testing.assert_allclose(np.asarray(score_fn(None, x, 0.3)),
                                   np.asarray(gm.score_t(sde, x, jnp.full((16,), 0.3))),
                                   rtol=1e-9, atol=1e-9)
        sig = sde.sigma(t)
        back = edm.score_to_denoiser(gm.score_fn(sde), sde)(None, x, sig)
        np.testing.assert_allclose(np.asarray(back), np.asarray(_mixture_denoiser(gm)(None, x, sig)),
                                   rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(np.asarray(edm.ve_time(sde, sig)), np.asarray(t), rtol=1e-12)


def test_likelihood_on_the_edm_score_is_exact():
    """bits/dim machinery: the probability-flow log-density of the exact EDM-wrapped Gaussian
    denoiser is the exact one of that model (prior N(0, 80^2 I) at the linear flow's end)."""
    from jaxdiff.likelihood import log_likelihood
    with enable_x64():
        m, v = jnp.array([0.2, -0.3]), jnp.array([0.3, 0.6])
        sd = 0.6
        sde = VESDE(0.002, 80.0)
        score_fn = edm.edm_score_fn(_gauss_net(m, v, sd), sde, sd)
        ll = log_likelihood(sde, score_fn, hutchinson=None, rtol=1e-7, atol=1e-7)
        x = jnp.array([[0.1, 0.2], [0.5, -1.0], [-0.4, 0.0]])
        logp, _, _ = ll((m, v), jax.random.PRNGKey(0), x)
        # the flow of a Gaussian is linear: z = m + sqrt(V_T / V_eps) (x - m), V(t) = v + sigma(t)^2;
        # the model density is the prior N(0, sigma_max^2 I) at z times |dz/dx|
        v_eps, v_T = v + float(sde.sigma(1e-5)) ** 2, v + 80.0**2
        z = m + jnp.sqrt(v_T / v_eps) * (x - m)
        want = (-0.5 * jnp.sum(z**2 / 80.0**2 + jnp.log(2 * jnp.pi * 80.0**2), axis=1)
                + 0.5 * jnp.sum(jnp.log(v_T / v_eps)))
        np.testing.assert_allclose(np.asarray(logp), np.asarray(want), atol=2e-5)


def test_sigma_sampling_moments():
    n = 200000
    with enable_x64():
        s = edm.sample_sigma(jax.random.PRNGKey(5), (n,), dtype=jnp.float64)
        ls = np.log(np.asarray(s))
        assert abs(ls.mean() - edm.P_MEAN) < 4 * edm.P_STD / math.sqrt(n)
        # sample variance SE: sigma^2 sqrt(2 / n)
        assert abs(ls.var() - edm.P_STD**2) < 4 * edm.P_STD**2 * math.sqrt(2.0 / n)
        # E[sigma] = exp(mu + s^2 / 2) of the log-normal
        se = np.asarray(s).std() / math.sqrt(n)
        assert abs(np.asarray(s).mean() - math.exp(edm.P_MEAN + edm.P_STD**2 / 2)) < 4 * se
        # the loss draws the same distribution
        loss_fn = edm.edm_loss(lambda p, x, sg: x, p_mean=0.5, p_std=0.3)
        _, aux = loss_fn(None, jax.random.PRNGKey(6), jnp.zeros((n, 1), jnp.float64))
        la = np.log(np.asarray(aux["sigma"]))
        assert abs(la.mean() - 0.5) < 4 * 0.3 / math.sqrt(n)
        assert abs(la.std() - 0.3) < 0.01


def test_digits_sigma_data_is_the_rms_of_the_centred_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    from jaxdiff.tasks.edm import EDMTask
    img = datasets.load_digits().images
    x = np.round(img * (255.0 / 16.0)).clip(0, 255) / 255.0 * 2.0 - 1.0
    assert abs(math.sqrt(np.mean(x**2)) - EDMTask.sigma_data) < 0.01


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="sigma_data"):
        edm.edm_denoiser(lambda p, x, c: x, sigma_data=0.0)
    with pytest.raises(ValueError, match="p_std"):
        edm.edm_loss(lambda p, x, s: x, p_std=-1.0)
    with pytest.raises(ValueError, match="VESDE"):
        from jaxdiff.sde import VPSDE
        edm.denoiser_to_score(lambda p, x, s: x, VPSDE())


def _tiny_config(sde="vesde"):
    from jaxdiff.models import configs as model_configs
    from jaxdiff.train import get_default_config
    c = get_default_config()
    c.task = "edm"
    c.model = model_configs.small_unet()
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 8, (1, 2), 1
    c.model.sigma_min, c.model.sigma_max = 0.002, 80.0
    c.data.dataset, c.data.image_size, c.data.num_channels = "digits", 8, 1
    c.data.centered, c.data.random_flip = True, False
    c.training.sde = sde
    c.training.batch_size, c.training.reduce_mean = 8, True
    c.sampling.method, c.sampling.num_steps = "edm", 4
    c.parallel.num_devices = 1
    return c


@pytest.mark.slow  # builds and jits a U-Net task: ~20 s idle, minutes on a loaded CPU
def test_edm_task_wires_denoiser_score_and_loss():
    from jaxdiff.tasks import get_task
    from jaxdiff.tasks.edm import EDMTask
    from jaxdiff.train.config import ConfigError
    task = get_task(_tiny_config())
    assert isinstance(task, EDMTask) and isinstance(task.sde, VESDE)
    params = task.init(jax.random.PRNGKey(0)).params
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    t = jnp.array([0.1, 0.4, 0.6, 0.9])
    sig = task.sde.sigma(t)
    d = task.denoiser(params, x, sig)
    np.testing.assert_allclose(np.asarray(task.score_fn(params, x, t)),
                               np.asarray((d - x) / sig[:, None, None, None] ** 2),
                               rtol=1e-5, atol=1e-6)
    loss, aux = task.train_loss(params, jax.random.PRNGKey(2), x)
    assert np.isfinite(float(loss)) and aux["losses"].shape == (4,)
    xs, nfe = task.sampler(2)(params, jax.random.PRNGKey(3))
    assert xs.shape == (2, 8, 8, 1) and int(nfe) == 7
    with pytest.raises(ConfigError, match="config.training.sde"):
        get_task(_tiny_config("vpsde"))


def test_digits_edm_config_loads():
    from jaxdiff.train.config import load_config
    c = load_config("configs/digits_edm.py")
    assert c.task == "edm" and c.training.sde == "vesde" and c.sampling.method == "edm"
    assert c.model.sigma_max == 80.0 and c.model.sigma_min == 0.002
