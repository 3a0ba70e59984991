"""The class_conditional task (classifier-free guidance through the training system): the loss
sees the labels of {'x', 'label'} batches, label dropout maps them to the null label, the
unconditional score is the null-label one, guided sampling passes the cycled classes, and bad
config values are named. The exact guidance formulas are tested in tests/test_cfg.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.train.loop import _next_batches


def _tiny_config(**kw):
    from jaxdiff.models import configs as model_configs
    from jaxdiff.train import get_default_config
    c = get_default_config()
    c.task = "class_conditional"
    c.model = model_configs.small_unet()
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks = 4, (1,), 1
    c.model.num_classes = 11
    c.data.dataset, c.data.image_size, c.data.num_channels = "digits", 8, 1
    c.data.centered, c.data.random_flip = True, False
    c.training.batch_size, c.training.reduce_mean = 8, True
    c.sampling.method, c.sampling.num_steps = "ddim", 3
    c.sampling.guidance_scale = 2.0
    c.parallel.num_devices = 1
    for k, v in kw.items():
        sec, key = k.split("__")
        setattr(getattr(c, sec), key, v)
    return c


def test_next_batches_stacks_the_task_fields():
    it = iter([{"x": np.full((2, 3), i, np.float32), "label": np.array([i, i + 1]),
                "image": None} for i in range(4)])
    assert _next_batches(it, 2).shape == (2, 2, 3)
    b = _next_batches(it, 2, ("x", "label"))
    assert set(b) == {"x", "label"} and b["x"].shape == (2, 2, 3)
    np.testing.assert_array_equal(b["label"], [[2, 3], [3, 4]])


def test_task_losses_see_labels_dropout_and_guided_sampling():
    from jaxdiff.tasks import get_task
    from jaxdiff.tasks.class_conditional import ClassConditionalTask
    task = get_task(_tiny_config(training__cond_drop_prob=0.0))
    assert isinstance(task, ClassConditionalTask) and task.batch_fields == ("x", "label")
    assert task.null_label == 10 and task.num_data_classes == 10
    params = task.init(jax.random.PRNGKey(0)).params
    # Perturb the label embedding so that classes differ measurably.
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(9), p.shape),
                          params)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    key = jax.random.PRNGKey(2)

    def loss(task, labels):
        return float(task.eval_loss(params, key, {"x": x, "label": jnp.asarray(labels)})[0])

    l3, l5, lnull = loss(task, [3] * 4), loss(task, [5] * 4), loss(task, [10] * 4)
    assert abs(l3 - l5) > 1e-4 * abs(l3), (l3, l5)  # the label reaches the network
    # p = 1: every label is dropped, the loss is the null label's whatever the batch says.
    drop = get_task(_tiny_config(training__cond_drop_prob=1.0))
    np.testing.assert_allclose(loss(drop, [3] * 4), lnull, rtol=1e-6)
    np.testing.assert_allclose(loss(drop, [5] * 4), lnull, rtol=1e-6)
    # The unconditional score (bits/dim) is the null-label score.
    t = jnp.full((4,), 0.5)
    np.testing.assert_allclose(task.score_fn(params, x, t),
                               task.cond_score_fn(params, x, t, jnp.full((4,), 10)), rtol=1e-6)
    # Guided sampling: cond=None samples the cycled classes 0..K-1 (= passing them explicitly);
    # other labels give other samples.
    np.testing.assert_array_equal(task.labels(12), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    s = task.sampler(4)
    k = jax.random.PRNGKey(3)
    a, nfe = s(params, k)
    b, _ = s(params, k, jnp.arange(4))
    c, _ = s(params, k, jnp.full((4,), 7))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-4 and int(nfe) == 3 + 1  # + the Tweedie denoise


@pytest.mark.parametrize("kw, msg", [
    ({"model__num_classes": 0}, "config.model.num_classes=0"),
    ({"training__cond_drop_prob": 1.5}, "config.training.cond_drop_prob=1.5"),
    ({"sampling__class_label": 10}, "config.sampling.class_label=10"),
    ({"training__continuous": False}, "config.training.continuous=False"),
])
def test_bad_config_values_are_named(kw, msg):
    from jaxdiff.tasks import get_task
    from jaxdiff.train.config import ConfigError
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
        get_task(_tiny_config(**kw))


def test_digits_cfg_config_loads():
    from jaxdiff.train.config import load_config
    c = load_config("configs/digits_cfg.py")
    assert c.task == "class_conditional" and c.model.num_classes == 11
    assert c.training.cond_drop_prob == 0.1 and c.sampling.guidance_scale == 1.0
