"""The Fréchet distance against closed forms.

Independent truths: for Gaussians with diagonal or commuting covariances ``Tr((S_a S_b)^{1/2}) =
sum_i sqrt(l_a,i l_b,i)``; for any 2x2 pair it is ``sqrt(tr(S_a S_b) + 2 sqrt(det S_a det S_b))``
(the two eigenvalues of ``S_a S_b`` are positive); scipy's ``sqrtm`` is a second implementation.
From samples, in one dimension the estimate is ``(m_a - m_b)^2 + (s_a - s_b)^2`` and its
expectation is exact at every ``n`` (``E s = c4(n) sigma``); in several dimensions the bias is
``a/n + O(1/n^2)``, so Richardson extrapolation from ``n`` and ``4n`` must hit the closed form
within its standard error.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from _features import identity_features

from scoresde.metrics import GaussianStats, feature_statistics, frechet_distance

Z = 4.5
pytestmark = pytest.mark.usefixtures("single_thread")
f64 = torch.float64


def random_spd(d, g, cond=10.0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    lam = torch.logspace(0, math.log10(cond), d, dtype=f64)
    return (q * lam) @ q.T


def test_diagonal_population_statistics_give_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 6
    mu_a, mu_b = torch.randn(d, generator=g, dtype=f64), torch.randn(d, generator=g, dtype=f64)
    sd_a, sd_b = torch.rand(d, generator=g, dtype=f64) + 0.2, torch.rand(d, generator=g, dtype=f64) + 0.2
    exact = float((mu_a - mu_b).square().sum() + (sd_a - sd_b).square().sum())
    got = frechet_distance(GaussianStats(mu_a, torch.diag(sd_a**2), 0), GaussianStats(mu_b, torch.diag(sd_b**2), 0))
    assert got == pytest.approx(exact, rel=1e-12, abs=1e-13)


def test_commuting_covariances_give_the_closed_form():
    g = torch.Generator().manual_seed(1)
    d = 8
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    la, lb = torch.rand(d, generator=g, dtype=f64) * 3 + 0.1, torch.rand(d, generator=g, dtype=f64) * 3 + 0.1
    mu = torch.randn(d, generator=g, dtype=f64)
    exact = float(mu.square().sum() + (la.sqrt() - lb.sqrt()).square().sum())
    got = frechet_distance(GaussianStats(mu, (q * la) @ q.T, 0), GaussianStats(torch.zeros(d, dtype=f64), (q * lb) @ q.T, 0))
    assert got == pytest.approx(exact, rel=1e-11)


def test_non_commuting_2x2_closed_form_and_scipy_sqrtm():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        sa, sb = random_spd(2, g, 5.0), random_spd(2, g, 20.0)
        tr_sqrt = math.sqrt(float(torch.trace(sa @ sb)) + 2 * math.sqrt(float(torch.det(sa) * torch.det(sb))))
        exact = float(torch.trace(sa) + torch.trace(sb)) - 2 * tr_sqrt
        z = torch.zeros(2, dtype=f64)
        assert frechet_distance(GaussianStats(z, sa, 0), GaussianStats(z, sb, 0)) == pytest.approx(exact, rel=1e-11, abs=1e-13)
    sa, sb = random_spd(12, g, 100.0), random_spd(12, g, 30.0)
    ref = float(np.trace(sa.numpy() + sb.numpy()) - 2 * np.trace(scipy.linalg.sqrtm(sa.numpy() @ sb.numpy())).real)
    z = torch.zeros(12, dtype=f64)
    assert frechet_distance(GaussianStats(z, sa, 0), GaussianStats(z, sb, 0)) == pytest.approx(ref, rel=1e-9)


def test_singular_covariances_symmetry_and_translation():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 50, generator=g, dtype=f64)  # fewer samples than dimensions: rank-19 covariance
    y = torch.randn(30, 50, generator=g, dtype=f64) * 1.3
    assert abs(frechet_distance(x, x)) < 1e-10 * float(torch.trace(feature_statistics(x).cov))
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)
    c = 1e3 * torch.randn(50, generator=g, dtype=f64)
    assert frechet_distance(x + c, y + c) == pytest.approx(frechet_distance(x, y), rel=1e-6)
    dead = x.clone()
    dead[:, :10] = 0.0  # dead ReLU units: zero variance in both sets
    assert frechet_distance(dead, dead) == pytest.approx(0.0, abs=1e-9)


def test_feature_statistics_are_the_sample_mean_and_unbiased_covariance():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(4), dtype=f64) + 1e4
    st = feature_statistics(x)
    assert torch.allclose(st.mean, torch.from_numpy(x.numpy().mean(0)))
    assert torch.allclose(st.cov, torch.from_numpy(np.cov(x.numpy(), rowvar=False)), rtol=1e-9, atol=1e-12)
    assert st.n == 500


def c4(n):
    """E[s] / sigma for the sample standard deviation (divisor n - 1) of n normal values."""
    return math.sqrt(2 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


def test_one_dimensional_estimate_has_the_exact_finite_n_expectation():
    """E[FD] = (mu_a - mu_b)^2 + s_a^2/n_a + s_b^2/n_b + s_a^2 + s_b^2 - 2 c4(n_a) c4(n_b) s_a s_b."""
    g = torch.Generator().manual_seed(5)
    na, nb, R = 20, 30, 4000
    ma, sa, mb, sb = 0.3, 1.0, -0.2, 1.6
    vals = torch.tensor([frechet_distance(ma + sa * torch.randn(na, 1, generator=g, dtype=f64),
                                          mb + sb * torch.randn(nb, 1, generator=g, dtype=f64)) for _ in range(R)])
    mean, se = float(vals.mean()), float(vals.std() / math.sqrt(R))
    expected = (ma - mb) ** 2 + sa**2 / na + sb**2 / nb + sa**2 + sb**2 - 2 * c4(na) * c4(nb) * sa * sb
    population = (ma - mb) ** 2 + (sa - sb) ** 2
    assert abs(mean - expected) < Z * se, (mean, expected, se)
    assert abs(mean - population) > Z * se  # the bias is real, and the test sees it


def test_samples_converge_to_the_closed_form_with_a_one_over_n_bias():
    """Diagonal covariances in 4-D with full sample covariances: E[FD_n] = FD + a/n + O(1/n^2).

    The extrapolation (4 E[FD_4n] - E[FD_n]) / 3 removes the 1/n term; its standard error comes from
    the spread over seeds, and the remainder b/(4 n^2) is far below it at n = 400."""
    g = torch.Generator().manual_seed(6)
    d, n, R = 4, 400, 300
    mu_b = torch.tensor([0.5, 0.0, -0.3, 0.0], dtype=f64)
    sd_a = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=f64)
    sd_b = torch.tensor([1.5, 0.5, 1.0, 0.8], dtype=f64)
    exact = float(mu_b.square().sum() + (sd_a - sd_b).square().sum())

    def draws(m):
        v = torch.tensor([frechet_distance(sd_a * torch.randn(m, d, generator=g, dtype=f64),
                                           mu_b + sd_b * torch.randn(m, d, generator=g, dtype=f64)) for _ in range(R)])
        return float(v.mean()), float(v.var() / R)

    e1, v1 = draws(n)
    e4, v4 = draws(4 * n)
    extrapolated, se = (4 * e4 - e1) / 3, math.sqrt(16 * v4 + v1) / 3
    assert abs(extrapolated - exact) < Z * se, (extrapolated, exact, se)
    # the bias itself is positive and shrinks like 1/n: a quarter at 4n (mean term alone: tr S_a/n + tr S_b/n)
    bias1, bias4 = e1 - exact, e4 - exact
    assert bias1 > float(sd_a.square().sum() + sd_b.square().sum()) / n * 0.5
    assert abs(bias1 / 4 - bias4) < Z * math.sqrt(v1 / 16 + v4)


def test_inputs_are_checked():
    x = torch.randn(10, 3, dtype=f64)
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(x, torch.randn(10, 4, dtype=f64))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(x, torch.full((10, 3), float("nan")))
    with pytest.raises(TypeError):
        frechet_distance(x, x.numpy())
    with pytest.raises(ValueError, match="GaussianStats"):
        GaussianStats(torch.zeros(3), torch.eye(2), 0)


def test_agrees_with_torchmetrics_on_a_custom_feature_module():
    """torchmetrics (an optional reference) takes a custom feature module without torch-fidelity."""
    fid_mod = pytest.importorskip("torchmetrics.image.fid")

    g = torch.Generator().manual_seed(7)
    a = torch.randn(300, 5, generator=g, dtype=f64)
    b = 0.2 + torch.randn(400, 5, generator=g, dtype=f64) @ random_spd(5, g, 4.0)
    metric = fid_mod.FrechetInceptionDistance(feature=identity_features(5))
    metric.update(a, real=True)
    metric.update(b, real=False)
    assert float(metric.compute()) == pytest.approx(frechet_distance(a, b), rel=1e-8)
