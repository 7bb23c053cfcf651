"""Helpers every command shares: the usage error, the device, the CPU threads, the process group
under ``torchrun``, loading a checkpoint or a data set, and atomic writes of JSON, tensors and
figures (a temporary file in the same folder, then ``os.replace``, by :func:`scoresde.io.atomic_write`).

File-system errors (:mod:`scoresde.cli.files`) become :class:`~scoresde.cli.files.FileError`:
``cannot write PATH: reason`` (exit status 1)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from .files import FileError, UsageError, file_error, os_error_in

__all__ = ["UsageError", "FileError", "say", "parse_device", "DEFAULT_THREADS", "add_threads_flag", "torch_threads",
           "distributed", "load_model", "load_data", "atomic_bytes", "atomic_json", "atomic_torch", "atomic_figure"]

#: The default of ``--threads``: one intra-op thread per process (see :func:`add_threads_flag`).
DEFAULT_THREADS = 1


def say(msg: str) -> None:
    print(msg, flush=True)


def parse_device(text: str, auto: bool = False):
    """``--device`` text -> ``torch.device``; a usage error for a non-device or a missing CUDA.
    With ``auto`` (``train``), ``"auto"`` is accepted too and returned as it is."""
    import torch

    if auto and text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N"
                         + (" (or auto: CUDA when available)" if auto else "")) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text} but no CUDA device is available; use --device cpu")
    return dev


def add_threads_flag(p: argparse.ArgumentParser, default: int = DEFAULT_THREADS) -> argparse.Action:
    """``--threads N``: torch's intra-op CPU threads for the command (each process sets its own, so
    under ``torchrun`` every rank gets N). :func:`~scoresde.cli.main.main` applies it around the
    command with :func:`torch_threads`; the command's ``args.threads`` holds it.

    The default is 1 because the package's models are small: an MLP's or a small U-Net's operations
    are too short to gain from more threads, and on a shared CPU each parallel region waits for busy
    cores (300 training steps on a shared 2-core machine: 120.8 s with torch's default threads,
    13.6 s with one). ``0`` keeps torch's own default (one thread per core), the
    better choice for a large network on a CPU of its own; on CUDA the count matters little.
    """
    from .flags import nonneg_int

    return p.add_argument("--threads", type=nonneg_int, default=default, metavar="N",
                          help=f"torch CPU threads of this process, of each rank under torchrun (default "
                          f"{default}: small models run fastest single-threaded, and on a shared machine "
                          "multi-threaded small ops are many times slower; 0: torch's default, one per core, "
                          "for a large network on a CPU of its own; on CUDA it matters little)")


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count afterwards
    (``n`` 0 or ``None``: leave torch's count as it is)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def distributed(device_text: str) -> Iterator[Tuple[Any, Any]]:
    """``(Dist, torch.device)`` of this process for a command that runs under ``torchrun``.

    The set-up is the training run's (:func:`scoresde.training.distributed.setup_distributed`):
    with ``WORLD_SIZE > 1`` the process group is initialised here (gloo on CPU, NCCL on CUDA with
    ``cuda:LOCAL_RANK`` for ``--device cuda``) and destroyed when the block ends; a group the caller
    initialised is used as it is; a single process gets rank 0 of 1."""
    import torch.distributed as dist

    from ..training import TrainConfig
    from ..training.distributed import setup_distributed

    dev = parse_device(device_text)
    try:
        d, device = setup_distributed(TrainConfig(device=str(dev)))
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        yield d, device
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def load_model(path: Path, use_ema: bool, device):
    """``(checkpoint path, ScoreModel, TrainConfig, checkpoint dict)`` of a checkpoint file or a run
    folder (its ``checkpoint_last.pt``)."""
    import pickle

    from .. import training
    from ..training import CHECKPOINT_NAME
    from ..training import load_model as _load

    given = path
    if path.is_dir():
        path = path / CHECKPOINT_NAME
        if path.exists() and not path.is_file():
            raise UsageError(f"no checkpoint at {str(path)!r}: it is a folder, not a checkpoint file; pass the "
                             "checkpoint_last.pt (or the run folder) written by `scoresde train`")
        if not path.exists():
            raise UsageError(f"no checkpoint at {str(given)!r}: it is a folder without a {CHECKPOINT_NAME}; pass "
                             "the checkpoint_last.pt (or the run folder) written by `scoresde train`")
    if not path.is_file():
        raise UsageError(f"no checkpoint at {str(path)!r}; pass the checkpoint_last.pt (or the run folder) "
                         "written by `scoresde train`")
    damaged = tuple(c for c in (ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError,
                                getattr(training, "CheckpointError", None)) if isinstance(c, type))
    try:
        model, cfg, ckpt = _load(path, use_ema=use_ema, device=device)
    except Exception as e:  # a file-system error is exit 1; a damaged or foreign file a usage error
        if os_error_in(e) is not None:
            raise file_error(e, path=path, verb="read") from None
        if isinstance(e, damaged):
            raise UsageError(f"cannot read {str(path)!r}: {e}") from None
        raise
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
    except OSError as e:
        if e.errno is None:  # the data package's own message (a missing file, said with its path)
            raise UsageError(f"cannot load data set {name!r}: {e}") from None
        raise file_error(e, path=root, verb="read") from None
    except (ValueError, ImportError, TypeError) as e:
        raise UsageError(f"cannot load data set {name!r}: {e}") from None


def atomic_bytes(path: Path, data: Any) -> Path:
    """:func:`scoresde.io.atomic_write` of bytes (or text, as UTF-8), with a file-system error as a
    :class:`FileError` naming ``path``."""
    from ..io import atomic_write

    try:
        return atomic_write(path, data)
    except OSError as e:
        raise file_error(e, path=path, verb="write") from None


def atomic_json(path: Path, obj: Any) -> Path:
    return atomic_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_torch(path: Path, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_bytes(path, buf.getvalue())


def atomic_figure(fig, path: Path, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_bytes(path, buf.getvalue())
