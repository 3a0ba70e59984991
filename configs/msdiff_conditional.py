"""Conditional image tasks with the estimators CDE / CDiffE / CMDE / VS-CMDE (Batzolis et al.
2021), with the reference's settings (GBATZOLIS/MSDiff ``configs/ve/inverse_problems``) as defaults.

``--config=configs/msdiff_conditional.py:dataset=digits,task=sr,estimator=cmde`` (the defaults;
a lone value is the estimator: ``msdiff_conditional.py:cde``). The network sees
``[x_t, y_t]`` with ``y`` the observation of the task:

- ``dataset=digits``: the embedded digits at 16x16, small U-Net (4000 steps on a CPU);
  ``task=sr`` super-resolution 8x8 -> 16x16, ``inpaint`` inpainting, ``edges`` Sobel edge map
  -> image.

Task construction (reference, the default): super-resolution's ``y`` is the bicubic
(PyTorch, ``a = -0.75``) low-resolution image nearest-upsampled to full resolution, so ``y``
diffuses at full resolution (``msdiff.sr_downsample='bicubic'``, ``msdiff.sr_y='nearest'``;
``'bicubic'`` upsamples bicubically); inpainting hides one random-position square covering 25 % of
the image per example (``msdiff.mask='random'``, ``mask_coverage=0.25``) and ``y`` is the masked
image without a mask channel (``mask_channel=False``).
- ``dataset=celeba``: 64x64 CelebA (tfds ``celeb_a``), DDPM++; ``sr`` 16x16 -> 64x64.

Reference settings (``setting=reference``, the default): VE SDE of ``x`` with ``sigma_min =
5e-3``, ``sigma_max = sqrt(D)`` (``D = H W C``), continuous time, likelihood weighting,
``reduce_mean``, ``scale_by_sigma``, data in ``[0, 1]`` (``centered=False``); sampling reverse
diffusion + Langevin (``snr = 0.15``, one corrector step, noise removal); the joint ``(x, y)``
loss (``loss=joint``; ``loss=x`` trains only the ``x``-part); CDiffE sampling with a fresh
``y_t`` before every corrector and predictor step (``y_path=fresh``; ``backward`` is the
reference's ``use_path`` option, ``per_step`` / ``fixed`` ours). CMDE: ``y`` diffuses with a VE
SDE of ``sigma_max_y = 0.5`` (arg ``sigma_max_y``), i.e. ``msdiff.y_speed = log(sigma_max_y /
sigma_min) / log(sigma_max / sigma_min)`` (0.571 on digits, exact: same marginals and ``g^2``).
VS-CMDE (``estimator=vs_cmde``): CMDE whose ``sigma_max_y`` decays during training from
``sqrt(D)`` to ``sigma_max_y`` by the reference's inverse-multiplicative schedule, reaching it at
``msdiff.vs_reach_target_steps = training.n_iters`` (the reference's ``reach_target_steps``).

``setting=ours`` is the configuration before issue 13 (VP SDE, no likelihood weighting,
Euler-Maruyama, data in ``[-1, 1]``, ``x``-part loss, ``y_speed = 0.25``, average-pooled
low-resolution ``y`` kept at low resolution, central-square inpainting mask plus a mask channel).

The ``msdiff`` section is read by :func:`jaxdiff.conditional.get_conditional_loss`; the model
must have ``data.num_channels + conditional.section_condition_channels(msdiff, data.num_channels)``
input/output channels."""

import math

from jaxdiff import conditional
from jaxdiff.config_args import choose, parse_arg
from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config

# task argument -> conditional.config_section keywords, per dataset (sr factor: 16 / size)
_TASKS = {
    "digits": {"sr": dict(task="super_resolution", factor=2),
               "inpaint": dict(task="inpainting"),
               "edges": dict(task="edges")},
    "celeba": {"sr": dict(task="super_resolution", factor=4),
               "inpaint": dict(task="inpainting"),
               "edges": dict(task="edges")},
}


def get_config(arg=None):
    """``arg``: ``estimator=cde|cdiffe|cmde|vs_cmde,dataset=digits|celeba,task=sr|inpaint|edges,
    setting=reference|ours,sigma_max_y=0.5,loss=joint|x,y_path=fresh|per_step|fixed|backward``
    (``loss`` / ``y_path`` empty: the setting's default)."""
    arg = parse_arg(arg, estimator="cmde", dataset="digits", task="sr", setting="reference",
                    sigma_max_y=0.5, loss="", y_path="")
    tasks = _TASKS[choose("dataset", arg.dataset, tuple(_TASKS))]
    task = tasks[choose("task", arg.task, tuple(tasks))]
    ref = choose("setting", arg.setting, ("reference", "ours")) == "reference"
    choose("estimator", arg.estimator, conditional.ESTIMATORS)
    loss = arg.loss or ("joint" if ref else "x")
    choose("loss", loss, conditional.LOSS_TARGETS)
    y_path = arg.y_path or ("fresh" if ref else "per_step")
    choose("y_path", y_path, conditional.Y_PATHS)
    config = get_default_config()
    t = config.training
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
        config.eval.batch_size = 120      # of the 180 test digits (as configs/digits.py)
        config.eval.num_loss_batches = 1
    else:
        config.model = model_configs.ddpmpp()
        config.data.dataset = "celeb_a"
        config.data.image_size = 64
        config.data.num_channels = 3
        config.data.center_crop = 140
        config.data.random_flip = True
        config.data.eval_split = "validation"
        t.n_iters = 1000001
    t.reduce_mean = True
    t.continuous = True
    config.sampling.method = "pc"
    config.eval.enable_bpd = False        # p(x | y) has no unconditional bits/dim
    d = config.data.image_size ** 2 * config.data.num_channels
    if ref:
        t.sde = "vesde"
        t.likelihood_weighting = True
        config.model.sigma_min = 5e-3
        config.model.sigma_max = math.sqrt(d)
        config.model.num_scales = 1000
        config.model.scale_by_sigma = True
        config.data.centered = False
        config.sampling.predictor = "reverse_diffusion"
        config.sampling.corrector = "langevin"
        config.sampling.snr = 0.15
        config.sampling.n_steps_each = 1
        config.sampling.noise_removal = True
        smin, smax, smy = config.model.sigma_min, config.model.sigma_max, float(arg.sigma_max_y)
        if not smin < smy <= smax:
            raise ValueError(f"config argument sigma_max_y={smy}: must lie in (sigma_min, "
                             f"sigma_max] = ({smin}, {smax}]")
        y_speed = math.log(smy / smin) / math.log(smax / smin)
    else:
        t.sde = "vpsde"
        t.likelihood_weighting = False
        config.data.centered = True
        config.sampling.predictor = "euler_maruyama"
        config.sampling.corrector = "none"
        y_speed = 0.25
    # task construction: the reference's (bicubic low-res image nearest-upsampled to full
    # resolution; a random square of 25 % of the area, no mask channel) or ours
    construction = {} if ref else dict(sr_downsample="average", sr_y="low", mask="center",
                                       mask_channel=True)
    config.msdiff = conditional.config_section(
        estimator=arg.estimator, y_speed=y_speed, loss=loss, y_path=y_path,
        vs_sigma_max_y_start=0.0, vs_reach_target_steps=int(t.n_iters), **task, **construction)
    return config
