"""Tests of the Gaussian-mixture oracle against independent truth.

Truths used: autograd of the log-density (for the closed-form score), finite differences
(gradcheck), quadrature (normalisation), scipy's multivariate normal (densities), hand-written
SDE marginals from Song et al. (2021), a Heun simulation of the forward SDE (marginal moments and
CDF), and binomial / sample-moment standard errors (sampling). Statistical tolerances are
``Z`` standard errors with fixed seeds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import scoresde
from scoresde.targets import (
    GaussianMixture,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    mixture_2d,
    mixture_nd,
    swiss_roll,
    two_moons,
)

Z = 4.5  # z-score bound; with fixed seeds, and P(|N(0,1)| > 4.5) ~ 7e-6 per entry


pytestmark = pytest.mark.usefixtures("single_thread")

SDES = {
    "vp": scoresde.VPSDE(),
    "subvp": scoresde.SubVPSDE(),
    "ve": scoresde.VESDE(),
}


def mixture_1d() -> GaussianMixture:
    return GaussianMixture([0.2, 0.5, 0.3], [[-2.0], [0.5], [3.0]], [0.3, 0.7, 0.4])


MIXTURES = {
    "1d": mixture_1d,
    "2d-diag": mixture_2d,
    "2d-iso": lambda: GaussianMixture([1.0, 3.0], [[0.0, 1.0], [1.5, -1.0]], [0.5, 0.8]),
    "16d-diag": lambda: mixture_nd(16, 4),
    "16d-iso": lambda: mixture_nd(16, 3, diagonal=False, seed=3),
}


# ------------------------------------------------------------------------------------------
# Independent references, written out here from the formulas (not from scoresde).
# ------------------------------------------------------------------------------------------
def ref_coeffs(name: str, t: float) -> tuple[float, float]:
    """m(t), s(t) from Song et al. (2021), Appendix B, with the package defaults."""
    if name in ("vp", "subvp"):
        bmin, bmax = 0.1, 20.0
        B = bmin * t + 0.5 * (bmax - bmin) * t * t
        m = math.exp(-0.5 * B)
        s = math.sqrt(1.0 - math.exp(-B)) if name == "vp" else 1.0 - math.exp(-B)
        return m, s
    smin, smax = 0.01, 50.0
    return 1.0, smin * (smax / smin) ** t


def ref_logpdf(x: np.ndarray, w, mus, variances) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, diag(var_k)) via scipy.stats.multivariate_normal."""
    comps = [
        math.log(wk) + np.atleast_1d(scipy.stats.multivariate_normal(mean=mk, cov=np.diag(vk)).logpdf(x))
        for wk, mk, vk in zip(w, mus, variances)
    ]
    return logsumexp(np.stack(comps), axis=0)


def ref_params(mix: GaussianMixture):
    """Weights, means, per-coordinate variances as numpy (normalised by hand)."""
    w = mix.weights.numpy()
    mus = mix.means.numpy()
    sd = mix.stds.numpy()
    var = np.broadcast_to(sd[:, None] ** 2, mus.shape) if sd.ndim == 1 else sd**2
    return w, mus, np.array(var)


def ref_moments(w, mus, var):
    mean = (w[:, None] * mus).sum(0)
    second = sum(wk * (np.diag(vk) + np.outer(mk, mk)) for wk, mk, vk in zip(w, mus, var))
    return mean, second - np.outer(mean, mean)


