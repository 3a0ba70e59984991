"""Haar wavelets and the coarse-to-fine multi-scale sampler against exact Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.analytic import GaussianMixture
from jaxdiff.multiscale import (
    HaarMultiScale,
    haar_forward,
    haar_inverse,
    haar_step,
    ideal_speedup,
    multiscale_sampler,
)
from jaxdiff.sde import VESDE, VPSDE

H = 8
D = H * H


def test_haar_round_trip_orthonormal_and_packed(x64):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 8, 2))
    for levels in [0, 1, 2, 3]:
        c = haar_forward(x, levels)
        assert c.shape == x.shape
        np.testing.assert_allclose(haar_inverse(c, levels), x, atol=1e-13)
        np.testing.assert_allclose(jnp.sum(c**2), jnp.sum(x**2), rtol=1e-13)   # orthonormal
    c = haar_forward(x, 3)
    # approximation block = 2^L times the 2^L x 2^L average (the downsampled image)
    avg = x.reshape(3, 2, 8, 1, 8, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(c[:, :2, :1], 8.0 * avg, rtol=1e-12)
    # nesting: the top-left block is the (L-1)-level transform of the level-1 approximation
    a1 = haar_step(x)[:, :8, :4]
    np.testing.assert_allclose(c[:, :8, :4], haar_forward(a1, 2), atol=1e-13)
    # a horizontal ramp has no vertical detail at level 1 and a horizontal one of -1/2 * 2 = -1
    ramp = jnp.broadcast_to(jnp.arange(4.0)[None, None, :, None], (1, 4, 4, 1))
    c1 = haar_step(ramp)
    np.testing.assert_allclose(c1[0, :2, 2:, 0], -1.0)
    np.testing.assert_allclose(c1[0, 2:, :, 0], 0.0, atol=1e-15)
    with pytest.raises(ValueError, match="divisible"):
        haar_forward(jnp.ones((1, 6, 6, 1)), 2)


def test_speed_map_and_schedule():
    ms = HaarMultiScale.create(VPSDE(), (8, 8, 1), (0.25, 0.5))
    assert ms.speed_map(0).shape == (8, 8, 1)
    sp = np.asarray(ms.speed_map(0))[..., 0]
    assert sp[0, 0] == 1.0 and sp[0, 3] == 2.0 and sp[3, 3] == 2.0 and sp[0, 4] == 4.0
    assert sp[7, 7] == 4.0 and np.sum(sp == 1.0) == 4 and np.sum(sp == 2.0) == 12
    np.testing.assert_array_equal(ms.speed_map(1), ms.speed_map(0)[:4, :4])
    # the level-1 details (speed 4) end at T_1 = 0.25 exactly
    np.testing.assert_allclose(ms.sde(0).freeze_times()[7, 7, 0], 0.25)
    sched = ms.schedule(101, eps=0.0)     # grid 1, 0.99, ..., 0
    assert sched == [(2, 0, 50), (1, 50, 75), (0, 75, 101)]
    assert ideal_speedup(ms, 101, eps=0.0) == pytest.approx(101 / (26 + 25 / 4 + 50 / 16))
    with pytest.raises(ValueError, match="increase"):
        HaarMultiScale.create(VPSDE(), (8, 8, 1), (0.5, 0.25))
    with pytest.raises(ValueError, match="divisible"):
        HaarMultiScale.create(VPSDE(), (12, 12, 1), (0.2, 0.4, 0.6))


def _gaussian_problem():
    ii, jj = np.meshgrid(np.arange(H), np.arange(H), indexing="ij")
    p = np.stack([ii.ravel(), jj.ravel()], 1)
    dist = np.linalg.norm(p[:, None] - p[None], axis=-1)
    S = 0.5 * np.exp(-dist / 3.0) + 0.05 * np.eye(D)       # smooth, correlated pixels
    mu = 0.3 * np.sin(p[:, 0] / 2.0)
    W = np.asarray(haar_forward(jnp.eye(D).reshape(D, H, H, 1), 2)).reshape(D, D).T
    coeffs = GaussianMixture.create([1.0], (W @ mu)[None], (W @ S @ W.T)[None],
                                    event_shape=(H, H, 1))
    return mu, S, W, coeffs


def _stage_scores(ms, coeffs):
    """Exact score of each stage's coefficient block (the marginal of the Gaussian coefficients).

    ``params`` is a switch: 1 gives the multi-scale SDE's scores, 0 the uniform SDE's (speeds 1),
    so both runs share one compiled sampler."""
    fns = []
    for s in range(ms.levels + 1):
        h = H // 2**s
        block = coeffs.marginal(np.arange(D).reshape(H, H)[:h, :h].ravel(), event_shape=(h, h, 1))
        sde = ms.sde(s)

        def fn(p, c, t, b=block, sde=sde):
            speeds = p * sde.speeds + (1 - p)          # p = 1: multi-scale, p = 0: uniform
            # the samplers pass one shared time: one perturbation per call
            return b.at(sde.replace(speeds=speeds), t[0]).score(c).astype(c.dtype)

        fns.append(fn)
    return fns


def _errors(x, mu, S):
    xf = np.asarray(x).reshape(x.shape[0], D)
    cov = np.cov(xf.T)
    return np.abs(xf.mean(0) - mu).max(), np.linalg.norm(cov - S) / np.linalg.norm(S)


def test_multiscale_sampler_with_exact_score_is_exact():
    """Coarse-to-fine sampling of 8x8 Gaussian images with the exact per-stage scores recovers the
    data law to Monte-Carlo precision; using the uniform SDE's scores instead does not."""
    mu, S, W, coeffs = _gaussian_problem()
    ms = HaarMultiScale.create(VPSDE(), (H, H, 1), (0.3, 0.6))
    n, steps = 2000, 200
    sample = multiscale_sampler(ms, _stage_scores(ms, coeffs), n, num_steps=steps)
    x, nfe = sample(1.0, jax.random.PRNGKey(1))
    assert x.shape == (n, H, H, 1) and int(nfe) == steps
    mean_err, cov_err = _errors(x, mu, S)
    # Monte-Carlo level: exact samples of the same size (pixels x = W^T c)
    ref = np.asarray(coeffs.sample(jax.random.PRNGKey(5), n)).reshape(n, D) @ W
    ref_mean_err, ref_cov_err = _errors(ref, mu, S)
    assert mean_err < 2.0 * ref_mean_err + 0.01, (mean_err, ref_mean_err)
    assert cov_err < 1.5 * ref_cov_err + 0.01, (cov_err, ref_cov_err)
    # the same sampler fed the uniform (single-speed) scores is far off
    w_mean_err, w_cov_err = _errors(sample(0.0, jax.random.PRNGKey(1))[0], mu, S)
    assert w_cov_err > 2.5 * cov_err and w_mean_err > 3 * mean_err, (w_cov_err, w_mean_err)


