"""CIFAR-10 from the python pickle batches (Krizhevsky 2009, "Learning multiple layers of features
from tiny images"), read from a folder or the ``.tar.gz`` you give with a restricted unpickler;
nothing is downloaded."""
from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..quantize import grid_values
from .dataset import Dataset, PathLike

__all__ = ["CIFAR10_DIR", "CIFAR10_ARCHIVE", "CIFAR10_TRAIN", "CIFAR10_TEST", "CIFAR10_CLASSES", "load_cifar10"]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR10_TEST = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_WHERE = (f"get {CIFAR10_ARCHIVE} (the 'CIFAR-10 python version') from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html and pass the archive, the {CIFAR10_DIR} folder "
                "it unpacks to, or that folder's parent")


def _numpy_global(module: str, name: str) -> Any:
    """``numpy.core.X`` / ``numpy._core.X`` (renamed in NumPy 2) without the deprecated import."""
    for mod in (module.replace("numpy.core.", "numpy._core."), module.replace("numpy._core.", "numpy.core.")):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


#: The largest batch file accepted: an official batch is about 31 MB (10000 images of 3072 bytes
#: plus labels and file names); anything larger is refused before it is read.
MAX_BATCH_BYTES = 32 << 20
#: The most images one batch holds (the official batches hold 10000).
_MAX_BATCH_IMAGES = 10000


class _NDArrayType:
    """What ``numpy.ndarray`` resolves to inside a batch: a token that only :func:`_reconstruct` accepts,
    so a pickle cannot call ``ndarray(shape)`` to allocate an array of any size."""


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    """NumPy's ``_reconstruct`` for the empty array a pickled array starts from (its data come after)."""
    if cls is not _NDArrayType or not isinstance(shape, tuple) or len(shape) != 1 or shape[0] != 0:
        raise pickle.UnpicklingError("it builds an array other than the way NumPy pickles one")
    return np.ndarray((0,), dtype=np.dtype(dtype))


#: The only globals an official CIFAR-10 batch (or a faithful copy of its format) refers to:
#: NumPy's array reconstruction and Python's latin-1 bytes encoding.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_PICKLE_ALLOWED`; any other global is refused, and
    ``numpy.ndarray`` cannot be called to allocate memory (every array's size is bounded by its
    bytes in the file, which is at most :data:`MAX_BATCH_BYTES`)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")
        if module == "_codecs":
            import codecs
            return codecs.encode
        if name == "ndarray":
            return _NDArrayType
        if name == "_reconstruct":
            return _reconstruct
        if module == "numpy":
            return getattr(np, name)
        return _numpy_global(module, name)


def _check_labels(labels: Any, n: int, where: str) -> np.ndarray:
    """``labels`` as int64, checked (type, length, each value an int in 0..9) before any conversion."""
    if isinstance(labels, np.ndarray):
        ok = labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
        what = f"an array of dtype {labels.dtype}, shape {labels.shape}"
    elif isinstance(labels, list):
        ok = len(labels) == n and all(type(v) is int for v in labels)
        what = f"a list of {len(labels)} items" + ("" if ok or len(labels) != n else " that are not all integers")
    else:
        ok, what = False, f"a {type(labels).__name__}"
    if not ok:
        raise ValueError(f"{where}: 'labels' must be {n} integers in 0..9 (one per image), got {what}")
    labels = np.asarray(labels, dtype=np.int64) if isinstance(labels, list) else labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise ValueError(f"{where}: 'labels' must be {n} integers in 0..9, got {int(labels[bad[0]])} at index "
                         f"{int(bad[0])} ({bad.size} outside 0..9)")
    return labels


