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
        sample(None, jax.random.key(0), inv.Matrix.create(jnp.ones((1, 2))), jnp.zeros((4, 3)))
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
    x, z = init_from_prior(sde, op, jnp.broadcast_to(y, (4000, 2)), jax.random.key(0),
                           (4000, 2), jnp.float64)
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
    sample = inv.inpaint_sampler(sde, mix.score_fn(sde), (B, 2), num_steps=200,
                                 corrector="langevin")
    ys = jnp.array([[[0.0, 0.0]], [[1.5, 0.0]]])
    keys = jax.random.split(jax.random.key(0), 2)
    xs, nfe = jax.vmap(sample, in_axes=(None, 0, 0, None))(None, keys, ys, jnp.array([1.0, 0.0]))
    assert int(nfe[0]) == 400
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
    x_smc, nfe = smc_inverse_sampler(sde, mix.score_fn(sde), (2 * B, 2), num_steps=200)(
        None, jax.random.key(0), op, y)
    assert int(nfe) == 200
    np.testing.assert_allclose(x_smc[:, 0], 0.8, atol=1e-6)
    sw, floor = sw_and_floor(post, x_smc)
    frac = fractions(post, x_smc)
    assert sw < 2.0 * floor, (sw, floor)
    np.testing.assert_allclose(frac, post.weights, atol=0.03)
    x_rep, _ = inv.pc_inverse_sampler(sde, mix.score_fn(sde), (2 * B, 2), num_steps=200,
                                      corrector=None)(None, jax.random.key(0), op, y)
    frac_rep = fractions(post, x_rep)
    assert frac_rep[1] - post.weights[1] > 0.1  # documented bias of the replacement method


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
                                                              inv.Matrix.create(A), y)
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
    np.testing.assert_allclose(fractions(cpost, xc), cpost.weights, atol=0.05)


def test_mri_subsampled_fft_posterior_mean():
    """Compressed-sensing MRI on 8x8 'images' from a correlated Gaussian prior: samples satisfy the
    k-space data exactly and their mean is the exact posterior mean (zero-filling is far off)."""
    rng = np.random.default_rng(0)
    n = 8
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pos = np.stack([ii.ravel(), jj.ravel()], 1)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    cov = np.exp(-d2 / 8.0) + 1e-3 * np.eye(n * n)
    prior = jd.GaussianMixture.create([1.0], np.zeros((1, n * n)), covs=cov[None],
                                      event_shape=(n, n))
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
    post = prior.condition(A_real, y_real, noise_std=1e-4)
    sde = jd.VPSDE()
    x, _ = inv.pc_inverse_sampler(sde, prior.score_fn(sde), (256, n, n), num_steps=100,
                                  corrector="langevin")(None, jax.random.key(3), op, y)
    np.testing.assert_allclose(op(x), jnp.broadcast_to(y, x.shape), atol=1e-4)
    err = float(jnp.sqrt(jnp.mean((x.mean(0).ravel() - post.mean()) ** 2)))
    zero_filled = float(jnp.sqrt(jnp.mean((op.pinv(y).ravel() - post.mean()) ** 2)))
    post_std = float(jnp.sqrt(jnp.mean(jnp.diag(post.cov()))))
    assert err < 0.25 * post_std and zero_filled > 3 * err, (err, zero_filled, post_std)
    var_ratio = float(jnp.mean(x.var(0)) / jnp.mean(jnp.diag(post.cov())))
    assert 0.8 < var_ratio < 1.25, var_ratio
