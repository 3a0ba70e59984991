"""FID / IS / KID against closed forms and exact expectations."""

import jax
import numpy as np
import pytest

from jaxdiff.eval import metrics as M


def _rand_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.linspace(1.0, cond, d)) @ q.T


def test_frechet_2x2_non_commuting_closed_form():
    # For 2x2 PSD A, B: tr sqrt(AB) = sqrt(tr(AB) + 2 sqrt(det A det B)).
    a = np.array([[2.0, 0.9], [0.9, 1.0]])
    b = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(a @ b, b @ a)  # genuinely non-commuting
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.1, 0.4])
    tr_sqrt = np.sqrt(np.trace(a @ b) + 2 * np.sqrt(np.linalg.det(a) * np.linalg.det(b)))
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(a) + np.trace(b) - 2 * tr_sqrt
    got = M.frechet_distance(mu1, a, mu2, b)
    assert got == pytest.approx(exact, rel=1e-10, abs=1e-12)
    # Symmetric in its arguments; 1-D case is (m1 - m2)^2 + (s1 - s2)^2.
    assert M.frechet_distance(mu2, b, mu1, a) == pytest.approx(exact, rel=1e-10)
    assert M.frechet_distance([1.0], [[4.0]], [-2.0], [[0.25]]) == pytest.approx(9.0 + 1.5 ** 2)


def test_frechet_high_dim_matches_symmetric_formula():
    # W2^2 = |dm|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), computed with eigh (another route).
    rng = np.random.default_rng(0)
    d = 32
    s1, s2 = _rand_spd(rng, d), _rand_spd(rng, d, cond=100.0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum()
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_even_rank_deficient():
    rng = np.random.default_rng(1)
    for n, d in ((500, 16), (40, 64)):  # the second has a singular covariance (n < d)
        f = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + 3.0
        fid = M.fid_from_features(f, f)
        assert 0.0 <= fid < 1e-6 * np.trace(np.cov(f, rowvar=False)), (n, d, fid)
    # ...while a shifted copy gives exactly the squared shift.
    f = rng.normal(size=(300, 8))
    assert M.fid_from_features(f, f + 0.5) == pytest.approx(8 * 0.25, rel=1e-8)


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma2 contains NaN"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="imaginary part"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))  # not PSD
    with pytest.raises(ValueError, match="at least 2"):
        M.feature_statistics(np.zeros((1, 4)))


def test_inception_score_closed_forms():
    k = 7
    assert M.inception_score(np.zeros((50, k)))[0] == pytest.approx(1.0)
    # Confident and balanced over K classes in every split: IS = K.
    confident = 50.0 * np.tile(np.eye(k), (10, 1))
    mean, std = M.inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    # Two classes, p(y|x) = (a, 1-a) or (1-a, a) alternating: IS = exp(a log 2a + (1-a) log 2(1-a)).
    a = 0.8
    logits = np.log(np.tile([[a, 1 - a], [1 - a, a]], (20, 1)))
    expect = np.exp(a * np.log(2 * a) + (1 - a) * np.log(2 * (1 - a)))
    assert M.inception_score(logits, splits=10)[0] == pytest.approx(expect, rel=1e-10)
    with pytest.raises(ValueError, match="splits=10, N=5"):
        M.inception_score(np.zeros((5, 3)))


def _poly_k(a, b):
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def test_mmd_is_unbiased_against_exact_population_value():
    # Discrete laws on 6 support points in 2-D: the population MMD^2 is p'Kp + q'Kq - 2p'Kq.
    rng = np.random.default_rng(2)
    support = rng.normal(size=(6, 2)) * 2.0
    p = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    q = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    kmat = _poly_k(support, support)
    exact = p @ kmat @ p + q @ kmat @ q - 2 * p @ kmat @ q
    m, trials = 10, 3000  # small sets: a biased (V-statistic) estimate would be far off
    est = np.array([M.polynomial_mmd2_unbiased(support[rng.choice(6, m, p=p)],
                                               support[rng.choice(6, m, p=q)])
                    for _ in range(trials)])
    same = np.array([M.polynomial_mmd2_unbiased(support[rng.choice(6, m, p=p)],
                                                support[rng.choice(6, m, p=p)])
                     for _ in range(trials)])
    se, se0 = est.std() / np.sqrt(trials), same.std() / np.sqrt(trials)
    assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
    assert abs(same.mean()) < 4 * se0, (same.mean(), se0)
    # The bias a V-statistic would carry, (E k(x,x) - E k(x,x'))/m per set, is >> the tolerance.
    bias = (p @ np.diag(kmat) - p @ kmat @ p + q @ np.diag(kmat) - q @ kmat @ q) / m
    assert bias > 10 * se and bias > 10 * se0


def test_kid_on_identical_and_shifted_distributions():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3000, 8)), rng.normal(size=(3000, 8))
    kid, sd = M.kernel_inception_distance(jax.random.key(0), x, y, num_subsets=200,
                                          subset_size=100)
    assert abs(kid) < 4 * sd / np.sqrt(200) + 1e-4, (kid, sd)
    kid1, _ = M.kernel_inception_distance(jax.random.key(0), x, y + 1.0, num_subsets=20,
                                          subset_size=100)
    assert kid1 > 0.1