def sample_points(mix: GaussianMixture, n: int, seed: int, spread: float = 1.5) -> torch.Tensor:
    """Data samples, some pushed away from the modes, in float64."""
    g = torch.Generator().manual_seed(seed)
    x = mix.sample(n, generator=g, dtype=torch.float64)
    return x * spread + torch.randn(x.shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# Score = autograd of the log-density.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("mix_name", list(MIXTURES))
def test_score_equals_autograd_of_marginal_log_prob(sde_name, mix_name):
    sde, mix = SDES[sde_name], MIXTURES[mix_name]()
    x = sample_points(mix, 12, seed=1)
    # one time per sample, from t = 0 to T, including very small t
    t = torch.tensor([0.0, 1e-5, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0], dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.marginal_log_prob(xr, t, sde).sum(), xr)
    score = mix.score_fn(sde)(x, t)
    assert score.shape == x.shape
    # Same analytic quantity by two routes in float64: agreement to round-off.
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9)
    # Public checked twin gives the same numbers.
    torch.testing.assert_close(mix.score(x, t, sde), score, rtol=0, atol=0)


@given(
    K=st.integers(1, 4),
    D=st.integers(1, 5),
    iso=st.booleans(),
    sde_name=st.sampled_from(list(SDES)),
    t=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=30, deadline=None)
