"""Multi-scale (Haar, non-uniform) diffusion at 128x128 (CelebA 128x128, the paper's flagship
setting), Batzolis et al. 2022: 3 Haar levels, detail levels ending at T = (0.15, 0.35, 0.6);
coarse-to-fine sampling runs most steps at low resolution (pixel-proportional speed-up 4.52x at 1000 steps; see docs/bench_multiscale.md).
One training run per scale: ``--config=configs/msdiff_multiscale_128.py:<stage>``."""

from jaxdiff import multiscale
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config(stage: str = "0"):
    """``stage``: the scale (0 = full resolution ... 3 = coarsest) whose network this run trains."""
    config = get_default_config()
    config.model = model_configs.ddpmpp()
    config.model.ch_mult = (1, 1, 2, 2, 2)     # one more resolution for 128x128
    config.data.dataset = "celeb_a"
    config.data.image_size = 128
    config.data.num_channels = 3
    config.data.centered = True
    config.data.center_crop = 140
    config.data.eval_split = "validation"
    config.training.batch_size = 64
    config.training.sde = "vpsde"
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_steps = 1000
    config.msdiff = multiscale.config_section(end_times=(0.15, 0.35, 0.6), stage=int(stage))
    return config
