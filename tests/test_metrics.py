"""Tests of the two-sample statistics against closed forms and standard errors.

Independent truths: for Gaussians the expected distances and Gaussian-kernel expectations are known
in closed form (folded normal, chi mean, Gaussian convolution), so the unbiased estimators'
means over repeated draws must match them within a few standard errors of that mean.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

from scoresde.metrics import (
    MomentErrors,
    calibrate_threshold,
    energy_distance,
    mmd,
    moment_errors,
    null_distribution,
)
from scoresde.targets import GaussianMixture, mixture_2d, mixture_nd

Z = 4.5  # z-score bound for statistical checks with fixed seeds


pytestmark = pytest.mark.usefixtures("single_thread")


def gauss(n, D, mean=0.0, std=1.0, g=None):
    return mean + std * torch.randn(n, D, generator=g, dtype=torch.float64)


def repeat_stat(stat, R, n, m, D, mx, sx, my, sy, seed):
    g = torch.Generator().manual_seed(seed)
    vals = np.array([stat(gauss(n, D, mx, sx, g), gauss(m, D, my, sy, g)) for _ in range(R)])
    return vals.mean(), vals.std(ddof=1) / math.sqrt(R)


# ------------------------------------------------------------------------------------------
# Closed forms.
# ------------------------------------------------------------------------------------------
def e_abs_diff_1d(mx, sx, my, sy):
    """E|X - Y| for independent X ~ N(mx, sx^2), Y ~ N(my, sy^2): the folded-normal mean."""
    d, s = mx - my, math.hypot(sx, sy)
    return s * math.sqrt(2 / math.pi) * math.exp(-d * d / (2 * s * s)) + d * (1 - 2 * scipy.stats.norm.cdf(-d / s))


def energy_1d(mx, sx, my, sy):
    return 2 * e_abs_diff_1d(mx, sx, my, sy) - e_abs_diff_1d(mx, sx, mx, sx) - e_abs_diff_1d(my, sy, my, sy)


def e_norm_iid(D, s):
    """E|X - X'| for X, X' iid N(0, s^2 I_D): X - X' ~ N(0, 2 s^2 I), a scaled chi mean."""
    return math.sqrt(2) * s * math.sqrt(2) * math.exp(math.lgamma((D + 1) / 2) - math.lgamma(D / 2))


def e_gauss_kernel(D, h, mx, sx, my, sy):
    """E exp(-|X - Y|^2 / (2 h^2)) for X ~ N(mx 1, sx^2 I_D), Y ~ N(my 1, sy^2 I_D)."""
    v = h * h + sx * sx + sy * sy
    return (h * h / v) ** (D / 2) * math.exp(-D * (mx - my) ** 2 / (2 * v))


def mmd2_closed(D, h, mx, sx, my, sy):
    return (e_gauss_kernel(D, h, mx, sx, mx, sx) + e_gauss_kernel(D, h, my, sy, my, sy)
            - 2 * e_gauss_kernel(D, h, mx, sx, my, sy))


# ------------------------------------------------------------------------------------------
# Energy distance.
# ------------------------------------------------------------------------------------------
def test_energy_distance_unbiased_mean_matches_closed_form_1d():
    truth = energy_1d(0.0, 1.0, 0.5, 1.5)
    mean, se = repeat_stat(energy_distance, 300, 100, 80, 1, 0.0, 1.0, 0.5, 1.5, seed=0)
    assert abs(mean - truth) < Z * se, (mean, truth, se)
    assert truth > 20 * se  # the shift is clearly visible


def test_energy_distance_null_means():
    """U-statistic: zero mean under the null. V-statistic: E|X-X'|/n + E|Y-Y'|/m (chi mean, D=3)."""
    D, n, m = 3, 60, 90
    mean_u, se_u = repeat_stat(energy_distance, 300, n, m, D, 0.3, 1.2, 0.3, 1.2, seed=1)
    assert abs(mean_u) < Z * se_u
    v_stat = functools.partial(energy_distance, unbiased=False)
    mean_v, se_v = repeat_stat(v_stat, 300, n, m, D, 0.3, 1.2, 0.3, 1.2, seed=1)
    expected_v = e_norm_iid(D, 1.2) * (1 / n + 1 / m)
    assert abs(mean_v - expected_v) < Z * se_v, (mean_v, expected_v, se_v)


def test_energy_distance_single_draw_separates_shift():
    g = torch.Generator().manual_seed(2)
    x, y, z = gauss(2000, 2, 0.0, 1.0, g), gauss(2000, 2, 0.0, 1.0, g), gauss(2000, 2, 0.3, 1.0, g)
    null, alt = energy_distance(x, y), energy_distance(x, z)
    assert alt > 0.05 > abs(null)