def test_score_equals_autograd_property(K, D, iso, sde_name, t, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.05
    mu = 3.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    sd = 0.1 + torch.rand((K,) if iso else (K, D), generator=g, dtype=torch.float64)
    mix = GaussianMixture(w, mu, sd)
    sde = SDES[sde_name]
    x = 4.0 * torch.randn(6, D, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.marginal_log_prob(xr, t, sde).sum(), xr)
    torch.testing.assert_close(mix.score_fn(sde)(x, torch.full((6,), t, dtype=torch.float64)), grad,
                               rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_score_fn_is_differentiable_against_finite_differences(sde_name):
    """gradcheck / gradgradcheck compare autograd's Jacobian of the score with finite differences."""
    sde, mix = SDES[sde_name], mixture_2d()
    f = mix.score_fn(sde)
    x = sample_points(mix, 4, seed=2).requires_grad_(True)
    t = torch.tensor([0.0, 0.05, 0.3, 0.8], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda y: f(y, t), (x,))
    assert torch.autograd.gradgradcheck(lambda y: f(y, t), (x,))


def test_divergence_with_create_graph_matches_hessian_trace():
    sde, mix = SDES["vp"], mixture_2d()
    x = sample_points(mix, 5, seed=3).requires_grad_(True)
    t = torch.full((5,), 0.2, dtype=torch.float64)
    s = mix.score_fn(sde)(x, t)
    div = sum(torch.autograd.grad(s[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(2))
    for b in range(5):
        h = torch.autograd.functional.hessian(lambda y: mix.marginal_log_prob(y[None], 0.2, sde).sum(), x[b].detach())
        torch.testing.assert_close(div[b], torch.trace(h), rtol=1e-9, atol=1e-9)
    # the divergence itself is differentiable (second order through the score)
    (g2,) = torch.autograd.grad(div.sum(), x)
    assert torch.isfinite(g2).all()


def test_score_fn_does_no_host_sync_and_accepts_times_outside_range(monkeypatch):
    mix, sde = mixture_nd(16, 4), SDES["vp"]
    f = mix.score_fn(sde)
    x = sample_points(mix, 8, seed=4).to(torch.float32)
    f(x, torch.full((8,), 0.5))  # warm the parameter cache

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside score_fn")

    for name in ("__bool__", "item", "__float__", "tolist", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    t = torch.tensor([0.0, 1e-5, 0.3, 0.5, 0.7, 0.99, 1.0, 1.0 + 1e-3])  # past T: not checked
    out = f(x, t)
    monkeypatch.undo()
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # a Python float and a 0-d tensor are broadcast
    torch.testing.assert_close(f(x, 0.3), f(x, torch.tensor(0.3)))


# ------------------------------------------------------------------------------------------
# Densities: scipy reference, hand-written marginals, normalisation.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix_name", list(MIXTURES))
def test_log_prob_matches_scipy(mix_name):
    mix = MIXTURES[mix_name]()
    x = sample_points(mix, 50, seed=5)
    w, mus, var = ref_params(mix)
    ref = ref_logpdf(x.numpy(), w, mus, var)
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("mix_name", ["1d", "2d-diag", "16d-iso"])
@pytest.mark.parametrize("t", [0.0, 0.02, 0.37, 1.0])
def test_marginal_log_prob_matches_scipy_with_handwritten_marginals(sde_name, mix_name, t):
    mix, sde = MIXTURES[mix_name](), SDES[sde_name]
    x = sample_points(mix, 30, seed=6)
    m, s = ref_coeffs(sde_name, t)
    w, mus, var = ref_params(mix)
    ref = ref_logpdf(x.numpy(), w, m * mus, m * m * var + s * s)
    np.testing.assert_allclose(mix.marginal_log_prob(x, t, sde).numpy(), ref, rtol=1e-9, atol=1e-9)
    # the marginal as a mixture object gives the same density
    np.testing.assert_allclose(mix.marginal(t, sde).log_prob(x).numpy(), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name,t", [("vp", 0.0), ("vp", 0.1), ("vp", 0.6), ("subvp", 0.3), ("ve", 0.0), ("ve", 0.5)])
def test_density_integrates_to_one_1d(sde_name, t):
    mix, sde = mixture_1d(), SDES[sde_name]

    def pdf(v):
        return math.exp(float(mix.marginal_log_prob(torch.tensor([[v]], dtype=torch.float64), t, sde)))

    # split at the component centres so quad resolves every mode; the tails go to infinity
    m, _ = ref_coeffs(sde_name, t)
    cuts = sorted(m * mix.means[:, 0].tolist()[i] for i in range(3))
    total = scipy.integrate.quad(pdf, -np.inf, cuts[0])[0] + scipy.integrate.quad(pdf, cuts[-1], np.inf)[0]
    for a, b in zip(cuts[:-1], cuts[1:]):
        total += scipy.integrate.quad(pdf, a, b, limit=200)[0]
    assert abs(total - 1.0) < 1e-7


@pytest.mark.parametrize("sde_name,t", [("vp", 0.0), ("vp", 0.2), ("subvp", 0.5), ("ve", 0.0), ("ve", 0.5)])
def test_density_integrates_to_one_2d_grid(sde_name, t):
    """Trapezoid rule on a grid with step <= min std / 4 over +-9 std around every mean: for a
    smooth, rapidly decaying integrand its error is far below 1e-6 (spectral accuracy)."""
    mix, sde = mixture_2d(), SDES[sde_name]
    m, s = ref_coeffs(sde_name, t)
    w, mus, var = ref_params(mix)
    sd = np.sqrt(m * m * var + s * s)
    lo = (m * mus - 9 * sd).min(0)
    hi = (m * mus + 9 * sd).max(0)
    h = sd.min() / 4
    gx = torch.linspace(lo[0], hi[0], int(math.ceil((hi[0] - lo[0]) / h)) + 1, dtype=torch.float64)
    gy = torch.linspace(lo[1], hi[1], int(math.ceil((hi[1] - lo[1]) / h)) + 1, dtype=torch.float64)
    X, Y = torch.meshgrid(gx, gy, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    dens = torch.exp(mix.marginal_log_prob(pts, t, sde)).reshape(X.shape)
    total = torch.trapezoid(torch.trapezoid(dens, gy, dim=1), gx)
    assert abs(float(total) - 1.0) < 1e-6


# ------------------------------------------------------------------------------------------
# Marginals vs a simulation of the forward SDE.
# ------------------------------------------------------------------------------------------
HEUN_DT = 0.005


def simulate_forward(mix, sde, t_end, n, seed):
    """Draw x0 from the mixture and integrate the forward SDE to ``t_end`` with Heun's method
    (stochastic trapezoid; weak order 2 for additive noise, as all our SDEs have). Uses only the
    SDE's drift and diffusion, never its closed-form marginals. The VE process starts from
    x0 + sigma_min z, its documented convention (Song et al. 2021).

    Bias: for dx = a(t) x dt + g(t) dW the scheme's local error is O((|a| dt)^3) in the mean and
    O((k dt)^2 / 12) relative in each variance increment (k = d log g / dt = 8.5 for VE). With
    dt = 0.005, |a| <= 6 and t <= 0.6 the accumulated relative bias is below 1e-3, under a tenth
    of the relative standard error (~1.4e-2) of the n = 10000 moment estimates."""
    steps = max(1, math.ceil(t_end / HEUN_DT))
    g = torch.Generator().manual_seed(seed)
    x = mix.sample(n, generator=g, dtype=torch.float64)
    if isinstance(sde, scoresde.VESDE):
        x = x + sde.sigma_min * torch.randn(x.shape, generator=g, dtype=torch.float64)
    dt = t_end / steps
    for i in range(steps):
        t0 = torch.full((n,), i * dt, dtype=torch.float64)
        t1 = torch.full((n,), (i + 1) * dt, dtype=torch.float64)
        dw = math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        f0, g0 = sde.sde_unchecked(x, t0)
        xp = x + f0 * dt + g0[:, None] * dw
        f1, g1 = sde.sde_unchecked(xp, t1)
        x = x + 0.5 * (f0 + f1) * dt + 0.5 * (g0 + g1)[:, None] * dw
    return x


def assert_moments_match(x, mean, cov, z=Z):
    """Empirical mean/covariance of ``x`` vs analytic ones, within ``z`` standard errors."""
    n = x.shape[0]
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    zm = ((x.mean(0) - mean).abs() / se_mean).max()
    c = x - x.mean(0)
    emp_cov = c.T @ c / (n - 1)
    prod_var = (c * c).T @ (c * c) / n - (c.T @ c / n) ** 2
    zc = ((emp_cov - cov).abs() / torch.sqrt(prod_var / n)).max()
    assert zm < z, f"mean off by {float(zm):.2f} standard errors"
    assert zc < z, f"covariance off by {float(zc):.2f} standard errors"


@pytest.mark.parametrize(
    "mix_name,sde_name,t",
    [("2d-diag", "vp", 0.3), ("2d-diag", "subvp", 0.3), ("2d-diag", "ve", 0.5), ("16d-diag", "vp", 0.15)],
)
def test_marginal_moments_match_forward_simulation(mix_name, sde_name, t):
    mix, sde = MIXTURES[mix_name](), SDES[sde_name]
    x = simulate_forward(mix, sde, t, n=10000, seed=7)
    marg = mix.marginal(t, sde)
    assert_moments_match(x, marg.mean(), marg.covariance())
    # and the marginal's moments are the hand-written ones
    m, s = ref_coeffs(sde_name, t)
    w, mus, var = ref_params(mix)
    mean, cov = ref_moments(w, m * mus, m * m * var + s * s)
    np.testing.assert_allclose(marg.mean().numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(marg.covariance().numpy(), cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde_name,t", [("vp", 0.4), ("ve", 0.3)])
def test_marginal_density_matches_forward_simulation_ks(sde_name, t):
    """Kolmogorov-Smirnov test of simulated x(t) against the CDF obtained by integrating
    exp(marginal_log_prob) on a fine grid (1-D)."""
    mix, sde = mixture_1d(), SDES[sde_name]
    x = simulate_forward(mix, sde, t, n=10000, seed=8)[:, 0].numpy()
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    pdf = torch.exp(mix.marginal_log_prob(grid[:, None], t, sde)).numpy()
    cdf = scipy.integrate.cumulative_trapezoid(pdf, grid.numpy(), initial=0.0)
    res = scipy.stats.kstest(x, lambda v: np.interp(v, grid.numpy(), cdf))
    assert res.pvalue > 1e-3, res


# ------------------------------------------------------------------------------------------
# Sampling, moments, components.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix_name", ["1d", "2d-diag", "16d-diag", "16d-iso"])
def test_mean_and_covariance_match_handwritten(mix_name):
    mix = MIXTURES[mix_name]()
    mean, cov = ref_moments(*ref_params(mix))
    np.testing.assert_allclose(mix.mean().numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mix.covariance().numpy(), cov, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mix_name", ["1d", "2d-diag", "16d-diag"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_moments_and_component_fractions(mix_name, dtype):
    mix = MIXTURES[mix_name]()
    n = 20000
    x, k = mix._sample(n, generator=torch.Generator().manual_seed(9), dtype=dtype)
    assert x.shape == (n, mix.dim) and x.dtype == dtype
    w, mus, var = ref_params(mix)
    mean, cov = ref_moments(w, mus, var)
    assert_moments_match(x.double(), torch.tensor(mean), torch.tensor(cov))
    frac = torch.bincount(k, minlength=len(w)).double() / n
    se = np.sqrt(w * (1 - w) / n)
    assert (np.abs(frac.numpy() - w) / se).max() < Z
    # per-component moments, using the true labels
    for j in range(len(w)):
        xs = x[k == j].double()
        assert_moments_match(xs, torch.tensor(mus[j]), torch.diag(torch.tensor(var[j])))


def test_component_of_is_the_bayes_classifier():
    for mix in (mixture_2d(), mixture_nd(16, 4)):
        x = sample_points(mix, 400, seed=10, spread=1.0)
        w, mus, var = ref_params(mix)
        logj = np.stack([math.log(wk) + scipy.stats.multivariate_normal(mk, np.diag(vk)).logpdf(x.numpy())
                         for wk, mk, vk in zip(w, mus, var)], 1)
        np.testing.assert_array_equal(mix.component_of(x).numpy(), logj.argmax(1))
        # at time t: classify against the marginal
        sde, t = SDES["vp"], 0.4
        m, s = ref_coeffs("vp", t)
        logj = np.stack([math.log(wk) + scipy.stats.multivariate_normal(m * mk, np.diag(m * m * vk + s * s))
                         .logpdf(x.numpy()) for wk, mk, vk in zip(w, mus, var)], 1)
        np.testing.assert_array_equal(mix.component_of(x, t, sde).numpy(), logj.argmax(1))
        np.testing.assert_allclose(mix.responsibilities(x).sum(1).numpy(), 1.0, rtol=1e-12)


def test_sample_is_reproducible_and_shapes():
    mix = mixture_nd(16, 4)
    a = mix.sample(7, generator=torch.Generator().manual_seed(0))
    b = mix.sample(7, generator=torch.Generator().manual_seed(0))
    c = mix.sample(7, generator=torch.Generator().manual_seed(0), shape=(1, 4, 4))
    assert a.dtype == torch.get_default_dtype()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert c.shape == (7, 1, 4, 4)
    torch.testing.assert_close(c.reshape(7, 16), a, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# dtypes and shapes.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", list(SDES))
def test_float32_agrees_with_float64(sde_name):
    mix, sde = mixture_nd(16, 4), SDES[sde_name]
    x = sample_points(mix, 32, seed=11)
    t = torch.linspace(1e-5, 1.0, 32, dtype=torch.float64)
    f = mix.score_fn(sde)
    s64 = f(x, t)
    s32 = f(x.float(), t.float())
    lp64 = mix.marginal_log_prob(x, t, sde)
    lp32 = mix.marginal_log_prob(x.float(), t.float(), sde)
    assert s32.dtype == torch.float32 and lp32.dtype == torch.float32
    # float32 round-off (eps ~ 1.2e-7) amplified by the ~1e2 condition of sums over D*K terms
    scale = s64.abs().amax(1, keepdim=True) + 1.0
    assert ((s32.double() - s64).abs() / scale).max() < 1e-4
    assert ((lp32.double() - lp64).abs() / (lp64.abs() + 1.0)).max() < 1e-5


def test_image_shaped_data_gives_same_numbers():
    mix, sde = mixture_nd(16, 4), SDES["vp"]
    x = sample_points(mix, 9, seed=12)
    xi = x.reshape(9, 1, 4, 4)
    t = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    f = mix.score_fn(sde)
    si = f(xi, t)
    assert si.shape == xi.shape
    torch.testing.assert_close(si.reshape(9, 16), f(x, t), rtol=0, atol=0)
    torch.testing.assert_close(mix.marginal_log_prob(xi, t, sde), mix.marginal_log_prob(x, t, sde), rtol=0, atol=0)
    torch.testing.assert_close(mix.log_prob(xi), mix.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(mix.component_of(xi, t, sde), mix.component_of(x, t, sde), rtol=0, atol=0)
    # D = 1 accepts (B,) as well as (B, 1)
    m1 = mixture_1d()
    v = torch.linspace(-3, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(m1.log_prob(v), m1.log_prob(v[:, None]))
    assert m1.score_fn(sde)(v, torch.full((5,), 0.1, dtype=torch.float64)).shape == (5,)


def test_marginal_at_zero_is_the_data_for_vp_and_parameters_are_cached():
    mix = mixture_2d()
    m0 = mix.marginal(0.0, SDES["vp"])
    torch.testing.assert_close(m0.means, mix.means)
    torch.testing.assert_close(m0.variances, mix.variances)
    iso = MIXTURES["2d-iso"]()
    assert iso.marginal(0.5, SDES["ve"]).isotropic and iso.marginal(0.5, SDES["ve"]).stds.shape == (2,)
    x = torch.zeros(3, 2)
    mix.log_prob(x)
    mix.log_prob(x.double())
    assert set(mix._cache) == {(torch.device("cpu"), torch.float32), (torch.device("cpu"), torch.float64)}


def test_weights_are_normalised():
    mix = GaussianMixture(np.array([2.0, 6.0]), [[0.0], [1.0]], [1.0, 1.0])
    torch.testing.assert_close(mix.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# Bad inputs.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights,means,stds,match",
    [
        ([0.5, -0.5], [[0.0], [1.0]], [1.0, 1.0], "positive"),
        ([0.0, 1.0], [[0.0], [1.0]], [1.0, 1.0], "positive"),
        ([[0.5, 0.5]], [[0.0], [1.0]], [1.0, 1.0], r"\(K,\)"),
        ([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], r"\(K, D\)"),
        ([0.5, 0.5], [[0.0], [1.0], [2.0]], [1.0, 1.0], "one mean per component"),
        ([0.5, 0.5], [[0.0, 1.0], [1.0, 1.0]], [1.0, 1.0, 1.0], "stds must have shape"),
        ([0.5, 0.5], [[0.0, 1.0], [1.0, 1.0]], [[1.0, 1.0, 1.0]] * 2, "stds must have shape"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0], "> 0"),
        ([0.5, 0.5], [[0.0], [1.0]], [[1.0], [-1.0]], "> 0"),
        ([0.5, 0.5], [[0.0], [float("nan")]], [1.0, 1.0], "finite"),
        ([0.5, float("inf")], [[0.0], [1.0]], [1.0, 1.0], "finite"),
    ],
)
def test_bad_parameters_raise(weights, means, stds, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(weights, means, stds)


def test_bad_calls_raise():
    mix, sde = mixture_2d(), SDES["vp"]
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="D=2"):
        mix.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="D=2"):
        mix.score_fn(sde)(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        mix.score_fn(sde)(x, torch.zeros(3))
    with pytest.raises(TypeError):
        mix.log_prob(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="outside"):
        mix.marginal_log_prob(x, 1.5, sde)
    with pytest.raises(ValueError, match="outside"):
        mix.marginal_log_prob(x, torch.tensor([0.1, 0.2, -0.1, 0.3]), sde)
    with pytest.raises(ValueError, match="outside"):
        mix.marginal(-0.1, sde)
    with pytest.raises(ValueError, match="sde"):
        mix.component_of(x, 0.3)
    with pytest.raises(ValueError, match="positive int"):
        mix.sample(0)
    with pytest.raises(ValueError, match="D=2"):
        mix.sample(3, shape=(3,))
    with pytest.raises(ValueError):
        mixture_nd(0, 2)
    with pytest.raises(ValueError, match="positive int"):
        two_moons(-1)


# ------------------------------------------------------------------------------------------
# Toy data sets and ready-made oracles.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [two_moons, eight_gaussians, checkerboard, swiss_roll])
def test_toy_sets_shape_dtype_reproducible(fn):
    a = fn(500, generator=torch.Generator().manual_seed(0))
    b = fn(500, generator=torch.Generator().manual_seed(0))
    c = fn(500, generator=torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and a.dtype == torch.get_default_dtype()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert fn(10, dtype=torch.float64).dtype == torch.float64


def test_two_moons_geometry():
    x = two_moons(4000, generator=torch.Generator().manual_seed(0), noise=0.0).double()
    upper = (x - torch.tensor([0.0, 0.0], dtype=torch.float64)).norm(dim=1)
    lower = (x - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1)
    on_upper = (upper - 1).abs() < 1e-6
    on_lower = (lower - 1).abs() < 1e-6
    assert bool((on_upper | on_lower).all())
    assert bool((x[on_upper & ~on_lower, 1] >= -1e-6).all()) and bool((x[on_lower & ~on_upper, 1] <= 0.5 + 1e-6).all())
    frac = float(on_upper.double().mean())
    assert abs(frac - 0.5) < Z * math.sqrt(0.25 / 4000)
    # with noise: residual distance to the arcs has std ~ noise
    xn = two_moons(4000, generator=torch.Generator().manual_seed(0), noise=0.05).double()
    assert float(xn.std(0).min()) > 0.3


def test_checkerboard_cells_uniform():
    n = 8000
    x = checkerboard(n, generator=torch.Generator().manual_seed(0), scale=1.5).double()
    cell = torch.floor(x / 1.5)
    assert bool((x.abs() <= 3.0).all())
    assert bool(((cell[:, 0] + cell[:, 1]) % 2 == 0).all())
    idx = (cell[:, 0] + 2) * 4 + (cell[:, 1] + 2)
    counts = torch.bincount(idx.long(), minlength=16)
    filled = counts[counts > 0]
    assert filled.numel() == 8
    p = 1 / 8
    assert ((filled.double() / n - p).abs() / math.sqrt(p * (1 - p) / n)).max() < Z


def test_swiss_roll_on_spiral():
    x = swiss_roll(2000, generator=torch.Generator().manual_seed(0), noise=0.0, dtype=torch.float64)
    u = 5.0 * x.norm(dim=1)
    assert bool((u >= 1.5 * math.pi - 1e-9).all() and (u <= 4.5 * math.pi + 1e-9).all())
    torch.testing.assert_close(x, torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 5.0)


def test_eight_gaussians_is_its_mixture():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(eight_gaussians(100, generator=g1), eight_gaussians_mixture().sample(100, generator=g2))
    mix = eight_gaussians_mixture(radius=3.0, std=0.1)
    np.testing.assert_allclose(mix.means.norm(dim=1).numpy(), 3.0)
    assert mix.n_components == 8 and mix.isotropic


def test_ready_made_oracles_are_deterministic_and_separated():
    a, b = mixture_nd(16, 4), mixture_nd(16, 4)
    torch.testing.assert_close(a.means, b.means, rtol=0, atol=0)
    torch.testing.assert_close(a.stds, b.stds, rtol=0, atol=0)
    assert a.dim == 16 and a.n_components == 4 and not a.isotropic
    assert len(set(a.weights.tolist())) == 4
    d = torch.cdist(a.means, a.means)
    np.testing.assert_allclose(d[~torch.eye(4, dtype=bool)].numpy(), 4.0 * math.sqrt(2), rtol=1e-12)
    m2 = mixture_2d()
    assert 3 <= m2.n_components <= 4 and len(set(m2.weights.tolist())) == m2.n_components
    d2 = torch.cdist(m2.means, m2.means) + 1e9 * torch.eye(m2.n_components)
    assert float(d2.min()) > 5 * float(m2.stds.max())
    assert mixture_nd(3, 6).n_components == 6  # K > D: random unit directions


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_score_fn_without_host_sync_matches_cpu():
    mix, sde = mixture_nd(16, 4), SDES["vp"]
    f = mix.score_fn(sde)
    x = sample_points(mix, 64, seed=14)
    t = torch.linspace(1e-3, 1.0, 64, dtype=torch.float64)
    ref = f(x, t)
    xc, tc = x.cuda(), t.cuda()
    f(xc, tc)  # moves and caches the parameters
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = f(xc, tc)
        lp = mix._log_prob_flat(xc, *sde.coeffs_unchecked(tc))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lp.cpu(), mix.marginal_log_prob(x, t, sde), rtol=1e-10, atol=1e-10)
    g = torch.Generator(device="cuda").manual_seed(0)
    s = mix.sample(10, generator=g, dtype=torch.float32, shape=(1, 4, 4))
    assert s.device.type == "cuda" and s.shape == (10, 1, 4, 4)


# ---------------------------------------------------------------------------------------------
# Class labels.
# ---------------------------------------------------------------------------------------------
def _labelled():
    return GaussianMixture([0.4, 0.3, 0.2, 0.1], [[-2.5, 0.0], [2.5, 0.5], [0.0, 3.0], [0.5, -3.0]],
                           [0.5, 0.4, 0.3, 0.3], labels=[0, 1, 1, 0])


def test_labelled_mixture_class_prior_and_conditionals():
    mix = _labelled()
    assert mix.num_classes == 2 and mix.labels.tolist() == [0, 1, 1, 0] and "2 classes" in repr(mix)
    torch.testing.assert_close(mix.class_probs(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    c1 = mix.conditional(1)
    torch.testing.assert_close(c1.weights, torch.tensor([0.6, 0.4], dtype=torch.float64))
    torch.testing.assert_close(c1.means, mix.means[1:3])
    assert mix.marginal(0.4, scoresde.VPSDE()).labels.tolist() == [0, 1, 1, 0]
    assert GaussianMixture([1.0], [[0.0]], [1.0]).num_classes == 0


def test_labelled_sampling_draws_each_class_from_its_components():
    mix = _labelled()
    g = torch.Generator().manual_seed(0)
    n = 4000
    x = mix.sample(n, generator=g, y=1, dtype=torch.float64)
    comp = mix.component_of(x)
    frac = float((comp == 1).double().mean())  # P(component 1 | class 1) = 0.6
    assert abs(frac - 0.6) < 4 * (0.6 * 0.4 / n) ** 0.5
    assert bool(((comp == 1) | (comp == 2)).all())
    x, y = mix.sample_labelled(n, generator=g, dtype=torch.float64)
    comp = mix.component_of(x)
    assert torch.equal(y, mix.labels[comp])  # separated components: the label is the component's class
    assert abs(float(y.double().mean()) - 0.5) < 4 * (0.25 / n) ** 0.5


def test_labels_are_checked():
    w, mu, sd = [0.5, 0.5], [[0.0], [1.0]], [1.0, 1.0]
    with pytest.raises(ValueError, match="non-negative integers"):
        GaussianMixture(w, mu, sd, labels=[0.5, 1])
    with pytest.raises(ValueError, match="non-negative integers"):
        GaussianMixture(w, mu, sd, labels=[0])
    with pytest.raises(ValueError, match="no class labels"):
        GaussianMixture(w, mu, sd).class_probs()
    with pytest.raises(ValueError, match="classes 0..1"):
        GaussianMixture(w, mu, sd, labels=[0, 1]).conditional(2)
