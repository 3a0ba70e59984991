"""MNIST (tfds ``mnist``), 28x28x1, a small U-Net, VP SDE, continuous time."""

from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config():
    config = get_default_config()
    config.model = model_configs.small_unet()
    config.model.nf = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (7,)
    config.model.ema_rate = 0.9999
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.data.num_channels = 1
    config.data.random_flip = False
    config.data.centered = True
    config.training.sde = "vpsde"
    config.training.reduce_mean = True
    config.training.batch_size = 128
    config.training.n_iters = 200001
    config.training.snapshot_freq = 10000
    config.training.snapshot_freq_for_preemption = 2000
    config.optim.warmup = 1000
    return config