def naive_energy(x, y, unbiased=True):
    """Direct scipy implementation from the definition, for a cross-check of the chunked sums."""
    x, y = x.reshape(len(x), -1).numpy(), y.reshape(len(y), -1).numpy()
    n, m = len(x), len(y)
    dxy = scipy.spatial.distance.cdist(x, y).mean()
    sxx = scipy.spatial.distance.pdist(x).sum() * 2
    syy = scipy.spatial.distance.pdist(y).sum() * 2
    if unbiased:
        return 2 * dxy - sxx / (n * (n - 1)) - syy / (m * (m - 1))
    return 2 * dxy - sxx / n**2 - syy / m**2


@pytest.mark.parametrize("D", [1, 5, 40])  # 40 exercises the matrix-product distance path
@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_energy_distance_matches_direct_computation(D, chunk):
    g = torch.Generator().manual_seed(3)
    x, y = gauss(123, D, 0.0, 1.0, g) + 5.0, gauss(77, D, 0.2, 1.3, g) + 5.0
    for unbiased in (True, False):
        got = energy_distance(x, y, unbiased=unbiased, chunk_size=chunk)
        assert got == pytest.approx(naive_energy(x, y, unbiased), rel=1e-9, abs=1e-11)


def test_statistics_flatten_and_accept_float32():
    g = torch.Generator().manual_seed(4)
    x, y = gauss(100, 16, 0.0, 1.0, g), gauss(90, 16, 0.1, 1.0, g)
    assert energy_distance(x.reshape(100, 1, 4, 4), y.reshape(90, 4, 4)) == pytest.approx(energy_distance(x, y), rel=1e-12)
    assert mmd(x.reshape(100, 1, 4, 4), y.reshape(90, 4, 4)) == pytest.approx(mmd(x, y), rel=1e-12)
    # float32 input: accumulation happens in float64, only the input rounding differs (~1e-7 relative)
    assert energy_distance(x.float(), y.float()) == pytest.approx(energy_distance(x.float().double(), y.float().double()),
                                                                  rel=1e-9, abs=1e-12)


def test_symmetry():
    g = torch.Generator().manual_seed(5)
    x, y = gauss(300, 2, 0.0, 1.0, g), gauss(200, 2, 0.5, 1.0, g)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    assert mmd(x, y, 1.0) == pytest.approx(mmd(y, x, 1.0), rel=1e-12)


# ------------------------------------------------------------------------------------------
# MMD.
# ------------------------------------------------------------------------------------------
def test_mmd_unbiased_mean_matches_closed_form():
    D, h = 2, 1.0
    truth = mmd2_closed(D, h, 0.0, 1.0, 0.4, 1.2)
    stat = functools.partial(mmd, bandwidth=h)
    mean, se = repeat_stat(stat, 300, 100, 80, D, 0.0, 1.0, 0.4, 1.2, seed=6)
    assert abs(mean - truth) < Z * se, (mean, truth, se)
    assert truth > 10 * se


def test_mmd_null_mean_is_zero():
    stat = functools.partial(mmd, bandwidth=1.5)
    mean, se = repeat_stat(stat, 300, 60, 70, 3, 0.5, 1.0, 0.5, 1.0, seed=7)
    assert abs(mean) < Z * se


def naive_mmd(x, y, h):
    x, y = x.numpy(), y.numpy()
    kxx = np.exp(-scipy.spatial.distance.cdist(x, x, "sqeuclidean") / (2 * h * h))
    kyy = np.exp(-scipy.spatial.distance.cdist(y, y, "sqeuclidean") / (2 * h * h))
    kxy = np.exp(-scipy.spatial.distance.cdist(x, y, "sqeuclidean") / (2 * h * h))
    n, m = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


