"""Score wrappers against exact Gaussian-mixture scores.

A stand-in "network" decodes the time from the labels it receives (so the label conventions are
checked too) and returns the exact optimal output of each parameterization (Tweedie:
``E[eps | x_t] = -sigma score``, ``E[x0 | x_t] = (x + sigma^2 score) / alpha``); the wrapper must
turn it back into the exact score of the perturbed mixture.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import scores
from jaxdiff.analytic import GaussianMixture
from jaxdiff.models import configs, get_model, init_params
from jaxdiff.sde import VESDE, VPSDE, SubVPSDE


def _mixture(dtype=jnp.float64):
    return GaussianMixture.create(
        [0.3, 0.7], jnp.array([[1.0, -2.0, 0.5], [-1.5, 1.0, 2.0]]),
        stds=jnp.array([0.4, 0.8]), dtype=dtype)


def _coeffs_from_labels(sde, labels, continuous):
    """Decode (alpha, sigma) from labels, independently of the wrapper's code."""
    if isinstance(sde, VESDE):
        if continuous:
            sigma = labels
        else:
            sig_desc = jnp.exp(jnp.linspace(jnp.log(sde.sigma_max), jnp.log(sde.sigma_min), sde.N))
            sigma = sig_desc[labels]
        return jnp.ones_like(sigma), sigma
    if continuous:
        t = labels / 999.0
        lmc = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
        alpha = jnp.exp(lmc)
        var = 1.0 - jnp.exp(2 * lmc)
        sigma = jnp.sqrt(var) if isinstance(sde, VPSDE) else var
        return alpha, sigma
    betas = jnp.linspace(sde.beta_min / sde.N, sde.beta_max / sde.N, sde.N)
    acp = jnp.cumprod(1.0 - betas)[labels.astype(jnp.int32)]
    return jnp.sqrt(acp), jnp.sqrt(1.0 - acp)


def _oracle(mix, sde, parameterization, continuous, scale_by_sigma=False):
    def net(params, x, labels, *, rng=None, y=None):
        alpha, sigma = _coeffs_from_labels(sde, labels, continuous)
        score = jax.vmap(lambda xi, a, s: mix.perturb(a, s).score(xi[None])[0])(x, alpha, sigma)
        a, s = alpha[:, None], sigma[:, None]
        eps = -s * score
        x0 = (x + s**2 * score) / a
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0,
                "score": score * s if scale_by_sigma else score}[parameterization]
    return net


CASES = [
    (VPSDE(), True), (SubVPSDE(), True), (VESDE(), True), (VPSDE(), False), (VESDE(), False),
]


@pytest.mark.parametrize("sde,continuous", CASES)
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "score"])
def test_wrapper_gives_exact_mixture_score(x64, sde, continuous, parameterization):
    mix = _mixture()
    key = jax.random.key(0)
    k1, k2 = jax.random.split(key)
    t = jax.random.uniform(k1, (6,), jnp.float64, 0.05, 1.0)
    x = jax.random.normal(k2, (6, 3), jnp.float64) * 2.0
    net = _oracle(mix, sde, parameterization, continuous)
    score_fn = scores.get_score_fn(sde, net, continuous=continuous,
                                   parameterization=parameterization)
    got = jax.jit(score_fn)(None, x, t)

    @jax.jit
    def truth(x, t):
        if continuous:
            return mix.score_t(sde, x, t)
        labels, _, _ = scores.time_labels(sde, t, continuous=False)
        a2, s2 = _coeffs_from_labels(sde, labels, False)
        return jax.vmap(lambda xi, a, s: mix.perturb(a, s).score(xi[None])[0])(x, a2, s2)

    want = truth(x, t)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)
    # the score is not trivially small: a wrong sign / factor 2 would be caught
    assert float(jnp.abs(want).mean()) > 0.05


