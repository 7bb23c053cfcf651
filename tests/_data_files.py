"""Shared helpers of the scoresde.data tests: tiny files in the real formats (IDX for MNIST, pickled
batch dicts for CIFAR-10), written here so nothing is downloaded, and the documented grid
convention ``lo + k (hi - lo) / n_levels`` computed independently in NumPy float64.
"""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np

from scoresde.data import CIFAR10_TEST, CIFAR10_TRAIN, MNIST_FILES


def expected_values(levels, n_levels, lo, hi):
    """The documented convention, computed independently in float64."""
    return lo + np.asarray(levels, dtype=np.float64) * ((hi - lo) / n_levels)


def write_idx(path, array, gz=False, magic=None):
    """An IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian uint32 dims, C-order data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    if gz:
        blob = gzip.compress(blob)
        path = path.with_name(path.name + ".gz")
    path.write_bytes(blob)
    return path


def make_mnist(root, gz=False, n_train=5, n_test=3):
    rng = np.random.RandomState(1)
    imgs = {s: rng.randint(0, 256, size=(n, 28, 28)) for s, n in (("train", n_train), ("test", n_test))}
    imgs["train"][0, 0, 0], imgs["train"][0, 27, 27] = 0, 255  # both ends of the range
    labels = {s: rng.randint(0, 10, size=len(imgs[s])) for s in imgs}
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / MNIST_FILES["train_images"], imgs["train"], gz)
    write_idx(root / MNIST_FILES["train_labels"], labels["train"], gz)
    write_idx(root / MNIST_FILES["test_images"], imgs["test"], gz)
    write_idx(root / MNIST_FILES["test_labels"], labels["test"], gz)
    return imgs, labels


def cifar_batch(data, labels, protocol=2, str_keys=False):
    """A batch in the official dict format (bytes keys; Python 2 pickles load with encoding='bytes')."""
    d = {b"batch_label": b"tiny batch", b"labels": list(map(int, labels)), b"data": data,
         b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    if str_keys:
        d = {k.decode(): v for k, v in d.items()}
    return pickle.dumps(d, protocol=protocol)


def make_cifar(folder, protocol=2, str_keys=False):
    """Six batches of 2 images; data_batch_i has labels (i-1, i-1), test_batch (9, 8).

    Image 1 of data_batch_3 (train row 5) has red 255 at (row 5, col 17), green 128 at (2, 30) and
    blue 7 at (31, 0); every other value is 0.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CIFAR10_TRAIN + CIFAR10_TEST):
        data = np.zeros((2, 3072), dtype=np.uint8)
        if name == "data_batch_3":
            data[1, 0 * 1024 + 5 * 32 + 17] = 255
            data[1, 1 * 1024 + 2 * 32 + 30] = 128
            data[1, 2 * 1024 + 31 * 32 + 0] = 7
        labels = [9, 8] if name == "test_batch" else [i, i]
        (folder / name).write_bytes(cifar_batch(data, labels, protocol, str_keys))
