"""What a training run returns (:class:`TrainResult`) and how it fails (:class:`TrainingDiverged`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..score import ScoreModel
from .config import TrainConfig

__all__ = ["TrainResult", "TrainingDiverged", "Hook"]

Hook = Callable[[int, ScoreModel, ScoreModel, TrainConfig], Optional[dict]]


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; the message names the step and the kept checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        config: the configuration of the run.
        out_dir: the run folder; ``checkpoint``, ``config_path``, ``metrics_path`` inside it.
        step: the final step (``config.steps``).
        loss: mean training loss (global batch) of the last logging window, NaN if none was logged.
        model: the trained :class:`ScoreModel` (raw weights) in ``eval()`` mode.
        ema_model: the EMA :class:`ScoreModel` in ``eval()`` mode (use it to sample and evaluate).
        resumed_from: the checkpoint step this call started from, or ``None`` for a fresh run.
        wall_time: seconds spent in this call.
        history: the metrics records written in this call (dicts with ``kind``, ``step``, ...).
        rank, world_size: this process in a distributed run (0 and 1 otherwise).
    """

    config: TrainConfig
    out_dir: Path
    checkpoint: Path
    config_path: Path
    metrics_path: Path
    step: int
    loss: float
    model: ScoreModel
    ema_model: ScoreModel
    resumed_from: Optional[int]
    wall_time: float
    history: Tuple[dict, ...] = field(default=())
    rank: int = 0
    world_size: int = 1
