"""Predictor-corrector and probability-flow samplers on exact Gaussian-mixture scores.

Distances are sliced 2-Wasserstein to an exact sample set of the same size; the noise floor is the
mean distance between independent exact sets. Measured on this suite (n=4000 mixture, n=2000 16-D):
good samplers stay below 1.5x the floor, a score off by a factor of 2 (either way) lands above 4x.
"""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiff as jd
from jaxdiff.eval import component_fractions, sliced_wasserstein

WEIGHTS = np.array([0.2, 0.3, 0.5])
MIX = jd.GaussianMixture.create(WEIGHTS, np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]]),
                                stds=np.array([0.5, 0.8, 0.6]))
_rng = np.random.default_rng(0)
_a = _rng.normal(size=(16, 16))
G16 = jd.GaussianMixture.create([1.0], _rng.normal(size=(1, 16)), (_a @ _a.T / 16 + 0.1 * np.eye(16))[None])
N_MIX, N_G16 = 4000, 2000
SDES = [jd.VPSDE(), jd.SubVPSDE(), jd.VESDE()]
SAMPLERS = {
    "euler_maruyama": lambda sde, sf, shape: jd.pc_sampler(sde, sf, shape),
    "reverse_diffusion+langevin": lambda sde, sf, shape: jd.pc_sampler(
        sde, sf, shape, predictor="reverse_diffusion", corrector="langevin"),
    "ode": lambda sde, sf, shape: jd.ode_sampler(sde, sf, shape),
}


def _floor_and_ref(mix, n):
    ref = mix.sample(jax.random.key(100), n)
    floors = [sliced_wasserstein(jax.random.key(7), mix.sample(jax.random.key(200 + i), n), ref)
              for i in range(4)]
    return ref, float(np.mean(floors))


@pytest.fixture(scope="module")
def mix_truth():
    return _floor_and_ref(MIX, N_MIX)


@pytest.fixture(scope="module")
def g16_truth():
    return _floor_and_ref(G16, N_G16)


def _check_mixture(x, mix_truth, factor=2.0):
    ref, floor = mix_truth
    sw = float(sliced_wasserstein(jax.random.key(7), x, ref))
    fractions = np.asarray(component_fractions(MIX, x))
    return sw < factor * floor and np.max(np.abs(fractions - WEIGHTS)) < 0.04, (sw, floor, fractions)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_mixture_2d(sde, name, mix_truth):
    x, nfe = SAMPLERS[name](sde, MIX.score_fn(sde), (N_MIX, 2))(None, jax.random.key(3))
    ok, info = _check_mixture(x, mix_truth)
    assert ok, info
    assert int(nfe) == {"euler_maruyama": 1000, "reverse_diffusion+langevin": 2000}.get(name, int(nfe))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_16d(sde, name, g16_truth):
    ref, floor = g16_truth
    x, _ = SAMPLERS[name](sde, G16.score_fn(sde), (N_G16, 16))(None, jax.random.key(4))
    sw = float(sliced_wasserstein(jax.random.key(7), x, ref))
    assert sw < 1.5 * floor, (sw, floor)
    np.testing.assert_allclose(x.mean(0), G16.mean(), atol=0.12)
    np.testing.assert_allclose(np.cov(np.asarray(x), rowvar=False), G16.cov(), atol=0.25)


@pytest.mark.parametrize("name,scale", [("euler_maruyama", 2.0), ("euler_maruyama", 0.5),
                                        ("ode", 2.0), ("ode", -1.0)])
def test_a_wrong_score_fails_the_ground_truth_check(scale, name, mix_truth):
    """The checks above are sharp enough to catch a factor of two or a sign."""
    sde = jd.VPSDE()
    exact = MIX.score_fn(sde)
    x, _ = SAMPLERS[name](sde, lambda p, x, t: scale * exact(p, x, t), (N_MIX, 2))(None, jax.random.key(3))
    ok, info = _check_mixture(x, mix_truth)
    assert not ok, info


