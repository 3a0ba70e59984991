"""Inverse problems and controllable generation against exact ground truth.

Gaussian-mixture priors with a linear-Gaussian observation have exact Gaussian-mixture posteriors
(``GaussianMixture.condition``), and the perturbed mixture gives the exact score and the exact
noise-conditional classifier, so every method is checked against exact numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff import inverse as inv
from jaxdiff.eval.distances import sliced_wasserstein
from jaxdiff.inverse.consistency import init_from_prior
from jaxdiff.inverse.smc import smc_inverse_sampler

B = 1000


def mixture3():
    """Three components; observing x1 = 0.8 must reweight them strongly (0.3/0.3/0.4 -> 0/0.2/0.8)."""
    return jd.GaussianMixture.create(
        [0.3, 0.3, 0.4], np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.0]]), stds=0.6)


def mixture2():
    return jd.GaussianMixture.create([0.3, 0.7], np.array([[-1.5, -1.5], [1.5, 1.5]]), stds=0.6)


def fractions(post, x):
    """Mean posterior responsibilities of the samples (degenerate directions regularised)."""
    p = post.replace(eigvals=post.eigvals + 1e-3)
    return np.asarray(p.responsibilities(x).mean(0))


def sw_and_floor(post, x, seed=5):
    ref = post.sample(jax.random.key(seed), x.shape[0])
    ref2 = post.sample(jax.random.key(seed + 1), x.shape[0])
    k = jax.random.key(3)
    return float(sliced_wasserstein(k, x, ref)), float(sliced_wasserstein(k, ref2, ref))


# ---- operators ----------------------------------------------------------------------------
def _inner(a, b):
    return float(jnp.sum(jnp.real(jnp.conj(a) * b)))


def _operators():
    rng = np.random.default_rng(0)
    kmask = np.asarray(inv.cartesian_kspace_mask(jax.random.key(0), (8, 8), acceleration=3.0,
                                                 center_fraction=0.25))
    A = rng.normal(size=(5, 12))
    return [
        (inv.Mask((rng.uniform(size=(1, 4, 4, 3)) > 0.5).astype(np.float64)), (2, 4, 4, 3)),
        (inv.AvgPool(2), (2, 4, 6, 3)),
        (inv.ChannelMean(3), (2, 4, 4, 3)),
        (inv.SubsampledFFT(kmask), (2, 8, 8)),
        (inv.SubsampledFFT(kmask), (2, 8, 8, 2)),
        (inv.Matrix.create(A, event_shape=(3, 4)), (2, 3, 4)),
    ]


@pytest.mark.parametrize("i", range(6))
def test_operator_adjoint_pinv_and_projection(i, x64):
    op, shape = _operators()[i]
    op = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), op)

    @jax.jit
    def quantities(op, key):
        kx, ky, kz, kn = jax.random.split(key, 4)
        x = jax.random.normal(kx, shape)
        ax = op(x)
        y = jax.random.normal(ky, ax.shape)
        if jnp.iscomplexobj(ax):
            y = y + 1j * jax.random.normal(kz, ax.shape)
        inner = lambda a, b: jnp.sum(jnp.real(jnp.conj(a) * b))
        y_range = op(jax.random.normal(kz, shape))
        xp = op.project(x, y_range)
        null_dir = jax.random.normal(kn, shape)
        null_dir = null_dir - op.pinv(op(null_dir))
        return dict(lhs=inner(ax, y), rhs=inner(x, op.adjoint(y)), y_range=y_range,
                    a_pinv=op(op.pinv(y_range)), a_proj=op(xp), move_null=inner(xp - x, null_dir),
                    move=jnp.linalg.norm(xp - x), null_a=op(null_dir))

    q = jax.tree_util.tree_map(np.asarray, quantities(op, jax.random.key(i)))
    # adjointness <A x, y> = <x, A^T y> (real inner product; Re of the complex one in k-space)
    np.testing.assert_allclose(q["lhs"], q["rhs"], rtol=1e-10, atol=1e-10)
    # pseudo-inverse on the range, and the projection lands exactly on A x = y ...
    np.testing.assert_allclose(q["a_pinv"], q["y_range"], atol=1e-10)
    np.testing.assert_allclose(q["a_proj"], q["y_range"], atol=1e-10)
    # ... moving x orthogonally to the null space (the closest consistent point)
    np.testing.assert_allclose(q["null_a"], 0.0, atol=1e-10)
    assert abs(q["move_null"]) < 1e-9 * (1 + q["move"])


def test_mri_mask_needs_hermitian_symmetry(x64):
    """A one-sided k-space mask breaks A A^T = I for real images; symmetrising restores it."""
    mask = jnp.zeros((8, 8)).at[:, 1].set(1.0).at[:, 0].set(1.0)
    x = jax.random.normal(jax.random.key(0), (1, 8, 8))
    y = inv.SubsampledFFT(mask)(jax.random.normal(jax.random.key(1), (1, 8, 8)))
    bad = inv.SubsampledFFT(mask)
    assert float(jnp.max(jnp.abs(bad(bad.project(x, y)) - y))) > 1e-2
    sym = inv.hermitian_symmetrize(mask)
    assert float(sym[:, 7].min()) == 1.0 and float(sym.sum()) == 24.0
    good = inv.SubsampledFFT(sym)
    y = good(jax.random.normal(jax.random.key(1), (1, 8, 8)))
    np.testing.assert_allclose(good(good.project(x, y)), y, atol=1e-12)


def test_operator_errors_name_the_value():
    with pytest.raises(ValueError, match="factor 3"):
        inv.AvgPool(3)(jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        inv.SubsampledFFT(jnp.ones((4, 4)))(jnp.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="shape"):
        inv.Matrix.create(jnp.ones((3,)))
    sample = inv.pc_inverse_sampler(jd.VPSDE(N=2), mixture2().score_fn(jd.VPSDE()), (4, 2))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        sample(None, jax.random.key(0), inv.Observation(inv.Matrix.create(jnp.ones((1, 2))),
                                                        jnp.zeros((4, 3))))
    with pytest.raises(ValueError, match="t0"):
        inv.ccdf_sampler(jd.VPSDE(), None, (4, 2), t0=1.5)


def test_color_decoupling_is_orthogonal(x64):
    m = inv.colorization.DECOUPLE
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-15)
    x = jax.random.normal(jax.random.key(0), (5, 2, 2, 3))
    u = inv.decouple(x)
    np.testing.assert_allclose(u[..., 0], np.sqrt(3.0) * x.mean(-1), atol=1e-12)
    np.testing.assert_allclose(inv.couple(u), x, atol=1e-12)
    # the chroma channels are orthogonal to gray: adding gray changes channel 0 only
    np.testing.assert_allclose(inv.decouple(x + 1.0)[..., 1:], u[..., 1:], atol=1e-12)


# ---- initialisation and data consistency ---------------------------------------------------
@pytest.mark.parametrize("sde", [jd.VPSDE(), jd.VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_init_is_the_forward_marginal(sde, x64):
    """Known part at T is alpha(T) y + sigma(T) z, unknown part sigma(T) z (not data + prior)."""
    op = inv.Mask(jnp.array([1.0, 0.0]))
    y = jnp.array([[0.7, 0.0]])
    x, z = jax.jit(lambda k: init_from_prior(sde, op, jnp.broadcast_to(y, (4000, 2)), k,
                                             (4000, 2), jnp.float64))(jax.random.key(0))
    alpha, sigma = sde.marginal_coeffs(jnp.asarray(1.0))
    np.testing.assert_allclose(x[:, 0], alpha * 0.7 + sigma * z[:, 0], rtol=1e-12)
    np.testing.assert_allclose(x[:, 1], sigma * z[:, 1], rtol=1e-12)
    assert abs(float(jnp.std(x[:, 0])) / float(sigma) - 1.0) < 0.05


# ---- posterior sampling --------------------------------------------------------------------
def test_inpaint_pc_matches_posterior_and_serves_many_observations():
    """Replacement inpainting (PC + Langevin) on a 2-D mixture, vmapped over two observations.

    Where the observation does not have to arbitrate between modes the replacement method is
    close to exact; one compilation serves both observations.
    """
    mix = mixture2()
    sde = jd.VPSDE()
    sample = inv.inpaint_sampler(sde, mix.score_fn(sde), (B, 2), num_steps=100,
                                 corrector="langevin")
    ys = jnp.array([[[0.0, 0.0]], [[1.5, 0.0]]])
    keys = jax.random.split(jax.random.key(0), 2)
    xs, nfe = jax.vmap(lambda p, k, y: sample(p, k, inv.Observation.inpainting(y, jnp.array([1.0, 0.0]))),
                       in_axes=(None, 0, 0))(None, keys, ys)
    assert int(nfe[0]) == 200
    for x, y in zip(xs, ys):
        post = mix.condition(jnp.array([[1.0, 0.0]]), y[:, :1])
        np.testing.assert_array_equal(x[:, 0], y[0, 0])
        sw, floor = sw_and_floor(post, x)
        frac = fractions(post, x)
        assert sw < 2.5 * floor, (sw, floor)
        np.testing.assert_allclose(frac, post.weights, atol=0.05)
        assert abs(float(x[:, 1].mean()) - float(post.mean()[1])) < 0.15


def test_replacement_bias_and_smc_correction():
    """When the observation must reweight modes the replacement method is biased towards the
    prior weights; the SMC sampler corrects it (exact posterior weights 0 / 0.198 / 0.802)."""
    mix = mixture3()
    sde = jd.VPSDE()
    A = jnp.array([[1.0, 0.0]])
    y = jnp.array([[0.8]])
    post = mix.condition(A, y)
    op = inv.Matrix.create(A)
    x_smc, nfe = smc_inverse_sampler(sde, mix.score_fn(sde), (2 * B, 2), num_steps=100)(
        None, jax.random.key(0), inv.Observation(op, y))
    assert int(nfe) == 100
    np.testing.assert_allclose(x_smc[:, 0], 0.8, atol=1e-6)
    sw, floor = sw_and_floor(post, x_smc)
    frac = fractions(post, x_smc)
    # (over seeds the SMC weight of component 1 spreads over 0.19-0.23: Monte-Carlo error of
    # resampled particles; replacement gives 0.25 with Langevin and 0.35 without)
    assert sw < 3.0 * floor, (sw, floor)
    np.testing.assert_allclose(frac, post.weights, atol=0.04)
    x_rep, _ = inv.pc_inverse_sampler(sde, mix.score_fn(sde), (2 * B, 2), num_steps=100,
                                      corrector=None)(None, jax.random.key(0), inv.Observation(op, y))
    frac_rep = fractions(post, x_rep)
    assert frac_rep[1] - post.weights[1] > 0.1  # documented bias of the replacement method


@pytest.mark.slow
def test_super_resolution_like_ode_and_colorization():
    """``A = mean of both coordinates`` with the probability-flow ODE sampler, and colorization of
    a 3-channel 'pixel' mixture (gray = channel mean) through the decoupled space."""
    mix = jd.GaussianMixture.create([0.5, 0.5], np.array([[-1.0, 1.0], [1.5, -0.5]]), stds=0.5)
    sde = jd.VPSDE()
    A = jnp.array([[0.5, 0.5]])
    y = jnp.array([[0.3]])
    post = mix.condition(A, y)
    x, nfe = inv.linear_inverse_sampler(sde, mix.score_fn(sde), (B, 2), method="ode",
                                        rtol=1e-4, atol=1e-4)(None, jax.random.key(1),
                                                              inv.Observation(inv.Matrix.create(A), y))
    assert 20 < int(nfe) < 400
    np.testing.assert_allclose(x @ A.T, 0.3, atol=1e-5)
    sw, floor = sw_and_floor(post, x)
    assert sw < 2.5 * floor, (sw, floor)
    np.testing.assert_allclose(fractions(post, x), post.weights, atol=0.06)

    # colorization: colors of a 3-D mixture given the gray value
    cmix = jd.GaussianMixture.create([0.5, 0.5], np.array([[1.0, 0.0, -1.0], [-0.5, 0.0, 1.5]]),
                                     stds=0.4, event_shape=(1, 1, 3))
    gray = jnp.full((1, 1, 1, 1), 0.2)
    cpost = cmix.condition(jnp.full((1, 3), 1.0 / 3.0), gray.reshape(1, 1))
    xc, _ = inv.colorize_sampler(sde, cmix.score_fn(sde), (B, 1, 1, 3), num_steps=200,
                                 corrector="langevin")(None, jax.random.key(2), gray)
    np.testing.assert_allclose(xc.mean(-1), 0.2, atol=1e-5)
    xc = xc.reshape(B, 3)
    sw, floor = sw_and_floor(cpost, xc)
    assert sw < 2.5 * floor, (sw, floor)
    # replacement is biased towards the prior weights 0.5 / 0.5 (see
    # test_replacement_bias_and_smc_correction): measured 0.47 (projection after the predictor
    # only) / 0.49 (also after the corrector, the default) over 4 keys against the exact 0.448;
    # the tolerance is that bias plus 4 standard errors of a fraction of B = 1000 (0.016)
    np.testing.assert_allclose(fractions(cpost, xc), cpost.weights, atol=0.045 + 4 * 0.016)


@pytest.mark.slow
def test_mri_subsampled_fft_posterior_mean():
    """Compressed-sensing MRI on 8x8 'images' from a correlated Gaussian prior: samples satisfy the
    k-space data exactly and their mean is the exact posterior mean (zero-filling is far off)."""
    n = 8
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pos = np.stack([ii.ravel(), jj.ravel()], 1)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    cov = np.exp(-d2 / 32.0) + 1e-2 * np.eye(n * n)
    phantom = 2.0 * (((ii - 3.5) ** 2 + (jj - 4.5) ** 2) < 7).astype(float).ravel()
    prior = jd.GaussianMixture.create([1.0], phantom[None], covs=cov[None], event_shape=(n, n))
    x_true = prior.sample(jax.random.key(7), 1)
    kmask = inv.cartesian_kspace_mask(jax.random.key(0), (n, n), acceleration=3.0,
                                      center_fraction=0.25)
    op = inv.SubsampledFFT(kmask)
    y = op(x_true)
    # exact posterior: A as a real matrix (real and imaginary parts of the sampled k-space)
    F = np.fft.fft2(np.eye(n * n).reshape(n * n, n, n), norm="ortho").reshape(n * n, -1)
    rows = np.asarray(kmask).ravel() > 0
    A_real = np.concatenate([F[:, rows].real.T, F[:, rows].imag.T], 0)
    y_real = np.concatenate([np.asarray(y).reshape(-1)[rows].real,
                             np.asarray(y).reshape(-1)[rows].imag])
    # (conjugate-symmetric rows make A_real rank deficient: condition with a pseudo-inverse)
    gain = cov @ A_real.T @ np.linalg.pinv(A_real @ cov @ A_real.T, rcond=1e-10)
    post_mean = phantom + gain @ (y_real - A_real @ phantom)
    post_var = np.diag(cov - gain @ A_real @ cov)
    sde = jd.VPSDE()
    x, _ = inv.pc_inverse_sampler(sde, prior.score_fn(sde), (256, n, n), num_steps=100,
                                  corrector="langevin")(None, jax.random.key(3), inv.Observation(op, y))
    np.testing.assert_allclose(op(x), jnp.broadcast_to(y, x.shape), atol=1e-4)
    err = float(np.sqrt(np.mean((np.asarray(x.mean(0)).ravel() - post_mean) ** 2)))
    zero_filled = float(np.sqrt(np.mean((np.asarray(op.pinv(y)).ravel() - post_mean) ** 2)))
    post_std = float(np.sqrt(np.mean(post_var)))
    floor = post_std / np.sqrt(x.shape[0])  # Monte-Carlo error of a mean of 256 samples
    print(f"MRI: err={err:.4f} zero-filled={zero_filled:.4f} floor={floor:.4f}")
    assert err < 2.5 * floor and zero_filled > 3 * err, (err, zero_filled, floor)
    var_ratio = float(np.mean(np.asarray(x.var(0))) / np.mean(post_var))
    print(f"MRI: variance ratio {var_ratio:.3f}")
    assert 0.8 < var_ratio < 1.25, var_ratio


# ---- guidance ------------------------------------------------------------------------------
def _component_score_fn(mix, sde):
    """Exact class-conditional score ``grad log p_t(x | k)`` with per-example labels."""
    comps = [mix.replace(log_weights=jnp.zeros((1,), mix.log_weights.dtype), means=mix.means[k:k + 1],
                         eigvals=mix.eigvals[k:k + 1], eigvecs=mix.eigvecs[k:k + 1])
             for k in range(mix.num_components)]

    def cond_score_fn(params, x, t, y=None):
        if y is None:
            return mix.score_t(sde, x, t)
        all_k = jnp.stack([c.score_t(sde, x, t) for c in comps], 0)     # (K, B, D)
        return jnp.take_along_axis(all_k, y[None, :, None], axis=0)[0]

    return cond_score_fn


def test_exact_classifier_guidance_is_the_conditional_score(x64):
    """Bayes: grad log p_t(x) + grad log p_t(k | x) = grad log p_t(x | k), exactly; and classifier-
    free guidance with w = 0 is conditional, with w is (1 + w) cond - w uncond."""
    mix = mixture2()
    sde = jd.VESDE(sigma_max=10.0)
    guided = inv.classifier_guided_score_fn(mix.score_fn(sde), inv.mixture_classifier(mix, sde))
    cond = _component_score_fn(mix, sde)
    cfg = inv.classifier_free_score_fn(cond)
    x = jax.random.normal(jax.random.key(0), (6, 2)) * 2.0
    t = jnp.array([0.01, 0.1, 0.3, 0.5, 0.8, 1.0])
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    g = inv.GuidanceParams(score=None, labels=labels, scale=1.0, classifier=None)
    g2 = g._replace(scale=2.0)

    @jax.jit
    def all_scores():
        return (guided(g, x, t), guided(g2, x, t), cfg(g._replace(scale=0.0), x, t), cfg(g2, x, t),
                cond(None, x, t, labels), mix.score_t(sde, x, t))

    gd1, gd2, cfg0, cfg2, c, u = all_scores()
    np.testing.assert_allclose(gd1, c, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gd2, 2 * c - u, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cfg0, c, rtol=1e-12)
    np.testing.assert_allclose(cfg2, 3 * c - 2 * u, rtol=1e-9, atol=1e-12)


def test_guided_sampling_hits_the_chosen_component():
    """Exact classifier guidance samples only the chosen component (> 99 %), for either label and
    with one compilation; classifier-free guidance with a null label does too."""
    mix = mixture2()
    sde = jd.VPSDE()
    guided = inv.classifier_guided_score_fn(mix.score_fn(sde), inv.mixture_classifier(mix, sde))
    sample = jd.pc_sampler(sde, guided, (B, 2), predictor="reverse_diffusion", num_steps=100)
    cond = _component_score_fn(mix, sde)
    null = 2

    def cond_null(params, x, t, y=None):
        uncond = mix.score_t(sde, x, t)
        return jnp.where((y == null)[:, None], uncond, cond(params, x, t, jnp.minimum(y, 1)))

    cfg_sample = jd.pc_sampler(sde, inv.classifier_free_score_fn(cond_null, null_label=null),
                               (B, 2), predictor="reverse_diffusion", num_steps=100)
    for k in (0, 1):
        x, _ = sample(inv.GuidanceParams(None, jnp.asarray(k), 1.0), jax.random.key(k))
        frac = jd.eval.distances.component_fractions(mix, x)
        assert float(frac[k]) > 0.99, frac
        comp = mix.replace(log_weights=jnp.zeros((1,)), means=mix.means[k:k + 1],
                           eigvals=mix.eigvals[k:k + 1], eigvecs=mix.eigvecs[k:k + 1])
        sw, floor = sw_and_floor(comp, x)
        assert sw < 3.0 * floor, (sw, floor)
    x, nfe = cfg_sample(inv.GuidanceParams(None, jnp.asarray(0), 1.0), jax.random.key(5))
    assert float(jd.eval.distances.component_fractions(mix, x)[0]) > 0.99
    unguided, _ = sample(inv.GuidanceParams(None, jnp.asarray(0), 0.0), jax.random.key(6))
    assert 0.25 < float(jd.eval.distances.component_fractions(mix, unguided)[0]) < 0.35


# ---- CCDF ----------------------------------------------------------------------------------
def test_ccdf_good_and_poor_initialisation():
    """CCDF from t0 = 0.3 (30 % of the steps) with a good estimate (exact posterior samples
    perturbed by N(0, 0.2^2)) is as accurate as the full run; from a poor estimate (A^+ y, the
    unobserved coordinate zero) it degrades, but gracefully: far better than the estimate itself."""
    mix = mixture2()
    sde = jd.VPSDE()
    A = jnp.array([[1.0, 0.0]])
    y = jnp.array([[0.0]])
    post = mix.condition(A, y)
    op = inv.Matrix.create(A)
    n = 200
    full, nfe_full = inv.pc_inverse_sampler(sde, mix.score_fn(sde), (B, 2), num_steps=n,
                                            corrector=None)(None, jax.random.key(0), inv.Observation(op, y))
    ccdf = inv.ccdf_sampler(sde, mix.score_fn(sde), (B, 2), t0=0.3, num_steps=n, corrector=None)
    good_init = post.sample(jax.random.key(11), B) + 0.2 * jax.random.normal(jax.random.key(12),
                                                                             (B, 2))
    good, nfe = ccdf(None, jax.random.key(1), inv.Estimate(good_init, inv.Observation(op, y)))
    poor_init = op.pinv(jnp.broadcast_to(y, (B, 1)))
    poor, _ = ccdf(None, jax.random.key(2), inv.Estimate(poor_init, inv.Observation(op, y)))
    assert int(nfe) == 60 and int(nfe_full) == 200 and 3 * int(nfe) <= int(nfe_full)
    sw_full, floor = sw_and_floor(post, full)
    sw_good, _ = sw_and_floor(post, good)
    sw_poor, _ = sw_and_floor(post, poor)
    sw_poor_init, _ = sw_and_floor(post, poor_init)
    assert sw_good < max(1.2 * sw_full, 2.0 * floor), (sw_good, sw_full, floor)
    assert sw_good < sw_poor < 0.5 * sw_poor_init, (sw_good, sw_poor, sw_poor_init)
    np.testing.assert_allclose(good[:, 0], 0.0, atol=1e-6)


# ---- Tweedie -------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [jd.VPSDE(), jd.SubVPSDE(), jd.VESDE(sigma_max=10.0)],
                         ids=["vp", "subvp", "ve"])
def test_tweedie_gaussian_denoising_is_the_exact_posterior_mean(sde, x64):
    mix = mixture2()
    noise_std = jnp.array([0.05, 0.3, 1.0, 2.5])
    ys = jnp.array([[0.3, -0.2], [1.0, 2.0], [-1.0, 0.5], [3.0, -3.0]])
    denoise = inv.gaussian_denoiser(sde, mix.score_fn(sde))
    t = 0.4

    @jax.jit
    def compare():
        est = denoise(None, ys, noise_std)
        exact = jax.vmap(lambda y, s: mix.condition(jnp.eye(2), y, s).mean())(ys, noise_std)
        # E[x0 | x_t] at an arbitrary time is the posterior mean at the time's own noise level
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t))
        est_t = inv.tweedie_denoiser(sde, mix.score_fn(sde))(None, ys * alpha, t)
        exact_t = jax.vmap(lambda y: mix.condition(jnp.eye(2), y, sigma / alpha).mean())(ys)
        return est, exact, est_t, exact_t

    est, exact, est_t, exact_t = compare()
    np.testing.assert_allclose(est, exact, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(est_t, exact_t, rtol=1e-6, atol=1e-9)


def test_tweedie_poisson_and_gamma(x64):
    """Gamma: ``k y / ((k-1) - y l'(y))`` equals ``1 / E[1/x | y]`` in closed form (inverse-gamma
    prior); Poisson: Robbins' formula is exact (gamma prior), Noise2Score's score formula
    converges to it as the gain zeta -> 0."""
    from jax.scipy.special import gammaln
    # Gamma noise y ~ Gamma(k, rate k / x), prior rate 1/x ~ Gamma(a, b):
    # p(y) ~ y^(k-1) (b + k y)^-(a+k), E[1/x | y] = (a + k) / (b + k y)
    a, b, k = 3.0, 2.0, 5.0
    y = jnp.array([0.1, 0.5, 1.0, 3.0])
    score = (k - 1) / y - k * (a + k) / (b + k * y)
    np.testing.assert_allclose(inv.gamma_tweedie(y, score, k), (b + k * y) / (a + k), rtol=1e-12)
    # Poisson: n ~ Poisson(lam), lam ~ Gamma(a, rate b); x = zeta lam, y = zeta n.
    # E[lam | n] = (a + n) / (b + 1); p(n) negative binomial.
    def log_pmf(n):
        return (gammaln(a + n) - gammaln(a) - gammaln(n + 1) + a * jnp.log(b / (b + 1))
                - n * jnp.log(b + 1))

    errors = []
    for zeta in (0.1, 0.01):
        n = jnp.array([0.0, 3.0, 10.0, 40.0]) / zeta
        yv = zeta * n
        exact = zeta * (a + n) / (b + 1)
        robbins = inv.robbins_poisson(lambda v, zeta=zeta: log_pmf(v / zeta), yv, zeta)
        np.testing.assert_allclose(robbins, exact, rtol=1e-10)
        s = jax.vmap(jax.grad(lambda v, zeta=zeta: log_pmf(v / zeta)))(yv)
        errors.append(float(jnp.max(jnp.abs(inv.poisson_tweedie(yv[1:], s[1:], zeta)
                                            - exact[1:]) / exact[1:])))
    assert errors[1] < 0.2 * errors[0] and errors[1] < 0.01, errors


# ---- warm start ----------------------------------------------------------------------------
def test_teleport_is_the_exact_probability_flow(x64):
    """For Gaussian data the analytic jump equals integrating the probability-flow ODE with the
    exact score, point by point."""
    cov = np.array([[1.0, 0.8], [0.8, 1.5]])
    gauss = jd.GaussianMixture.create([1.0], np.array([[1.0, -2.0]]), covs=cov[None])
    stats = inv.GaussianStats.from_moments(np.array([1.0, -2.0]), cov)
    for sde in (jd.VPSDE(),):
        rsde = sde.reverse(gauss.score_fn(sde), probability_flow=True)
        x_T = sde.prior_sampling(jax.random.key(0), (8, 2), jnp.float64)

        def field(t, x, args, rsde=rsde):
            return rsde.sde(None, x, jnp.full((8,), t))[0]

        x_ode, _ = jd.samplers.solve_ode(field, x_T, 1.0, 0.3, None, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(inv.teleport(sde, stats, x_T, 1.0, 0.3), x_ode, atol=1e-7)


def test_warm_start_gaussian_data_is_exact():
    """Gaussian data: jumping straight from the prior to t = 0 is exact (no score evaluation)."""
    sde = jd.VPSDE()
    cov = np.array([[1.0, 0.8], [0.8, 1.5]])
    gauss = jd.GaussianMixture.create([1.0], np.array([[1.0, -2.0]]), covs=cov[None])
    stats = inv.GaussianStats.from_data(gauss.sample(jax.random.key(9), 50000))
    x = jax.jit(lambda k: inv.teleport(sde, stats, sde.prior_sampling(k, (20000, 2)), 1.0, 0.0))(
        jax.random.key(0))
    m_err, c_err = jd.eval.distances.moment_errors(x, gauss.mean(), gauss.cov())
    assert float(m_err) < 0.03 and float(c_err) < 0.05, (m_err, c_err)


@pytest.mark.slow
def test_warm_start_mixture_saves_nfe_at_equal_accuracy():
    """Mixture data: the Gaussian fitted once from data; skipping to t_skip = 0.5 keeps the
    sliced Wasserstein of the full probability-flow run with fewer evaluations."""
    sde = jd.VPSDE()
    mix = mixture2()
    stats = inv.GaussianStats.from_data(mix.sample(jax.random.key(1), 20000))
    full = jd.ode_sampler(sde, mix.score_fn(sde), (B, 2), rtol=1e-4, atol=1e-4)
    warm = inv.warm_start_sampler(sde, mix.score_fn(sde), (B, 2), t_skip=0.5, rtol=1e-4,
                                  atol=1e-4)
    x_full, nfe_full = full(None, jax.random.key(2))
    x_warm, nfe_warm = warm(None, jax.random.key(2), stats)
    sw_full, floor = sw_and_floor(mix, x_full)
    sw_warm, _ = sw_and_floor(mix, x_warm)
    print(f"warm start: nfe {int(nfe_warm)} vs {int(nfe_full)}; sliced W2 {sw_warm:.4f} vs "
          f"{sw_full:.4f} (floor {floor:.4f})")
    assert sw_warm < max(1.25 * sw_full, 2.0 * floor), (sw_warm, sw_full, floor)
    assert int(nfe_warm) < 0.8 * int(nfe_full), (int(nfe_warm), int(nfe_full))
    # the sliced W2 of a two-mode set is dominated by mode-weight noise: check weights and moments
    frac_full = jd.eval.distances.component_fractions(mix, x_full)
    frac_warm = jd.eval.distances.component_fractions(mix, x_warm)
    m_full, c_full = jd.eval.distances.moment_errors(x_full, mix.mean(), mix.cov())
    m_warm, c_warm = jd.eval.distances.moment_errors(x_warm, mix.mean(), mix.cov())
    print(f"weights {frac_warm} vs {frac_full}; moment errors {float(m_warm):.3f}/{float(c_warm):.3f}"
          f" vs {float(m_full):.3f}/{float(c_full):.3f}")
    np.testing.assert_allclose(frac_warm, mix.weights, atol=0.04)
    assert float(m_warm) < 0.15 and float(c_warm) < 0.25, (m_warm, c_warm)
