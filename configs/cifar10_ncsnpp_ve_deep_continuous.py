"""CIFAR-10, NCSNPP VE-SDE (deep), continuous time: the paper's hyper-parameters
(see :func:`jaxdiff.train.defaults.cifar10_config`)."""

from jaxdiff.train.defaults import cifar10_config


def get_config():
    return cifar10_config("ncsnpp", "ve", deep=True)
