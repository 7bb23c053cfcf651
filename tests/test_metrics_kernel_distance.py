"""KID against its definition, a closed form, and the spread over seeds.

Independent truths: the estimator is the unbiased MMD^2 with the kernel (x.y/D + 1)^3, checked
against explicit kernel matrices and the jackknife against explicit deletion; for Gaussians the
population MMD^2 of a cubic polynomial kernel is a function of the first three moments
(E[(X.Y)^j] for j <= 3), so the mean over seeds must match it within its standard error, and be
0 when the distributions agree; the reported standard error must match the spread of the
estimates over fresh data (bounds from the sampling error of a standard deviation over R seeds).
"""
from __future__ import annotations

import math

import pytest
import torch
from _features import identity_features

from scoresde.metrics import KIDResult, kid
from scoresde.metrics import kernel_distance as KID

Z = 4.5
pytestmark = pytest.mark.usefixtures("single_thread")
f64 = torch.float64


def naive_mmd(a, b):
    d = a.shape[1]
    kaa, kbb, kab = [(x @ y.T / d + 1) ** 3 for x, y in [(a, a), (b, b), (a, b)]]
    n, m = a.shape[0], b.shape[0]
    return float((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
                 - 2 * kab.mean())


def test_the_estimate_is_the_unbiased_mmd_and_the_jackknife_deletes_one_point():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(23, 5, generator=g, dtype=f64)
    b = torch.randn(17, 5, generator=g, dtype=f64) + 0.5
    r = kid(a, b, subset_size=17, subsets=3, generator=g)
    assert isinstance(r, KIDResult) and (r.n_a, r.n_b, r.subset_size, r.subsets) == (23, 17, 17, 3)
    assert r.full == pytest.approx(naive_mmd(a, b), rel=1e-12)
    loo_a = torch.tensor([naive_mmd(torch.cat([a[:i], a[i + 1:]]), b) for i in range(23)], dtype=f64)
    loo_b = torch.tensor([naive_mmd(a, torch.cat([b[:j], b[j + 1:]])) for j in range(17)], dtype=f64)
    jack = float(22 / 23 * (loo_a - loo_a.mean()).square().sum() + 16 / 17 * (loo_b - loo_b.mean()).square().sum())
    assert KID._jackknife(KID._kernel_sums(a, b)) == pytest.approx(jack, rel=1e-9)
    whole = kid(a[:17], b)  # subsets equal to the whole sets: the full U-statistic, one "subset"
    assert whole.value == whole.full == pytest.approx(naive_mmd(a[:17], b), rel=1e-12) and whole.subsets == 1


def test_the_degenerate_term_estimates_are_unbiased_u_statistics():
    """delta = E k^2 - 2 E[k(X,X')k(X,X'')] + E[k(X1,X2)k(X3,X4)], by brute force over distinct indices."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 2, generator=g, dtype=f64), torch.randn(6, 2, generator=g, dtype=f64)
    k = (a @ a.T / 2 + 1) ** 3
    n = 7
    idx = range(n)
    ek2 = sum(k[i, j] ** 2 for i in idx for j in idx if i != j) / (n * (n - 1))
    emu2 = sum(k[i, j] * k[i, l] for i in idx for j in idx for l in idx if len({i, j, l}) == 3) / (n * (n - 1) * (n - 2))
    th2 = sum(k[i, j] * k[l, m] for i in idx for j in idx for l in idx for m in idx
              if len({i, j, l, m}) == 4) / (n * (n - 1) * (n - 2) * (n - 3))
    s = KID._kernel_sums(a, b)
    assert KID._degenerate(s["ra"], s["qa"], n) == pytest.approx(float(ek2 - 2 * emu2 + th2), rel=1e-9)
    kc = (a @ b.T / 2 + 1) ** 3
    m = 6
    ek2 = (kc**2).mean()
    ea = sum(kc[i, j] * kc[i, l] for i in idx for j in range(m) for l in range(m) if j != l) / (n * m * (m - 1))
    eb = sum(kc[i, j] * kc[l, j] for i in idx for l in idx for j in range(m) if i != l) / (m * n * (n - 1))
    th2 = sum(kc[i, j] * kc[l, q] for i in idx for l in idx for j in range(m) for q in range(m)
              if i != l and j != q) / (n * (n - 1) * m * (m - 1))
    got = KID._degenerate_cross(s["ca"], s["cb"], s["qca"], s["qcb"], n, m)
    assert got == pytest.approx(float(ek2 - ea - eb + th2), rel=1e-9)


def third_moment(mu, cov):
    return (torch.einsum("a,b,c->abc", mu, mu, mu) + torch.einsum("a,bc->abc", mu, cov)
            + torch.einsum("b,ac->abc", mu, cov) + torch.einsum("c,ab->abc", mu, cov))


def expected_kernel(p, q, d):
    """E k(X, Y) for independent Gaussians X ~ p, Y ~ q (p, q = (mean, cov)), k = (x.y/d + 1)^3."""
    (mp, sp), (mq, sq) = p, q
    e1 = mp @ mq
    e2 = torch.trace((sp + torch.outer(mp, mp)) @ (sq + torch.outer(mq, mq)))
    e3 = (third_moment(mp, sp) * third_moment(mq, sq)).sum()
    return float(1 + 3 * e1 / d + 3 * e2 / d**2 + e3 / d**3)


def population_mmd2(p, q, d):
    return expected_kernel(p, p, d) + expected_kernel(q, q, d) - 2 * expected_kernel(p, q, d)


def repeat(p, q, n, R, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    la, lb = torch.linalg.cholesky(p[1]), torch.linalg.cholesky(q[1])
    d = p[0].shape[0]
    out = [kid(p[0] + torch.randn(n, d, generator=g, dtype=f64) @ la.T,
               q[0] + torch.randn(n, d, generator=g, dtype=f64) @ lb.T, generator=g, **kw) for _ in range(R)]
    return torch.tensor([r.value for r in out], dtype=f64), torch.tensor([r.stderr for r in out], dtype=f64)


D = 3
P = (torch.zeros(D, dtype=f64), torch.eye(D, dtype=f64))
Q = (torch.tensor([0.4, 0.0, -0.2], dtype=f64), torch.tensor([[1.3, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 0.8]], dtype=f64))


def test_population_closed_form_is_a_proper_mmd():
    assert population_mmd2(P, P, D) == pytest.approx(0.0, abs=1e-12)
    assert population_mmd2(P, Q, D) > 0.05


@pytest.mark.parametrize("same", [True, False], ids=["same", "different"])
@pytest.mark.parametrize("subset", [None, 150], ids=["whole", "subsets"])
def test_kid_is_unbiased_and_its_stderr_matches_the_spread_over_seeds(same, subset):
    """Mean over R seeds: within Z standard errors of the closed form (0 for the same distribution).

    The reported standard error against the standard deviation over seeds: the ratio of the RMS
    error to the spread is 1 up to the sampling error of a standard deviation, about
    sqrt((kurtosis - 1) / (4 R)), about 0.05 here (3 of those are allowed). When the distributions
    agree the estimate is floored (documented), so it may be conservative up to the plain
    jackknife's factor sqrt(2), which is the bound there."""
    n, R = 300, 300
    q = P if same else Q
    vals, ses = repeat(P, q, n, R, seed=10 + same + 2 * (subset is None), subset_size=subset, subsets=10)
    truth = population_mmd2(P, q, D)
    mean, se_mean = float(vals.mean()), float(vals.std() / math.sqrt(R))
    assert abs(mean - truth) < Z * se_mean, (mean, truth, se_mean)
    if not same:
        assert mean > Z * se_mean  # positive, detectably
    spread = float(vals.std())
    kurt = float(((vals - vals.mean()) ** 4).mean() / vals.var() ** 2)
    rel = math.sqrt((kurt - 1) / (4 * R))
    ratio = float(ses.square().mean().sqrt()) / spread
    upper = math.sqrt(2) if same else 1.0
    assert 1 - 3 * rel < ratio < upper + 3 * rel, (ratio, rel, kurt)


def test_more_subsets_shrink_the_subsampling_noise():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(600, 4, generator=g, dtype=f64), torch.randn(600, 4, generator=g, dtype=f64) + 0.3
    few = kid(a, b, subset_size=100, subsets=4, generator=torch.Generator().manual_seed(0))
    many = kid(a, b, subset_size=100, subsets=400, generator=torch.Generator().manual_seed(0))
    assert few.full == many.full
    assert many.stderr < few.stderr
    assert abs(many.value - many.full) < Z * math.sqrt(many.stderr**2 - kid(a, b, subset_size=600).stderr ** 2)


def test_inputs_are_checked():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, x, subset_size=11)
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="subsets"):
        kid(x, torch.randn(20, 3), subset_size=5, subsets=1)
    with pytest.raises(ValueError, match="dimensions"):
        kid(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="n >= 3"):
        kid(x[:2], x)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_agrees_with_torchmetrics_on_the_whole_sets():
    """torchmetrics' KID (an optional reference) with one subset of all points is the full U-statistic."""
    kid_mod = pytest.importorskip("torchmetrics.image.kid")

    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(200, 6, generator=g, dtype=f64), torch.randn(200, 6, generator=g, dtype=f64) * 1.2
    metric = kid_mod.KernelInceptionDistance(feature=identity_features(6), subsets=1, subset_size=200)
    metric.update(a, real=True)
    metric.update(b, real=False)
    mean, _ = metric.compute()
    assert float(mean) == pytest.approx(kid(a, b).value, rel=1e-9)
