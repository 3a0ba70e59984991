"""Training: optimiser / EMA formulas, the scanned step, resume with identical losses, the NaN
guard keeping the last good checkpoint, and workdir errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import parallel
from jaxdiff.data import train_dataset
from jaxdiff.models import configs as model_configs
from jaxdiff.tasks import get_task, train
from jaxdiff.train import NonFiniteLoss, ema_update, get_default_config, lr_schedule
from jaxdiff.train import checkpoint as ckpt
from jaxdiff.train import loop as loop_lib
from jaxdiff.train.experiment import check_workdir
from jaxdiff.train.step import jit_train_step, make_train_step


def tiny_toy_config(**training):
    c = get_default_config()
    c.model = model_configs.mlp()
    c.model.nf, c.model.num_layers, c.model.ema_rate = 32, 1, 0.9
    c.data.dataset, c.data.dim, c.data.centered, c.data.random_flip = "toy", 2, True, False
    c.data.image_size, c.data.num_channels = 1, 1
    t = c.training
    t.batch_size, t.n_iters, t.reduce_mean = 32, 12, True
    t.log_freq, t.eval_freq, t.snapshot_freq, t.snapshot_freq_for_preemption = 1, 1000, 1000, 4
    t.snapshot_sampling, t.async_checkpointing = False, False
    c.optim.lr, c.optim.warmup = 1e-2, 2
    c.eval.batch_size, c.eval.num_loss_batches = 64, 1
    c.parallel.num_devices = 1
    for k, v in training.items():
        t[k] = v
    return c


def test_lr_schedule_and_ema_formulas():
    c = get_default_config()
    c.optim.lr, c.optim.warmup = 2e-4, 5000
    s = lr_schedule(c.optim)
    np.testing.assert_allclose([s(0), s(2499), s(4999), s(10**6)],
                               [2e-4 / 5000, 1e-4, 2e-4, 2e-4], rtol=1e-6)
    e, p = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    np.testing.assert_allclose(ema_update(e, p, 0.9, 0)["w"], 0.9, rtol=1e-6)
    # warm-up: d = min(rate, (1 + n) / (10 + n)) = 1/10 at n = 0
    np.testing.assert_allclose(ema_update(e, p, 0.999, 0, warmup=True)["w"], 0.1, rtol=1e-6)


def test_clipping_bounds_the_update():
    from jaxdiff.train.state import get_optimizer
    c = get_default_config()
    c.optim.lr, c.optim.warmup, c.optim.grad_clip = 1.0, 0, 1.0
    c.optim.optimizer = "AdamW"
    c.optim.weight_decay = 0.0
    opt = get_optimizer(c.optim)
    params = {"w": jnp.zeros(4)}
    st = opt.init(params)
    g = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50 -> clipped to norm 1
    _, st = opt.update(g, st, params)
    mu = st[1][0].mu["w"]  # Adam's first moment saw the clipped gradient
    np.testing.assert_allclose(mu, 0.1 * np.array([0.6, 0.8, 0, 0]), rtol=1e-5)
    c.optim.optimizer, c.optim.weight_decay = "Adam", 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        get_optimizer(c.optim)


def _losses(config, n_steps, n_jit):
    exp = get_task(config)
    lf = exp.train_loss
    step = jit_train_step(make_train_step(lf, exp.optimizer, ema_rate=0.9), exp.mesh,
                          exp.state_shardings)
    state = exp.init(jax.random.PRNGKey(0))
    it = iter(train_dataset(config, ""))
    out = []
    for _ in range(n_steps // n_jit):
        b = parallel.global_batch(np.stack([next(it)["x"] for _ in range(n_jit)]), exp.mesh,
                                  leading=1)
        state, m = step(state, b)
        out.extend(np.asarray(m["loss"]).tolist())
    return np.asarray(out), state


def test_scanned_steps_equal_single_steps():
    c = tiny_toy_config()
    l1, s1 = _losses(c, 6, 1)
    l3, s3 = _losses(c, 6, 3)
    np.testing.assert_allclose(l3, l1, rtol=1e-5, atol=1e-6)
    assert int(s3.step) == 6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 s1.ema_params, s3.ema_params)
    assert l1[-1] < l1[0]  # it learns


def test_resume_continues_with_identical_losses(tmp_path):
    c = tiny_toy_config()
    full = train(c, str(tmp_path / "full"), progress=False)["losses"]
    assert sorted(full) == list(range(1, 13))
    part = train(c, str(tmp_path / "part"), max_steps=5, progress=False)
    assert part["status"] == "max_steps" and max(part["losses"]) == 5
    rest = train(c, str(tmp_path / "part"), progress=False)
    assert sorted(rest["losses"]) == list(range(6, 13))
    for s in range(6, 13):
        assert rest["losses"][s] == full[s], s  # bit-identical: same data, keys and program
    for s in range(1, 6):
        assert part["losses"][s] == full[s]


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = loop_lib.make_train_step

    def poisoned(*a, **k):
        step = real(*a, **k)

        def wrapped(state, batches):
            new, m = step(state, batches)
            bad = new.step >= 7
            return new, {**m, "loss": jnp.where(bad, jnp.nan, m["loss"])}

        return wrapped

    monkeypatch.setattr(loop_lib, "make_train_step", poisoned)
    c = tiny_toy_config()
    with pytest.raises(NonFiniteLoss, match="at step 7"):
        train(c, str(tmp_path / "run"), progress=False)
    m = ckpt.make_manager(str(tmp_path / "run"), read_only=True, with_data=False)
    assert m.latest_step() == 4  # saved every 4 steps; step 8's save never happened
    m.close()


def test_unwritable_or_invalid_workdir(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        check_workdir(str(f))
    with pytest.raises(PermissionError, match="not writable"):
        check_workdir(str(f / "sub"))
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(PermissionError, match="not writable"):
            check_workdir(str(ro / "run"))


@pytest.mark.parametrize("key", ["training", "eval"])
def test_batch_not_divisible_by_the_mesh_is_named(tmp_path, key):
    c = tiny_toy_config()
    c.parallel.num_devices = 8
    c[key].batch_size = 60  # 60 % 8 == 4
    with pytest.raises(ValueError, match=rf"config\.{key}\.batch_size=60 is not divisible by the 8"):
        train(c, str(tmp_path / "run"), progress=False)
