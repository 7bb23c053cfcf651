"""scoresde.likelihood.bpd: the bits/dim conventions against independent arithmetic."""
from __future__ import annotations

import math

import pytest
import torch

from scoresde.likelihood import bits_per_dim


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_levels", [2, 17, 256])
@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0), (0.0, 255.0)])
def test_uniform_density_on_the_cells_gives_log2_levels(n_levels, data_range):
    lo, hi = data_range
    D = 12
    logp_uniform = torch.tensor([-D * math.log(hi - lo)], dtype=torch.float64)
    assert torch.allclose(bits_per_dim(logp_uniform, D, n_levels=n_levels, data_range=data_range),
                          torch.tensor([math.log2(n_levels)], dtype=torch.float64))


def test_zero_one_and_minus_one_one_conventions_agree():
    """The same model in [0, 1] coordinates and rescaled to [-1, 1] (x' = 2x - 1, density / 2^D)."""
    D = 64
    g = gen(15)
    u = torch.rand(100, D, generator=g, dtype=torch.float64)
    logp01 = torch.distributions.Normal(0.5, 0.2).log_prob(u).sum(1)
    logp11 = torch.distributions.Normal(0.0, 0.4).log_prob(2 * u - 1).sum(1)
    assert torch.allclose(logp11, logp01 - D * math.log(2.0))
    b01 = bits_per_dim(logp01, D, data_range=(0.0, 1.0))
    b11 = bits_per_dim(logp11, D, data_range=(-1.0, 1.0))
    assert torch.allclose(b01, b11)
    # The original code's "+ 7" for 8-bit data on [-1, 1]:
    assert torch.allclose(b11, -logp11 / (D * math.log(2)) + 7.0)


def test_bits_per_dim_rejects_bad_conventions():
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(torch.zeros(1), 0)
    with pytest.raises(ValueError, match="n_levels"):
        bits_per_dim(torch.zeros(1), 4, n_levels=1)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(torch.zeros(1), 4, data_range=(1.0, -1.0))
