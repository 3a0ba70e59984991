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


def _lam(t, T_band):
    """The reference's per-band log-SNR, written out: linear from 10 at t = 0 to -10 at T_band."""
    return 10.0 - 20.0 * np.asarray(t) / T_band


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _band_end_times(ms, stage):
    """Per-coefficient end time T_band of the stage block (1 for the approximation)."""
    return ms.base.T / np.asarray(ms.speed_map(stage))[..., 0].ravel()


def _check_mc(per_example, expected, rel_power):
    """Mean of ``per_example - expected`` is 0 within 4 standard errors, and the test has power:
    4 SE is below ``rel_power`` of the expected value."""
    d = np.asarray(per_example) - np.asarray(expected)
    se = d.std() / np.sqrt(d.size)
    ref = float(np.mean(expected))
    assert 4 * se < rel_power * abs(ref), (se, ref)
    assert abs(d.mean()) < 4 * se, (d.mean(), se, ref)
    return ref


@pytest.mark.parametrize("weighting", ["likelihood", "sigma2"])
def test_multiscale_loss_matches_closed_form(x64, weighting):
    """Stage-1 DSM loss with the exact score equals its closed form per example, on the
    reference's log-SNR schedule and end times (tolerance 4 standard errors, which are < 1%):
    ``mean_j (1 - sigma_j^2 (C_t^-1)_jj)`` unweighted, ``mean_j 20 / T_j (1 - sigma_j^2
    (C_t^-1)_jj)`` with the likelihood weighting (``g_j^2 / sigma_j^2 = 20 / T_j`` for the
    log-SNR VP: a ``g`` instead of ``g^2`` or one shared ``g`` would differ); C_t the perturbed
    covariance of the coefficient block, alpha / sigma from the written-out log-SNR."""
    from jaxdiff.multiscale import LogSNRVPSDE, multiscale_loss, reference_end_times, stage_time_range
    mu, S, W, coeffs = _gaussian_problem()
    ms = HaarMultiScale.create(LogSNRVPSDE(), (H, H, 1), reference_end_times(2))
    stage, h = 1, H // 2
    block = coeffs.marginal(np.arange(D).reshape(H, H)[:h, :h].ravel(), event_shape=(h, h, 1))
    sde = ms.sde(stage)
    n = 8000
    images = (np.asarray(coeffs.sample(jax.random.PRNGKey(0), n)).reshape(-1, D) @ W)
    lw = weighting == "likelihood"
    loss, aux = multiscale_loss(ms, stage, block.score_fn(sde), likelihood_weighting=lw)(
        None, jax.random.PRNGKey(1), jnp.asarray(images).reshape(-1, H, H, 1))
    lo, hi = stage_time_range(ms, stage)
    assert (lo, hi) == (1 / 3, 2 / 3) and float(aux["t"].min()) >= lo and float(aux["t"].max()) <= hi
    cov = np.asarray(block.covs[0])
    T_j = _band_end_times(ms, stage)
    assert sorted(set(np.round(T_j, 12))) == [round(2 / 3, 12), 1.0]   # level-2 details, approx.

    def expected(t):
        lam = _lam(t, T_j)
        a, s2 = np.sqrt(_sig(lam)), _sig(-lam)
        c = a[:, None] * cov * a[None] + np.diag(s2)
        per = 1.0 - s2 * np.diag(np.linalg.inv(c))
        return np.mean(per * (20.0 / T_j if lw else 1.0))

    exp = np.array([expected(t) for t in np.asarray(aux["t"])])
    np.testing.assert_allclose(float(loss), float(np.mean(aux["losses"])), rtol=1e-12)
    ref = _check_mc(aux["losses"], exp, 0.04)      # 4 SE ~ 3% of the loss
    # far from 0 and from the zero score (LW: mean_j 20 / T_j = 27.5; unweighted: 1)
    assert (1 < ref < 15) if lw else (0.05 < ref < 0.5)


