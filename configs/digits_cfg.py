"""Class-conditional digits with classifier-free guidance (Ho & Salimans 2022): the embedded
default (``configs/digits.py``: 8x8 digits, small U-Net, VP SDE) with 10 + 1 label rows (label 10
is the null label), label dropout ``training.cond_drop_prob = 0.1`` and guided sampling at
``sampling.guidance_scale = 1`` with 50 DDIM steps plus a Tweedie denoise. Sample grids cycle the
classes 0..9 (``sampling.class_label = -1``; set a class to draw only it). See docs/guidance.md."""

import os

from jaxdiff.train.config import load_config

DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")


def get_config():
    config = load_config(DIGITS)
    config.task = "class_conditional"
    config.model.num_classes = 11
    config.training.cond_drop_prob = 0.1
    config.sampling.method = "ddim"
    config.sampling.num_steps = 50
    config.sampling.guidance_scale = 1.0
    config.sampling.class_label = -1
    config.sampling.num_samples = 100
    return config
