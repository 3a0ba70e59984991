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
