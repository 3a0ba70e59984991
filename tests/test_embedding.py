"""Calling jaxdiff from other JAX code.

This module plays the part of a user's program: it imports only public ``jaxdiff`` names, wraps
its own networks (a Flax NNX module, a Flax Linen module, an Equinox module) as score functions
``score_fn(params, x, t)``, and calls the loss, the PC sampler, the ODE sampler and the likelihood
inside its own ``jax.jit`` and ``jax.vmap``. The results must match the plain calls.

Ground truth: every network computes ``-x + head(x, t)`` with the head's last layer initialised to
zero, so at initialisation it is the exact score of ``N(0, I)`` data under the VP SDE (whose
marginals are then ``N(0, I)`` at every time). Its probability-flow drift is then exactly zero, so
the likelihood must equal the standard normal log-density and ``z == x``; PC samples have unit
variance.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxdiff

D = 2          # data dimension
B = 16         # batch
HIDDEN = 32


def _features(x, t):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return jnp.concatenate([x, jnp.sin(t)[:, None], jnp.cos(t)[:, None]], axis=-1)


# ---- (a) Flax NNX: split once into (graphdef, params); the score function merges -------------
class NNXHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(D + 2, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, D, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x, t):
        return -x + self.l2(nnx.silu(self.l1(_features(x, t))))


def make_nnx(key):
    graphdef, params = nnx.split(NNXHead(nnx.Rngs(key)))

    def score_fn(params, x, t):
        return nnx.merge(graphdef, params)(x, t)

    return score_fn, params


# ---- (b) Flax Linen ---------------------------------------------------------------------------
class LinenHead(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        h = nn.silu(nn.Dense(HIDDEN)(_features(x, t)))
        return -x + nn.Dense(D, kernel_init=nn.initializers.zeros)(h)


def make_linen(key):
    module = LinenHead()
    params = module.init(key, jnp.zeros((1, D)), jnp.zeros((1,)))["params"]

    def score_fn(params, x, t):
        return module.apply({"params": params}, x, t)

    return score_fn, params


# ---- (c) Equinox: the module is a pytree; arrays are the params, the rest is static -----------
class EqxHead(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        mlp = eqx.nn.MLP(D + 2, D, HIDDEN, depth=1, activation=jax.nn.silu, key=key)
        last = mlp.layers[-1]
        self.mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                               (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))

    def __call__(self, x, t):
        return -x + jax.vmap(self.mlp)(_features(x, t))


def make_eqx(key):
    params, static = eqx.partition(EqxHead(key), eqx.is_array)

    def score_fn(params, x, t):
        return eqx.combine(params, static)(x, t)

    return score_fn, params


MAKERS = {"nnx": make_nnx, "linen": make_linen, "equinox": make_eqx}


@pytest.fixture(params=sorted(MAKERS))
def wrapped(request):
    return MAKERS[request.param](jax.random.key(0))


def _only_fast(*fast):
    """Parametrize over the three frameworks; those not in ``fast`` run only without -m 'not slow'
    (every framework is covered by at least one fast sampler/likelihood test)."""
    return pytest.mark.parametrize("wrapped", [
        pytest.param(name, marks=() if name in fast else pytest.mark.slow) for name in sorted(MAKERS)
    ], indirect=True)


def _close(a, b, tol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


SDE = jaxdiff.VPSDE()


def test_score_is_exact_at_init(wrapped):
    score_fn, params = wrapped
    x = jax.random.normal(jax.random.key(1), (B, D))
    t = jnp.linspace(0.01, 1.0, B)
    exact = jaxdiff.GaussianMixture.create([1.0], jnp.zeros((1, D)), stds=1.0).score_fn(SDE)
    _close(score_fn(params, x, t), exact(None, x, t), 1e-6)


def test_loss_and_grad_under_user_jit_and_vmap(wrapped):
    score_fn, params = wrapped
    loss_fn = jaxdiff.score_matching_loss(SDE, score_fn)
    batch = jax.random.normal(jax.random.key(2), (B, D))
    key = jax.random.key(3)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(params, key, batch)
    (loss_j, aux_j), grads_j = jax.jit(grad_fn)(params, key, batch)
    assert loss.shape == () and _finite((loss, grads))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    _close((loss, grads), (loss_j, grads_j))

    # A user's vmap over keys (e.g. several noise draws) inside their own jit.
    keys = jax.random.split(key, 3)
    losses_v = jax.jit(jax.vmap(lambda k: loss_fn(params, k, batch)[0]))(keys)
    losses_p = jnp.stack([loss_fn(params, k, batch)[0] for k in keys])
    assert losses_v.shape == (3,)
    _close(losses_v, losses_p)
    # The DSM loss of the exact score of N(0, I) is E_t[alpha(t)^2] (reduce_mean per dimension),
    # i.e. 0.5 to 1; a sign error in the score would give E[alpha^2 + 4 sigma^2 ...] > 1.
    assert 0.3 < float(loss) < 1.0


@_only_fast('linen')
def test_pc_sampler_under_user_jit_and_vmap(wrapped):
    score_fn, params = wrapped
    sample = jaxdiff.pc_sampler(SDE, score_fn, (B, D), num_steps=20)
    key = jax.random.key(4)
    x, nfe = sample(params, key)
    assert x.shape == (B, D) and int(nfe) == 20 and _finite(x)

    x_j, nfe_j = jax.jit(lambda p, k: sample(p, k))(params, key)
    _close(x, x_j)
    assert int(nfe_j) == 20

    keys = jax.random.split(key, 4)
    xs, nfes = jax.jit(jax.vmap(sample, in_axes=(None, 0)))(params, keys)
    assert xs.shape == (4, B, D) and nfes.shape == (4,)
    for i in range(4):
        _close(xs[i], sample(params, keys[i])[0])
    # Unit variance of the samples (the exact score of N(0, I)); 64 samples x 2 dims.
    var = float(jnp.var(xs))
    assert 0.6 < var < 1.5, var


@_only_fast('equinox')
def test_ode_sampler_under_user_jit_and_vmap(wrapped):
    score_fn, params = wrapped
    sample = jaxdiff.ode_sampler(SDE, score_fn, (B, D), rtol=1e-3, atol=1e-3)
    key = jax.random.key(5)
    x, nfe = sample(params, key)
    assert x.shape == (B, D) and _finite(x) and int(nfe) > 0
    _close(x, jax.jit(lambda p, k: sample(p, k))(params, key)[0])

    keys = jax.random.split(key, 2)
    xs, nfes = jax.vmap(sample, in_axes=(None, 0))(params, keys)
    assert xs.shape == (2, B, D) and nfes.shape == (2,)
    for i in range(2):
        _close(xs[i], sample(params, keys[i])[0])
    # The probability-flow drift of the exact score of N(0, I) is zero: x(eps) = x(T) = prior draw.
    prior = SDE.prior_sampling(jax.random.split(key)[0], (B, D))
    _close(x, prior, 1e-4)


@_only_fast('nnx')
def test_likelihood_under_user_jit_and_vmap(wrapped):
    score_fn, params = wrapped
    loglik = jaxdiff.log_likelihood(SDE, score_fn, rtol=1e-4, atol=1e-4)
    x = jax.random.normal(jax.random.key(6), (B, D))
    key = jax.random.key(7)
    logp, z, nfe = loglik(params, key, x)
    assert logp.shape == (B,) and z.shape == (B, D) and _finite(logp)
    exact = -0.5 * jnp.sum(x**2, -1) - 0.5 * D * math.log(2 * math.pi)
    _close(logp, exact, 1e-4)
    _close(z, x, 1e-4)

    logp_j, _, _ = jax.jit(lambda p, k, x: loglik(p, k, x))(params, key, x)
    _close(logp, logp_j)
    # vmap over independent data sets of the user.
    xs = jnp.stack([x, -x[::-1]])
    logps, _, _ = jax.vmap(loglik, in_axes=(None, None, 0))(params, key, xs)
    assert logps.shape == (2, B)
    _close(logps[0], logp)
    _close(logps[1], loglik(params, key, xs[1])[0])
