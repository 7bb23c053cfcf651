"""Tests of scoresde.data.toy: the continuous toy sets of scoresde.targets."""
from __future__ import annotations

import pytest
import torch

from scoresde.data import TOY_DATASETS, load_toy


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_sets(name):
    ds = load_toy(name, n_train=64, n_test=16, seed=3)
    D = 16 if name == "mixture_nd" else 2
    assert ds.train.shape == (64, D) and ds.test.shape == (16, D) and ds.shape == (D,) and ds.num_dims == D
    assert ds.n_levels is None and ds.data_range is None and not ds.quantized
    again = load_toy(name, n_train=32, n_test=16, seed=3)
    assert torch.equal(again.test, ds.test)  # the test set does not depend on n_train
    assert not torch.equal(load_toy(name, n_train=64, n_test=16, seed=4).train, ds.train)
    lo, hi = torch.tensor(ds.info["bounds"][0]), torch.tensor(ds.info["bounds"][1])
    both = torch.cat([ds.train, ds.test])
    assert torch.equal(both.min(0).values, lo) and torch.equal(both.max(0).values, hi)
    oracle = ds.info["oracle"]
    if oracle is not None:  # documented stream: train from manual_seed(2 seed)
        assert torch.equal(ds.train, oracle.sample(64, generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="continuous"):
        ds.bpd_kwargs()


def test_toy_params():
    a = load_toy("two_moons", 100, 10, params={"noise": 0.0})
    # noise-free moons lie on the unit circles around (0, 0) and (1, 0.5)
    r0 = (a.train.double().norm(dim=1) - 1).abs()
    r1 = ((a.train.double() - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    assert float(torch.minimum(r0, r1).max()) < 1e-6
    b = load_toy("mixture_nd", 10, 10, params={"D": 3, "K": 2})
    assert b.shape == (3,) and b.info["oracle"].n_components == 2
    with pytest.raises(TypeError, match="noise"):
        load_toy("mixture_2d", 10, 10, params={"noise": 0.1})
    with pytest.raises(ValueError, match="two_moons"):
        load_toy("moons", 10, 10)
