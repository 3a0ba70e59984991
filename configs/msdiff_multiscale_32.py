"""Multi-scale (Haar, non-uniform) diffusion at 32x32 (CIFAR-10), Batzolis et al. 2022: 2 Haar
levels, detail levels ending at T = (0.3, 0.6); coarse-to-fine sampling runs most steps at low
resolution (pixel-proportional speed-up 2.50x at 1000 steps; see docs/bench_multiscale.md).
One training run per scale: ``--config=configs/msdiff_multiscale_32.py:<stage>``."""

from jaxdiff import multiscale
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config(stage: str = "0"):
    """``stage``: the scale (0 = full resolution ... 2 = coarsest) whose network this run trains."""
    config = get_default_config()
    config.model = model_configs.ddpmpp()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.centered = True
    config.data.random_flip = True
    config.training.sde = "vpsde"
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_steps = 1000
    config.msdiff = multiscale.config_section(end_times=(0.3, 0.6), stage=int(stage))
    return config
