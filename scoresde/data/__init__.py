"""Data sets: every loader returns a :class:`Dataset` that carries its quantization grid.

A :class:`Dataset` holds train and test tensors ``(N, *shape)`` together with the grid they live on
(``n_levels``, ``data_range``), so that bits/dim is always computed with the right offset:
``evaluate_bpd(score_fn, sde, ds.test, **ds.bpd_kwargs())``. The grid convention itself is written
out once, in :mod:`scoresde.quantize`; :func:`scale` (its ``grid_values`` under the name this
package has always used), :func:`to_levels` and :func:`dequantize` are re-exported here.

Files (``load_dataset(name, ...)`` dispatches on the name):

* ``dataset.py``: the :class:`Dataset` type.
* ``digits.py``: ``"digits"``, scikit-learn's 8x8 digits (1797 images, grey levels 0..16,
  ``n_levels = 17``), shape ``(1, 8, 8)``, split with a seeded permutation (:func:`load_digits`).
  Needs scikit-learn.
* ``mnist.py``: ``"mnist"``, the four IDX files of LeCun et al. (1998), read from a folder you give
  (:func:`load_mnist`); ``(1, 28, 28)``, 256 levels, the official 60000/10000 split.
* ``cifar10.py``: ``"cifar10"``, the python pickle batches of Krizhevsky (2009), read from a folder or
  the ``.tar.gz`` you give with a restricted unpickler (:func:`load_cifar10`); ``(3, 32, 32)``,
  256 levels, the official 50000/10000 split.
* ``toy.py``: the 2-D toy sets of :mod:`scoresde.targets` (:data:`TOY_DATASETS`): continuous,
  ``n_levels = None`` (:func:`load_toy`).
* ``registry.py``: :data:`DATASETS`, every accepted name, and the dispatcher :func:`load_dataset`.
* ``batches.py``: :func:`iterate_batches`, one epoch of mini-batches of in-memory tensors.

Nothing is ever downloaded: the file loaders read what you put on disk and say which files they
expected and where to get them.

References: LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document
recognition" (MNIST, IDX format); Krizhevsky (2009), "Learning multiple layers of features from tiny
images" (CIFAR-10); Alpaydin & Kaynak (1998), UCI optical recognition of handwritten digits (the
scikit-learn digits).
"""
from __future__ import annotations

from ..quantize import dequantize, grid_values, to_levels
from .batches import iterate_batches
from .cifar10 import CIFAR10_ARCHIVE, CIFAR10_CLASSES, CIFAR10_DIR, CIFAR10_TEST, CIFAR10_TRAIN, load_cifar10
from .dataset import DataRange, Dataset, PathLike
from .digits import load_digits
from .mnist import MNIST_FILES, load_mnist
from .registry import DATASETS, load_dataset
from .toy import TOY_DATASETS, load_toy

#: Integer levels to data values (:func:`scoresde.quantize.grid_values`), under the name this package
#: has always used.
scale = grid_values

__all__ = [
    "Dataset", "DATASETS", "TOY_DATASETS", "scale", "to_levels", "dequantize", "load_digits", "load_mnist",
    "load_cifar10", "load_toy", "load_dataset", "iterate_batches",
    # the file names the loaders expect, and the argument types
    "MNIST_FILES", "CIFAR10_DIR", "CIFAR10_ARCHIVE", "CIFAR10_TRAIN", "CIFAR10_TEST", "CIFAR10_CLASSES",
    "PathLike", "DataRange",
]
