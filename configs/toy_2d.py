"""2-D toy data (a Gaussian mixture with an exact score, or a checkerboard), a small MLP and the
VP SDE: trains in about a minute on a laptop CPU. ``--config.data.toy=checkerboard`` switches."""

from jaxdiff.models import configs as model_configs
from jaxdiff.train.defaults import get_default_config


def get_config():
    config = get_default_config()
    config.model = model_configs.mlp()
    config.model.nf = 128
    config.model.num_layers = 3
    config.model.ema_rate = 0.999
    config.training.ema_warmup = True  # a short run: without it the EMA keeps ~2% of the init
    config.data.dataset = "toy"
    config.data.toy = "mixture"
    config.data.dim = 2
    config.data.image_size = 1
    config.data.num_channels = 1
    config.data.random_flip = False
    config.data.centered = True
    t = config.training
    t.sde = "vpsde"
    t.batch_size = 256
    t.n_iters = 4000
    t.reduce_mean = True
    t.log_freq = 100
    t.eval_freq = 500
    t.snapshot_freq = 2000
    t.snapshot_freq_for_preemption = 500
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.num_steps = 500
    config.sampling.num_samples = 2048
    config.eval.batch_size = 1024
    config.eval.enable_bpd = False
    config.eval.num_samples = 2048
    return config
