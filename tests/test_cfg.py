"""Classifier-free guidance (jaxdiff.objectives.cfg) against exact class-conditional mixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff.objectives import cfg
from jaxdiff.samplers import registry

K = 2  # classes; the null label is K


def _mixtures():
    m0 = jd.GaussianMixture.create([1.0], np.array([[2.0, -1.0]]), stds=0.5)
    m1 = jd.GaussianMixture.create([0.5, 0.5], np.array([[-2.0, 1.0], [-1.0, -2.0]]),
                                   stds=0.4)
    return m0, m1


@jax.jit
def _exact_vp(x, t):
    return _exact(jd.VPSDE(), x, t)


def _exact(sde, x, t):
    m0, m1 = _mixtures()
    _, unc = cfg.mixture_cond_score([m0, m1], sde, [0.3, 0.7])
    return jnp.stack([m0.score_t(sde, x, t), m1.score_t(sde, x, t), unc.score_t(sde, x, t)])


def test_guided_score_closed_form(x64):
    sde = jd.VPSDE()
    cs, _ = cfg.mixture_cond_score(_mixtures(), sde, [0.3, 0.7])
    x = jax.random.normal(jax.random.key(0), (6, 2)) * 2
    t = jnp.linspace(0.05, 0.95, 6)
    y = jnp.array([0, 1, 0, 1, 1, 0])
    ref = _exact_vp(x, t)
    s_c, s_u = ref[y, jnp.arange(6)], ref[K]
    for w in (0.0, 1.0, 3.0):
        got = jax.jit(cfg.guided_score(cs, w, K))(None, x, t, y)
        np.testing.assert_allclose(got, (1 + w) * s_c - w * s_u, rtol=1e-10, atol=1e-10)
    # per-example scale, scalar time, scalar label
    w = jnp.linspace(0.0, 2.0, 6)
    got = jax.jit(cfg.guided_score(cs, w, K))(None, x, 0.3, 1)
    ref = _exact_vp(x, 0.3)
    np.testing.assert_allclose(got, (1 + w[:, None]) * ref[1] - w[:, None] * ref[K], rtol=1e-10)
    # w = -1 is the unconditional score
    np.testing.assert_allclose(jax.jit(cfg.guided_score(cs, -1.0, K))(None, x, t, y), _exact_vp(x, t)[K],
                               rtol=1e-10, atol=1e-12)


def test_guided_score_any_cond_pytree(x64):
    """An observation-conditional score: cond = {'label', 'obs'}, null = a null observation."""
    sde = jd.VPSDE()
    cs, _ = cfg.mixture_cond_score(_mixtures(), sde, [0.3, 0.7])
    seen = {}

    def obs_score(params, x, t, cond):
        seen["obs"] = cond["obs"]
        return cs(params, x, t, cond["label"]) + cond["obs"][:, :2]

    x = jnp.ones((3, 2))
    cond = {"label": jnp.array([0, 1, 0]), "obs": jnp.full((3, 4), 2.0)}
    null = {"label": K, "obs": jnp.zeros(4)}
    got = cfg.guided_score(obs_score, 2.0, null)(None, x, 0.5, cond)
    assert seen["obs"].shape == (6, 4)
    np.testing.assert_array_equal(seen["obs"][3:], 0.0)
    ref = _exact_vp(x, 0.5)
    want = 3 * (ref[cond["label"], jnp.arange(3)] + 2.0) - 2 * ref[K]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_one_network_call_per_step():
    sde = jd.VPSDE()
    cs, _ = cfg.mixture_cond_score(_mixtures(), sde)
    widths = []

    def counted(params, x, t, y):
        jax.debug.callback(lambda n: widths.append(int(n)), jnp.asarray(x.shape[0]))
        return cs(params, x, t, y)

    g = cfg.guided_score(counted, 1.5, K)
    sample = jd.get_sampler("ddim", sde, g, (8, 2), num_steps=5)
    x, nfe = sample(None, jax.random.key(1), cond=jnp.arange(8) % K)
    jax.block_until_ready(x)
    assert int(nfe) == 5 and widths == [16] * 5


@pytest.mark.parametrize("w", [0.0, -1.0])
def test_samples_match_exact_law(w, x64):
    """w = 0: the exact conditional law of each class; w = -1: the unconditional mixture."""
    sde = jd.VPSDE()
    m0, m1 = _mixtures()
    cs, unc = cfg.mixture_cond_score([m0, m1], sde, [0.3, 0.7])
    n = 4000
    y = jnp.arange(2 * n) % K
    sample = jd.get_sampler("dpm_solver++_2m", sde, cfg.guided_score(cs, w, K), (2 * n, 2),
                            num_steps=40, dtype=jnp.float64)
    x, _ = sample(None, jax.random.key(2), cond=y)
    for c, m in enumerate((m0, m1)):
        xc = np.asarray(x[np.asarray(y) == c])
        law = m if w == 0.0 else unc
        mean, cov = np.asarray(law.mean()), np.asarray(law.cov())
        se = np.sqrt(np.diag(cov) / xc.shape[0])
        assert np.all(np.abs(xc.mean(0) - mean) < 4 * se + 5e-3), (c, xc.mean(0), mean)
        se_var = np.diag(cov) * np.sqrt(2.0 / xc.shape[0])
        assert np.all(np.abs(xc.var(0) - np.diag(cov)) < 4 * se_var + 1e-2), (c, xc.var(0))


# three names in CI (CI budget); every registry name under -m slow
_CI = {"pc", "ddim", "edm"}


def _cheap(name):
    opts = registry.sampler_options(name)
    kw = {}
    if "num_steps" in opts:
        kw["num_steps"] = 30 if opts["num_steps"] is None else 8
    if "rtol" in opts:
        kw["rtol"] = kw["atol"] = 1e-3
    return kw


@pytest.mark.parametrize("name", [
    n if n in _CI else pytest.param(n, marks=pytest.mark.slow)
    for n in registry.available_samplers()])
def test_every_registry_sampler_guides(name):
    """The guided score reaches every registry sampler through its cond argument: class 0 samples
    land near class 0's mean, class 1 samples near class 1's."""
    sde = jd.VPSDE()
    m0, m1 = _mixtures()
    cs, _ = cfg.mixture_cond_score([m0, m1], sde)
    y = jnp.arange(64) % K
    sample = jd.get_sampler(name, sde, cfg.guided_score(cs, 0.0, K), (64, 2), **_cheap(name))
    x, _ = sample(None, jax.random.key(3), cond=y)
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    for c, m in enumerate((m0, m1)):
        err = np.abs(x[np.asarray(y) == c].mean(0) - np.asarray(m.mean()))
        assert np.all(err < 0.5), (name, c, err)


def test_label_dropout_rate_and_loss(x64):
    sde = jd.VPSDE()
    cs, _ = cfg.mixture_cond_score(_mixtures(), sde)
    n, p = 4000, 0.25
    labels = jnp.arange(n) % K
    x0 = jnp.zeros((n, 2))
    loss_fn = cfg.cfg_loss(sde, cs, cond_drop_prob=p, null_cond=K)
    key = jax.random.key(4)
    loss, aux = jax.jit(loss_fn)(None, key, {"x": x0, "label": labels})
    d = np.asarray(aux["dropped"])
    assert abs(d.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(aux["cond"], np.where(d, K, labels))
    # the loss is DSM of the score at the conditions used (same key split as cfg_loss)
    k_t, k_z, _, _ = jax.random.split(key, 4)
    t = jax.random.uniform(k_t, (n,), x0.dtype, 1e-5, sde.T)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None] * z
    want = jnp.mean(jnp.square(jax.jit(cs)(None, xt, t, aux["cond"]) * std[:, None] + z), -1)
    np.testing.assert_allclose(aux["losses"], want, rtol=1e-10)
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-10)
    assert not np.any(cfg.cfg_loss(sde, cs, cond_drop_prob=0.0, null_cond=K)(
        None, key, (x0, labels))[1]["dropped"])
    assert np.all(cfg.cfg_loss(sde, cs, cond_drop_prob=1.0, null_cond=K)(
        None, key, (x0, labels))[1]["cond"] == K)


def test_bad_inputs():
    sde = jd.VPSDE()
    cs, _ = cfg.mixture_cond_score(_mixtures(), sde)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        cfg.cfg_loss(sde, cs, cond_drop_prob=1.5, null_cond=K)
    loss_fn = cfg.cfg_loss(sde, cs, cond_drop_prob=0.1, null_cond=K)
    with pytest.raises(ValueError, match="'label'"):
        loss_fn(None, jax.random.key(0), {"x": jnp.zeros((4, 2))})
    g = cfg.guided_score(cs, 1.0, K)
    with pytest.raises(ValueError, match="needs a condition"):
        g(None, jnp.zeros((4, 2)), 0.5, None)
    with pytest.raises(ValueError, match="leading axis"):
        g(None, jnp.zeros((4, 2)), 0.5, jnp.zeros((3,), jnp.int32))
