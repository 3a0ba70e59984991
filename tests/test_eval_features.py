"""Sharded feature extraction, cached statistics, and the digits classifier metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.eval import digits as D
from jaxdiff.eval import features as F


def _affine(p, x):
    flat = x.reshape(x.shape[0], -1)
    return flat @ p["w"], jnp.sum(flat, axis=1, keepdims=True)


def test_sharded_extraction_matches_unsharded_with_padding(mesh8):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(37, 4, 4, 1)).astype(np.float32)  # 37: not a multiple of 8 or of 16
    p = {"w": jnp.asarray(rng.normal(size=(16, 5)).astype(np.float32))}
    fn = F.make_feature_fn(_affine, mesh8)
    assert fn.num_shards == 8
    feats, sums = F.extract_features(fn, p, x, batch_size=16)
    assert feats.shape == (37, 5) and sums.shape == (37, 1)
    np.testing.assert_allclose(feats, x.reshape(37, -1) @ np.asarray(p["w"]), rtol=1e-5,
                               atol=1e-5)
    # An iterable of dict batches and max_examples give the same rows.
    it = ({"image": x[i:i + 10]} for i in range(0, 37, 10))
    f2, _ = F.extract_features(F.make_feature_fn(_affine), p, it, max_examples=25)
    np.testing.assert_allclose(f2, feats[:25], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not 'model'"):
        F.make_feature_fn(_affine, mesh8, axis="model")


def test_cached_statistics_computes_once_and_respects_tag(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 3))
    calls = []

    def compute():
        calls.append(1)
        return feats

    path = str(tmp_path / "stats.npz")
    s1 = F.cached_statistics(path, compute, tag="digits/test/v1", keep_features=50)
    s2 = F.cached_statistics(path, compute, tag="digits/test/v1", keep_features=50)
    assert len(calls) == 1
    np.testing.assert_allclose(s1["mu"], feats.mean(0))
    np.testing.assert_allclose(s2["sigma"], np.cov(feats, rowvar=False))
    assert s2["num_examples"] == 200 and s2["features"].shape == (50, 3)
    F.cached_statistics(path, compute, tag="digits/test/v2")
    assert len(calls) == 2  # a different tag never reuses stale numbers


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    d = load_digits()
    imgs = (d.images[..., None] / 16.0).astype(np.float32)
    test = np.arange(len(imgs)) % 10 == 0  # the split of jaxdiff.data.digits
    return imgs[~test], d.target[~test], imgs[test], d.target[test]


def test_digits_classifier_is_accurate_cached_and_metrics_separate(digits_split, tmp_path):
    xtr, ytr, xte, yte = digits_split
    path = str(tmp_path / "digits_classifier.npz")
    params = D.load_or_train_digits_classifier(path, jax.random.key(0), xtr, ytr, tag="8x8",
                                               steps=300)
    acc = np.mean(D.digits_features(params, xte)[1].argmax(1) == yte)
    assert acc > 0.93, acc
    # The cache is reused (bitwise-equal params, no training) for the same data and tag.
    again = D.load_or_train_digits_classifier(path, jax.random.key(1), xtr, ytr, tag="8x8",
                                              steps=300)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)

    real = D.digits_metrics(params, xte, xtr)
    noise = D.digits_metrics(params, np.random.default_rng(0).uniform(size=xte.shape), xtr)
    only_ones = D.digits_metrics(params, xte[yte == 1], xtr)
    assert real["digits_class_coverage"] == 1.0 and real["digits_class_tv"] < 0.25
    assert real["digits_is"] > 7.0 and real["digits_confidence"] > 0.9
    assert noise["digits_fid"] > 10 * real["digits_fid"], (noise, real)
    assert only_ones["digits_class_coverage"] == pytest.approx(0.1)
    assert only_ones["digits_class_tv"] > 0.8 and only_ones["digits_is"] < 1.5
    assert only_ones["digits_fid"] > 3 * real["digits_fid"]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        D.train_digits_classifier(jax.random.key(0), xtr[:4], np.array([0, 1, 2, 12]))


def test_padded_batches_pad_with_the_last_example_and_stop_at_max_examples():
    from jaxdiff.parallel import padded_batches
    a = np.arange(5 * 2).reshape(5, 2)
    b = {"image": np.arange(100, 106).reshape(3, 2)}
    out = list(padded_batches([a, b, a], 4, max_examples=7))
    assert [(x.shape[0], n) for x, n in out] == [(8, 5), (4, 2)]
    np.testing.assert_array_equal(out[0][0][:5], a)
    np.testing.assert_array_equal(out[0][0][5:], np.repeat(a[-1:], 3, axis=0))
    np.testing.assert_array_equal(out[1][0], [[100, 101], [102, 103], [102, 103], [102, 103]])
    out = list(padded_batches([a, np.zeros((0, 2)), a], 1))
    assert [(x.shape[0], n) for x, n in out] == [(5, 5)]         # an empty batch ends the stream
