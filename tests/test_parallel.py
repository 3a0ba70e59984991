"""Devices: 8 host CPU devices give the loss trajectory of 1 device, global batches, FSDP
shardings, and a checkpoint saved on 8 devices restores on 1."""

import jax
import numpy as np
import pytest

from jaxdiff import parallel
from jaxdiff.data import train_dataset
from jaxdiff.models import configs as model_configs
from jaxdiff.tasks import get_task
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train import get_default_config
from jaxdiff.train.step import jit_train_step, make_train_step


def _config(num_devices, fsdp=False):
    c = get_default_config()
    c.model = model_configs.mlp()
    c.model.nf, c.model.num_layers, c.model.ema_rate = 32, 1, 0.9
    c.data.dataset, c.data.dim = "toy", 2
    c.training.batch_size = 64
    c.training.reduce_mean = True
    c.training.fsdp, c.training.fsdp_min_size = fsdp, 64
    c.optim.lr, c.optim.warmup = 1e-2, 2
    c.parallel.num_devices = num_devices
    return c


def _run(config, n_steps):
    exp = get_task(config)
    lf = exp.train_loss
    step = jit_train_step(make_train_step(lf, exp.optimizer, ema_rate=0.9), exp.mesh,
                          exp.state_shardings)
    state = exp.init(jax.random.PRNGKey(0))
    it = iter(train_dataset(config, ""))
    losses = []
    for _ in range(n_steps):
        b = parallel.global_batch(next(it)["x"][None], exp.mesh, leading=1)
        state, m = step(state, b)
        losses.append(float(m["loss"][0]))
    return np.asarray(losses), state, exp


@pytest.fixture(scope="module")
def one_device_run():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    return _run(_config(1), 20)


def test_8_devices_match_1_device_for_20_steps(one_device_run):
    l1, s1, _ = one_device_run
    l8, s8, exp8 = _run(_config(8), 20)
    assert exp8.mesh.shape["data"] == 8
    np.testing.assert_allclose(l8, l1, rtol=2e-5, atol=1e-6)
    assert l1[-1] < 0.8 * l1[0]  # a real trajectory, not a constant
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 s8.params, s1.params)


def test_fsdp_matches_replicated(one_device_run):
    l1, _, _ = one_device_run
    lf, sf, exp = _run(_config(8, fsdp=True), 5)
    specs = {str(s.spec) for s in jax.tree.leaves(exp.state_shardings.params)}
    assert any("data" in s for s in specs), specs  # some params really are sharded
    np.testing.assert_allclose(lf, l1[:5], rtol=2e-5, atol=1e-6)


def test_global_batch_and_mesh_errors(mesh8):
    mesh = parallel.make_mesh(8)
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = parallel.global_batch(x, mesh)
    assert g.shape == (16, 3) and len(g.addressable_shards) == 8
    assert g.addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(g), x)
    with pytest.raises(ValueError, match="not divisible by the 8 local devices"):
        parallel.global_batch(x[:12], mesh)
    with pytest.raises(ValueError, match="num_devices=9"):
        parallel.make_mesh(9)


def test_checkpoint_saved_on_8_devices_restores_on_1(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    _, s8, exp8 = _run(_config(8, fsdp=True), 2)
    m = ckpt.make_manager(str(tmp_path), async_save=True, with_data=False)
    ckpt.save(m, 2, s8, config=exp8.config)
    m.wait_until_finished()
    m.close()
    exp1 = get_task(_config(1))
    state, meta = ckpt.restore_latest(str(tmp_path), exp1.abstract_state)
    assert meta["step"] == 2 and meta["device_count"] == jax.device_count()
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(s8)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert len(a.sharding.device_set) == 1
