"""Checkpoints of a training run: the files of a run folder, atomic writes, every random state, reading back.

A checkpoint (``checkpoint_last.pt`` in the run folder; optionally ``checkpoint_<step>.pt`` too)
holds the model, the EMA, the optimizer, the scheduler, the step, the configuration and every
random state (torch CPU and CUDA per rank, the training generator, NumPy and Python ``random``).
It is written to a temporary file in the same folder, flushed to disk and renamed over the old
one (:mod:`scoresde.io`), so a crash leaves the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..data import Dataset
from ..io import atomic_write_with
from ..score import ScoreModel
from .builders import build_model
from .config import TrainConfig

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "METRICS_NAME", "FORMAT", "load_checkpoint", "load_model",
           "write_checkpoint", "save_torch", "keep_copy", "rng_state", "set_rng_state"]

CHECKPOINT_NAME = "checkpoint_last.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FORMAT = "scoresde.train/1"


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`scoresde.io.atomic_write_with` (temporary file, fsync, rename)."""
    atomic_write_with(path, lambda f: torch.save(obj, f))


def keep_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` (a hard link when the file system allows; ``os.replace`` of
    ``src`` later swaps the directory entry, so the link keeps the old content)."""
    tmp = dst.with_name("." + dst.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def rng_state() -> Dict[str, Any]:
    """Torch's global CPU and CUDA states and the Python and NumPy global states (weights_only-safe)."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = dict(
        torch_cpu=torch.get_rng_state(),
        torch_cuda=[s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        python=random.getstate(),
        numpy=dict(key=str(np_state[0]), state=torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
    )
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        if len(state["torch_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
        else:
            warnings.warn(f"the checkpoint holds CUDA RNG states of {len(state['torch_cuda'])} devices but "
                          f"{torch.cuda.device_count()} are visible; CUDA RNG states not restored", stacklevel=3)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def write_checkpoint(path: Path, *, step: int, cfg: TrainConfig, dataset: Dataset, model: ScoreModel,
                     ema: AveragedModel, optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                     per_rank_rng: list, loss: float, wall_time: float, world_size: int,
                     keep_as: Optional[Path] = None) -> None:
    """Write the checkpoint of a run at ``step`` to ``path`` atomically (and keep a copy at
    ``keep_as``). ``per_rank_rng`` holds :func:`rng_state` of every rank, in rank order."""
    ckpt = dict(format=FORMAT, step=step, config=cfg.to_dict(), data_shape=list(dataset.shape),
                dataset=dataset.name, n_levels=dataset.n_levels,
                data_range=None if dataset.data_range is None else list(dataset.data_range),
                model=model.state_dict(), ema=ema.module.state_dict(), ema_n_averaged=int(ema.n_averaged),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                rng=dict(generator=generator.get_state(), per_rank=per_rank_rng),
                loss=loss, wall_time=wall_time, world_size=world_size, torch_version=str(torch.__version__))
    save_torch(ckpt, path)
    if keep_as is not None:
        keep_copy(path, keep_as)


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`train` (``torch.load(weights_only=True)``: plain tensors
    and Python values only). Keys: ``step``, ``config`` (a dict; :meth:`TrainConfig.from_dict`),
    ``data_shape``, ``dataset``, ``n_levels``, ``data_range``, ``model``, ``ema`` (state dicts of a :class:`ScoreModel`),
    ``ema_n_averaged``, ``optimizer``, ``scheduler``, ``rng``, ``loss``, ``wall_time``, ``world_size``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass a checkpoint file written by "
                                f"`scoresde train` (e.g. <out_dir>/{CHECKPOINT_NAME})")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a scoresde training checkpoint (format {FORMAT!r})")
    return ckpt


def load_model(path: Union[str, Path], *, use_ema: bool = True, device: Any = "cpu"
               ) -> Tuple[ScoreModel, TrainConfig, Dict[str, Any]]:
    """``(model, config, checkpoint)``: the :class:`ScoreModel` of a checkpoint with the EMA weights
    (``use_ema=True``, what samplers and likelihoods should use) or the raw weights, in ``eval()``
    mode on ``device``."""
    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = build_model(cfg, tuple(ckpt["data_shape"]))
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    return model.to(device).eval(), cfg, ckpt
