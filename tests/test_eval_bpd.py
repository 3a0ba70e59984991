"""Dataset bits/dim: sharded over 8 devices equals one device; equals the per-batch mean."""

import jax
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff.eval.bpd import dataset_bits_per_dim
from jaxdiff.likelihood import bits_per_dim


@pytest.mark.slow
def test_dataset_bpd_sharded_matches_unsharded():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    # An Auto-typed mesh, as jaxdiff.parallel.make_mesh builds (diffrax's error norm reduces over
    # the batch, which explicit-sharding meshes refuse without an out_sharding).
    mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    shape = (2, 2, 1)
    gauss = jd.GaussianMixture.create([1.0], np.full((1, 4), 0.0), stds=0.4, event_shape=shape)
    sde = jd.VPSDE()
    fn = bits_per_dim(sde, gauss.score_fn(sde), centered=True, hutchinson=None, rtol=1e-4,
                      atol=1e-4)
    images = np.asarray(jax.random.randint(jax.random.key(0), (13,) + shape, 60, 200), np.uint8)
    batches = [images[:8], images[8:]]  # the second batch (5) is padded to 8 on the mesh
    key = jax.random.key(1)
    one = dataset_bits_per_dim(fn, None, key, batches)
    many = dataset_bits_per_dim(fn, None, key, [{"image": b} for b in batches], mesh=mesh8)
    assert one["bpd_num_examples"] == many["bpd_num_examples"] == 13
    assert many["bits_per_dim"] == pytest.approx(one["bits_per_dim"], rel=1e-4)
    per = [np.asarray(fn(None, jax.random.fold_in(key, i), b)[0]) for i, b in enumerate(batches)]
    assert one["bits_per_dim"] == pytest.approx(np.concatenate(per).mean(), rel=1e-6)
    assert 1.0 < one["bits_per_dim"] < 12.0
    with pytest.raises(ValueError, match="integer .* got float32"):
        dataset_bits_per_dim(fn, None, key, [images.astype(np.float32)])
