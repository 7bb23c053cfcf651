"""Checkpoints of a training run: the files of a run folder, atomic writes, every random state, reading back.

A checkpoint (``checkpoint_last.pt`` in the run folder; optionally ``checkpoint_<step>.pt`` too)
holds the model, the EMA, the optimizer, the scheduler, the step, the configuration, every
random state (torch CPU and CUDA per rank, the training generator, NumPy and Python ``random``),
the running loss sums of the current logging window, a fingerprint of the training data and a
checksum of all of it. It is written to a temporary file in the same folder, flushed to disk and
renamed over the old one (:mod:`scoresde.io`), so a crash leaves the old checkpoint or the new one,
never half of one.

Reading is one loader (:func:`load_checkpoint`): ``torch.load(weights_only=True)`` of a file that
must be a torch zip archive, then the format, the entries and the checksum are checked. Whatever
is wrong with a file (empty, truncated, a text file, a pickle, Python objects other than tensors,
a missing entry, flipped bytes) ends in one :class:`CheckpointError` that names the file, says
what is wrong and what to do; a file is never unpickled with ``weights_only=False``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..data import Dataset
from ..io import atomic_write_with
from ..score import ScoreModel
from .builders import build_model
from .config import RESUMABLE, TrainConfig

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "METRICS_NAME", "FORMAT", "CheckpointError", "UnverifiedCheckpointWarning",
           "load_checkpoint", "load_model", "write_checkpoint", "save_torch", "keep_copy", "rng_state",
           "set_rng_state", "state_checksum", "data_fingerprint", "check_resumable"]

CHECKPOINT_NAME = "checkpoint_last.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
FORMAT = "scoresde.train/1"
#: What to do about a damaged checkpoint, said by every :class:`CheckpointError` about one.
REMEDY = ("restore a kept checkpoint (checkpoint_<step>.pt of keep_checkpoints=True) or a backup over it, or move "
          "it away and train afresh")
#: The entries a checkpoint must have, with their types.
_ENTRIES = dict(step=int, config=dict, data_shape=(list, tuple), model=dict, ema=dict, ema_n_averaged=int,
                optimizer=dict, scheduler=dict, rng=dict)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, not a scoresde checkpoint, unsafe to load, or
    of another run); the message names the file, what is wrong and what to do."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint written before scoresde stored checksums: it loads, but damage cannot be detected."""


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` into ``h`` in a canonical order: dict keys sorted, each value tagged with its
    type (and a tensor with its dtype and shape, then its bytes on the CPU)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):  # weights_only loading may give a tuple back as a list
        h.update(f"L{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:  # None, bool, int, float, str, and the few torch values weights_only allows (dtype, device)
        r = f"{type(obj).__name__}:{obj!r}"
        h.update(f"V{len(r)}:{r};".encode())


def state_checksum(obj: Any) -> str:
    """``"sha256:<hex>"`` of a nested structure of dicts, lists, tensors and Python values
    (:func:`_feed`): the same on every device and after a save/load round trip."""
    h = hashlib.sha256()
    _feed(h, obj)
    return "sha256:" + h.hexdigest()


def data_fingerprint(x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> str:
    """The fingerprint of a training set: :func:`state_checksum` of its values in the training dtype
    (and of its labels too, for a class-conditional run that trains on them)."""
    values = x.detach().to("cpu", torch.get_default_dtype())
    return state_checksum(values if labels is None else [values, labels.detach().to("cpu", torch.long)])


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
                     log_window: Optional[Dict[str, Any]] = None, data_fingerprint: Optional[str] = None,
                     keep_as: Optional[Path] = None) -> None:
    """Write the checkpoint of a run at ``step`` to ``path`` atomically (and keep a copy at
    ``keep_as``). ``per_rank_rng`` holds :func:`rng_state` of every rank, in rank order;
    ``log_window`` the running loss sums of the logging window (``n`` steps, per-rank ``sums``);
    ``data_fingerprint`` the training set's. The ``checksum`` entry is :func:`state_checksum` of all
    the others."""
    ckpt = dict(format=FORMAT, step=step, config=cfg.to_dict(), data_shape=list(dataset.shape),
                dataset=dataset.name, n_levels=dataset.n_levels,
                data_range=None if dataset.data_range is None else list(dataset.data_range),
                data_fingerprint=data_fingerprint,
                model=model.state_dict(), ema=ema.module.state_dict(), ema_n_averaged=int(ema.n_averaged),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                rng=dict(generator=generator.get_state(), per_rank=per_rank_rng), log_window=log_window,
                loss=loss, wall_time=wall_time, world_size=world_size, torch_version=str(torch.__version__))
    ckpt["checksum"] = state_checksum(ckpt)
    save_torch(ckpt, path)
    if keep_as is not None:
        keep_copy(path, keep_as)


def _resolve(path: Union[str, Path]) -> Path:
    """The checkpoint file of ``path`` (a file, or a run folder: its ``checkpoint_last.pt``)."""
    path = Path(path)
    if path.is_dir():
        inner = path / CHECKPOINT_NAME
        if inner.exists() or inner.is_symlink() or path.name != CHECKPOINT_NAME:
            path = inner
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint file; pass the checkpoint_last.pt "
                              "written by `scoresde train` (or the run folder that holds it), and move this folder "
                              "out of the run folder before resuming there")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; pass a checkpoint file written by "
                                f"`scoresde train` (e.g. <out_dir>/{CHECKPOINT_NAME})")
    return path


def _unsafe_globals(path: Path) -> List[str]:
    """The Python objects other than tensors that the pickle of a torch file would build (read, not run)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        return list(find(path)) if find is not None else []
    except Exception:  # noqa: BLE001 - a damaged pickle: not evidence of objects
        return []


def _read(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; every failure of a damaged or foreign file is a
    :class:`CheckpointError`."""
    name = repr(str(path))
    with open(path, "rb") as f:  # a file-system error (permissions, I/O) stays an OSError
        head = f.read(2)
        f.seek(0)
        if not head:
            raise CheckpointError(f"{name} is empty (0 bytes): truncated or not a scoresde checkpoint; {REMEDY}")
        if not zipfile.is_zipfile(f):
            if head[:1] == b"\x80":
                raise CheckpointError(f"{name} is a bare Python pickle, not a scoresde checkpoint (a torch zip "
                                      "archive); refusing to unpickle it (a pickle can run code). Pass a "
                                      "checkpoint_last.pt written by `scoresde train`")
            raise CheckpointError(f"{name} is truncated or not a scoresde checkpoint (it is no torch zip archive); "
                                  f"{REMEDY}")
        f.seek(0)
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            unsafe = _unsafe_globals(path)
            if unsafe:
                raise CheckpointError(
                    f"{name} holds Python objects other than tensors ({', '.join(unsafe[:5])}); refusing to load "
                    "it, since loading them could run code. A scoresde checkpoint holds only tensors and plain "
                    "values: pass one written by `scoresde train`") from None
            raise CheckpointError(f"{name} is damaged (its pickled index cannot be read) or not a scoresde "
                                  f"checkpoint; {REMEDY}") from None
        except Exception as e:  # noqa: BLE001 - torch reports a damaged archive as many types
            raise CheckpointError(f"{name} is truncated or damaged (an entry of the archive cannot be read: "
                                  f"{type(e).__name__}), or not a scoresde checkpoint; {REMEDY}") from None


def _check_entries(ckpt: Any, path: Path) -> None:
    name = repr(str(path))
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{name} is a torch file but not a scoresde training checkpoint (no format "
                              f"{FORMAT!r} entry); pass a checkpoint_last.pt written by `scoresde train`")
    stored = ckpt.get("checksum")
    if stored is None:
        warnings.warn(f"{name} was written before scoresde stored checksums in checkpoints, so damage to it cannot "
                      "be detected: it is loaded unverified (a run resumed from it writes verified checkpoints)",
                      UnverifiedCheckpointWarning, stacklevel=4)
    elif stored != state_checksum({k: v for k, v in ckpt.items() if k != "checksum"}):
        raise CheckpointError(f"{name} is damaged: its contents do not match the checksum stored in it (bytes "
                              f"changed on the disk or in a copy); {REMEDY}")
    bad = [k for k, kind in _ENTRIES.items() if not isinstance(ckpt.get(k), kind)]
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and not (isinstance(rng.get("generator"), torch.Tensor)
                                      and isinstance(rng.get("per_rank"), list) and rng["per_rank"]):
        bad.append("rng.generator/rng.per_rank")
    if bad:
        raise CheckpointError(f"{name} lacks the entries {', '.join(bad)} (or they have the wrong type): damaged "
                              f"or not written by `scoresde train`; {REMEDY}")


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`train` (``torch.load(weights_only=True)``: plain tensors
    and Python values only) and verify it. Keys: ``step``, ``config`` (a dict;
    :meth:`TrainConfig.from_dict`), ``data_shape``, ``dataset``, ``n_levels``, ``data_range``,
    ``data_fingerprint``, ``model``, ``ema`` (state dicts of a :class:`ScoreModel`), ``ema_n_averaged``,
    ``optimizer``, ``scheduler``, ``rng``, ``log_window``, ``loss``, ``wall_time``, ``world_size``,
    ``checksum``.

    ``path`` is a checkpoint file or a run folder (its ``checkpoint_last.pt``). Raises
    ``FileNotFoundError`` where there is none, and :class:`CheckpointError` (a ``ValueError``) for a
    file that is a folder, empty, truncated, not a scoresde checkpoint, holds Python objects other
    than tensors (never unpickled), lacks an entry, or whose checksum does not match; a checkpoint
    written before checksums existed loads with an :class:`UnverifiedCheckpointWarning`."""
    path = _resolve(path)
    ckpt = _read(path, map_location)
    _check_entries(ckpt, path)
    return ckpt


def load_model(path: Union[str, Path], *, use_ema: bool = True, device: Any = "cpu"
               ) -> Tuple[ScoreModel, TrainConfig, Dict[str, Any]]:
    """``(model, config, checkpoint)``: the :class:`ScoreModel` of a checkpoint with the EMA weights
    (``use_ema=True``, what samplers and likelihoods should use) or the raw weights, in ``eval()``
    mode on ``device``. Errors as :func:`load_checkpoint`; weights that do not fit the configuration
    are a :class:`CheckpointError` too."""
    path = _resolve(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        cfg = TrainConfig.from_dict(ckpt["config"], stored=True)
        model = build_model(cfg, tuple(ckpt["data_shape"]))
        model.load_state_dict(ckpt["ema" if use_ema else "model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{str(path)!r} holds a configuration or weights that do not make a scoresde model "
                              f"({e}); {REMEDY}") from None
    return model.to(device).eval(), cfg, ckpt


def check_resumable(ckpt: Dict[str, Any], path: Path, cfg: TrainConfig, dataset: Dataset, fingerprint: str) -> None:
    """Refuse to resume ``cfg`` on ``dataset`` (whose :func:`data_fingerprint` is ``fingerprint``) from
    the checkpoint ``ckpt`` at ``path`` when the configuration differs in a field outside
    ``RESUMABLE``, the data differ, or the checkpoint is beyond ``cfg.steps``."""
    old = TrainConfig.from_dict(ckpt["config"], stored=True).to_dict()
    new = cfg.to_dict()
    diff = [k for k in new if k not in RESUMABLE and old[k] != new[k]]
    fresh = "or start a fresh run in another out_dir"
    if diff:
        changes = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
        raise ValueError(f"{str(path)!r} was written with another configuration ({changes}); resume with the same "
                         f"settings (only {', '.join(RESUMABLE)} may change) {fresh}")
    if tuple(ckpt["data_shape"]) != tuple(dataset.shape):
        raise ValueError(f"the checkpoint's data have shape {tuple(ckpt['data_shape'])}, this data set "
                         f"{tuple(dataset.shape)}; resume on the same data {fresh}")
    stored = ckpt.get("data_fingerprint")
    if stored is not None and stored != fingerprint:
        raise ValueError(f"{str(path)!r} was trained on other data than this run's {dataset.name!r} training set "
                         f"(data fingerprint {stored[:19]}... there, {fingerprint[:19]}... here: same shape, other "
                         f"values or order); resume on the same data, {fresh} (--out elsewhere, or move the old run "
                         "folder away)")
    if int(ckpt["step"]) > cfg.steps:
        raise ValueError(f"the checkpoint is at step {ckpt['step']}, beyond steps={cfg.steps}; "
                         f"ask for steps >= {ckpt['step']}")
