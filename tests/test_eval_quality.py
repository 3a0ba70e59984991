"""The --mode=eval quality hook on the embedded digits (real vs corrupted samples), and with the
FID Inception (random weights; slow)."""

import os
import types

import jax
import numpy as np
import pytest

from jaxdiff.eval import quality as Q


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "digits_cfg", os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.eval.num_samples = 90
    from jaxdiff.data import resolve_data_dir
    workdir = str(tmp_path_factory.mktemp("evalq"))
    data_dir = resolve_data_dir(config, workdir)
    return config, workdir, data_dir


def _ctx(config, workdir, data_dir, samples):
    return types.SimpleNamespace(config=config, workdir=workdir, data_dir=data_dir,
                                 key=jax.random.key(0), exp=None, samples=lambda: samples)


def test_digits_hook_separates_real_from_corrupted(digits_setup):
    config, workdir, data_dir = digits_setup
    xtr, _ = Q._all_images(config, data_dir, config.data.train_split)
    size = config.data.image_size
    assert xtr.shape[1:] == (size, size, 1) and xtr.dtype == np.uint8
    rng = np.random.default_rng(0)
    real = xtr[rng.choice(len(xtr), 90, replace=False)].astype(np.float32) / 255.0 * 2 - 1
    blurred = 0.3 * real + 0.7 * real.mean(0)  # washed-out, mode-averaged "samples"
    good = Q.quality_metrics(_ctx(config, workdir, data_dir, real))
    bad = Q.quality_metrics(_ctx(config, workdir, data_dir, blurred))
    assert good["digits_classifier_test_accuracy"] > 0.93
    assert good["digits_class_coverage"] == 1.0
    assert bad["digits_fid"] > 5 * good["digits_fid"], (good, bad)
    assert "fid" not in good  # no Inception weights configured
    # Model-space -> [0, 1]: centered data is mapped with (x + 1) / 2 and clipped.
    np.testing.assert_allclose(Q.to_unit_range(np.array([-1.0, 0.0, 1.0, 3.0]), True),
                               [0.0, 0.5, 1.0, 1.0])


@pytest.mark.slow
def test_inception_hook_with_random_weights(digits_setup, tmp_path):
    from jaxdiff.eval import inception as inc
    config, workdir, data_dir = digits_setup
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (rng.normal(size=s.shape) * (2.0 / np.prod(s.shape[:-1])) ** 0.5
                   ).astype(np.float32), inc.inception_param_shapes())

    def unit_bn(tree):
        for k, v in tree.items():
            if k == "bn":
                tree[k] = {"scale": np.ones_like(v["scale"]), "bias": np.zeros_like(v["bias"]),
                           "mean": np.zeros_like(v["mean"]), "var": np.ones_like(v["var"])}
            elif isinstance(v, dict):
                unit_bn(v)

    unit_bn(params)
    path = inc.save_inception_params(params, str(tmp_path / "inc.npz"))
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.eval.inception_weights = path
        config.eval.fid_num_reference = 16
        config.eval.inception_batch_size = 8
        config.eval.kid_subsets = 5
        config.eval.kid_subset_size = 8
    xtr, _ = Q._all_images(config, data_dir, config.data.train_split)
    real = xtr[:16].astype(np.float32) / 255.0 * 2 - 1
    out = Q.inception_quality(config, Q.to_unit_range(real, True), workdir=workdir,
                              data_dir=data_dir, key=jax.random.key(1))
    # The samples are the 16 reference images themselves: FID ~ 0 (relative to the feature
    # scale) and KID within its noise; other digits are farther.
    assert out["fid_num_reference"] == 16 and out["fid_num_samples"] == 16
    ref = np.load(os.path.join(
        workdir, "eval", f"inception_stats_digits_train_{config.data.image_size}_16.npz"))
    scale = np.trace(ref["sigma"])
    assert out["fid"] < 1e-3 * scale, (out, scale)
    assert abs(out["kid"]) < 3 * out["kid_std"] + 1e-9
    other = Q.inception_quality(config, Q.to_unit_range(xtr[100:116] / 127.5 - 1, True),
                                workdir=workdir, data_dir=data_dir, key=jax.random.key(1))
    assert other["fid"] > 10 * out["fid"] + 1e-6 * scale
    assert 1.0 <= out["inception_score"] <= 1008
