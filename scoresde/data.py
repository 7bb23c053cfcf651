"""Data sets, the quantization grid, and uniform dequantization.

Every loader returns a :class:`Dataset`: train and test tensors ``(N, *shape)`` together with the
quantization grid they live on (``n_levels``, ``data_range``), so that bits/dim is always computed
with the right offset: ``evaluate_bpd(score_fn, sde, ds.test, **ds.bpd_kwargs())``.

**Grid.** Quantized data sets hold grid values ``lo + k w``, ``w = (hi - lo) / n_levels``, the
convention of :mod:`scoresde.quantize` (written out there once); :func:`scale` maps integer levels
to them, :func:`to_levels` back, :func:`dequantize` adds the ``U(0, w)`` noise.

Data sets (``load_dataset(name, ...)`` dispatches on the name):

* ``"digits"``: scikit-learn's 8x8 digits (1797 images, grey levels 0..16, ``n_levels = 17``), shape
  ``(1, 8, 8)``, split with a seeded permutation (:func:`load_digits`). Needs scikit-learn.
* ``"mnist"``: the four IDX files of LeCun et al. (1998), read from a folder you give (:func:`load_mnist`);
  ``(1, 28, 28)``, 256 levels, the official 60000/10000 split.
* ``"cifar10"``: the python pickle batches of Krizhevsky (2009), read from a folder or the
  ``.tar.gz`` you give (:func:`load_cifar10`); ``(3, 32, 32)``, 256 levels, the official 50000/10000 split.
* the 2-D toy sets of :mod:`scoresde.targets` (:data:`TOY_DATASETS`): continuous, ``n_levels = None``
  (:func:`load_toy`).

Nothing is ever downloaded: the file loaders read what you put on disk and say which files they
expected and where to get them.

References: LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document
recognition" (MNIST, IDX format); Krizhevsky (2009), "Learning multiple layers of features from tiny
images" (CIFAR-10); Alpaydin & Kaynak (1998), UCI optical recognition of handwritten digits (the
scikit-learn digits).
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import inspect
import io
import math
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import targets
from .quantize import dequantize, grid_cell, grid_values, to_levels

__all__ = [
    "Dataset", "DATASETS", "TOY_DATASETS", "scale", "to_levels", "dequantize", "load_digits", "load_mnist",
    "load_cifar10", "load_toy", "load_dataset", "iterate_batches",
]

PathLike = Union[str, Path]
DataRange = Tuple[float, float]

#: Integer levels to data values (:func:`scoresde.quantize.grid_values`), under the name this module
#: has always used.
scale = grid_values

# ---------------------------------------------------------------------------------------------
# The data set object.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair with the quantization grid it lives on.

    Attributes:
        name: the data set's name (``"digits"``, ``"mnist"``, ``"cifar10"``, a toy name).
        train: ``(N_train, *shape)`` floating tensor of data values.
        test: ``(N_test, *shape)`` floating tensor of data values.
        n_levels: number of quantization levels (17 for digits, 256 for 8-bit images), or ``None``
            for continuous data. Quantized values are exactly the grid values ``lo + k w``,
            ``w = (hi - lo) / n_levels``, ``k in {0, ..., n_levels - 1}`` (see the module docstring).
        data_range: ``(lo, hi)`` of the grid, or ``None`` for continuous data.
        shape: the per-sample shape, e.g. ``(1, 28, 28)`` or ``(2,)``.
        info: provenance: source files, split rule, seed, class names, an exact oracle for
            mixture toy sets (``info["oracle"]``, a :class:`~scoresde.targets.GaussianMixture`).
        train_labels, test_labels: ``(N,)`` long class labels, or ``None``.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    n_levels: Optional[int]
    data_range: Optional[DataRange]
    shape: Tuple[int, ...]
    info: Dict[str, Any] = field(default_factory=dict)
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        if (self.n_levels is None) != (self.data_range is None):
            raise ValueError("n_levels and data_range go together: give both (quantized data) or neither "
                             f"(continuous data), got n_levels={self.n_levels!r}, data_range={self.data_range!r}")
        if self.n_levels is not None:
            lo, hi, _ = grid_cell(self.n_levels, self.data_range)
            object.__setattr__(self, "data_range", (lo, hi))
        for split in ("train", "test"):
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"Dataset.{split} must be a floating tensor (N, *shape); "
                                f"got {type(x).__name__} {getattr(x, 'dtype', '')}")
            if tuple(x.shape[1:]) != shape:
                raise ValueError(f"Dataset.{split} has shape {tuple(x.shape)} but shape={shape}; "
                                 f"pass tensors of shape (N, *{shape})")
            y = getattr(self, f"{split}_labels")
            if y is not None and (not isinstance(y, torch.Tensor) or tuple(y.shape) != (x.shape[0],)):
                raise ValueError(f"Dataset.{split}_labels must be a tensor of shape ({x.shape[0]},), "
                                 f"got {tuple(getattr(y, 'shape', ()))}")

    @property
    def num_dims(self) -> int:
        """``D = prod(shape)``, the number of dimensions bits/dim divides by."""
        return math.prod(self.shape)

    @property
    def quantized(self) -> bool:
        """Whether the data live on a quantization grid (``n_levels`` is not ``None``)."""
        return self.n_levels is not None

    @property
    def cell_width(self) -> Optional[float]:
        """``w = (hi - lo) / n_levels``, or ``None`` for continuous data."""
        if self.n_levels is None:
            return None
        lo, hi = self.data_range
        return (hi - lo) / self.n_levels

    def bpd_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for :func:`scoresde.evaluate.evaluate_bpd`: the grid and uniform dequantization.

        ``evaluate_bpd(score_fn, sde, ds.test, **ds.bpd_kwargs())``. Continuous data have no grid,
        so there is no bits/dim offset to take from them: this raises ``ValueError``.
        """
        if self.n_levels is None:
            raise ValueError(f"{self.name!r} is continuous data (n_levels=None): it has no quantization grid, so "
                             "bits/dim has no natural offset. Report log_likelihood in nats, or call evaluate_bpd "
                             "with dequantize=None and an n_levels/data_range you state yourself.")
        return dict(n_levels=self.n_levels, data_range=self.data_range, dequantize="uniform")

    def labels(self, split: str) -> Optional[torch.Tensor]:
        """``train_labels`` or ``test_labels``."""
        return getattr(self, f"{_check_split(split)}_labels")

    def tensor_dataset(self, split: str = "train") -> torch.utils.data.TensorDataset:
        """A ``TensorDataset`` of ``(x,)`` or ``(x, label)`` for ``torch.utils.data.DataLoader``."""
        split = _check_split(split)
        y = self.labels(split)
        x = getattr(self, split)
        return torch.utils.data.TensorDataset(x) if y is None else torch.utils.data.TensorDataset(x, y)

    def to(self, device: Union[str, torch.device]) -> "Dataset":
        """A copy with every tensor on ``device`` (values, grid and info unchanged)."""
        move = (lambda t: None if t is None else t.to(device))
        return dataclasses.replace(self, train=move(self.train), test=move(self.test),
                                   train_labels=move(self.train_labels), test_labels=move(self.test_labels))

    def __repr__(self) -> str:
        if self.n_levels is None:
            grid = "continuous"
        else:
            lo, hi = self.data_range
            grid = f"{self.n_levels} levels on [{lo:g}, {hi:g}]"
        lab = ", labels" if self.train_labels is not None else ""
        return (f"Dataset({self.name!r}, train={tuple(self.train.shape)}, test={tuple(self.test.shape)}, "
                f"{grid}, {self.train.dtype}{lab})")


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


