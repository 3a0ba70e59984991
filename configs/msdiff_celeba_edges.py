"""Sobel edges -> image on 64x64 CelebA (tfds ``celeb_a``), DDPM++ VP.

The ``msdiff`` section is read by :func:`jaxdiff.conditional.get_conditional_loss`; the model
must have ``data.num_channels + conditional.condition_channels(task, data.num_channels)``
input/output channels."""

from jaxdiff import conditional
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config(estimator: str = "cmde"):
    """``estimator``: 'cde' | 'cdiffe' | 'cmde' (``--config=configs/msdiff_celeba_edges.py:cde``)."""
    config = get_default_config()
    config.model = model_configs.ddpmpp()        # DDPM++ (VP), as the MSDiff experiments
    config.data.dataset = "celeb_a"
    config.data.image_size = 64
    config.data.num_channels = 3
    config.data.center_crop = 140
    config.data.centered = True
    config.data.random_flip = True
    config.data.eval_split = "validation"
    t = config.training
    t.sde = "vpsde"
    t.reduce_mean = True
    t.n_iters = 1000001
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.eval.enable_bpd = False
    config.msdiff = conditional.config_section(
        estimator=estimator, task="edges", y_speed=0.25)
    return config
