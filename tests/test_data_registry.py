"""Tests of scoresde.data.registry: DATASETS and the load_dataset dispatcher."""
from __future__ import annotations

import pytest
import torch

from scoresde.data import DATASETS, TOY_DATASETS, load_dataset, load_toy

pytest.importorskip("sklearn.datasets")


def test_dispatcher():
    assert set(DATASETS) == {"digits", "mnist", "cifar10", *TOY_DATASETS}
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet")
    assert all(n in str(e.value) for n in DATASETS)
    for name in ("mnist", "cifar10"):
        with pytest.raises(ValueError, match="needs root="):
            load_dataset(name)
    with pytest.raises(ValueError, match="drop root="):
        load_dataset("digits", root="/data")
    ds = load_dataset("checkerboard", n_train=8, n_test=4, seed=1)
    assert torch.equal(ds.train, load_toy("checkerboard", 8, 4, seed=1).train)
    assert load_dataset("digits", seed=2).info["seed"] == 2
