"""CIFAR-10, NCSNPP VP-SDE, continuous time: the paper's hyper-parameters
(see :func:`jaxdiff.train.defaults.cifar10_config`)."""

from jaxdiff.train.defaults import cifar10_config


def get_config():
    return cifar10_config("ncsnpp", "vp", deep=False)
