"""scikit-learn's 8x8 handwritten digits (Alpaydin & Kaynak 1998, UCI optical recognition of
handwritten digits), 17 grey levels, split with a seeded permutation. Needs scikit-learn."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .._utils import check_number, is_int
from ..quantize import grid_values
from .dataset import Dataset

__all__ = ["load_digits"]


def load_digits(data_range: Sequence[float] = (-1.0, 1.0), *, test_fraction: float = 0.2, seed: int = 0,
                dtype: Optional[torch.dtype] = None) -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1797 images, shape ``(1, 8, 8)``, 17 grey levels (0..16).

    Values are ``grid_values(pixel, 17, data_range)``: pixel ``k`` becomes ``lo + k (hi - lo) / 17``, so on
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
    if not is_int(seed, 0) or seed >= 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images)
    levels = np.rint(images)
    if levels.ndim != 3 or levels.shape[1:] != (8, 8) or not np.array_equal(levels, images) \
            or levels.min() < 0 or levels.max() > 16:
        raise ValueError("scikit-learn's digits are not 8x8 images with integer grey levels 0..16 "
                         "as expected; check the scikit-learn installation")
    n = levels.shape[0]
    check_number("test_fraction", test_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    n_test = int(round(test_fraction * n))
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of the {n} digits; "
                         "pick a value that gives both splits at least one image")
    perm = np.random.RandomState(seed).permutation(n)
    test_idx = torch.from_numpy(np.sort(perm[:n_test]))
    train_idx = torch.from_numpy(np.sort(perm[n_test:]))
    x = grid_values(torch.from_numpy(levels.astype(np.int64)).unsqueeze(1), 17, data_range, dtype=dtype)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    info = dict(source="sklearn.datasets.load_digits", split="seeded permutation: numpy.random.RandomState(seed)"
                ".permutation(N), first round(test_fraction * N) indices are test, each split in original order",
                seed=seed, test_fraction=test_fraction, train_index=train_idx, test_index=test_idx,
                classes=tuple(range(10)))
    return Dataset("digits", x[train_idx], x[test_idx], 17, tuple(data_range), (1, 8, 8), info,
                   y[train_idx], y[test_idx])
