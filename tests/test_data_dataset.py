"""Tests of scoresde.data.dataset: the Dataset type (its validation, grid, repr and torch views)."""
from __future__ import annotations

import pytest
import torch

from scoresde.data import Dataset, load_digits

pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_dataset_validation(digits):
    with pytest.raises(ValueError, match="shape"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(2, 3), None, None, (2,))
    with pytest.raises(ValueError, match="together"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(2, 2), 256, None, (2,))
    with pytest.raises(TypeError, match="floating"):
        Dataset("x", torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, 2), None, None, (2,))
    with pytest.raises(ValueError, match="labels"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(2, 2), None, None, (2,), train_labels=torch.zeros(2))
    assert digits.bpd_kwargs() == dict(n_levels=17, data_range=(-1.0, 1.0), dequantize="uniform")
    assert digits.cell_width == 2 / 17
    x, y = digits.tensor_dataset("test")[0]
    assert x.shape == (1, 8, 8) and y.ndim == 0
    assert "17 levels" in repr(digits)
