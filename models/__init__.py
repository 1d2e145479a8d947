"""The registry of model families: `--model NAME` -> the family's settings and its implementation.

A family is a package models/<name>/ with two modules: ``config`` holds its
settings dataclass (``Config``, free of TensorFlow, so that flags parse at
once) and ``family`` its implementation (``FAMILY``, a models.base.Family).
"""

import importlib

NAMES = ("vae",)
DEFAULT = "vae"


def _check(name):
    if name not in NAMES:
        from utils import UsageError

        raise UsageError(f"unknown model family {name!r}; use one of {', '.join(NAMES)}")


def config_class(name):
    """The settings dataclass of family `name`."""
    _check(name)
    return importlib.import_module(f"models.{name}.config").Config


def family(name):
    """The implementation of family `name` (imports TensorFlow)."""
    _check(name)
    return importlib.import_module(f"models.{name}.family").FAMILY
