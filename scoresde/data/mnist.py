"""MNIST from its four IDX files (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning
applied to document recognition"), read from a folder you give; nothing is downloaded."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

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


#: The most images (or labels) an IDX file may declare: MNIST has 60000, EMNIST at most 814255.
MAX_IDX_ITEMS = 1_000_000
#: Images must be 28x28, as in MNIST, Fashion-MNIST and KMNIST.
_IDX_IMAGE_DIMS = (28, 28)
#: A compressed IDX file may inflate at most this many times over (real MNIST: about 5) once it
#: declares more than :data:`_INFLATE_FREE` bytes; more is a gzip bomb, refused before inflating.
_MAX_INFLATE_RATIO = 100
_INFLATE_FREE = 64 << 20


def _check_idx_header(path: Path, head: bytes, ndim: int, gz: bool) -> Tuple[Tuple[int, ...], int]:
    """The shape declared by an IDX header, checked for plausibility before any data are read."""
    expected = 0x0800 | ndim
    if len(head) < 4:
        raise ValueError(f"{path} is too short ({len(head)} bytes) to be an IDX file; download it again")
    magic = int.from_bytes(head[:4], "big")
    if magic != expected:
        raise ValueError(f"{path}{' (after gzip decompression)' if gz else ''} has IDX magic number 0x{magic:08x}, "
                         f"expected 0x{expected:08x} (unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); "
                         "is it the right file, and not an HTML error page or a truncated download?")
    if len(head) < 4 + 4 * ndim:
        raise ValueError(f"{path} ends inside its IDX header; the file is truncated, download it again")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims[0] > MAX_IDX_ITEMS:
        raise ValueError(f"{path}: the IDX header declares {dims[0]} items, more than the {MAX_IDX_ITEMS} an MNIST-"
                         "format file may hold; the header is corrupt or the file is not MNIST. Download it again")
    if ndim == 3 and dims[1:] != _IDX_IMAGE_DIMS:
        raise ValueError(f"{path}: the IDX header declares {dims[1]}x{dims[2]} images, but MNIST images are 28x28; "
                         "the header is corrupt or the file is not MNIST. Download it again")
    return dims, 4 + 4 * ndim


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzip-compressed or not).

    Header: two zero bytes, a type byte (``0x08``: unsigned byte), the number of dimensions, then one
    big-endian uint32 per dimension; the data follow in C order. Magic ``0x00000803`` for MNIST
    images (3 dims), ``0x00000801`` for labels (1 dim).

    The header is read (and checked: magic, at most :data:`MAX_IDX_ITEMS` items, 28x28 images, a
    compressed file that does not inflate implausibly) before the data, and at most the declared
    number of bytes plus one is read, so a lying header or a gzip bomb is refused without
    inflating it.
    """
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    stored = path.stat().st_size
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(4)
            if len(head) == 4 and int.from_bytes(head, "big") == 0x0800 | ndim:
                head += fh.read(4 * ndim)
            dims, header = _check_idx_header(path, head, ndim, gz)
            size = math.prod(dims)
            if gz and header + size > max(_INFLATE_FREE, _MAX_INFLATE_RATIO * stored):
                raise ValueError(f"{path}: the IDX header declares {header + size} bytes, {(header + size) / stored:.0f} "
                                 f"times the {stored} compressed bytes (real MNIST files inflate about 5 times); "
                                 "refusing to inflate it: the file is corrupt or a gzip bomb. Download it again")
            if not gz and stored != header + size:
                raw_len = stored
            else:
                raw = fh.read(size + 1)  # one byte more than declared shows trailing data
                raw_len = header + len(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is a corrupt gzip file ({e}); download it again") from None
    if raw_len != header + size:
        has = (f"more than {header + size} bytes (trailing data)" if raw_len > header + size and gz
               else f"{raw_len} bytes")
        raise ValueError(f"{path}: the IDX header says shape {dims} ({header + size} bytes in all) but the file has "
                         f"{has}{' once decompressed' if gz else ''}; it is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, count=size).reshape(dims).copy()


def _check_labels(path: Path, labels: np.ndarray) -> None:
    """MNIST labels are the digits 0..9."""
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0..9 "
                         f"({bad.size} of {labels.size} labels are); MNIST labels are the digits 0..9, "
                         "so the file is corrupt or not MNIST. Download it again")


def load_mnist(root: PathLike, data_range: Sequence[float] = (-1.0, 1.0), *,
               dtype: Optional[torch.dtype] = None) -> Dataset:
    """MNIST from its four IDX files in ``root`` (or ``root/MNIST/raw``, torchvision's layout).

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed (``.gz``). The official split:
    train = the ``train-*`` files (60000), test = the ``t10k-*`` files (10000), in file order.
    Images ``(N, 1, H, W)`` (28x28 for MNIST; Fashion-MNIST has the same format) with 256 levels:
    pixel ``k`` becomes ``lo + k (hi - lo) / 256``. Labels ``(N,)`` long.

    Raises ``FileNotFoundError`` naming the missing files, ``ValueError`` for a corrupt file (wrong
    magic number, a header that declares more than :data:`MAX_IDX_ITEMS` items or images other
    than 28x28, truncated or trailing data, a compressed file that would inflate implausibly,
    labels outside 0..9, image and label counts that differ), naming the file.
    """
    files = _find_mnist(Path(root).expanduser())
    arrays = {k: _read_idx(p, 3 if k.endswith("images") else 1) for k, p in files.items()}
    out = {}
    for split in ("train", "test"):
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_labels(files[f"{split}_labels"], lab)
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