def test_multiscale_ve_and_errors():
    """VE base: the sampler runs, stays finite and keeps the data scale; bad score lists fail."""
    mu, S, W, coeffs = _gaussian_problem()
    ms = HaarMultiScale.create(VESDE(sigma_max=10.0), (H, H, 1), (0.4, 0.7))
    sample = multiscale_sampler(ms, _stage_scores(ms, coeffs), 500, num_steps=200,
                                predictor="reverse_diffusion")
    x, _ = sample(1.0, jax.random.PRNGKey(2))
    mean_err, cov_err = _errors(x, mu, S)
    assert mean_err < 0.15 and cov_err < 0.2, (mean_err, cov_err)
    with pytest.raises(ValueError, match="3 score functions"):
        multiscale_sampler(ms, [lambda p, c, t: c] * 2, 4)
    with pytest.raises(ValueError, match="eps"):
        multiscale_sampler(ms, lambda p, c, t: c, 4, eps=0.5)


def test_multiscale_loss_matches_closed_form(x64):
    """Stage-1 DSM loss with the exact score equals its closed form ``1 - tr(diag(s) C_t^-1
    diag(s)) / D`` per example (C_t the perturbed covariance of the coefficient block), and its
    times lie in the stage's range."""
    from jaxdiff.multiscale import multiscale_loss, stage_time_range
    mu, S, W, coeffs = _gaussian_problem()
    ms = HaarMultiScale.create(VPSDE(), (H, H, 1), (0.3, 0.6))
    stage, h = 1, H // 2
    block = coeffs.marginal(np.arange(D).reshape(H, H)[:h, :h].ravel(), event_shape=(h, h, 1))
    sde = ms.sde(stage)
    images = (np.asarray(coeffs.sample(jax.random.PRNGKey(0), 600)).reshape(-1, D) @ W)
    loss, aux = multiscale_loss(ms, stage, block.score_fn(sde))(
        None, jax.random.PRNGKey(1), jnp.asarray(images).reshape(-1, H, H, 1))
    lo, hi = stage_time_range(ms, stage)
    assert (lo, hi) == (0.3, 0.6) and float(aux["t"].min()) >= lo and float(aux["t"].max()) <= hi
    cov = np.asarray(block.covs[0])

    alphas, sigmas = (np.asarray(v).reshape(-1, h * h) for v in sde.marginal_coeffs(aux["t"]))

    def expected(a, s):
        c = a[:, None] * cov * a[None] + np.diag(s**2)
        return 1.0 - np.trace(np.diag(s) @ np.linalg.solve(c, np.diag(s))) / c.shape[0]

    ref = np.mean([expected(a, s) for a, s in zip(alphas, sigmas)])
    np.testing.assert_allclose(float(loss), ref, rtol=0.05)
    assert 0.05 < ref < 0.5         # far from 1 (zero score) and from 0


def test_pc_loop_in_pieces_is_the_loop_in_one_go():
    """The multi-scale sampler runs one pc_loop per stage with ``first_index`` = the stage's start
    on the global grid: two pieces give exactly the samples of one loop over the whole grid."""
    from jaxdiff.samplers import pc_loop, pc_step
    sde = VPSDE(N=40)
    step = pc_step(sde, lambda p, x, t: -x * p, predictor="euler_maruyama", corrector="langevin")
    ts = jnp.linspace(1.0, 1e-3, 40)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    key = jax.random.PRNGKey(1)
    whole, whole_mean = pc_loop(step, 1.0, key, x0, ts)
    x, _ = pc_loop(step, 1.0, key, x0, ts[:15])
    x, x_mean = pc_loop(step, 1.0, key, x, ts[15:], first_index=15)
    np.testing.assert_array_equal(x, whole)
    np.testing.assert_array_equal(x_mean, whole_mean)
    x_restart, _ = pc_loop(step, 1.0, key, pc_loop(step, 1.0, key, x0, ts[:15])[0], ts[15:])
    assert float(jnp.max(jnp.abs(x_restart - whole))) > 1e-3     # the key offset matters
