"""Multi-scale (Haar, non-uniform) diffusion, Batzolis et al. 2022, DDPM++ VP; one training run
per scale: ``--config=configs/msdiff_multiscale.py:size=64,stage=1`` (defaults ``size=32``,
``stage=0``, ``setting=reference``; a lone value is the stage: ``msdiff_multiscale.py:2``).
Coarse-to-fine sampling runs most steps at low resolution (docs/bench_multiscale.md):

- ``size=32``: CIFAR-10, 2 Haar levels; ``size=64``: CelebA 64x64, 3 levels; ``size=128``:
  CelebA 128x128 (the paper's flagship setting), 3 levels (the reference's ``d1 d2 d3 a3``), one
  more U-Net resolution, batch 64.

``setting=reference`` (default; GBATZOLIS/MSDiff ``configs/vp/celebA_HQ_160/new_experiments/
multiscale/resolution_128`` and ``lightning_modules/MultiScaleSdeGenerativeModel.py``): end times
``T_k = k / (L + 1)`` (1/3, 2/3 at 32; 1/4, 1/2, 3/4 at 64 and 128), each band a VP SDE with a
linear log-SNR 10 -> -10 over ``[0, T_k]`` (``msdiff.schedule='log_snr'``), likelihood weighting,
reverse-diffusion predictor without corrector, the noise-free mean handed from scale to scale
(``msdiff.handoff='mean'``) and noise removal at the end.

``setting=ours`` (the earlier jaxdiff choice): hand-picked end times (0.3, 0.6) / (0.2, 0.45, 0.7) /
(0.15, 0.35, 0.6), the linear-beta VP SDE (``schedule='base'``), no likelihood weighting,
Euler-Maruyama, the noisy state handed on (``handoff='noisy'``).

``stage``: the scale (0 = full resolution ... L = coarsest) whose network this run trains."""

from jaxdiff import multiscale
from jaxdiff.config_args import choose, parse_arg
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config

# image size -> (dataset, Haar levels L, our hand-picked end times T_1 < ... < T_L)
_SIZES = {32: ("cifar10", 2, (0.3, 0.6)),
          64: ("celeb_a", 3, (0.2, 0.45, 0.7)),
          128: ("celeb_a", 3, (0.15, 0.35, 0.6))}
SETTINGS = ("reference", "ours")


def get_config(arg=None):
    """``arg``: ``stage=K,size=32|64|128,setting=reference|ours``."""
    arg = parse_arg(arg, stage=0, size=32, setting="reference")
    dataset, levels, our_end_times = _SIZES[int(choose("size", str(arg.size),
                                                       tuple(map(str, _SIZES))))]
    reference = choose("setting", arg.setting, SETTINGS) == "reference"
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
    config.training.sde = "vpsde"        # the base for setting=ours; replaced by the log-SNR VP
    config.training.reduce_mean = True
    config.training.likelihood_weighting = reference
    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion" if reference else "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.noise_removal = True
    config.sampling.num_steps = 1000
    if reference:
        config.msdiff = multiscale.config_section(levels=levels, stage=arg.stage)
    else:
        config.msdiff = multiscale.config_section(end_times=our_end_times, stage=arg.stage,
                                                  schedule="base", handoff="noisy")
    return config
