"""Tests of scoresde.data.digits: scikit-learn's 8x8 digits (the grid itself: test_quantize.py)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from scoresde.data import dequantize, load_digits, to_levels
from scoresde.likelihood import evaluate_bpd
from scoresde.quantize import check_on_grid
from scoresde.sde import VPSDE

from _data_files import expected_values

sklearn = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_levels_split(digits):
    ds = digits
    assert ds.name == "digits" and ds.n_levels == 17 and ds.data_range == (-1.0, 1.0) and ds.shape == (1, 8, 8)
    assert ds.num_dims == 64
    assert ds.train.shape == (1438, 1, 8, 8) and ds.test.shape == (359, 1, 8, 8)  # round(0.2 * 1797) = 359
    both = torch.cat([ds.train, ds.test])
    values = torch.unique(both).double().numpy()
    np.testing.assert_allclose(values, expected_values(np.arange(17), 17, -1.0, 1.0), rtol=0, atol=1e-7)
    check_on_grid(ds.train, 17, (-1.0, 1.0))
    check_on_grid(ds.test, 17, (-1.0, 1.0))
    tr, te = ds.info["train_index"], ds.info["test_index"]
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(1797))
    assert torch.all(tr[1:] > tr[:-1]) and torch.all(te[1:] > te[:-1])  # original order kept
    bunch = sklearn.load_digits()
    np.testing.assert_allclose(ds.test.squeeze(1).double().numpy(),
                               expected_values(bunch.images[te.numpy()], 17, -1.0, 1.0), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.train_labels.numpy(), bunch.target[tr.numpy()])
    np.testing.assert_array_equal(ds.test_labels.numpy(), bunch.target[te.numpy()])
    assert torch.equal(to_levels(ds.train, 17).squeeze(1), torch.from_numpy(bunch.images[tr.numpy()]).long())


def test_digits_deterministic_and_seeded(digits):
    again = load_digits()
    assert torch.equal(again.train, digits.train) and torch.equal(again.test, digits.test)
    other = load_digits(seed=1)
    assert not torch.equal(other.info["test_index"], digits.info["test_index"])
    r01 = load_digits(data_range=(0.0, 1.0), test_fraction=0.5, dtype=torch.float64)
    assert r01.train.dtype == torch.float64 and r01.test.shape[0] == round(0.5 * 1797)
    assert float(r01.train.max()) == 16 / 17 and float(r01.train.min()) == 0.0
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'scoresde\[digits\]'"):
        load_digits()


def test_evaluate_bpd_on_digits_with_exact_score(digits):
    """End to end: data N(0, I) is stationary under the VP SDE, so the score is -x, the flow is
    still, and log p is the standard normal density of the dequantized point (with the same noise)."""
    x = digits.test[:6]
    res = evaluate_bpd(lambda z, t: -z, VPSDE(), x, **digits.bpd_kwargs(), trace="exact",
                       generator=torch.Generator().manual_seed(3), progress=False)
    xd = dequantize(x, 17, (-1.0, 1.0), torch.Generator().manual_seed(3)).double().flatten(1)
    D = 64
    logp = -0.5 * (xd ** 2).sum(1) - 0.5 * D * math.log(2 * math.pi)
    expected = -logp / (D * math.log(2)) + math.log2(17 / 2)
    torch.testing.assert_close(res.bpd[0], expected, rtol=1e-5, atol=1e-5)
    assert res.convention["n_levels"] == 17
