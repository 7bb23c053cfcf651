"""MNIST from its four IDX files (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning
applied to document recognition"), read from a folder you give; nothing is downloaded."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..quantize import grid_values
from .dataset import Dataset, PathLike

__all__ = ["MNIST_FILES", "load_mnist"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_WHERE = ("the files of LeCun, Cortes & Burges' MNIST page (http://yann.lecun.com/exdb/mnist/; mirror "
                "https://ossci-datasets.s3.amazonaws.com/mnist/), or the raw/ folder that "
                "torchvision.datasets.MNIST(root, download=True) writes (root/MNIST/raw)")


def _find_mnist(root: Path) -> Dict[str, Path]:
    """The four IDX files (plain or ``.gz``) in ``root`` or ``root/MNIST/raw``."""
    if not root.exists():
        raise FileNotFoundError(f"MNIST folder {str(root)!r} does not exist; put {', '.join(MNIST_FILES.values())} "
                                f"(plain or .gz) there: {_MNIST_WHERE}")
    if not root.is_dir():
        raise NotADirectoryError(f"load_mnist needs the folder holding the IDX files, got the file {str(root)!r}")
    candidates = [root, root / "MNIST" / "raw"]
    found_per_dir = []
    for d in candidates:
        found = {}
        for key, base in MNIST_FILES.items():
            for fname in (base, base + ".gz"):
                if (d / fname).is_file():
                    found[key] = d / fname
                    break
        if len(found) == len(MNIST_FILES):
            return found
        found_per_dir.append(found)
    missing = [MNIST_FILES[k] for k in MNIST_FILES if k not in found_per_dir[0]]
    what = ("none of the four MNIST IDX files" if len(missing) == len(MNIST_FILES)
            else f"{len(missing)} of the four MNIST IDX files")
    raise FileNotFoundError(f"{what} found in {str(root)!r} (also looked in {str(candidates[1])!r}); missing: "
                            f"{', '.join(missing)} (each plain or .gz). Get them from {_MNIST_WHERE}. "
                            "Nothing is downloaded.")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzip-compressed or not).

    Header: two zero bytes, a type byte (``0x08``: unsigned byte), the number of dimensions, then one
    big-endian uint32 per dimension; the data follow in C order. Magic ``0x00000803`` for MNIST
    images (3 dims), ``0x00000801`` for labels (1 dim).
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path} is a corrupt gzip file ({e}); download it again") from None
    expected = 0x0800 | ndim
    if len(raw) < 4:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an IDX file; download it again")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected:
        raise ValueError(f"{path} has IDX magic number 0x{magic:08x}, expected 0x{expected:08x} (unsigned bytes, "
                         f"{ndim} dimension{'s' if ndim > 1 else ''}); is it the right file, and not an HTML error "
                         "page or a truncated download?")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} ends inside its IDX header; the file is truncated, download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if len(raw) != header + size:
        raise ValueError(f"{path}: the IDX header says shape {dims} ({header + size} bytes in all) but the file has "
                         f"{len(raw)} bytes; it is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims).copy()


def load_mnist(root: PathLike, data_range: Sequence[float] = (-1.0, 1.0), *,
               dtype: Optional[torch.dtype] = None) -> Dataset:
    """MNIST from its four IDX files in ``root`` (or ``root/MNIST/raw``, torchvision's layout).

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed (``.gz``). The official split:
    train = the ``train-*`` files (60000), test = the ``t10k-*`` files (10000), in file order.
    Images ``(N, 1, H, W)`` (28x28 for MNIST; Fashion-MNIST has the same format) with 256 levels:
    pixel ``k`` becomes ``lo + k (hi - lo) / 256``. Labels ``(N,)`` long.

    Raises ``FileNotFoundError`` naming the missing files, ``ValueError`` for a corrupt file (wrong
    magic number, truncated data, image and label counts that differ).
    """
    files = _find_mnist(Path(root).expanduser())
    arrays = {k: _read_idx(p, 3 if k.endswith("images") else 1) for k, p in files.items()}
    out = {}
    for split in ("train", "test"):
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if img.shape[0] != lab.shape[0]:
            raise ValueError(f"{files[split + '_images']} holds {img.shape[0]} images but "
                             f"{files[split + '_labels']} holds {lab.shape[0]} labels; "
                             "the files do not belong together")
        out[split] = (grid_values(torch.from_numpy(img).unsqueeze(1), 256, data_range, dtype=dtype),
                      torch.from_numpy(lab.astype(np.int64)))
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise ValueError(f"train images are {tuple(out['train'][0].shape[2:])} but test images "
                         f"{tuple(out['test'][0].shape[2:])}; the files do not belong together")
    info = dict(source="IDX files", files={k: str(p) for k, p in files.items()},
                split="official: train-* files are train, t10k-* files are test", classes=tuple(range(10)))
    return Dataset("mnist", out["train"][0], out["test"][0], 256, tuple(data_range),
                   tuple(out["train"][0].shape[1:]), info, out["train"][1], out["test"][1])
