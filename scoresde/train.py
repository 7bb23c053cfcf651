"""Deprecated: the module ``scoresde.train`` is now the package :mod:`scoresde.training`.

``from scoresde import train`` is, as before, the training function. This path works for one
release, with a ``DeprecationWarning``: ``from scoresde.train import TrainConfig`` still works,
and so does calling ``scoresde.train(cfg)`` after ``import scoresde.train``.
"""
import sys
import types

from ._deprecated import forwarder

__getattr__ = forwarder("scoresde.train", "scoresde.training",
                        ("scoresde.training", "scoresde.training.loop", "scoresde.training.config",
                         "scoresde.training.builders", "scoresde.training.checkpoint",
                         "scoresde.training.distributed", "scoresde.training.result"),
                        aliases={"_RESUMABLE": "RESUMABLE", "_FORMAT": "FORMAT"})


class _CallableModule(types.ModuleType):
    """Importing ``scoresde.train`` rebinds the package attribute ``scoresde.train`` (the function) to
    this module; calling it still trains."""

    def __call__(self, *args, **kwargs):
        from .training import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