@pytest.mark.parametrize("D", [2, 40])
def test_mmd_matches_direct_computation_and_median_heuristic(D):
    g = torch.Generator().manual_seed(8)
    x, y = gauss(150, D, 0.0, 1.0, g), gauss(110, D, 0.3, 1.0, g)
    for chunk in (None, 13):
        assert mmd(x, y, 0.7 * math.sqrt(D), chunk_size=chunk) == pytest.approx(
            naive_mmd(x, y, 0.7 * math.sqrt(D)), rel=1e-9, abs=1e-12)
    # median heuristic: median Euclidean distance of the pooled sample (n + m <= 2000: all of it)
    h = float(np.median(scipy.spatial.distance.pdist(torch.cat([x, y]).numpy())))
    assert mmd(x, y) == pytest.approx(naive_mmd(x, y, h), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------------------
# Calibration.
# ------------------------------------------------------------------------------------------
def test_calibrate_threshold_coverage_and_power():
    def sample_fn(n, generator=None):
        return torch.randn(n, 1, generator=generator, dtype=torch.float64)

    n, q = 150, 0.9
    thr = calibrate_threshold(sample_fn, n, repeats=200, quantile=q, generator=torch.Generator().manual_seed(9))
    # Coverage of fresh null pairs: the estimated quantile has sd sqrt(q(1-q)/200) ~ 0.021 in
    # probability, the 300 fresh draws add sqrt(q(1-q)/300) ~ 0.017; bound at 4.5 combined sd.
    fresh = null_distribution(sample_fn, n, repeats=300, generator=torch.Generator().manual_seed(10))
    cover = float((fresh <= thr).double().mean())
    sd = math.sqrt(q * (1 - q) * (1 / 200 + 1 / 300))
    assert abs(cover - q) < Z * sd, (cover, thr)
    # Power: a shift of 0.5 gives energy distance ~0.14 (closed form), far above the threshold.
    g = torch.Generator().manual_seed(11)
    assert energy_1d(0, 1, 0.5, 1) > 3 * thr
    hits = sum(energy_distance(sample_fn(n, g) + 0.5, sample_fn(n, g)) > thr for _ in range(20))
    assert hits == 20


def test_calibrate_threshold_with_mmd_and_mixture_sampler():
    mix = mixture_2d()
    stat = functools.partial(mmd, bandwidth=1.0)
    g = torch.Generator().manual_seed(12)
    thr = calibrate_threshold(mix.sample, 200, statistic=stat, repeats=50, quantile=0.95, generator=g)
    wrong = GaussianMixture([0.1, 0.2, 0.3, 0.4], mix.means, mix.stds)  # weights reversed
    assert stat(wrong.sample(200, generator=g), mix.sample(200, generator=g)) > thr


def test_null_distribution_is_reproducible():
    mix = mixture_2d()
    a = null_distribution(mix.sample, 50, repeats=5, generator=torch.Generator().manual_seed(0))
    b = null_distribution(mix.sample, 50, repeats=5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5,) and a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# Moment errors.
# ------------------------------------------------------------------------------------------
def test_moment_errors_on_true_and_wrong_samples():
    mix = mixture_nd(8, 4)
    g = torch.Generator().manual_seed(13)
    res = moment_errors(mix.sample(20000, generator=g, dtype=torch.float64), mix)
    assert isinstance(res, MomentErrors) and res.n == 20000
    assert res.mean_z < Z and res.cov_z < Z and res.weight_z < Z
    # per-component moments: standard errors std/sqrt(n_k) (mean) and ~sqrt(2) var/sqrt(n_k) (cov)
    std_max = float(mix.stds.max())
    assert bool((res.component_mean_error < Z * std_max / torch.sqrt(res.counts.double())).all())
    assert bool((res.component_cov_error < Z * math.sqrt(2) * std_max**2 / torch.sqrt(res.counts.double())).all())
    torch.testing.assert_close(res.true_weights, mix.weights)
    assert int(res.counts.sum()) == 20000

    shifted = moment_errors(mix.sample(20000, generator=g, dtype=torch.float64) + 0.1, mix)
    assert shifted.mean_z > 10
    wrong = GaussianMixture([4.0, 3.0, 2.0, 1.0], mix.means, mix.stds)
    reweighted = moment_errors(wrong.sample(20000, generator=g, dtype=torch.float64), mix)
    assert reweighted.weight_z > 10
    widened = GaussianMixture(mix.weights, mix.means, mix.stds * 1.3)
    assert moment_errors(widened.sample(20000, generator=g, dtype=torch.float64), mix).cov_z > 2 * Z


# ------------------------------------------------------------------------------------------
# Bad inputs.
# ------------------------------------------------------------------------------------------
def test_bad_inputs_raise():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="same number"):
        energy_distance(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="n >= 2"):
        energy_distance(x, torch.randn(1, 2))
    with pytest.raises(ValueError, match="NaN"):
        mmd(x, torch.full((5, 2), float("nan")))
    with pytest.raises(TypeError):
        energy_distance(np.zeros((10, 2)), x)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, x + 1, bandwidth=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        energy_distance(x, x, chunk_size=0)
    with pytest.raises(ValueError, match="quantile"):
        calibrate_threshold(lambda n, generator=None: torch.randn(n, 2), 10, quantile=1.0)
    with pytest.raises(ValueError, match="repeats"):
        null_distribution(lambda n, generator=None: torch.randn(n, 2), 10, repeats=0)
    with pytest.raises(ValueError, match="D=2"):
        moment_errors(torch.randn(10, 3), mixture_2d())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(15)
    x, y = gauss(3000, 2, 0.0, 1.0, g), gauss(2500, 2, 0.2, 1.0, g)
    xb, yb = gauss(300, 40, 0.0, 1.0, g), gauss(200, 40, 0.1, 1.0, g)
    for a, b in ((x, y), (xb, yb)):
        assert energy_distance(a.cuda(), b.cuda()) == pytest.approx(energy_distance(a, b), rel=1e-9)
        assert mmd(a.cuda(), b.cuda()) == pytest.approx(mmd(a, b), rel=1e-9)
