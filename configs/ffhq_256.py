"""FFHQ 256x256, NCSN++ (VE, sigma_max 348, N = 2000) as ``ve/ffhq_256_ncsnpp_continuous``.

FFHQ is not in the tfds catalogue: prepare it as a tfds dataset named ``ffhq`` (e.g. with a
``tfds.core.GeneratorBasedBuilder`` over the PNGs, ``file_format='array_record'``, features
``image`` uint8 256x256x3) under ``config.data.data_dir``.
"""

from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config():
    config = get_default_config()
    config.model = model_configs.ncsnpp_256()
    config.data.dataset = "ffhq"
    config.data.image_size = 256
    config.data.num_channels = 3
    config.data.centered = False
    config.data.random_flip = True
    config.data.eval_split = "train"
    config.training.sde = "vesde"
    config.training.batch_size = 8
    config.training.reduce_mean = False
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.15
    return config