@pytest.mark.parametrize("sde,corrector", [(jd.VPSDE(), None), (jd.VESDE(), "ald")],
                         ids=["VPSDE", "VESDE+ald"])
def test_ancestral_and_ald(sde, corrector, mix_truth):
    sample = jd.pc_sampler(sde, MIX.score_fn(sde), (N_MIX, 2), predictor="ancestral", corrector=corrector)
    x, nfe = sample(None, jax.random.key(5))
    ok, info = _check_mixture(x, mix_truth)
    assert ok, info
    assert int(nfe) == (2000 if corrector else 1000)


def test_fewer_steps_use_a_coarser_discrete_schedule(mix_truth):
    sde = jd.VPSDE()
    sample = jd.pc_sampler(sde, MIX.score_fn(sde), (N_MIX, 2), predictor="reverse_diffusion",
                           corrector="langevin", num_steps=200)
    x, nfe = sample(None, jax.random.key(6))
    assert int(nfe) == 400
    ok, info = _check_mixture(x, mix_truth)
    assert ok, info


SMALL = dict(num_steps=40)


def _small_sampler(sharding=None):
    sde = jd.VESDE()
    return jd.pc_sampler(sde, MIX.score_fn(sde), (64, 2), predictor="reverse_diffusion",
                         corrector="langevin", sharding=sharding, **SMALL)


def test_deterministic_given_the_key():
    sample = _small_sampler()
    a, _ = sample(None, jax.random.key(0))
    b, _ = sample(None, jax.random.key(0))
    c, _ = sample(None, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_vmap_over_keys_equals_separate_calls():
    # The adaptive ODE solve agrees to O(rtol) only (rounding moves its step sizes): tight rtol.
    for sample in (_small_sampler(),
                   jd.ode_sampler(jd.VPSDE(), MIX.score_fn(jd.VPSDE()), (64, 2), rtol=1e-6, atol=1e-6)):
        keys = jax.random.split(jax.random.key(9), 3)
        xs, nfes = jax.vmap(sample, in_axes=(None, 0))(None, keys)
        for i in range(3):
            x_i, _ = sample(None, keys[i])
            np.testing.assert_allclose(xs[i], x_i, rtol=1e-4, atol=1e-4)
        assert xs.shape == (3, 64, 2)


def test_batch_sharded_over_8_devices(mesh8):
    sharding = NamedSharding(mesh8, P("data"))
    plain, _ = _small_sampler()(None, jax.random.key(2))
    sharded, _ = _small_sampler(sharding)(None, jax.random.key(2))
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-5)
    assert sharded.sharding.is_equivalent_to(sharding, 2)
    sde = jd.VPSDE()
    ode = jd.ode_sampler(sde, MIX.score_fn(sde), (64, 2), sharding=sharding, rtol=1e-3, atol=1e-3)
    x, _ = ode(None, jax.random.key(3))
    x0, _ = jd.ode_sampler(sde, MIX.score_fn(sde), (64, 2), rtol=1e-3, atol=1e-3)(None, jax.random.key(3))
    assert x.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_allclose(x, x0, rtol=1e-2, atol=1e-2)  # O(rtol): see the vmap test


def test_bad_options_are_named():
    sde = jd.VPSDE()
    with pytest.raises(ValueError, match="unknown predictor 'euler'"):
        jd.pc_sampler(sde, MIX.score_fn(sde), (4, 2), predictor="euler")
    with pytest.raises(ValueError, match="unknown corrector 'langevine'"):
        jd.pc_sampler(sde, MIX.score_fn(sde), (4, 2), corrector="langevine")
    with pytest.raises(ValueError,
                       match="ancestral predictor is defined for VPSDE and VESDE only, not SubVPSDE"):
        jd.pc_sampler(jd.SubVPSDE(), MIX.score_fn(sde), (4, 2), predictor="ancestral")
    with pytest.raises(ValueError, match="unknown ODE solver 'rk45'"):
        jd.ode_sampler(sde, MIX.score_fn(sde), (4, 2), solver="rk45")