# ---------------------------------------------------------------------------------------------
# scikit-learn digits.
# ---------------------------------------------------------------------------------------------
def load_digits(data_range: Sequence[float] = (-1.0, 1.0), *, test_fraction: float = 0.2, seed: int = 0,
                dtype: Optional[torch.dtype] = None) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1797 images, shape ``(1, 8, 8)``, 17 grey levels (0..16).

    Values are ``scale(pixel, 17, data_range)``: pixel ``k`` becomes ``lo + k (hi - lo) / 17``, so on
    ``(-1, 1)`` the values run from ``-1`` to ``1 - 2/17``. Labels are the digits 0..9.

    Split (deterministic on every platform and NumPy version): ``perm =
    numpy.random.RandomState(seed).permutation(1797)`` (the legacy RandomState stream is frozen by
    NumPy's compatibility policy); the first ``n_test = round(test_fraction * 1797)`` indices of
    ``perm`` are the test set, the rest the training set, each kept in the original row order.
    With the defaults: 1438 train, 359 test. The indices are in ``info["train_index"]`` and
    ``info["test_index"]``.

    scikit-learn is an optional dependency (``pip install 'scoresde[digits]'``); the data ship with
    it, nothing is downloaded.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn, an optional dependency: "
                          "pip install 'scoresde[digits]' (or pip install scikit-learn)") from e
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images)
    levels = np.rint(images)
    if levels.ndim != 3 or levels.shape[1:] != (8, 8) or not np.array_equal(levels, images) \
            or levels.min() < 0 or levels.max() > 16:
        raise ValueError("scikit-learn's digits are not 8x8 images with integer grey levels 0..16 "
                         "as expected; check the scikit-learn installation")
    n = levels.shape[0]
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n_test = int(round(test_fraction * n))
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of the {n} digits; "
                         "pick a value that gives both splits at least one image")
    perm = np.random.RandomState(seed).permutation(n)
    test_idx = torch.from_numpy(np.sort(perm[:n_test]))
    train_idx = torch.from_numpy(np.sort(perm[n_test:]))
    x = scale(torch.from_numpy(levels.astype(np.int64)).unsqueeze(1), 17, data_range, dtype=dtype)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    info = dict(source="sklearn.datasets.load_digits", split="seeded permutation: numpy.random.RandomState(seed)"
                ".permutation(N), first round(test_fraction * N) indices are test, each split in original order",
                seed=seed, test_fraction=test_fraction, train_index=train_idx, test_index=test_idx,
                classes=tuple(range(10)))
    return Dataset("digits", x[train_idx], x[test_idx], 17, tuple(data_range), (1, 8, 8), info,
                   y[train_idx], y[test_idx])


