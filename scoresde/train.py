"""Deprecated: the module ``scoresde.train`` is now the package :mod:`scoresde.training`.

``from scoresde import train`` trains, as before. This path works for one release, with a
``DeprecationWarning``: ``import scoresde.train as T; T.TrainConfig`` and ``from scoresde.train import
TrainConfig`` still work (every attribute forwards to :mod:`scoresde.training`), and calling
``scoresde.train(cfg)`` trains (no warning) after ``import scoresde.train`` too.

Python cannot give ``from scoresde import train`` the function and ``import scoresde.train as T`` a
module: both statements read the same attribute ``scoresde.train``. So that both work, whichever
runs first, this module is callable: calling it calls :func:`scoresde.training.train`, and its
``__wrapped__`` is that function (``inspect.signature`` shows its arguments).
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

    @property
    def __wrapped__(self):
        """The function this module stands for when called: ``inspect.signature`` and ``help`` follow it."""
        from .training import train

        return train


sys.modules[__name__].__class__ = _CallableModule
