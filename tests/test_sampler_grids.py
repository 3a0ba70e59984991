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