# ---------------------------------------------------------------------------------------------
# MNIST (IDX files).
# ---------------------------------------------------------------------------------------------
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
        out[split] = (scale(torch.from_numpy(img).unsqueeze(1), 256, data_range, dtype=dtype),
                      torch.from_numpy(lab.astype(np.int64)))
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise ValueError(f"train images are {tuple(out['train'][0].shape[2:])} but test images "
                         f"{tuple(out['test'][0].shape[2:])}; the files do not belong together")
    info = dict(source="IDX files", files={k: str(p) for k, p in files.items()},
                split="official: train-* files are train, t10k-* files are test", classes=tuple(range(10)))
    return Dataset("mnist", out["train"][0], out["test"][0], 256, tuple(data_range),
                   tuple(out["train"][0].shape[1:]), info, out["train"][1], out["test"][1])


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches).
# ---------------------------------------------------------------------------------------------
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


#: The only globals an official CIFAR-10 batch (or a faithful copy of its format) refers to:
#: NumPy's array reconstruction and Python's latin-1 bytes encoding.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_PICKLE_ALLOWED`; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")
        if module == "_codecs":
            import codecs
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return _numpy_global(module, name)


def _unpickle_batch(raw: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` from one pickled batch (restricted unpickler)."""
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
        raise ValueError(f"{where} has no {key!r} entry (keys: {sorted(map(repr, d))}); it is not a CIFAR-10 batch")

    data, labels = get("data"), np.asarray(get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: 'data' must be a uint8 array (N, 3072), got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer) \
            or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{where}: 'labels' must be {data.shape[0]} integers in 0..9, got dtype {labels.dtype}, "
                         f"shape {labels.shape}")
    return data, labels.astype(np.int64)


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
        return {f: ((path / f).read_bytes(), str(path / f)) for f in names}
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
        x = scale(torch.from_numpy(data).reshape(-1, 3, 32, 32), 256, data_range, dtype=dtype)
        out[split] = (x, torch.from_numpy(labels))
    info = dict(source=str(path), split="official: data_batch_1..5 are train (in order), test_batch is test",
                classes=CIFAR10_CLASSES, channels=("red", "green", "blue"))
    return Dataset("cifar10", out["train"][0], out["test"][0], 256, tuple(data_range), (3, 32, 32), info,
                   out["train"][1], out["test"][1])


# ---------------------------------------------------------------------------------------------
# 2-D toy sets.
# ---------------------------------------------------------------------------------------------
_TOY_SAMPLERS = {
    "two_moons": targets.two_moons,
    "eight_gaussians": targets.eight_gaussians,
    "checkerboard": targets.checkerboard,
    "swiss_roll": targets.swiss_roll,
}
_TOY_ORACLES = {
    "eight_gaussians": targets.eight_gaussians_mixture,
    "mixture_2d": targets.mixture_2d,
    "mixture_nd": targets.mixture_nd,
}
#: Names of the continuous toy sets of :mod:`scoresde.targets` that :func:`load_toy` knows.
TOY_DATASETS = ("two_moons", "eight_gaussians", "checkerboard", "swiss_roll", "mixture_2d", "mixture_nd")
#: Every name :func:`load_dataset` accepts.
DATASETS = ("digits", "mnist", "cifar10") + TOY_DATASETS


def load_toy(name: str, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0, *,
             params: Optional[Dict[str, Any]] = None, dtype: Optional[torch.dtype] = None) -> Dataset:
    """Continuous toy data from :mod:`scoresde.targets`: ``(n_train, D)`` and ``(n_test, D)`` samples.

    ``name`` is one of :data:`TOY_DATASETS`; ``params`` (a dict) go to the sampler or mixture
    constructor (e.g. ``{"noise": 0.1}`` for ``two_moons``, ``{"D": 16, "K": 4, "seed": 1}`` for
    ``mixture_nd``, whose own ``seed`` fixes the mixture, not the samples). Train samples come from
    ``torch.Generator().manual_seed(2 * seed)`` and test samples from ``manual_seed(2 * seed + 1)``,
    so the test set does not depend on ``n_train`` and no two seeds share a stream. ``n_levels`` and
    ``data_range`` are ``None`` (continuous data); ``info["bounds"]`` is the per-coordinate bounding
    box ``(min, max)`` of train and test together, and for the Gaussian mixtures
    (``eight_gaussians``, ``mixture_2d``, ``mixture_nd``) ``info["oracle"]`` is the exact
    :class:`~scoresde.targets.GaussianMixture` the data were drawn from.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; valid: {', '.join(TOY_DATASETS)}")
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{label} must be a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be an int in [0, 2**62), got {seed!r}")
    params = {} if params is None else dict(params)
    fn = _TOY_ORACLES.get(name) or _TOY_SAMPLERS[name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("n", "generator", "device", "dtype")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"load_toy({name!r}) got unknown parameter(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(allowed) or 'none'}")
    oracle = _TOY_ORACLES[name](**params) if name in _TOY_ORACLES else None

    def draw(n: int, s: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(s)
        if oracle is not None:
            return oracle.sample(n, generator=g, dtype=dtype)
        return _TOY_SAMPLERS[name](n, generator=g, dtype=dtype, **params)

    train, test = draw(n_train, 2 * seed), draw(n_test, 2 * seed + 1)
    both = torch.cat([train, test])
    info = dict(source=f"scoresde.targets ({name})", params=dict(params), seed=seed,
                split="independent draws: train from manual_seed(2 seed), test from manual_seed(2 seed + 1)",
                bounds=(both.min(0).values.tolist(), both.max(0).values.tolist()), oracle=oracle)
    return Dataset(name, train, test, None, None, tuple(train.shape[1:]), info)


# ---------------------------------------------------------------------------------------------
# Dispatcher and batching.
# ---------------------------------------------------------------------------------------------
def load_dataset(name: str, root: Optional[PathLike] = None, **kwargs: Any) -> Dataset:
    """Load a data set by name: ``"digits"``, ``"mnist"``, ``"cifar10"`` or a toy name (:data:`DATASETS`).

    ``root`` is required for ``"mnist"`` and ``"cifar10"`` (the folder or archive you downloaded;
    nothing is downloaded here) and refused for the others. ``kwargs`` go to the loader:
    :func:`load_digits`, :func:`load_mnist`, :func:`load_cifar10` or :func:`load_toy`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, one of {', '.join(DATASETS)}; got {type(name).__name__}")
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if key in ("mnist", "cifar10"):
        if root is None:
            what = ("the folder with the four MNIST IDX files" if key == "mnist"
                    else f"the {CIFAR10_DIR} folder, its parent, or {CIFAR10_ARCHIVE}")
            raise ValueError(f"load_dataset({key!r}) needs root=: {what}. Nothing is downloaded; "
                             + (_MNIST_WHERE if key == "mnist" else _CIFAR_WHERE))
        return (load_mnist if key == "mnist" else load_cifar10)(root, **kwargs)
    if root is not None:
        raise ValueError(f"load_dataset({key!r}) reads no files (it is generated or ships with a package); "
                         "drop root=")
    if key == "digits":
        return load_digits(**kwargs)
    return load_toy(key, **kwargs)


def iterate_batches(data: Union[torch.Tensor, Sequence[torch.Tensor]], batch_size: int, *,
                    shuffle: bool = True, generator: Optional[torch.Generator] = None,
                    drop_last: bool = False) -> Iterator[Any]:
    """One epoch of mini-batches of a tensor ``(N, ...)`` or of a tuple of tensors sharing ``N``.

    With ``shuffle=True`` the order is ``torch.randperm(N)`` drawn from ``generator`` on the data's
    device (no host round-trip; a GPU-resident data set stays on the GPU). Yields tensors (or
    tuples) of ``batch_size`` rows; the last batch is smaller unless ``drop_last=True`` drops it.
    For worker processes or pinned memory use ``torch.utils.data.DataLoader(ds.tensor_dataset())``.
    """
    single = isinstance(data, torch.Tensor)
    tensors = (data,) if single else tuple(data)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in tensors):
        raise TypeError("data must be a tensor (N, ...) or a non-empty tuple of such tensors")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"all tensors must share the first dimension, got {[t.shape[0] for t in tensors]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = tensors[0].device
    order = torch.randperm(n, generator=generator, device=device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for a in range(0, stop, batch_size):
        if order is None:
            parts = tuple(t[a:a + batch_size] for t in tensors)
        else:
            idx = order[a:a + batch_size]
            parts = tuple(t[idx.to(t.device)] for t in tensors)
        yield parts[0] if single else parts
