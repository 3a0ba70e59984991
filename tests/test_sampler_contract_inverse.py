"""The sampler contract for the inverse-problem, conditional, multi-scale and warm-start samplers.

Every one returns a jitted ``sample(params, key, cond=None) -> (x, nfe)`` with one pytree ``cond``
(see ``docs/inverse.md``, ``docs/msdiff.md``). For each sampler: it runs under an outer ``jax.jit``
and under ``jax.vmap`` over keys (equal to a loop), a batch sharded over 8 devices equals the
unsharded one, ``nfe`` equals the number of batched score calls (counted at run time by a host
callback), a float64 score (x64) drives float32 samples, and ``cond`` is actually used (another
condition changes the samples).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiff as jd
from jaxdiff import conditional, multiscale
from jaxdiff import inverse as inv

B = 16          # divisible by the 8 devices of the mesh
STEPS = 30      # VP with N steps needs beta_max / N < 1 (discrete schedule of the PC steps)

MIX2 = jd.GaussianMixture.create([0.5, 0.5], np.array([[-1.5, 0.0], [1.5, 0.5]]), stds=0.5)
MIX_RGB = jd.GaussianMixture.create([0.5, 0.5], np.array([[1.0, 0.0, -1.0], [-0.5, 0.0, 1.5]]),
                                    stds=0.4, event_shape=(1, 1, 3))
JOINT = jd.GaussianMixture.create([0.5, 0.5], np.array([[-2.0, 0.0, -1.0], [2.0, 0.0, 1.0]]),
                                  stds=0.5)
OP = inv.Matrix.create(jnp.array([[1.0, 0.0]]))


def _stats(m):
    return inv.GaussianStats.from_moments(jnp.asarray(m), jnp.array([[1.0, 0.3], [0.3, 0.8]]))


@dataclasses.dataclass(frozen=True)
class Case:
    """``build(score_fn, shape, dtype, sharding) -> sample``; ``score`` the (unconditional or
    conditional) score to wrap; ``cond(v)`` two different conditions for ``v = 0, 1``."""

    name: str
    build: Callable[..., Callable]
    score: Callable[[], Callable]
    cond: Callable[[int], Any]
    shape: tuple = (B, 2)
    shardable: bool = True
    params: Any = None


def _ms():
    return multiscale.HaarMultiScale.create(jd.VPSDE(), (4, 4, 1), (0.5,))


def _cond_joint_score(est):
    return conditional.joint_to_conditional(JOINT.score_fn(est.joint_sde(2, 1)), (2,), (1,))


_EST = {"cde": conditional.ConditionalEstimator.cde(jd.VPSDE()),
        "cdiffe": conditional.ConditionalEstimator.cdiffe(jd.VPSDE()),
        "cmde": conditional.ConditionalEstimator.cmde(jd.VPSDE(), 0.3)}

CASES = [
    Case("inverse_pc",
         lambda f, sh, dt, s: inv.pc_inverse_sampler(jd.VPSDE(), f, sh, num_steps=STEPS,
                                                     corrector="langevin", dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: inv.Observation(OP, jnp.array([[0.5 - 1.5 * v]]))),
    Case("inverse_ode",
         lambda f, sh, dt, s: inv.ode_inverse_sampler(jd.VPSDE(), f, sh, rtol=1e-3, atol=1e-3,
                                                      dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: inv.Observation(OP, jnp.array([[0.5 - 1.5 * v]]))),
    Case("inverse_smc",   # the particles of one observation resample across the whole batch
         lambda f, sh, dt, s: inv.smc_inverse_sampler(jd.VPSDE(), f, sh, num_steps=STEPS,
                                                      dtype=dt),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: inv.Observation(OP, jnp.array([[0.5 - 1.5 * v]])), shardable=False),
    Case("inpaint",
         lambda f, sh, dt, s: inv.inpaint_sampler(jd.VPSDE(), f, sh, num_steps=STEPS,
                                                  corrector=None, dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: inv.Observation.inpainting(jnp.array([[0.5 - 1.5 * v, 0.0]]),
                                              jnp.array([1.0, 0.0]))),
    Case("colorize",
         lambda f, sh, dt, s: inv.colorize_sampler(jd.VPSDE(), f, sh, num_steps=STEPS,
                                                   corrector="langevin", dtype=dt, sharding=s),
         lambda: MIX_RGB.score_fn(jd.VPSDE()),
         lambda v: jnp.full((1, 1, 1, 1), 0.2 - 0.5 * v), shape=(B, 1, 1, 3)),
    Case("ccdf",
         lambda f, sh, dt, s: inv.ccdf_sampler(jd.VPSDE(), f, sh, t0=0.5, num_steps=2 * STEPS,
                                               dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: inv.Estimate(jnp.full((B, 2), 0.3 - v),
                                inv.Observation(OP, jnp.array([[0.5 - 1.5 * v]])))),
    Case("ccdf_no_observation",
         lambda f, sh, dt, s: inv.ccdf_sampler(jd.VPSDE(), f, sh, t0=0.5, num_steps=2 * STEPS,
                                               corrector=None, dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: inv.Estimate(jnp.full((B, 2), 0.3 - 2.0 * v))),
    Case("warm_start_ode",
         lambda f, sh, dt, s: inv.warm_start_sampler(jd.VPSDE(), f, sh, t_skip=0.5, rtol=1e-3,
                                                     atol=1e-3, dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: _stats([1.0 - 2.0 * v, -0.5])),
    Case("warm_start_pc",
         lambda f, sh, dt, s: inv.warm_start_sampler(jd.VPSDE(), f, sh, t_skip=0.5,
                                                     method="pc", num_steps=2 * STEPS,
                                                     corrector="langevin", dtype=dt, sharding=s),
         lambda: MIX2.score_fn(jd.VPSDE()),
         lambda v: _stats([1.0 - 2.0 * v, -0.5])),
] + [
    Case(f"conditional_{name}",
         lambda f, sh, dt, s, est=est: est.pc_sampler(f, sh, num_steps=STEPS, dtype=dt,
                                                      sharding=s, corrector="langevin"),
         lambda est=est: _cond_joint_score(est),
         lambda v: jnp.full((B, 1), 1.0 - 2.0 * v))
    for name, est in _EST.items()
] + [
    # no cond: every stage's parameters travel in params (here a scale of the stage scores)
    Case("multiscale",
         lambda f, sh, dt, s: multiscale.multiscale_sampler(_ms(), f, B, num_steps=STEPS,
                                                            dtype=dt, sharding=s),
         lambda: (lambda p, c, t: -p * c),
         None, shape=(B, 4, 4, 1), params=1.0),
]

IDS = [c.name for c in CASES]
# CI's budget: vmap / sharding / float64 run for one sampler of each kind (inverse PC, conditional,
# multi-scale, warm start); ``pytest -m slow`` runs them for every case.
FAST = {"inverse_pc", "conditional_cmde", "multiscale", "warm_start_pc"}
TIER = [pytest.param(c, id=c.name, marks=() if c.name in FAST else pytest.mark.slow)
        for c in CASES]


def _counting(score_fn: Callable, counter: list) -> Callable:
    """``score_fn`` that counts its (batched) calls at run time."""

    def bump():
        counter[0] += 1

    def fn(params, x, t, *cond):
        jax.debug.callback(bump)
        return score_fn(params, x, t, *cond)

    return fn


def _call(case: Case, sample, key, v: int = 0):
    if case.cond is None:
        return sample(case.params, key)
    return sample(case.params, key, case.cond(v))


def _build(case: Case, score_fn=None, dtype=jnp.float32, sharding=None):
    return case.build(case.score() if score_fn is None else score_fn, case.shape, dtype, sharding)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_shape_dtype_and_nfe_is_the_number_of_score_calls(case):
    counter = [0]
    sample = _build(case, _counting(case.score(), counter))
    x, nfe = _call(case, sample, jax.random.key(0))
    jax.block_until_ready(x)
    assert x.shape == case.shape and x.dtype == jnp.float32
    assert nfe.dtype == jnp.int32 and int(nfe) == counter[0] > 0, (int(nfe), counter[0])
    assert np.all(np.isfinite(np.asarray(x)))
    # inside an outer jit: the same numbers
    if case.cond is None:
        xj, nfej = jax.jit(lambda p, k: sample(p, k))(case.params, jax.random.key(0))
    else:
        xj, nfej = jax.jit(lambda p, k, c: sample(p, k, c))(case.params, jax.random.key(0),
                                                             case.cond(0))
    np.testing.assert_allclose(xj, x, rtol=1e-6, atol=1e-6)
    assert int(nfej) == int(nfe)


@pytest.mark.parametrize("case", TIER)
def test_vmap_over_keys_equals_a_loop(case):
    sample = _build(case)
    keys = jax.random.split(jax.random.key(1), 2)
    if case.cond is None:
        xs, _ = jax.vmap(lambda k: sample(case.params, k))(keys)
    else:
        cond = case.cond(0)
        xs, _ = jax.vmap(lambda k: sample(case.params, k, cond))(keys)
    for i in range(2):
        np.testing.assert_allclose(xs[i], _call(case, sample, keys[i])[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(xs[0], xs[1])


@pytest.mark.parametrize("case", TIER)
def test_sharded_batch_equals_unsharded(case, mesh8):
    if not case.shardable:
        pytest.skip(f"{case.name}: the batch is one particle system (resampling mixes it)")
    sharding = NamedSharding(mesh8, P("data"))
    plain, nfe = _call(case, _build(case), jax.random.key(2))
    sharded, nfe_s = _call(case, _build(case, sharding=sharding), jax.random.key(2))
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-5)
    assert int(nfe_s) == int(nfe)


@pytest.mark.parametrize("case", TIER)
def test_float64_score_drives_float32_samples(case, x64):
    score = case.score()

    def score64(params, x, t, *cond):
        return jnp.asarray(score(params, x.astype(jnp.float64), t.astype(jnp.float64),
                                 *cond), jnp.float64)

    x, nfe = _call(case, _build(case, score64, dtype=jnp.float32), jax.random.key(3))
    assert x.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(x))) and int(nfe) > 0


@pytest.mark.parametrize("case", [c for c in CASES if c.cond is not None],
                         ids=[c.name for c in CASES if c.cond is not None])
def test_cond_is_used(case):
    sample = _build(case)
    a, _ = _call(case, sample, jax.random.key(4), 0)
    b, _ = _call(case, sample, jax.random.key(4), 1)
    assert float(jnp.max(jnp.abs(a - b))) > 0.1


def test_multiscale_params_are_used_and_cond_refused():
    case = CASES[IDS.index("multiscale")]
    sample = _build(case)
    a, _ = sample(1.0, jax.random.key(5))
    b, _ = sample(0.5, jax.random.key(5))
    assert float(jnp.max(jnp.abs(a - b))) > 0.1
    with pytest.raises(ValueError, match="no cond"):
        sample(1.0, jax.random.key(5), jnp.zeros(()))


def test_observation_pytrees_and_errors():
    obs = inv.Observation.inpainting(jnp.ones((1, 3)), jnp.array([1.0, 0.0, 1.0]))
    assert isinstance(obs.op, inv.Mask) and obs.op.mask.shape == (1, 3)
    np.testing.assert_array_equal(obs.y, [[1.0, 0.0, 1.0]])
    leaves = jax.tree_util.tree_leaves(inv.Estimate(jnp.zeros((2,)), obs))
    assert len(leaves) == 4          # x_init, mask, y, lam
    sample = inv.pc_inverse_sampler(jd.VPSDE(N=2), MIX2.score_fn(jd.VPSDE()), (4, 2))
    with pytest.raises(TypeError, match="Observation"):
        sample(None, jax.random.key(0), (OP, jnp.zeros((1, 1))))
    with pytest.raises(TypeError, match="Estimate"):
        inv.ccdf_sampler(jd.VPSDE(), MIX2.score_fn(jd.VPSDE()), (4, 2), t0=0.5)(
            None, jax.random.key(0), jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="Mask"):
        inv.inpaint_sampler(jd.VPSDE(N=2), MIX2.score_fn(jd.VPSDE()), (4, 2))(
            None, jax.random.key(0), inv.Observation(OP, jnp.zeros((1, 1))))