def _unpickle_batch(raw: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` from one pickled batch (restricted unpickler)."""
    _check_batch_size(len(raw), where)
    try:
        d = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure is a corrupt or foreign file
        raise ValueError(f"{where} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); refusing to load it. "
                         f"Use the official archive: {_CIFAR_WHERE}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{where} holds a {type(d).__name__}, not the dict of a CIFAR-10 batch")

    def get(key: str) -> Any:
        for k in (key.encode(), key):
            if k in d:
                return d[k]
        keys = sorted(repr(k)[:40] for k in list(d)[:20])
        raise ValueError(f"{where} has no {key!r} entry (keys: {keys}); it is not a CIFAR-10 batch")

    data = get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or data.shape[0] > _MAX_BATCH_IMAGES:
        raise ValueError(f"{where}: 'data' must be a uint8 array (N, 3072) with N <= {_MAX_BATCH_IMAGES}, got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    return data, _check_labels(get("labels"), data.shape[0], where)


def _check_batch_size(size: int, where: str) -> None:
    """Refuse a batch file larger than an official one before reading it."""
    if size > MAX_BATCH_BYTES:
        raise ValueError(f"{where} is {size} bytes, more than the {MAX_BATCH_BYTES} a CIFAR-10 batch can be (an "
                         f"official batch is about 31 MB); refusing to read it. {_CIFAR_WHERE}")


def _cifar_source(root: Path) -> Tuple[str, Path]:
    """``("dir", folder with the batches)`` or ``("tar", archive)``."""
    names = CIFAR10_TRAIN + CIFAR10_TEST
    if root.is_file():
        if not tarfile.is_tarfile(root):
            raise ValueError(f"{str(root)!r} is a file but not a tar archive; {_CIFAR_WHERE}")
        return "tar", root
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 path {str(root)!r} does not exist; {_CIFAR_WHERE}")
    for d in (root, root / CIFAR10_DIR):
        if all((d / f).is_file() for f in names):
            return "dir", d
    if (root / CIFAR10_ARCHIVE).is_file():
        return "tar", root / CIFAR10_ARCHIVE
    d = root / CIFAR10_DIR if (root / CIFAR10_DIR).is_dir() else root
    missing = [f for f in names if not (d / f).is_file()]
    raise FileNotFoundError(f"CIFAR-10 batches missing in {str(d)!r}: {', '.join(missing)}. Expected "
                            f"{', '.join(names)} in {CIFAR10_DIR}/ (or {CIFAR10_ARCHIVE} itself); {_CIFAR_WHERE}. "
                            "Nothing is downloaded.")


def _read_cifar_files(kind: str, path: Path) -> Dict[str, Tuple[bytes, str]]:
    names = CIFAR10_TRAIN + CIFAR10_TEST
    if kind == "dir":
        out = {}
        for f in names:
            _check_batch_size((path / f).stat().st_size, str(path / f))
            out[f] = ((path / f).read_bytes(), str(path / f))
        return out
    out = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for f in names:
                member_name = f"{CIFAR10_DIR}/{f}"
                try:
                    member = tf.getmember(member_name)
                except KeyError:
                    raise FileNotFoundError(f"archive {str(path)!r} has no member {member_name}; expected "
                                            f"{', '.join(names)} under {CIFAR10_DIR}/; {_CIFAR_WHERE}") from None
                fh = tf.extractfile(member) if member.isfile() else None
                if fh is None:
                    raise ValueError(f"{member_name} in {str(path)!r} is not a regular file")
                _check_batch_size(member.size, f"{path}:{member_name}")
                out[f] = (fh.read(), f"{path}:{member_name}")  # read into memory; nothing is extracted to disk
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{str(path)!r} is a corrupt archive ({e}); download it again") from None
    return out


def load_cifar10(root: PathLike, data_range: Sequence[float] = (-1.0, 1.0), *,
                 dtype: Optional[torch.dtype] = None) -> Dataset:
    """CIFAR-10 from the official python batches: train ``(50000, 3, 32, 32)``, test ``(10000, 3, 32, 32)``.

    ``root`` is the ``cifar-10-batches-py`` folder, its parent, the ``cifar-10-python.tar.gz``
    archive, or a folder holding that archive (read in memory, nothing is extracted). Train is
    ``data_batch_1`` .. ``data_batch_5`` concatenated in that order, test is ``test_batch``. Each
    batch's ``b"data"`` is ``uint8 (N, 3072)``: per image 1024 red, then 1024 green, then 1024 blue
    values, each a 32x32 image in row-major order, so ``reshape(N, 3, 32, 32)`` gives channels
    ``(R, G, B)``. 256 levels: pixel ``k`` becomes ``lo + k (hi - lo) / 256``. Labels ``(N,)`` long,
    class names in ``info["classes"]``.

    Security: the batches are Python pickles, and unpickling can execute arbitrary code. This
    loader unpickles only these six files, with an unpickler that refuses every global except the
    NumPy array reconstruction they need; still, load only the official archive.

    Raises ``FileNotFoundError`` naming the missing files, ``ValueError`` for a corrupt or foreign file.
    """
    kind, path = _cifar_source(Path(root).expanduser())
    raw = _read_cifar_files(kind, path)
    arrays = {f: _unpickle_batch(b, where) for f, (b, where) in raw.items()}
    out = {}
    for split, names in (("train", CIFAR10_TRAIN), ("test", CIFAR10_TEST)):
        data = np.concatenate([arrays[f][0] for f in names])
        labels = np.concatenate([arrays[f][1] for f in names])
        x = grid_values(torch.from_numpy(data).reshape(-1, 3, 32, 32), 256, data_range, dtype=dtype)
        out[split] = (x, torch.from_numpy(labels))
    info = dict(source=str(path), split="official: data_batch_1..5 are train (in order), test_batch is test",
                classes=CIFAR10_CLASSES, channels=("red", "green", "blue"))
    return Dataset("cifar10", out["train"][0], out["test"][0], 256, tuple(data_range), (3, 32, 32), info,
                   out["train"][1], out["test"][1])
