"""The baselines study: its Gaussian density is the maximum-likelihood Gaussian (checked against
scipy's independent implementation), its bits/dim obeys the offset convention, and the quick mode
runs end to end."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from scoresde import Dataset

import baselines as mod

pytestmark = pytest.mark.usefixtures("single_thread")


def test_gaussian_logp_is_the_ml_gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.tensor([[1.0, 0.3, 0], [0, 2.0, 0.5], [0, 0, 0.7]],
                                                                            dtype=torch.float64)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64)
    ours = mod.gaussian_logp(a, b, ridge=0.0)
    an = a.numpy()
    ref = stats.multivariate_normal(an.mean(0), np.cov(an.T, bias=True)).logpdf(b.numpy())
    assert np.allclose(ours.numpy(), ref, rtol=0, atol=1e-10)


def test_uniform_cells_give_log2_levels_bits_for_a_flat_gaussian_limit():
    """Data spread uniformly over all cells of a wide grid: a Gaussian fitted to many points has
    bits/dim close to the entropy it assigns, which exceeds log2(n_levels) (the uniform model) by
    the Gaussian-vs-uniform KL, 0.5 log2(2 pi e / 12) = 0.2546 bits per dim for a uniform variable."""
    n_levels, lo, hi = 4, -1.0, 1.0
    w = (hi - lo) / n_levels
    g = torch.Generator().manual_seed(1)
    levels = torch.randint(0, n_levels, (20000, 2), generator=g)
    x = lo + levels.double() * w
    ds = Dataset(name="flat", train=x[:16000].reshape(-1, 2, 1), test=x[16000:].reshape(-1, 2, 1), n_levels=n_levels,
                 data_range=(lo, hi), shape=(2, 1))
    res = mod.baseline_bpd(ds, model="gaussian", repeats=2, seed=0)
    expected = math.log2(n_levels) + 0.5 * math.log2(2 * math.pi * math.e / 12)
    assert res["mean"] == pytest.approx(expected, abs=4 * res["stderr"] + 2e-3)


def test_quick_mode(tmp_path):
    pytest.importorskip("sklearn")
    out = mod.main(["--quick", "--out", str(tmp_path)])
    text = out["md"].read_text()
    assert "| gaussian |" in text and "gmm (K=4)" in text
    for r in out["results"]:
        assert 0 < r["mean"] < math.log2(17) + 1 and r["n_samples"] == 359
