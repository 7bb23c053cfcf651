"""Helpers every command shares: the usage error, the device, loading a checkpoint or a data set,
and atomic writes of JSON, tensors and figures (a temporary file in the same folder, then
``os.replace``, by :func:`scoresde.io.atomic_write`)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

__all__ = ["UsageError", "say", "parse_device", "load_model", "load_data", "atomic_json", "atomic_torch",
           "atomic_figure"]


class UsageError(Exception):
    """Raised inside a command for a user error: reported through ``parser.error`` (exit status 2)."""


def say(msg: str) -> None:
    print(msg, flush=True)


def parse_device(text: str):
    """``--device`` text -> ``torch.device``; a usage error for a non-device or a missing CUDA."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text} but no CUDA device is available; use --device cpu")
    return dev


def load_model(path: Path, use_ema: bool, device):
    """``(checkpoint path, ScoreModel, TrainConfig, checkpoint dict)`` of a checkpoint file or a run
    folder (its ``checkpoint_last.pt``)."""
    from ..training import CHECKPOINT_NAME
    from ..training import load_model as _load

    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UsageError(f"no checkpoint at {str(path)!r}; pass the checkpoint_last.pt (or the run folder) "
                         "written by `scoresde train`")
    try:
        model, cfg, ckpt = _load(path, use_ema=use_ema, device=device)
    except (ValueError, RuntimeError, OSError) as e:
        raise UsageError(f"cannot read {str(path)!r}: {e}") from None
    return path, model, cfg, ckpt


def load_data(name: str, root: Optional[str]):
    """The data set ``name``; MNIST and CIFAR-10 need ``root`` (nothing is downloaded), the others
    read no files."""
    from ..data import load_dataset

    if name in ("mnist", "cifar10") and root is None:
        raise UsageError(f"--dataset {name} needs --data-root: the folder with the {name.upper()} files "
                         "(nothing is downloaded)")
    if name not in ("mnist", "cifar10") and root is not None:
        raise UsageError(f"--dataset {name} reads no files; drop --data-root")
    try:
        return load_dataset(name, root)
    except (FileNotFoundError, ValueError, ImportError, TypeError) as e:
        raise UsageError(f"cannot load data set {name!r}: {e}") from None


def atomic_json(path: Path, obj: Any) -> Path:
    from ..io import atomic_write

    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_torch(path: Path, obj: Any) -> Path:
    import torch

    from ..io import atomic_write

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, buf.getvalue())


def atomic_figure(fig, path: Path, dpi: int = 120) -> Path:
    from ..io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())
