"""Multi-scale (Haar, non-uniform) diffusion, Batzolis et al. 2022, DDPM++ VP; one training run
per scale: ``--config=configs/msdiff_multiscale.py:size=64,stage=1`` (defaults ``size=32``,
``stage=0``; a lone value is the stage: ``msdiff_multiscale.py:2``). Coarse-to-fine sampling runs
most steps at low resolution (see docs/bench_multiscale.md for the measured speed-ups):

- ``size=32``: CIFAR-10, 2 Haar levels, detail levels ending at T = (0.3, 0.6)
  (pixel-proportional speed-up 2.50x at 1000 steps);
- ``size=64``: CelebA 64x64, 3 levels, T = (0.2, 0.45, 0.7) (3.54x);
- ``size=128``: CelebA 128x128 (the paper's flagship setting), 3 levels, T = (0.15, 0.35, 0.6),
  one more U-Net resolution, batch 64 (4.52x).

``stage``: the scale (0 = full resolution ... L = coarsest) whose network this run trains."""

from jaxdiff import multiscale
from jaxdiff.config_args import choose, parse_arg
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config

# image size -> (dataset, end times T_1 < ... < T_L of the detail levels)
_SIZES = {32: ("cifar10", (0.3, 0.6)),
          64: ("celeb_a", (0.2, 0.45, 0.7)),
          128: ("celeb_a", (0.15, 0.35, 0.6))}


def get_config(arg=None):
    """``arg``: ``stage=K,size=32|64|128``."""
    arg = parse_arg(arg, stage=0, size=32)
    dataset, end_times = _SIZES[int(choose("size", str(arg.size), tuple(map(str, _SIZES))))]
    config = get_default_config()
    config.model = model_configs.ddpmpp()
    if arg.size == 128:
        config.model.ch_mult = (1, 1, 2, 2, 2)     # one more resolution for 128x128
        config.training.batch_size = 64
    config.data.dataset = dataset
    config.data.image_size = arg.size
    config.data.num_channels = 3
    config.data.centered = True
    if dataset == "celeb_a":
        config.data.center_crop = 140
        config.data.eval_split = "validation"
    else:
        config.data.random_flip = True
    config.training.sde = "vpsde"
    config.training.reduce_mean = True
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_steps = 1000
    config.msdiff = multiscale.config_section(end_times=end_times, stage=arg.stage)
    return config