def test_kid_keys_are_respected():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 0.3
    a = M.kernel_inception_distance(jax.random.key(5), x, y, num_subsets=5, subset_size=50)
    b = M.kernel_inception_distance(jax.random.key(5), x, y, num_subsets=5, subset_size=50)
    c = M.kernel_inception_distance(jax.random.key(6), x, y, num_subsets=5, subset_size=50)
    assert a == b and a != c


# ---- conditional-generation image metrics: SSIM, consistency, diversity ------------------------
def _ssim_brute_force(x, y, L=1.0):
    """SSIM of 2-D images from the paper's definition: the 11x11 Gaussian window (sigma 1.5)
    at every pixel whose window lies inside the image, population moments, mean of the map."""
    r = np.arange(-5, 6)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w = g / g.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(5, x.shape[0] - 5):
        for j in range(5, x.shape[1] - 5):
            a, b = x[i - 5:i + 6, j - 5:j + 6], y[i - 5:i + 6, j - 5:j + 6]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cab = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cab + c2)
                        / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_matches_the_definition_and_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 17, 19, 1))
    y = np.clip(0.7 * x + 0.2 + 0.1 * rng.normal(size=x.shape), 0, 1)
    got = M.ssim(x, y)
    want = [_ssim_brute_force(x[i, ..., 0], y[i, ..., 0]) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert 0.2 < got.min() < got.max() < 0.99
    np.testing.assert_allclose(M.ssim(x, x), 1.0, rtol=1e-12)
    # constant images a, b: the luminance term only, (2ab + C1) / (a^2 + b^2 + C1); also below
    # the window size (8x8 digits: the whole map is averaged)
    for size in (8, 16):
        a = np.full((1, size, size, 2), 0.3)
        b = np.full((1, size, size, 2), 0.8)
        c1 = 1e-4
        np.testing.assert_allclose(M.ssim(a, b), (2 * 0.24 + c1) / (0.09 + 0.64 + c1), rtol=1e-12)
    # data_range scales C1, C2: SSIM of 255-scaled images with L=255 equals that with L=1
    np.testing.assert_allclose(M.ssim(255 * x, 255 * y, data_range=255.0), got, rtol=1e-10)
    with pytest.raises(ValueError, match="shapes differ"):
        M.ssim(x, y[:, :16])
    with pytest.raises(ValueError, match="data_range"):
        M.ssim(x, y, data_range=0.0)


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, 24, 20, 3))
    y = np.clip(x + 0.15 * rng.normal(size=x.shape), 0, 1)
    want = [skm.structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0,
                                      channel_axis=-1) for i in range(3)]
    np.testing.assert_allclose(M.ssim(x, y), want, rtol=1e-10)


def test_consistency_and_psnr_closed_forms():
    y = np.zeros((2, 4, 4, 1))
    yh = y.copy()
    yh[0] += 0.1
    yh[1, 0, 0] = 0.4                     # mse 0.16 / 16 = 0.01
    c = M.consistency(yh, y)
    np.testing.assert_allclose(c["mse"], [0.01, 0.01], rtol=1e-12)
    np.testing.assert_allclose(c["psnr"], [20.0, 20.0], rtol=1e-12)
    np.testing.assert_allclose(M.psnr_db([0.01], data_range=2.0), [10 * np.log10(400)])
    assert M.consistency(y, y)["psnr"][0] == pytest.approx(120.0)
    with pytest.raises(ValueError, match="shapes differ"):
        M.consistency(y, y[:, :2])


def test_diversity_is_the_mean_pairwise_distance():
    base = np.zeros((2, 3, 3, 1))
    s = np.stack([base, base + 0.2, base + np.array([0.5, 0.1]).reshape(2, 1, 1, 1)])
    # pairs (0,1), (0,2), (1,2): per observation [0.2, 0.5, 0.3] and [0.2, 0.1, 0.1]
    np.testing.assert_allclose(M.diversity(s), [1.0 / 3.0, 0.4 / 3.0], rtol=1e-12)
    np.testing.assert_allclose(M.diversity(np.stack([base, base])), 0.0)
    l1 = lambda a, b: np.abs(a - b).reshape(a.shape[0], -1).sum(1)
    np.testing.assert_allclose(M.diversity(s, distance=l1), [9 / 3.0, 9 * 0.4 / 3.0])
    with pytest.raises(ValueError, match="K >= 2"):
        M.diversity(base[None])
