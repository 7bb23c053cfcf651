"""Tests of scoresde.quantize: the grid convention (levels <-> values), the on-grid check, dequantization.

Expected values are computed independently in NumPy float64 from the documented convention
``lo + k (hi - lo) / n_levels``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from scoresde.data import scale
from scoresde.quantize import check_on_grid, dequantize, grid_values, to_levels


def expected_values(levels, n_levels, lo, hi):
    """The documented convention, computed independently in float64."""
    return lo + np.asarray(levels, dtype=np.float64) * ((hi - lo) / n_levels)


def test_one_implementation_under_every_name():
    import scoresde
    assert scale is grid_values and scoresde.dequantize is dequantize


# ---------------------------------------------------------------------------------------------
# The grid: scale, to_levels, dequantize.
# ---------------------------------------------------------------------------------------------
@given(n_levels=st.integers(2, 4096), lo=st.floats(-100, 100), width=st.floats(1e-2, 200),
       seed=st.integers(0, 2**31 - 1))
def test_scale_to_levels_round_trip(n_levels, lo, width, seed):
    hi = lo + width
    k = np.random.RandomState(seed).randint(0, n_levels, size=50)
    k[:2] = 0, n_levels - 1
    levels = torch.from_numpy(k)
    x = scale(levels, n_levels, (lo, hi), dtype=torch.float64)
    w = width / n_levels
    np.testing.assert_allclose(x.numpy(), expected_values(k, n_levels, lo, hi), rtol=0, atol=1e-9 * w)
    assert torch.equal(x, grid_values(levels, n_levels, (lo, hi), dtype=torch.float64))
    check_on_grid(x, n_levels, (lo, hi))  # what evaluate_bpd(dequantize="uniform") runs
    assert torch.equal(to_levels(x, n_levels, (lo, hi)), levels)
    g = torch.Generator().manual_seed(seed)
    assert torch.equal(to_levels(dequantize(x, n_levels, (lo, hi), g), n_levels, (lo, hi), mode="floor"), levels)


@pytest.mark.parametrize("n_levels,data_range", [(256, (-1.0, 1.0)), (256, (0.0, 1.0)), (17, (-1.0, 1.0)),
                                                 (256, (0.0, 256.0)), (1024, (-1.0, 1.0))])
def test_scale_float32_passes_grid_check(n_levels, data_range):
    levels = torch.arange(n_levels)
    x = scale(levels.to(torch.int32 if n_levels > 256 else torch.uint8), n_levels, data_range)
    assert x.dtype == torch.float32
    check_on_grid(x, n_levels, data_range)
    assert torch.equal(to_levels(x, n_levels, data_range), levels)
    assert torch.equal(to_levels(x, n_levels, data_range, mode="floor"), levels)
    lo, hi = data_range
    assert float(x[0]) == lo and math.isclose(float(x[-1]), hi - (hi - lo) / n_levels, rel_tol=1e-6)


def test_scale_and_to_levels_errors():
    with pytest.raises(TypeError, match="integer"):
        scale(torch.tensor([0.5]), 256)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        scale(torch.tensor([17]), 17)
    with pytest.raises(ValueError, match="float64"):
        scale(torch.tensor([0, 1]), 65536, (-1.0, 1.0), dtype=torch.float32)
    assert scale(torch.tensor([0, 65535]), 65536, (-1.0, 1.0), dtype=torch.float64)[1] == 1 - 2 / 65536
    with pytest.raises(ValueError, match="n_levels"):
        scale(torch.tensor([0]), 1)
    # ToTensor()-style values k/255 are off the grid: the error says so and points to mode="floor"
    x = torch.tensor([0.0, 1.0, 2.0]) / 255 * 2 - 1
    with pytest.raises(ValueError, match="mode='floor'"):
        to_levels(x, 256)
    with pytest.raises(TypeError, match="holds 256"):
        to_levels(torch.zeros(2), 257, dtype=torch.uint8)
    with pytest.raises(ValueError, match="non-finite"):
        to_levels(torch.tensor([float("nan")]), 256, mode="floor")
    assert torch.equal(to_levels(torch.tensor([-5.0, 0.999, 5.0]), 256, mode="floor"), torch.tensor([0, 255, 255]))


def test_dequantize_uniform_in_each_cell():
    n_levels, lo, hi = 17, -1.0, 1.0
    w = (hi - lo) / n_levels
    k = torch.arange(n_levels).repeat(2000)  # 34000 values, 2000 per level
    x = scale(k, n_levels, (lo, hi), dtype=torch.float64)
    y = dequantize(x, n_levels, (lo, hi), torch.Generator().manual_seed(0))
    u = ((y - x) / w).numpy()
    assert (u >= 0).all() and (u < 1).all()  # inside [x, x + w): the left-edge cell, not a centred one
    assert torch.equal(to_levels(y, n_levels, (lo, hi), mode="floor"), k)
    # uniform over the cell: Kolmogorov-Smirnov at the 1e-3 level (fixed seed)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # and within every level: mean 1/2 with standard error sqrt(1/12 / 2000)
    means = u.reshape(2000, n_levels).mean(0)
    assert np.all(np.abs(means - 0.5) < 5 * math.sqrt(1 / 12 / 2000))
    # the same noise evaluate_bpd adds, for the same generator state
    y2 = dequantize(x, n_levels, (lo, hi), torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)
    # float32 8-bit data: inside the closed cell (x + u w may round up to the right edge)
    x32 = scale(torch.arange(256).repeat(50), 256)
    y32 = dequantize(x32, 256, generator=torch.Generator().manual_seed(1))
    assert bool(((y32 >= x32) & (y32 <= x32 + 2 / 256)).all())


def test_dequantize_errors():
    with pytest.raises(TypeError, match="scale"):
        dequantize(torch.tensor([0, 1]), 256)
    with pytest.raises(ValueError, match="not on the quantization grid"):
        dequantize(torch.tensor([0.001]), 256, check=True)


def test_grid_values_and_check():
    u = torch.arange(256)
    x = grid_values(u)
    assert x.dtype == torch.get_default_dtype()
    assert x[0].item() == -1.0 and x[-1].item() == pytest.approx(1.0 - 2.0 / 256)
    assert x[128].item() == 0.0
    check_on_grid(x)
    check_on_grid(grid_values(torch.arange(16), 16, (0.0, 1.0)), 16, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 255\]"):
        grid_values(torch.tensor([256]))
    with pytest.raises(TypeError, match="integer"):
        grid_values(torch.tensor([0.5]))