def test_log_snr_sde_and_reference_end_times(x64):
    """T_k = k / (L + 1); every band's log-SNR is 10 at t = 0 and -10 exactly at its own T_k (1 for
    the approximation), linear in between; the SDE's drift and diffusion are those of its
    marginals (d log alpha / dt = -beta / 2, sigma^2 = 1 - alpha^2, g^2 = beta)."""
    from jaxdiff.multiscale import LogSNRVPSDE, config_section, reference_end_times
    assert reference_end_times(3) == (0.25, 0.5, 0.75)
    assert reference_end_times(2) == (1 / 3, 2 / 3) and reference_end_times(1) == (0.5,)
    assert tuple(config_section(levels=3).end_times) == (0.25, 0.5, 0.75)
    ms = HaarMultiScale.create(LogSNRVPSDE(), (H, H, 1), reference_end_times(2))
    sde = ms.sde(0)
    T_j = _band_end_times(ms, 0).reshape(H, H, 1)
    for t in [0.0, 0.1, 1 / 3, 0.5, 2 / 3, 0.9, 1.0]:
        a, s = (np.asarray(v) for v in sde.marginal_coeffs(jnp.asarray(t)))
        lam_lib = np.log(a**2 / s**2)
        lam = np.maximum(_lam(t, T_j), -10.0)                  # frozen after T_k
        np.testing.assert_allclose(lam_lib, lam, atol=1e-9)
        np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-12)
    a_end = np.asarray(sde.marginal_coeffs(jnp.asarray(1 / 3))[0])
    np.testing.assert_allclose(np.log(a_end[4:, 4:] ** 2 / (1 - a_end[4:, 4:] ** 2)), -10, atol=1e-9)
    base = LogSNRVPSDE()
    t, dt = jnp.array([0.05, 0.3, 0.7, 0.95]), 1e-6
    x = jnp.ones((4, 1))
    drift, g = base.sde(x, t)
    la = lambda u: jnp.log(base.marginal_coeffs(u)[0])
    beta = -2 * (la(t + dt) - la(t - dt)) / (2 * dt)
    np.testing.assert_allclose(drift[:, 0], -0.5 * beta, rtol=1e-6)
    np.testing.assert_allclose(g**2, beta, rtol=1e-6)
    np.testing.assert_allclose(beta, 20 * _sig(-_lam(np.asarray(t), 1.0)), rtol=1e-6)


def _diag_problem(ms):
    """Independent Gaussian Haar coefficients (mean m, variance v per coefficient) and the exact
    stage scores from the written-out log-SNR (not the library's SDE)."""
    rng = np.random.default_rng(3)
    Hs, Ws, _ = ms.image_shape
    m = rng.uniform(-1.0, 1.0, (Hs, Ws, 1))
    v = rng.uniform(0.2, 1.5, (Hs, Ws, 1))
    ha, wa, _ = ms.block_shape(ms.levels)
    v[:ha, :wa] = rng.uniform(2.0, 4.0, (ha, wa, 1))      # approximation: larger, as in images
    fns = []
    for s in range(ms.levels + 1):
        hh, ww, _ = ms.block_shape(s)
        T_j = _band_end_times(ms, s).reshape(hh, ww, 1)

        def fn(p, c, t, mb=m[:hh, :ww], vb=v[:hh, :ww], T_j=T_j):
            lam = 10.0 - 20.0 * t[:, None, None, None] / T_j
            a2, s2 = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
            return -(c - jnp.sqrt(a2) * mb) / (a2 * vb + s2)

        fns.append(fn)
    return m, v, fns


def _chain_law(ms, m, v, num_steps, eps, handoff, details_start="prior"):
    """Mean and variance per coefficient of the multi-scale Euler-Maruyama chain with the exact
    scores, propagated in closed form (every update is affine per coefficient):
    ``x_mean = x + dt (beta / 2 x - beta (x - alpha m) / P)``, ``x = x_mean + sqrt(beta dt) z``
    (``dt = 1 / N``, ``P = alpha^2 v + sigma^2``), new details N(0, sigmoid(10)) at the stage
    start, the coarse block handed on as the mean of the last update (or the noisy state); the
    result is the noise-free mean of the last update."""
    grid = np.linspace(1.0, eps, num_steps)
    dt = 1.0 / num_steps
    sched = ms.schedule(num_steps, eps)
    mean = var = var_noisy = None
    for s, start, stop in sched:
        hh, ww, _ = ms.block_shape(s)
        T_j = _band_end_times(ms, s).reshape(hh, ww, 1)
        new_var = np.full((hh, ww, 1), _sig(10.0) if details_start == "prior" else 0.0)
        new_mean = np.zeros((hh, ww, 1))
        if mean is not None:
            h0, w0 = mean.shape[:2]
            new_mean[:h0, :w0], new_var[:h0, :w0] = mean, (var if handoff == "mean" else var_noisy)
        else:
            new_var[:] = _sig(10.0)
        mean, var = new_mean, new_var
        var_noisy = var
        for t in grid[start:stop]:
            lam = 10.0 - 20.0 * t / T_j
            a2, s2 = _sig(lam), _sig(-lam)
            beta = 20.0 / T_j * s2
            P = a2 * v[:hh, :ww] + s2
            A = 1 + dt * beta / 2 - dt * beta / P
            b = dt * beta * np.sqrt(a2) * m[:hh, :ww] / P
            mean, var = A * mean + b, A**2 * var_noisy
            var_noisy = var + beta * dt
    return mean, var


