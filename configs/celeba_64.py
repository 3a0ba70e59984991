"""CelebA 64x64 (tfds ``celeb_a``, center crop 140 then resize, as in the reference code),
NCSN++ with the VE SDE (sigma_max 90) and the PC sampler (reverse diffusion + Langevin, snr 0.17)."""

from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config():
    config = get_default_config()
    config.model = model_configs.ncsnpp_ve()
    config.model.sigma_max = 90.0
    config.data.dataset = "celeb_a"
    config.data.image_size = 64
    config.data.num_channels = 3
    config.data.center_crop = 140
    config.data.centered = False
    config.data.random_flip = True
    config.data.eval_split = "validation"
    config.training.sde = "vesde"
    config.training.reduce_mean = False
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.17
    return config
