"""The shared default config (the schema every experiment config starts from)."""

from jaxdiff.train.defaults import get_default_config


def get_config():
    return get_default_config()
