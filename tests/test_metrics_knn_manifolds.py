"""k-NN precision and recall against facts that follow from the definition.

A set against itself gives 1 and 1; a subset of the reference has precision 1; supports farther
apart than the largest radius give 0 and 0; the k-NN radius is the k-th smallest distance to the
other points (checked by sorting); and for uniform data on [0, 1] against the same law shifted by
s, a sample point's chance of being covered depends only on the reference around it, so the
precision is (1 - s) times that of an unshifted sample, up to a band of a few radii at the edges
and the binomial noise.
"""
from __future__ import annotations

import math

import pytest
import torch

from scoresde.metrics import PrecisionRecall, precision_recall
from scoresde.metrics.knn_manifolds import knn_radii

Z = 4.5
pytestmark = pytest.mark.usefixtures("single_thread")
f64 = torch.float64


def test_a_set_against_itself_and_a_subset():
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(0), dtype=f64)
    r = precision_recall(x, x)
    assert isinstance(r, PrecisionRecall) and (r.precision, r.recall, r.k, r.n_samples, r.n_reference) == (1.0, 1.0, 3, 500, 500)
    assert precision_recall(x[:100], x).precision == 1.0
    dup = torch.cat([x[:50]] * 4)  # duplicated points: radius 0 at k = 3, still inside their own balls
    assert precision_recall(dup, dup) == PrecisionRecall(1.0, 1.0, 3, 200, 200)


def test_disjoint_supports_give_zero():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(400, 2, generator=g, dtype=f64)  # radii <= the diameter sqrt(2) of [0, 1]^2
    fake = torch.rand(300, 2, generator=g, dtype=f64) + 3.0  # at least 2 sqrt(2) away from every real point
    r = precision_recall(fake, real)
    assert (r.precision, r.recall) == (0.0, 0.0)


@pytest.mark.parametrize("D", [1, 5, 40])
def test_radii_are_the_kth_distance_to_the_other_points(D):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, D, generator=g, dtype=f64)
    x[10] = x[11]  # a duplicate
    d = (x[:, None] - x[None]).square().sum(-1).sqrt() + torch.diag(torch.full((60,), float("inf"), dtype=f64))
    for k in (1, 3, 5):
        assert torch.allclose(knn_radii(x, k), d.sort(dim=1).values[:, k - 1], rtol=1e-12, atol=1e-12)


def test_a_shifted_uniform_loses_the_shifted_fraction():
    """Reference U[0, 1], samples U[s, 1 + s]: E[precision] = (1 - s) c + edge terms, c the coverage
    of an unshifted sample (estimated on an independent one). The edge terms live within a few
    radii of the ends (points farther than the largest radius from the reference are never inside)."""
    g = torch.Generator().manual_seed(3)
    n, s = 3000, 0.4
    real = torch.rand(n, 1, generator=g, dtype=f64)
    same = torch.rand(n, 1, generator=g, dtype=f64)
    shifted = torch.rand(n, 1, generator=g, dtype=f64) + s
    c = precision_recall(same, real)
    r = precision_recall(shifted, real)
    band = 4 * float(knn_radii(real, 3).max())
    se = math.sqrt(c.precision * (1 - c.precision) / n * (1 - s) ** 2 + 0.25 / n)
    assert abs(r.precision - (1 - s) * c.precision) < Z * se + band, (r.precision, c.precision, band)
    assert abs(r.recall - (1 - s) * c.recall) < Z * se + 4 * float(knn_radii(shifted, 3).max())
    # a sample point farther than the largest reference radius from [min, max] of the reference is never inside
    outside = (shifted[:, 0] > real.max() + knn_radii(real, 3).max()).double().mean()
    assert r.precision <= 1 - float(outside)
    assert c.precision > 0.9 and r.precision < 0.7


def test_inputs_are_checked():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="features"):
        precision_recall(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="n >= 4"):
        precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=0)