@pytest.mark.parametrize("handoff", ["mean", "noisy"])
def test_multiscale_sampler_is_its_exact_discrete_chain(x64, handoff):
    """The sampler's samples have, coefficient by coefficient, the mean and variance of its
    Euler-Maruyama chain propagated in closed form (4 standard errors, power checked: the other
    handoff, new details started at 0, or the coarse block handed on noisy / as the mean, all
    differ by far more). A short final stage (2 steps) keeps the start of the details and the
    handoff visible in the output."""
    from jaxdiff.multiscale import LogSNRVPSDE
    ms = HaarMultiScale.create(LogSNRVPSDE(), (4, 4, 1), (0.5,))
    m, v, fns = _diag_problem(ms)
    steps, eps, n = 10, 0.4, 20000
    assert ms.schedule(steps, eps) == [(1, 0, 8), (0, 8, 10)]
    sample = multiscale_sampler(ms, fns, n, num_steps=steps, eps=eps, handoff=handoff,
                                dtype=jnp.float64, return_coeffs=True)
    c, nfe = sample(None, jax.random.PRNGKey(7))
    assert int(nfe) == steps and c.shape == (n, 4, 4, 1)
    c = np.asarray(c)
    mean, var = _chain_law(ms, m, v, steps, eps, handoff)
    z = (c.mean(0) - mean) / np.sqrt(var / n)
    assert np.abs(z).max() < 4.5, np.abs(z).max()
    bands = [(slice(0, 2), slice(0, 2)), (slice(0, 4), slice(2, 4)), (slice(2, 4), slice(0, 2))]

    def band_errors(law_var):
        """|mean over the band of sample var / law var - 1| in units of its 4-SE tolerance."""
        ratio = c.var(0) / law_var
        return [abs(ratio[b].mean() - 1) / (4 * np.sqrt(2 / (n * ratio[b].size))) for b in bands]

    assert max(band_errors(var)) < 1, band_errors(var)
    # power: each wrong law is off by many tolerances in some band
    other = "noisy" if handoff == "mean" else "mean"
    assert band_errors(_chain_law(ms, m, v, steps, eps, other)[1])[0] > 5      # approximation
    zero = _chain_law(ms, m, v, steps, eps, handoff, details_start="zero")[1]
    assert min(band_errors(zero)[1:]) > 5                                      # the details


def test_multiscale_sampler_handoff_and_config_errors():
    from jaxdiff.multiscale import config_section
    ms = HaarMultiScale.create(VPSDE(), (4, 4, 1), (0.5,))
    with pytest.raises(ValueError, match="handoff"):
        multiscale_sampler(ms, lambda p, c, t: c, 2, handoff="tweedie")
    with pytest.raises(ValueError, match="schedule"):
        config_section(levels=2, schedule="cosine")
    with pytest.raises(ValueError, match="handoff"):
        config_section(levels=2, handoff="clean")
    with pytest.raises(ValueError, match="levels"):
        config_section(end_times=(0.3, 0.6), levels=3)
    with pytest.raises(ValueError, match="log_snr_max"):
        config_section(levels=1, log_snr_max=-10.0, log_snr_min=10.0)


def test_multiscale_config_settings():
    """configs/msdiff_multiscale.py: the reference's settings by default, ours with setting=ours;
    the task's base SDE follows msdiff.schedule."""
    import importlib.util
    import os

    from jaxdiff.multiscale import LogSNRVPSDE, base_sde, config_section, from_config
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "msdiff_multiscale.py")
    spec = importlib.util.spec_from_file_location("_msdiff_multiscale_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for size, T in [(32, (1 / 3, 2 / 3)), (64, (0.25, 0.5, 0.75)), (128, (0.25, 0.5, 0.75))]:
        c = mod.get_config(f"size={size}")
        sec = c.msdiff
        assert tuple(sec.end_times) == pytest.approx(T)
        # the reference's values are the meaning of absent keys (config_section writes others)
        assert set(sec.keys()) == {"mode", "end_times", "stage"}
        assert sec.get("schedule", "log_snr") == "log_snr" and sec.get("handoff", "mean") == "mean"
        assert c.training.likelihood_weighting and c.sampling.predictor == "reverse_diffusion"
        assert c.sampling.corrector == "none" and c.sampling.noise_removal
        assert isinstance(base_sde(sec, VPSDE()), LogSNRVPSDE)
        assert isinstance(from_config(sec, VPSDE(), size, 3).base, LogSNRVPSDE)
    ours = mod.get_config("size=128,setting=ours")
    assert tuple(ours.msdiff.end_times) == (0.15, 0.35, 0.6)
    assert (ours.msdiff.schedule, ours.msdiff.handoff) == ("base", "noisy")
    assert not ours.training.likelihood_weighting
    assert isinstance(base_sde(ours.msdiff, VPSDE()), VPSDE)
    assert dict(config_section(levels=2, schedule="base", log_snr_min=-8.0)) == dict(
        mode="multiscale", end_times=(1 / 3, 2 / 3), stage=0, schedule="base", log_snr_min=-8.0)
    b = base_sde(config_section(levels=1, log_snr_max=8.0, log_snr_min=-6.0), VPSDE())
    assert (b.log_snr_max, b.log_snr_min) == (8.0, -6.0)
    with pytest.raises(ValueError, match="setting"):
        mod.get_config("setting=paper")


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