def test_ve_scale_by_sigma_exact(x64):
    sde = VESDE()
    mix = _mixture()
    x = jax.random.normal(jax.random.key(3), (5, 3), jnp.float64)
    t = jnp.linspace(0.1, 0.9, 5)
    fn = scores.get_score_fn(sde, _oracle(mix, sde, "score", True, scale_by_sigma=True),
                             scale_by_sigma=True)
    np.testing.assert_allclose(fn(None, x, t), mix.score_t(sde, x, t), rtol=1e-8)
    # without the division, the same network is off by sigma(t)
    fn_wrong = scores.get_score_fn(sde, _oracle(mix, sde, "score", True, scale_by_sigma=True))
    assert not np.allclose(fn_wrong(None, x, t), mix.score_t(sde, x, t), rtol=1e-2)


def test_defaults_follow_the_paper():
    x = jnp.ones((2, 3))
    seen = {}

    def net(params, x, labels, *, rng=None, y=None):
        seen["labels"] = labels
        return jnp.full_like(x, 2.0)

    vp = VPSDE()
    out = scores.get_score_fn(vp, net)(None, x, 0.5)
    np.testing.assert_allclose(seen["labels"], [499.5, 499.5], rtol=1e-6)
    _, std = vp.marginal_prob(x, jnp.array(0.5))
    np.testing.assert_allclose(out, -2.0 / std * jnp.ones_like(x), rtol=1e-6)
    ve = VESDE()
    out = scores.get_score_fn(ve, net)(None, x, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(seen["labels"], [0.01, 50.0], rtol=1e-5)
    np.testing.assert_allclose(out, 2.0)  # VE: the network predicts the score itself
    scores.get_score_fn(ve, net, continuous=False)(None, x, jnp.array([0.0, 1.0]))
    np.testing.assert_array_equal(seen["labels"], [999, 0])  # index 0 = sigma_max


def _mlp(num_classes=0, dropout=0.0):
    cfg = ml_collections.ConfigDict({"model": configs.mlp()})
    cfg.model.nf = 16
    cfg.model.num_classes = num_classes
    cfg.model.dropout = dropout
    model = get_model(cfg)
    return model, init_params(jax.random.key(0), model, (1, 2))


def test_linen_model_wrapper_matches_manual_apply():
    model, params = _mlp()
    sde = VPSDE()
    x = jax.random.normal(jax.random.key(1), (4, 2))
    t = jnp.array([0.1, 0.4, 0.7, 1.0])
    got = jax.jit(scores.get_score_fn(sde, model))(params, x, t)
    out = model.apply({"params": params}, x, t * 999.0, train=False)
    _, std = sde.marginal_prob(x, t)
    np.testing.assert_allclose(got, -out / std[:, None], rtol=1e-5, atol=1e-6)


def test_train_mode_dropout_and_class_labels():
    model, params = _mlp(num_classes=3, dropout=0.5)
    sde = VPSDE()
    x = jnp.ones((3, 2))
    y = jnp.array([0, 1, 2])
    fn = scores.get_score_fn(sde, model, train=True)
    with pytest.raises(ValueError, match="rng"):
        fn(params, x, 0.5, y=y)
    a = fn(params, x, 0.5, rng=jax.random.key(1), y=y)
    b = fn(params, x, 0.5, rng=jax.random.key(1), y=y)
    c = fn(params, x, 0.5, rng=jax.random.key(2), y=y)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    ev = scores.get_score_fn(sde, model)
    np.testing.assert_array_equal(ev(params, x, 0.5, y=y), ev(params, x, 0.5, y=y))
    with pytest.raises(ValueError, match="class labels"):
        ev(params, x, 0.5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'foo'"):
        scores.get_score_fn(VPSDE(), lambda *a, **k: None, parameterization="foo")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        scores.get_score_fn(VPSDE(), lambda *a, **k: None, scale_by_sigma=True)
    fn = scores.get_score_fn(VPSDE(), lambda p, x, l, **k: x)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        fn(None, jnp.ones((3, 2)), jnp.ones((2,)))
