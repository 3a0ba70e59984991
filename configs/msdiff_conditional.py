"""Conditional image tasks with the estimators CDE / CDiffE / CMDE (Batzolis et al. 2021), VP SDE.

``--config=configs/msdiff_conditional.py:dataset=digits,task=sr,estimator=cmde`` (the defaults;
a lone value is the estimator: ``msdiff_conditional.py:cde``). The network sees
``[x_t, y_t]`` with ``y`` the observation of the task:

- ``dataset=digits``: the embedded digits at 16x16, small U-Net (4000 steps on a CPU);
  ``task=sr`` super-resolution 8x8 -> 16x16 (2 channels), ``inpaint`` the central 8x8 square
  (``y = [x * mask, mask]``, 3 channels), ``edges`` Sobel edge map -> image (2 channels).
- ``dataset=celeba``: 64x64 CelebA (tfds ``celeb_a``), DDPM++ VP as the MSDiff experiments;
  ``sr`` 16x16 -> 64x64, ``inpaint`` the central 32x32 square, ``edges`` Sobel edges.

The ``msdiff`` section is read by :func:`jaxdiff.conditional.get_conditional_loss`; the model
must have ``data.num_channels + conditional.condition_channels(task, data.num_channels)``
input/output channels."""

from jaxdiff import conditional
from jaxdiff.config_args import choose, parse_arg
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config

# task argument -> conditional.config_section keywords, per dataset (sr factor: 16 / size)
_TASKS = {
    "digits": {"sr": dict(task="super_resolution", factor=2),
               "inpaint": dict(task="inpainting", mask="center"),
               "edges": dict(task="edges")},
    "celeba": {"sr": dict(task="super_resolution", factor=4),
               "inpaint": dict(task="inpainting", mask="center"),
               "edges": dict(task="edges")},
}


def get_config(arg=None):
    """``arg``: ``estimator=cde|cdiffe|cmde,dataset=digits|celeba,task=sr|inpaint|edges``."""
    arg = parse_arg(arg, estimator="cmde", dataset="digits", task="sr")
    tasks = _TASKS[choose("dataset", arg.dataset, tuple(_TASKS))]
    task = tasks[choose("task", arg.task, tuple(tasks))]
    config = get_default_config()
    t = config.training
    t.sde = "vpsde"
    t.reduce_mean = True
    if arg.dataset == "digits":
        config.model = model_configs.small_unet()
        config.model.nf = 32
        config.model.ch_mult = (1, 2, 2)
        config.model.num_res_blocks = 1
        config.model.ema_rate = 0.999
        config.data.dataset = "digits"
        config.data.image_size = 16
        config.data.num_channels = 1
        config.data.random_flip = False
        t.batch_size = 64
        t.n_iters = 4000
        t.snapshot_freq = 1000
        t.snapshot_freq_for_preemption = 250
        config.optim.lr = 1e-3
        config.optim.warmup = 200
        config.sampling.num_steps = 250
    else:
        config.model = model_configs.ddpmpp()
        config.data.dataset = "celeb_a"
        config.data.image_size = 64
        config.data.num_channels = 3
        config.data.center_crop = 140
        config.data.random_flip = True
        config.data.eval_split = "validation"
        t.n_iters = 1000001
    config.data.centered = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.eval.enable_bpd = False        # p(x | y) has no unconditional bits/dim
    config.msdiff = conditional.config_section(estimator=arg.estimator, y_speed=0.25, **task)
    return config
