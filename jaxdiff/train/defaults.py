"""The default experiment config: every accepted key of every section, with its type.

This is the schema against which :func:`jaxdiff.train.config.validate_config` checks each config
(an unknown key or a value of the wrong type fails with the key's full name). Values follow the
``default_cifar10_configs`` of Song et al. 2021 (``yang-song/score_sde``); experiment files in
``configs/`` start from :func:`get_default_config` and override what differs.

The ``model`` section is validated by :func:`jaxdiff.models.get_model` (its accepted keys depend on
the architecture), the rest here.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxdiff.models import configs as model_configs

__all__ = ["get_default_config"]


def get_default_config() -> ml_collections.ConfigDict:
    """The shared default (CIFAR-10 sized, DDPM++ VP continuous); returns a fresh ``ConfigDict``."""
    config = ml_collections.ConfigDict()

    # -- training
    config.training = training = ml_collections.ConfigDict()
    training.sde = "vpsde"                 # 'vpsde' | 'subvpsde' | 'vesde'
    training.batch_size = 128              # global batch (all hosts and devices)
    training.n_iters = 1300001
    training.continuous = True
    training.reduce_mean = False
    training.likelihood_weighting = False
    training.loss_eps = 1e-5               # smallest training time
    training.n_jitted_steps = 1            # steps fused in one jitted lax.scan (on XLA:CPU a
                                           # scanned step is ~11x slower: keep 1 there)
    training.log_freq = 50                 # scalars to TensorBoard / the progress bar
    training.eval_freq = 100               # held-out loss
    training.snapshot_freq = 50000         # kept checkpoints + sample grid
    training.snapshot_freq_for_preemption = 10000   # frequent checkpoint, only the latest kept
    training.keep_latest = 2               # how many recent checkpoints survive
    training.snapshot_sampling = True      # PNG grid from EMA params at every snapshot
    training.async_checkpointing = True
    training.ema_warmup = False            # EMA decay min(rate, (1 + n) / (10 + n))
    training.eval_at_end = False           # run --mode=eval once when training completes
    training.resume_with_changes = False   # resume a workdir whose checkpoint was saved with a
                                           # different config (else refused, naming the keys)
    training.cond_drop_prob = 0.1          # class_conditional task: P(label -> null label), the
                                           # classifier-free guidance dropout (Ho & Salimans 2022)
    training.fsdp = False                  # shard large params over the data axis
    training.fsdp_min_size = 2**18         # ... those with at least this many elements

    # -- sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"                 # 'pc' | 'ode' | any jaxdiff.samplers.registry name
    sampling.predictor = "euler_maruyama"  # a name of jaxdiff.samplers.PREDICTORS or 'none'
    sampling.corrector = "none"            # a name of jaxdiff.samplers.CORRECTORS or 'none'
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    sampling.num_steps = 0                 # 0: the SDE's N (config.model.num_scales)
    sampling.rtol = 1e-5                   # ODE sampler tolerances
    sampling.atol = 1e-5
    sampling.num_samples = 64              # --mode=sample and snapshot grids
    sampling.guidance_scale = 0.0          # class_conditional task: w of (1+w) s(x,t,y) - w s(x,t)
    sampling.class_label = -1              # class_conditional task: the class drawn (-1: cycle 0..K-1)
    # end time of the reverse process; None: the sampler's own default (1e-3 for pc / ode /
    # adaptive; the fast samplers' N-dependent end with denoise, jaxdiff.samplers.schedule.end_time)
    sampling.eps = config_dict.placeholder(float)

    # -- evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.batch_size = 256
    evaluate.num_loss_batches = 4          # held-out loss over this many batches
    evaluate.enable_loss = True
    evaluate.enable_bpd = True
    evaluate.bpd_num_examples = 64         # examples in the bits/dim estimate
    evaluate.bpd_repeats = 1               # dequantisations per example
    evaluate.bpd_rtol = 1e-5
    evaluate.bpd_atol = 1e-5
    evaluate.enable_sampling = True
    evaluate.num_samples = 512             # samples for the sample-based metrics
    evaluate.sw_projections = 512          # sliced Wasserstein (toy data)
    evaluate.use_ema = True
    evaluate.checkpoint_step = -1          # -1: the latest checkpoint
    # FID / IS / KID (jaxdiff.eval.quality); weights are a local file, never downloaded
    evaluate.inception_weights = ""        # npz or Orbax dir from jaxdiff.eval.convert_inception
    evaluate.fid_split = ""                # reference split; empty: the training split
    evaluate.fid_num_reference = 50000
    evaluate.inception_batch_size = 100
    evaluate.kid_subsets = 100
    evaluate.kid_subset_size = 1000
    evaluate.digits_classifier_steps = 300 # the digits-FID classifier (trained once, cached)
    # conditional (msdiff) runs' --mode=eval metrics (jaxdiff.tasks.msdiff.ConditionalMetrics)
    evaluate.conditional_diversity_samples = 3  # samples per observation (diversity; < 2: off)
    evaluate.lpips_weights = ""            # local lpips state-dict file (jaxdiff.eval.lpips)
    evaluate.lpips_net = "alex"            # 'alex' | 'vgg'

    # -- data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = "cifar10"               # a tfds name, 'digits', or 'toy'
    data.image_size = 32
    data.num_channels = 3
    data.centered = False                  # [-1, 1] (True) or [0, 1]
    data.random_flip = True
    data.center_crop = 0                   # crop the central square of this size first (0: none)
    data.uniform_dequantization = False
    data.data_dir = ""                     # '' -> tfds default (~/tensorflow_datasets)
    data.train_split = "train"
    data.eval_split = "test"
    data.toy = "mixture"                   # toy data: 'mixture' | 'checkerboard' | 'rings'
    data.dim = 2                           # toy data dimension
    data.toy_size = 1 << 16                # examples per toy "epoch"
    data.worker_count = 0                  # grain worker processes (0: in-process)

    # -- model (architecture keys from jaxdiff.models.configs, plus SDE constants)
    config.model = model_configs.ddpmpp()

    # -- optimiser
    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"               # 'Adam' | 'AdamW'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0                  # global-norm clipping; <= 0 disables

    # -- devices
    config.parallel = parallel = ml_collections.ConfigDict()
    parallel.num_devices = 0               # devices in the data mesh; 0: all
    parallel.distributed = "auto"          # 'auto' | 'yes' | 'no': jax.distributed.initialize()
    parallel.coordinator_address = ""      # for 'yes' outside a managed cluster
    parallel.num_processes = 0
    parallel.process_id = -1

    config.seed = 42
    # the task (jaxdiff.tasks registry): 'score_sde' (unconditional score-SDE training; a config
    # with an ``msdiff`` section runs the MSDiff task of its ``msdiff.mode``) or a registered name
    config.task = "score_sde"
    return config


_CIFAR_MODELS = {
    ("ddpmpp", "vp", False): model_configs.ddpmpp, ("ddpmpp", "vp", True): model_configs.ddpmpp_deep,
    ("ncsnpp", "vp", False): model_configs.ncsnpp, ("ncsnpp", "vp", True): model_configs.ncsnpp_deep,
    ("ncsnpp", "ve", False): model_configs.ncsnpp_ve,
    ("ncsnpp", "ve", True): model_configs.ncsnpp_deep_ve,
}


def cifar10_config(arch: str, sde: str, deep: bool = False) -> ml_collections.ConfigDict:
    """CIFAR-10 continuous-time configs of Song et al. 2021 (``configs/{vp,subvp,ve}/cifar10_*``).

    Args:
      arch: 'ddpmpp' or 'ncsnpp'.
      sde: 'vp', 'subvp' or 've'.
      deep: the 8-blocks-per-resolution variant.

    Returns:
      The config: batch 128, Adam 2e-4, warmup 5000, grad clip 1, ``N = 1000``, beta 0.1-20 or
      sigma 0.01-50, EMA 0.9999 (VP / sub-VP) or 0.999 (VE), snr 0.16; VP / sub-VP train with
      ``reduce_mean=True`` on centered data and sample with Euler-Maruyama, VE trains on [0, 1]
      data and samples with reverse diffusion + Langevin (the paper's PC sampler). DDPM++ for VE
      has no published config: it is the DDPM++ network with ``scale_by_sigma`` and EMA 0.999.
    """
    if arch not in ("ddpmpp", "ncsnpp") or sde not in ("vp", "subvp", "ve"):
        raise ValueError(f"unknown CIFAR-10 config arch={arch!r} sde={sde!r}")
    config = get_default_config()
    ve = sde == "ve"
    key = (arch, "ve" if ve else "vp", deep)
    if key in _CIFAR_MODELS:
        config.model = _CIFAR_MODELS[key]()
    else:  # DDPM++ with a VE SDE
        config.model = (model_configs.ddpmpp_deep if deep else model_configs.ddpmpp)()
        config.model.scale_by_sigma = True
        config.model.ema_rate = 0.999
    config.training.sde = {"vp": "vpsde", "subvp": "subvpsde", "ve": "vesde"}[sde]
    config.training.continuous = True
    config.training.reduce_mean = not ve
    config.training.n_iters = 950001 if deep else 1300001
    config.data.dataset = "cifar10"
    config.data.centered = not ve
    config.sampling.method = "pc"
    config.sampling.snr = 0.16
    if ve:
        config.sampling.predictor, config.sampling.corrector = "reverse_diffusion", "langevin"
    else:
        config.sampling.predictor, config.sampling.corrector = "euler_maruyama", "none"
    return config
