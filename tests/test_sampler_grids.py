"""The exponential-integrator solvers keep their order on grids that are NOT uniform in log-SNR.

The order tests of test_fast_samplers.py / test_unipc.py run on the log-SNR grid, where every
step ratio ``r = h_prev / h`` is 1, so a wrong ``r``-dependence of a multistep coefficient goes
unnoticed there. The default grid of DPM-Solver++ (2M / 3M) and UniPC is ``'time_quadratic'``
(issue 15's measurement, docs/samplers.md), whose log-SNR steps vary by orders of magnitude: the
order must hold on it too. Exact reference: the Gaussian's closed-form probability-flow map.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.analytic import GaussianMixture
from jaxdiff.samplers.dpm_solver import dpm_solver_pp_integrate, dpm_solver_pp_sampler
from jaxdiff.samplers.edm import edm_sampler
from jaxdiff.samplers.schedule import time_grid
from jaxdiff.samplers.unipc import unipc_integrate, unipc_sampler
from jaxdiff.sde import VPSDE

EPS = 1e-3
MU = np.array([0.5, -1.0, 1.5])
STD = np.array([0.3, 1.0, 0.6])


def _flow(sde, x, t0, t1):
    a0, s0 = sde.marginal_coeffs(jnp.asarray(t0))
    a1, s1 = sde.marginal_coeffs(jnp.asarray(t1))
    v0, v1 = a0**2 * STD**2 + s0**2, a1**2 * STD**2 + s1**2
    return a1 * MU + jnp.sqrt(v1 / v0) * (x - a0 * MU)


def _err(kind, n, grid):
    sde = VPSDE()
    fn = GaussianMixture.create([1.0], MU[None], stds=STD[None], dtype=jnp.float64).score_fn(sde)
    x = sde.prior_sampling(jax.random.key(0), (8, 3), jnp.float64)
    ts = time_grid(sde, n, grid=grid, eps=EPS, dtype=jnp.float64)
    if kind.startswith("dpm"):
        run = lambda x, ts: dpm_solver_pp_integrate(  # noqa: E731
            sde, fn, None, x, ts, order=int(kind[3]), lower_order_final=False,
            third_order="original" if kind.endswith("orig") else "jaxdiff")
    else:
        run = lambda x, ts: unipc_integrate(  # noqa: E731
            sde, fn, None, x, ts, order=int(kind[-1]), lower_order_final=False)
    y, _ = jax.jit(run)(x, ts)
    return float(jnp.sqrt(jnp.mean((y - _flow(sde, x, 1.0, EPS)) ** 2)))


# (solver, accepted log2 slope per halving of the step on the time-quadratic grid)
# (third_order='original' is left out: on this grid its slope at 48 -> 96 steps is 0.4, measured;
# docs/samplers.md)
CASES = [("dpm2m", (1.8, 2.4)), ("dpm3m", (2.6, 3.6)), ("unipc2", (2.6, 3.6)),
         ("unipc1", (1.8, 2.4))]


@pytest.mark.parametrize("kind,band", CASES, ids=[c[0] for c in CASES])
def test_order_on_the_time_quadratic_grid(x64, kind, band):
    e1, e2 = _err(kind, 48, "time_quadratic"), _err(kind, 96, "time_quadratic")
    slope = np.log2(e1 / e2)
    assert band[0] <= slope <= band[1], (kind, e1, e2, slope)


def test_default_grids_are_the_measured_ones():
    """The defaults chosen by the issue-15 benchmark (docs/samplers.md, 'Default grids';
    docs/bench_samplers.md): per SDE, and an N-dependent end time with ``denoise``."""
    import inspect

    from jaxdiff.samplers.ddim import ddim_sampler
    from jaxdiff.samplers.schedule import default_grid, end_time
    from jaxdiff.sde import VESDE

    def default(f):
        return inspect.signature(f).parameters["grid"].default

    assert default(dpm_solver_pp_sampler) is None and default(unipc_sampler) is None
    assert default(ddim_sampler) is None
    assert default_grid(None, VPSDE(), "leading", "karras") == "leading"
    assert default(edm_sampler) == "time_uniform"
    vp, ve = VPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)
    assert default_grid(None, vp, "time_quadratic", "logsnr") == "time_quadratic"
    assert default_grid(None, ve, "time_quadratic", "logsnr") == "logsnr"
    assert default_grid("karras", ve, "time_quadratic", "logsnr") == "karras"
    # with denoise: the named grid of num_steps + 1 intervals down to 0, last point dropped
    assert end_time(None, 4, "time_quadratic", denoise=True, T=1.0) == pytest.approx(1 / 25)
    assert end_time(None, 4, "time_uniform", denoise=True, T=1.0) == pytest.approx(1 / 5)
    assert end_time(None, 4, "logsnr", denoise=True, T=1.0) == 1e-3
    assert end_time(None, 4, "time_quadratic", denoise=False, T=1.0) == 1e-3
    assert end_time(None, 100, "time_quadratic", denoise=True, T=1.0) == 1e-3  # floor 1e-3
    assert end_time(0.01, 4, "time_quadratic", denoise=True, T=1.0) == 0.01


@pytest.mark.parametrize("denoise", [False, True])
def test_default_sampler_uses_the_resolved_grid(denoise):
    """A sampler built with the defaults is the one built with the resolved grid and end time."""
    mix = GaussianMixture.create([1.0], MU[None], stds=STD[None])
    from jaxdiff.sde import VESDE

    for sde, grid in ((VPSDE(), "time_quadratic"), (VESDE(sigma_min=0.01, sigma_max=50.0), "logsnr")):
        fn = mix.score_fn(sde)
        eps = 1 / 25 if denoise and grid == "time_quadratic" else 1e-3
        a, _ = unipc_sampler(sde, fn, (4, 3), num_steps=4, denoise=denoise)(None, jax.random.key(0))
        b, _ = unipc_sampler(sde, fn, (4, 3), num_steps=4, denoise=denoise, grid=grid,
                             eps=eps)(None, jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_leading_grid_is_diffusers_spacing_and_the_ddim_default():
    """'leading' (diffusers' DDIMScheduler spacing): the num_steps + 1 equal intervals of [0, T]
    with the top one skipped, ending at eps; DDIM's default on VP-type SDEs (not VE: raises)."""
    from jaxdiff.samplers.ddim import ddim_sampler
    from jaxdiff.sde import VESDE

    sde = VPSDE()
    np.testing.assert_allclose(time_grid(sde, 4, grid="leading", eps=EPS),
                               [0.8, 0.6, 0.4, 0.2, EPS], rtol=1e-6)
    # M score calls (num_steps = M - 1 with denoise) evaluate at T (M-1)/M, ..., T/M, eps:
    # diffusers' (M - 1 - j) (1000 // M) / 1000 for M dividing 1000
    for m in (5, 8, 10, 20, 50):
        ts = np.asarray(time_grid(sde, m - 1, grid="leading", eps=EPS))
        np.testing.assert_allclose(ts[:-1], np.arange(m - 1, 0, -1) * (1000 // m) / 1000,
                                   rtol=1e-6, atol=1e-7)
    seen = []

    def fn(params, x, t):
        jax.debug.callback(lambda v: seen.append(float(v)), jnp.reshape(t, -1)[0], ordered=True)
        return GaussianMixture.create([1.0], MU[None], stds=STD[None]).score_fn(sde)(params, x, t)

    key = jax.random.key(0)
    a, nfe = ddim_sampler(sde, fn, (4, 3), num_steps=4, denoise=True)(None, key)
    jax.effects_barrier()
    # no call at T: the prior draw is taken as the state at 0.8; then the Tweedie step at eps
    np.testing.assert_allclose(seen, [0.8, 0.6, 0.4, 0.2, EPS], rtol=1e-6)
    assert int(nfe) == 5
    b, _ = ddim_sampler(sde, fn, (4, 3), num_steps=4, denoise=True,
                        grid=np.asarray([0.8, 0.6, 0.4, 0.2, EPS]))(None, key)
    jax.effects_barrier()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # an explicit start below sde.T is integrated from, not skipped: time_uniform from T = 0.5
    seen.clear()
    ddim_sampler(sde, fn, (4, 3), num_steps=4, T=0.5, eps=0.1)(None, key)
    jax.effects_barrier()
    np.testing.assert_allclose(seen, [0.5, 0.4, 0.3, 0.2], rtol=1e-6)
    with pytest.raises(ValueError, match="leading"):
        ddim_sampler(VESDE(), fn, (4, 3), num_steps=4, grid="leading")
    with pytest.raises(ValueError, match="leading"):
        time_grid(sde, 999, grid="leading", eps=EPS)   # T / (num_steps + 1) <= eps


def test_leading_beats_time_uniform_for_ddim_on_the_exact_gaussian(x64):
    """Why 'leading' is DDIM's default (docs/bench_samplers.md): skipping the top interval (where
    the VP flow barely moves) and spending that call at the bottom is more accurate against the
    exact flow map *from T*. Deterministic (fixed draw), 256 samples, float64: measured RMSE
    leading / time_uniform 0.2455 / 0.2512 (5 NFE), 0.1344 / 0.1385 (10), 0.0706 / 0.0731 (20)."""
    from jaxdiff.samplers.ddim import ddim_sampler

    sde = VPSDE()
    fn = GaussianMixture.create([1.0], MU[None], stds=STD[None], dtype=jnp.float64).score_fn(sde)
    key = jax.random.key(0)
    x = sde.prior_sampling(jax.random.split(key)[0], (256, 3), jnp.float64)
    ref = _flow(sde, x, 1.0, 0.0)
    for nfe, want in ((5, 0.2455), (10, 0.1344), (20, 0.0706)):
        err = {}
        for g in ("leading", "time_uniform"):
            y, _ = ddim_sampler(sde, fn, (256, 3), num_steps=nfe - 1, grid=g, denoise=True,
                                dtype=jnp.float64)(None, key)
            err[g] = float(jnp.sqrt(jnp.mean((y - ref) ** 2)))
        assert err["leading"] == pytest.approx(want, rel=2e-3), (nfe, err)
        assert err["leading"] < 0.985 * err["time_uniform"], (nfe, err)
        y, _ = ddim_sampler(sde, fn, (256, 3), num_steps=nfe - 1, denoise=True,
                            dtype=jnp.float64)(None, key)       # the default is 'leading'
        assert float(jnp.sqrt(jnp.mean((y - ref) ** 2))) == pytest.approx(err["leading"])
