"""The embedded default: scikit-learn's 8x8 handwritten digits (1797 images shipped inside
scikit-learn), built offline into ``<workdir>/tfds`` as a tfds ArrayRecord dataset, at their
native 8x8, a small U-Net (nf=16, 230k parameters) and the VP SDE. Sized for a laptop CPU: one
train step (batch 64) is a fraction of a second on 2 cores; ``--config.data.image_size=16
--config.model.nf=32`` is the 16x16 variant (about 10x the compute per step)."""

from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config():
    config = get_default_config()
    config.model = model_configs.small_unet()
    config.model.nf = 16
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.ema_rate = 0.999
    config.training.ema_warmup = True  # a short run: without it the EMA keeps ~5% of the init
    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.random_flip = False
    config.data.centered = True
    t = config.training
    t.sde = "vpsde"
    t.batch_size = 64
    t.n_iters = 3000
    t.reduce_mean = True
    t.log_freq = 50
    t.eval_freq = 500
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 250
    t.eval_at_end = True  # bits/dim, digits FID etc. of the final EMA model (~1 min)
    config.optim.lr = 1e-3
    config.optim.warmup = 200
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_steps = 250
    config.sampling.num_samples = 64
    config.eval.batch_size = 120  # of the 180 test digits; divisible by 1, 2, 4, 8 devices
    config.eval.num_loss_batches = 1
    config.eval.bpd_num_examples = 32
    config.eval.bpd_rtol = 1e-3
    config.eval.bpd_atol = 1e-3
    config.eval.num_samples = 256
    return config
