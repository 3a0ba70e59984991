"""Experiment configs: every file validates, the paper's CIFAR-10 hyper-parameters, and every bad
key / type / value fails naming the key (in files, in overrides, on the command line)."""

import glob
import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from jaxdiff.train.config import ConfigError, load_config, validate_config
from jaxdiff.train.defaults import get_default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def test_required_config_files_exist():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    required = {"default", "toy_2d", "digits", "mnist", "celeba_64", "ffhq_256"}
    for arch in ("ddpmpp", "ncsnpp"):
        for sde in ("vp", "subvp", "ve"):
            for deep in ("", "_deep"):
                required.add(f"cifar10_{arch}_{sde}{deep}_continuous")
    assert required <= names, sorted(required - names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_every_config_validates(path):
    config = load_config(path)
    assert config.training.sde in ("vpsde", "subvpsde", "vesde")


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp"])
def test_cifar10_paper_hyperparameters(arch, sde):
    c = load_config(os.path.join(ROOT, "configs", f"cifar10_{arch}_{sde}_continuous.py"))
    assert c.training.batch_size == 128
    assert c.optim.lr == 2e-4 and c.optim.warmup == 5000 and c.optim.grad_clip == 1.0
    assert c.optim.optimizer == "Adam" and c.optim.beta1 == 0.9 and c.optim.eps == 1e-8
    assert c.model.num_scales == 1000 and c.sampling.snr == 0.16
    assert (c.model.beta_min, c.model.beta_max) == (0.1, 20.0)
    assert (c.model.sigma_min, c.model.sigma_max) == (0.01, 50.0)
    assert c.model.ema_rate == (0.999 if sde == "ve" else 0.9999)
    assert c.training.sde == {"vp": "vpsde", "subvp": "subvpsde", "ve": "vesde"}[sde]
    assert c.training.continuous
    assert c.data.image_size == 32 and c.data.num_channels == 3 and c.data.random_flip
    assert c.data.centered == (sde != "ve")
    assert c.model.scale_by_sigma == (sde == "ve")
    if sde == "ve":
        assert (c.sampling.predictor, c.sampling.corrector) == ("reverse_diffusion", "langevin")


def _bad(mutate):
    c = get_default_config()
    mutate(c)
    return c


@pytest.mark.parametrize("mutate, key", [
    (lambda c: setattr(c, "trainin", {"batch_size": 3}), "config.trainin"),
    (lambda c: c.training.__setattr__("batch_sizee", 3), "config.training.batch_sizee"),
    (lambda c: c.data.__setattr__("image_sise", 3), "config.data.image_sise"),
    (lambda c: c.training.__setattr__("sde", "vp"), "config.training.sde"),
    (lambda c: c.sampling.__setattr__("method", "euler"), "config.sampling.method"),
    (lambda c: c.sampling.__setattr__("predictor", "heun"), "config.sampling.predictor"),
    (lambda c: c.optim.__setattr__("optimizer", "sgd"), "config.optim.optimizer"),
    (lambda c: c.training.__setattr__("batch_size", 0), "config.training.batch_size"),
    (lambda c: c.model.__setattr__("ema_rate", 1.5), "config.model.ema_rate"),
    (lambda c: c.model.__setattr__("nff", 3), "nff"),
    (lambda c: c.parallel.__setattr__("distributed", "maybe"), "config.parallel.distributed"),
])
def test_bad_key_or_value_names_the_key(mutate, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(_bad(mutate))


def test_wrong_type_names_key_and_types():
    c = get_default_config()
    # ConfigDict itself refuses a str for an int field; a config built from plain dicts does not
    d = c.to_dict()
    d["training"]["n_iters"] = "many"
    import ml_collections
    with pytest.raises(ConfigError, match=r"config\.training\.n_iters: expected int, got str"):
        validate_config(ml_collections.ConfigDict(d))
    d = c.to_dict()
    d["data"]["centered"] = 1
    with pytest.raises(ConfigError, match=r"config\.data\.centered: expected bool"):
        validate_config(ml_collections.ConfigDict(d))


def test_overrides_in_load_config():
    path = os.path.join(ROOT, "configs", "digits.py")
    assert load_config(path, ["training.batch_size=32"]).training.batch_size == 32
    assert load_config(path, ["optim.lr=1"]).optim.lr == 1.0
    assert load_config(path, ["sampling.eps=1e-5"]).sampling.eps == 1e-5
    with pytest.raises(ConfigError, match=r"config\.sampling\.eps"):
        load_config(path, ["sampling.eps='abc'"])
    with pytest.raises(ConfigError, match=r"config\.training\.batch_sizee"):
        load_config(path, ["training.batch_sizee=3"])
    with pytest.raises(ConfigError, match=r"config\.training\.batch_size: expected int"):
        load_config(path, ["training.batch_size='abc'"])
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(os.path.join(ROOT, "configs", "nope.py"))


def _parse(args):
    # config_flags decides which ``--config.*`` override flags exist from the argv it is given
    # (``sys.argv`` by default, which under pytest is pytest's own command line)
    argv = ["prog", f"--config={os.path.join(ROOT, 'configs', 'digits.py')}"] + args
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def test_command_line_overrides():
    c = _parse(["--config.training.batch_size=64", "--config.optim.lr=0.003",
                "--config.model.nf=16"])
    assert c.training.batch_size == 64 and c.optim.lr == 0.003 and c.model.nf == 16
    validate_config(c)
    with pytest.raises(Exception, match="batch_sizee"):
        _parse(["--config.training.batch_sizee=64"])
    # sampling.eps is a float placeholder (None: the sampler's own end time), settable as a float
    assert _parse([]).sampling.eps is None
    assert _parse(["--config.sampling.eps=1e-5"]).sampling.eps == 1e-5


def test_msdiff_section_is_validated():
    path = os.path.join(ROOT, "configs", "msdiff_conditional.py")
    assert load_config(path).msdiff.estimator == "cmde"
    assert load_config(path, ["msdiff.y_speed=0.5"]).msdiff.y_speed == 0.5
    with pytest.raises(ConfigError, match=r"config\.msdiff\.estimator"):
        load_config(path, ["msdiff.estimator='cdx'"])
    with pytest.raises(ConfigError, match=r"config\.msdiff\.y_speed"):
        load_config(path, ["msdiff.y_speed=1.5"])
    ms = os.path.join(ROOT, "configs", "msdiff_multiscale.py")
    assert tuple(load_config(ms).msdiff.end_times) == pytest.approx((1 / 3, 2 / 3))  # k/(L+1)
    with pytest.raises(ConfigError, match=r"config\.msdiff\.stage"):
        load_config(ms, ["msdiff.stage=3"])
    with pytest.raises(ConfigError, match=r"config\.msdiff\.end_times"):
        load_config(ms, ["msdiff.end_times=(0.6, 0.3)"])
    c = load_config(ms)
    c.msdiff.mode = "wavelets"
    with pytest.raises(ConfigError, match=r"config\.msdiff\.mode"):
        validate_config(c)


def _variant(name, arg=None):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", os.path.join(ROOT, "configs",
                                                                                f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config(arg)
    validate_config(config)
    return config


# the nine former configs/msdiff_{digits,celeba}_{sr,inpaint,edges}.py, msdiff_multiscale_{32,64,128}.py
# as variants: (arg) -> (dataset, image_size, model, batch_size, n_iters, msdiff keys)
_CONDITIONAL = {
    "dataset=digits,task=sr": ("digits", 16, "small_unet", 64, 4000,
                               dict(task="super_resolution", factor=2)),
    "dataset=digits,task=inpaint": ("digits", 16, "small_unet", 64, 4000,
                                    dict(task="inpainting", mask="random")),
    "dataset=digits,task=edges": ("digits", 16, "small_unet", 64, 4000, dict(task="edges")),
    "dataset=celeba,task=sr": ("celeb_a", 64, "ncsnpp", 128, 1000001,
                               dict(task="super_resolution", factor=4)),
    "dataset=celeba,task=inpaint": ("celeb_a", 64, "ncsnpp", 128, 1000001,
                                    dict(task="inpainting", mask="random")),
    "dataset=celeba,task=edges": ("celeb_a", 64, "ncsnpp", 128, 1000001, dict(task="edges")),
}


@pytest.mark.parametrize("arg", sorted(_CONDITIONAL))
@pytest.mark.parametrize("estimator", ["cde", "cdiffe", "cmde", "vs_cmde"])
def test_msdiff_conditional_variants(arg, estimator):
    dataset, size, model, batch, n_iters, sec = _CONDITIONAL[arg]
    c = _variant("msdiff_conditional", f"{arg},estimator={estimator}")
    assert (c.data.dataset, c.data.image_size, c.model.name) == (dataset, size, model)
    assert (c.training.batch_size, c.training.n_iters) == (batch, n_iters)
    # the reference's settings (issue 13): VE sigma_min 5e-3, sigma_max sqrt(D), likelihood
    # weighting, reverse diffusion + Langevin snr 0.15, data in [0, 1], sigma_max_y 0.5 (CMDE)
    d = size * size * c.data.num_channels
    assert c.msdiff.estimator == estimator and c.msdiff.loss == "joint"
    assert c.msdiff.y_speed == pytest.approx(np.log(0.5 / 5e-3) / np.log(np.sqrt(d) / 5e-3))
    assert {k: c.msdiff[k] for k in sec} == sec
    assert c.data.num_channels == (1 if dataset == "digits" else 3)
    assert c.data.random_flip == (dataset != "digits") and not c.data.centered
    assert c.training.sde == "vesde" and c.training.likelihood_weighting
    assert (c.model.sigma_min, c.model.sigma_max) == (5e-3, pytest.approx(np.sqrt(d)))
    assert not c.eval.enable_bpd and c.sampling.predictor == "reverse_diffusion"
    assert c.sampling.corrector == "langevin" and c.sampling.snr == 0.15
    ours = _variant("msdiff_conditional", f"{arg},estimator={estimator},setting=ours")
    assert ours.training.sde == "vpsde" and ours.msdiff.y_speed == 0.25 and ours.data.centered
    assert ours.sampling.predictor == "euler_maruyama" and ours.msdiff.loss == "x"
    if ours.msdiff.task == "inpainting":    # ours: a fixed centre square plus a mask channel
        assert (ours.msdiff.mask, ours.msdiff.mask_channel) == ("center", True)
        assert (c.msdiff.mask_coverage, c.msdiff.mask_channel) == (0.25, False)
    assert c.model.ema_rate == (0.999 if dataset == "digits" else 0.9999)


@pytest.mark.parametrize("size, dataset, end_times, ours, ch_mult, batch", [
    (32, "cifar10", (1 / 3, 2 / 3), (0.3, 0.6), (1, 2, 2, 2), 128),
    (64, "celeb_a", (0.25, 0.5, 0.75), (0.2, 0.45, 0.7), (1, 2, 2, 2), 128),
    (128, "celeb_a", (0.25, 0.5, 0.75), (0.15, 0.35, 0.6), (1, 1, 2, 2, 2), 64),
])
def test_msdiff_multiscale_variants(size, dataset, end_times, ours, ch_mult, batch):
    # Default: the reference's T_k = k/(L+1); setting=ours: the hand-picked partition.
    assert tuple(_variant("msdiff_multiscale", f"size={size},setting=ours").msdiff.end_times) == ours
    for stage in range(len(end_times) + 1):
        c = _variant("msdiff_multiscale", f"size={size},stage={stage}")
        assert (c.data.dataset, c.data.image_size, c.data.num_channels) == (dataset, size, 3)
        assert tuple(c.msdiff.end_times) == pytest.approx(end_times) and c.msdiff.stage == stage
        assert tuple(c.model.ch_mult) == ch_mult and c.training.batch_size == batch
        assert c.data.center_crop == (140 if dataset == "celeb_a" else 0)
        assert c.sampling.num_steps == 1000
    with pytest.raises(ValueError, match="stage"):
        _variant("msdiff_multiscale", f"size={size},stage={len(end_times) + 1}")


def test_config_arg_defaults_lone_value_and_errors():
    assert _variant("msdiff_conditional").to_dict() == _variant(
        "msdiff_conditional", "dataset=digits,task=sr,estimator=cmde").to_dict()
    assert _variant("msdiff_conditional", "cde").msdiff.estimator == "cde"       # lone value
    assert _variant("msdiff_multiscale", "2").msdiff.stage == 2
    assert _variant("msdiff_multiscale").msdiff.end_times == pytest.approx((1 / 3, 2 / 3))
    with pytest.raises(ValueError, match="'datset' unknown"):
        _variant("msdiff_conditional", "datset=celeba")
    with pytest.raises(ValueError, match="task='sr4'"):
        _variant("msdiff_conditional", "task=sr4")
    with pytest.raises(ValueError, match="size='48'"):
        _variant("msdiff_multiscale", "size=48")
    with pytest.raises(ValueError, match="stage='one': expected int"):
        _variant("msdiff_multiscale", "stage=one")
    with pytest.raises(ValueError, match="estimator"):
        _variant("msdiff_conditional", "estimator=cfg")


def test_config_arg_on_the_command_line():
    path = os.path.join(ROOT, "configs", "msdiff_conditional.py")
    argv = ["prog", f"--config={path}:dataset=celeba,task=inpaint,estimator=cdiffe",
            "--config.msdiff.y_speed=0.5"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    c = fv.config
    assert (c.data.dataset, c.msdiff.task, c.msdiff.estimator) == ("celeb_a", "inpainting", "cdiffe")
    assert c.msdiff.y_speed == 0.5
