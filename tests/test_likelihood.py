"""Log-likelihood through the probability-flow ODE against exact densities; bits/dim closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff.likelihood import bits_per_dim, bpd_from_logp, dequantize, log_likelihood

MIX = jd.GaussianMixture.create([0.2, 0.3, 0.5], np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]]),
                                stds=np.array([0.5, 0.8, 0.6]))


def _f64(mix):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), mix)


@pytest.mark.parametrize("sde", [jd.VPSDE(), jd.SubVPSDE(), jd.VESDE()], ids=lambda s: type(s).__name__)
def test_exact_divergence_matches_the_exact_density(sde, x64):
    """The ODE computes log p_eps(x) = log p_T(z) + int div, but uses the prior's log-density in
    place of log p_T(z). With the exact mixture that substitution is known, so the ODE and the
    divergence are checked tightly; the raw value is checked on data of the usual [-1, 1] scale.
    (For the VE SDE the prior N(0, sigma_max^2) misses p_T by ~mean * z / sigma_max^2, about 0.017
    nats/dim here: a property of the model, so only the corrected check applies.)"""
    raw_tol = None if isinstance(sde, jd.VESDE) else 0.01
    for mix, tol_raw in ((_f64(MIX), None), (_f64(MIX.perturb(0.25, 0.0)), raw_tol)):
        x = mix.sample(jax.random.key(0), 32)
        logp, z, nfe = log_likelihood(sde, mix.score_fn(sde), hutchinson=None)(None, jax.random.key(1), x)
        exact = mix.log_prob_t(sde, x, 1e-5)
        assert z.shape == x.shape and int(nfe) > 0
        prior_gap = mix.log_prob_t(sde, z, sde.T) - sde.prior_logp(z)
        assert np.abs(np.asarray(logp + prior_gap - exact)).max() / 2 < 1e-3
        if tol_raw is not None:
            assert np.abs(np.asarray(logp - exact)).max() / 2 < tol_raw
    # A factor-two error in the score is far outside those tolerances.
    wrong, _, _ = log_likelihood(sde, lambda p, x, t: 2 * mix.score_fn(sde)(p, x, t),
                                 hutchinson=None)(None, jax.random.key(1), x)
    assert np.abs(np.asarray(wrong - exact)).mean() / 2 > 0.1


def test_exact_divergence_16d_gaussian(x64):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(16, 16))
    g = jd.GaussianMixture.create([1.0], rng.normal(size=(1, 16)), (a @ a.T / 16 + 0.2 * np.eye(16))[None],
                                  dtype=jnp.float64)
    sde = jd.VPSDE()
    x = g.sample(jax.random.key(2), 8)
    logp, _, _ = log_likelihood(sde, g.score_fn(sde), hutchinson=None)(None, jax.random.key(3), x)
    np.testing.assert_allclose(logp, g.log_prob_t(sde, x, 1e-5), atol=0.01 * 16)
    assert np.abs(np.asarray(logp - g.log_prob_t(sde, x, 1e-5))).max() / 16 < 0.01


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind, x64):
    sde = jd.VPSDE()
    x = MIX.sample(jax.random.key(4), 4).astype(jnp.float64)
    sf = MIX.score_fn(sde)
    exact, _, _ = log_likelihood(sde, sf, hutchinson=None, rtol=1e-6, atol=1e-6)(None, jax.random.key(0), x)
    fn = log_likelihood(sde, sf, hutchinson=kind, rtol=1e-6, atol=1e-6)
    keys = jax.random.split(jax.random.key(5), 48)
    est, _, _ = jax.vmap(fn, in_axes=(None, 0, None))(None, keys, x)   # (48, 4)
    mean, se = est.mean(0), est.std(0) / np.sqrt(est.shape[0])
    assert np.all(np.abs(mean - exact) < 4 * se + 1e-3), (mean, exact, se)
    assert np.all(est.std(0) > 1e-3)  # it is an estimate, not the exact value


def test_bpd_conversion_closed_form():
    """Uniform data on 256 levels: the dequantised density is 1 on [0,1]^D (or 2^-D on [-1,1]^D),
    which is exactly 8 bits per dimension either way."""
    d = 12
    np.testing.assert_allclose(bpd_from_logp(jnp.zeros(3), d, centered=False), 8.0)
    np.testing.assert_allclose(bpd_from_logp(jnp.full(3, -d * np.log(2.0)), d, centered=True), 8.0)
    np.testing.assert_allclose(bpd_from_logp(jnp.zeros(1), d, centered=False, num_bits=5), 5.0)


@pytest.mark.parametrize("centered", [False, True])
def test_bits_per_dim_pipeline_against_the_exact_density(centered, x64):
    """uint8 'images' under a model whose density in model space is an exact Gaussian."""
    shape = (6, 2, 2, 1)
    d = 4
    mean = 0.0 if centered else 0.5
    std = 0.4 if centered else 0.2
    gauss = jd.GaussianMixture.create([1.0], np.full((1, d), mean), stds=std, event_shape=shape[1:],
                                      dtype=jnp.float64)
    images = jax.random.randint(jax.random.key(6), shape, 60, 200).astype(jnp.uint8)
    sde = jd.VPSDE()
    repeats = 2
    key = jax.random.key(7)
    bpd, nfe = bits_per_dim(sde, gauss.score_fn(sde), centered=centered, repeats=repeats,
                            hutchinson=None)(None, key, images)
    expected = []
    for k in jax.random.split(key, repeats):
        kq, _ = jax.random.split(k)
        x = dequantize(kq, images, dtype=jnp.float64)
        if centered:
            x = 2 * x - 1
        logp = gauss.log_prob_t(sde, x, 1e-5)
        expected.append(-logp / (d * np.log(2)) + (7 if centered else 8))
    np.testing.assert_allclose(bpd, np.mean(expected, 0), atol=0.01 / np.log(2))
    assert int(nfe) > 0


def test_bits_per_dim_refuses_float_data():
    sde = jd.VPSDE()
    fn = bits_per_dim(sde, MIX.score_fn(sde), centered=True)
    with pytest.raises(ValueError, match="dequantize expects integer data .* got dtype float32"):
        fn(None, jax.random.key(0), jnp.ones((2, 2), jnp.float32))
    with pytest.raises(ValueError, match="hutchinson must be 'rademacher', 'gaussian' or None, got 'exact'"):
        log_likelihood(sde, MIX.score_fn(sde), hutchinson="exact")


# --- the variational bound (Song, Durkan, Murray & Ermon 2021, Thm. 1) ---------------------------

_SIG = np.array([[0.30, 0.12, 0.0], [0.12, 0.20, -0.05], [0.0, -0.05, 0.10]])
GAUSS = jd.GaussianMixture.create([1.0], np.array([[0.4, -0.3, 0.2]]), _SIG[None])


def _gauss_moments(sde, t):
    alpha, sigma = (float(v) for v in sde.marginal_coeffs(jnp.asarray(t, jnp.float64)))
    return alpha * np.array([0.4, -0.3, 0.2]), alpha**2 * _SIG + sigma**2 * np.eye(3)


def _entropy(cov):
    return 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]


@pytest.mark.parametrize("sde", [jd.VPSDE(), jd.SubVPSDE(), jd.VESDE()], ids=lambda s: type(s).__name__)
def test_variational_bound_closed_form_on_gaussian_data(sde, x64):
    """With the exact score, E_x L(x) = H(p_eps) + E_{p_T}[-log pi] - H(p_T); a score scaled by c
    adds exactly 1/2 (1 - c)^2 int g^2 tr(C_t^-1) dt (the same draws: common random numbers)."""
    eps, n = 1e-5, 100000
    mix = _f64(GAUSS)
    x = mix.sample(jax.random.key(0), n)
    exact = mix.score_fn(sde)
    bound, aux = jd.variational_bound(sde, exact, eps=eps)(None, jax.random.key(1), x)
    m_T, c_T = _gauss_moments(sde, sde.T)
    s2 = float(sde.prior_std()) ** 2 if not isinstance(sde, (jd.VPSDE, jd.SubVPSDE)) else 1.0
    cross = 0.5 * (3 * np.log(2 * np.pi * s2) + (np.trace(c_T) + m_T @ m_T) / s2)
    want = _entropy(_gauss_moments(sde, eps)[1]) - _entropy(c_T) + cross
    b = np.asarray(bound)
    se = b.std() / np.sqrt(n)
    assert se < 0.05, se                         # the importance density and control variate
    assert abs(b.mean() - want) < 4 * se, (b.mean(), want, se)
    np.testing.assert_allclose(np.asarray(aux["prior"]).mean(), cross, atol=0.05)
    # A wrong score raises the bound by the closed-form amount.
    c = 0.7
    worse, _ = jd.variational_bound(sde, lambda p, y, t: c * exact(p, y, t), eps=eps)(
        None, jax.random.key(1), x)
    ts = np.exp(np.linspace(np.log(eps), 0.0, 4001))
    g2 = np.asarray(sde.sde(jnp.zeros((len(ts), 3)), jnp.asarray(ts))[1]) ** 2
    alpha, sigma = (np.asarray(v) for v in sde.marginal_coeffs(jnp.asarray(ts)))
    cov = alpha[:, None, None] ** 2 * _SIG + sigma[:, None, None] ** 2 * np.eye(3)
    fisher = np.trace(np.linalg.inv(cov), axis1=1, axis2=2)
    gap = 0.5 * (1 - c) ** 2 * np.trapezoid(g2 * fisher, ts)
    d = np.asarray(worse - bound)
    assert abs(d.mean() - gap) < max(4 * d.std() / np.sqrt(n), 0.02 * gap), (d.mean(), gap)


def test_variational_bound_without_importance_sampling_agrees(x64):
    sde, mix = jd.VPSDE(), _f64(GAUSS)
    x = mix.sample(jax.random.key(0), 50000)
    b_is, _ = jd.variational_bound(sde, mix.score_fn(sde))(None, jax.random.key(1), x)
    b_u, _ = jd.variational_bound(sde, mix.score_fn(sde), importance_sampling=False)(
        None, jax.random.key(1), x)
    b_is, b_u = np.asarray(b_is), np.asarray(b_u)
    se = np.hypot(b_is.std(), b_u.std()) / np.sqrt(len(b_u))
    assert abs(b_is.mean() - b_u.mean()) < 4 * se
    assert b_u.std() > b_is.std()                # what the importance density buys
    with pytest.raises(ValueError, match="eps"):
        jd.variational_bound(sde, mix.score_fn(sde), eps=0.0)


def test_bound_bits_per_dim_is_the_bound_of_the_dequantised_data(x64):
    """bound_bits_per_dim = mean over repeats of bpd_from_logp(-bound) of the dequantised, centred
    data, with the keys it documents (the bound itself is checked in closed form above)."""
    sde, mix = jd.VPSDE(), _f64(GAUSS)
    imgs = jnp.clip(jnp.round((mix.sample(jax.random.key(0), 64) * 0.5 + 0.5) * 255), 0, 255)
    imgs = imgs.astype(jnp.uint8)
    got = jd.bound_bits_per_dim(sde, mix.score_fn(sde), centered=True, repeats=3)(
        None, jax.random.key(3), imgs)
    bound = jd.variational_bound(sde, mix.score_fn(sde))
    want = []
    for k in jax.random.split(jax.random.key(3), 3):
        kq, kb = jax.random.split(k)
        x = 2.0 * dequantize(kq, imgs) - 1.0
        want.append(bpd_from_logp(-bound(None, kb, x)[0], 3, centered=True))
    np.testing.assert_allclose(np.asarray(got), np.mean(want, 0), rtol=1e-10)
