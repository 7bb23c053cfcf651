"""Training score models by denoising score matching: the configuration, the builders, checkpoints,
the distributed context and the loop, one file each.

* :mod:`~scoresde.training.config`: :class:`TrainConfig`, every field a JSON value, validated;
* :mod:`~scoresde.training.builders`: the SDE and the score model of a configuration;
* :mod:`~scoresde.training.checkpoint`: the run folder's files, atomic checkpoints with every RNG
  state, :func:`load_checkpoint` and :func:`load_model`;
* :mod:`~scoresde.training.distributed`: rank, world size, device, the process group;
* :mod:`~scoresde.training.loop`: :func:`train` (its docstring states the exact procedure);
* :mod:`~scoresde.training.result`: :class:`TrainResult` and :class:`TrainingDiverged`.

This package was the module ``scoresde.train``; that path still works for one release, with a
``DeprecationWarning``. ``from scoresde import train`` is the function.
"""
from .builders import build_model, build_sde
from .checkpoint import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, CheckpointError, UnverifiedCheckpointWarning,
                         load_checkpoint, load_model)
from .config import NET_KINDS, SDE_KINDS, UNET_CONDITIONINGS, TrainConfig
from .lock import RunFolderBusy
from .loop import train
from .result import Hook, TrainingDiverged, TrainResult

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train", "build_sde", "build_model",
           "CheckpointError", "UnverifiedCheckpointWarning", "RunFolderBusy",
           "load_checkpoint", "load_model", "SDE_KINDS", "NET_KINDS", "UNET_CONDITIONINGS", "CHECKPOINT_NAME", "CONFIG_NAME",
           "METRICS_NAME", "Hook"]
