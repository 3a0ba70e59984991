"""Inpainting of the central 8x8 square of 16x16 embedded digits (CDE / CDiffE / CMDE). The
observation is ``[x * mask, mask]``; the network sees 3 channels.

The ``msdiff`` section is read by :func:`jaxdiff.conditional.get_conditional_loss`; the model
must have ``data.num_channels + conditional.condition_channels(task, data.num_channels)``
input/output channels."""

from jaxdiff import conditional
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config(estimator: str = "cmde"):
    """``estimator``: 'cde' | 'cdiffe' | 'cmde' (``--config=configs/msdiff_digits_inpaint.py:cde``)."""
    config = get_default_config()
    config.model = model_configs.small_unet()
    config.model.nf = 32
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.ema_rate = 0.999
    config.data.dataset = "digits"
    config.data.image_size = 16
    config.data.num_channels = 1
    config.data.random_flip = False
    config.data.centered = True
    t = config.training
    t.sde = "vpsde"
    t.batch_size = 64
    t.n_iters = 4000
    t.reduce_mean = True
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 250
    config.optim.lr = 1e-3
    config.optim.warmup = 200
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_steps = 250
    config.eval.enable_bpd = False        # p(x | y) has no unconditional bits/dim
    config.msdiff = conditional.config_section(
        estimator=estimator, task="inpainting", mask="center", y_speed=0.25)
    return config
