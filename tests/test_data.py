"""Data: the embedded digits (exact against scikit-learn), host sharding that reproduces the
single-host stream, resumable iterators, epochs as permutations, tfds mock data, toy
distributions against their exact moments, and the missing-dataset error."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff.data import DatasetNotFound, eval_dataset, get_source, sample_toy, toy_mixture, train_dataset
from jaxdiff.data.digits import prepare_digits
from jaxdiff.train.defaults import get_default_config


def _digits_config(**data):
    c = get_default_config()
    c.data.dataset = "digits"
    c.data.image_size, c.data.num_channels = 8, 1
    c.data.random_flip, c.data.centered = False, True
    c.training.batch_size = 16
    c.eval.batch_size = 20
    for k, v in data.items():
        c.data[k] = v
    return c


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return prepare_digits(str(tmp_path_factory.mktemp("tfds")))


def test_digits_dataset_matches_sklearn(digits_dir):
    from sklearn.datasets import load_digits
    d = load_digits()
    train = tfds.data_source("sklearn_digits", split="train", data_dir=digits_dir)
    test = tfds.data_source("sklearn_digits", split="test", data_dir=digits_dir)
    assert (len(train), len(test)) == (1617, 180)
    ref = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    # test = every 10th image, train = the others, in order
    np.testing.assert_array_equal(test[3]["image"][..., 0], ref[30])
    assert test[3]["label"] == d.target[30] and test[3]["index"] == 30
    np.testing.assert_array_equal(train[9]["image"][..., 0], ref[11])  # 1..9, 11, ...
    assert train[9]["index"] == 11
    assert train[9]["image"].dtype == np.uint8


def test_eval_batches_are_scaled_images(digits_dir):
    c = _digits_config()
    ds = eval_dataset(c, digits_dir)
    assert len(ds) == 180 // 20
    b = ds[1]
    assert b["x"].shape == (20, 8, 8, 1) and b["image"].dtype == np.uint8
    np.testing.assert_allclose(b["x"], 2.0 * b["image"] / 255.0 - 1.0, atol=1e-6)
    src = get_source(c, "test", digits_dir)
    np.testing.assert_array_equal(b["image"][0], src[20]["image"])


@pytest.mark.parametrize("hosts", [3])
def test_host_shards_concatenate_to_the_single_host_stream(digits_dir, hosts):
    c = _digits_config(random_flip=True, image_size=16, uniform_dequantization=True)
    c.training.batch_size = 48
    single = iter(train_dataset(c, digits_dir))
    parts = [iter(train_dataset(c, digits_dir, process_index=p, process_count=hosts))
             for p in range(hosts)]
    for _ in range(36):  # past the first epoch boundary (1617 / 48 ~ 34 batches)
        g = next(single)
        np.testing.assert_array_equal(g["x"], np.concatenate([next(it)["x"] for it in parts]))
    flipped = np.any(g["image"] != g["image"][:, :, ::-1])
    assert flipped


def test_one_epoch_is_a_permutation_and_epochs_differ(digits_dir):
    c = _digits_config()
    c.training.batch_size = 1617  # one batch = one epoch
    it = iter(train_dataset(c, digits_dir))
    e1, e2 = next(it), next(it)
    src = get_source(c, "train", digits_dir)
    labels = np.asarray([src[i]["label"] for i in range(len(src))])
    np.testing.assert_array_equal(np.sort(e1["label"]), np.sort(labels))
    assert not np.array_equal(e1["label"], e2["label"])
    assert len(np.unique(e1["x"].reshape(1617, -1), axis=0)) == len(
        np.unique(np.stack([src[i]["image"] for i in range(len(src))]).reshape(1617, -1), axis=0))


def test_iterator_state_restores_the_same_batches(digits_dir):
    c = _digits_config(random_flip=True)
    it = iter(train_dataset(c, digits_dir))
    for _ in range(7):
        next(it)
    state = it.get_state()
    want = [next(it)["x"] for _ in range(3)]
    fresh = iter(train_dataset(c, digits_dir))
    fresh.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(fresh)["x"], w)


def test_tfds_mock_data_through_the_pipeline(tmp_path):
    c = get_default_config()
    c.data.dataset, c.data.image_size, c.data.num_channels = "mnist", 28, 1
    c.data.random_flip, c.data.centered = False, False
    c.training.batch_size = 8
    with tfds.testing.mock_data(num_examples=24):
        b = next(iter(train_dataset(c, str(tmp_path))))
    assert b["x"].shape == (8, 28, 28, 1) and b["x"].dtype == np.float32
    np.testing.assert_allclose(b["x"], b["image"] / 255.0, atol=1e-6)
    assert 0.0 <= b["x"].min() and b["x"].max() <= 1.0


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    c = get_default_config()
    c.data.dataset = "mnist"
    with pytest.raises(DatasetNotFound, match=r"mnist.*not prepared.*tfds build mnist"):
        train_dataset(c, str(tmp_path / "empty"))


def test_wrong_channel_count_is_named(digits_dir):
    c = _digits_config(num_channels=3)
    with pytest.raises(ValueError, match="num_channels=3"):
        next(iter(train_dataset(c, digits_dir)))


def test_toy_mixture_samples_match_exact_moments():
    mix = toy_mixture(2)
    x = sample_toy("mixture", np.random.default_rng(0), 50_000, 2)
    np.testing.assert_allclose(x.mean(0), np.asarray(mix.mean()), atol=0.02)
    # exact covariance: 1.5^2/2 I (circle) + 0.2^2 I = 1.165 I
    np.testing.assert_allclose(np.cov(x.T), np.asarray(mix.cov()), atol=0.03)
    np.testing.assert_allclose(np.asarray(mix.cov()), 1.165 * np.eye(2), atol=1e-5)


def test_toy_checkerboard_and_stream_determinism():
    x = sample_toy("checkerboard", np.random.default_rng(1), 10_000, 2)
    col, row = np.floor(x[:, 0] + 2), np.floor(x[:, 1] + 2)
    assert np.all((col + row) % 2 == 0) and np.all(np.abs(x) <= 2)
    c = get_default_config()
    c.data.dataset, c.data.toy, c.training.batch_size = "toy", "rings", 64
    a, b = iter(train_dataset(c, "")), iter(train_dataset(c, ""))
    np.testing.assert_array_equal(next(a)["x"], next(b)["x"])
    r = np.linalg.norm(next(a)["x"], axis=1)
    assert np.all((np.abs(r - 0.75) < 0.3) | (np.abs(r - 1.75) < 0.3))
    with pytest.raises(ValueError, match="'moons'"):
        sample_toy("moons", np.random.default_rng(0), 3)
