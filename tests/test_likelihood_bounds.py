"""Variational bounds (`scoresde.likelihood.bounds`, `scoresde.likelihood.ddpm_bound`) against truth.

* The continuous bound of a single Gaussian with its exact score has a closed form up to a 1-D
  integral, computed here by quadrature in float64 from Theorem 3 of Song, Durkan, Murray & Ermon
  (2021) as written (no code of the package's estimator); it must equal the identity
  ``-log p_eps(x) + E[log p_T(x_T) - log pi(x_T) | x]`` (the gap of the theorem for a true score), and
  the Monte Carlo estimate must match both within 3 standard errors; the kernel from ``eps`` (not
  from 0) is what makes it so, shown where the two kernels differ.
* On Gaussian-mixture oracles (VP, sub-VP, VE) the bound of the exact score is at least the exact
  ``-log p_eps`` and equals it plus the prior mismatch, within 3 SE; the bound of another mixture's
  score equals that mixture's ``-log p_eps`` (and so lies above the data's, on average).
* The DDPM bound is at least the exact discrete NLL of a mixture on the grid (cell probabilities from
  Gaussian CDF products), and not looser than the cell-width estimate of its gap; its expectation for
  a linear noise predictor matches a closed form built from the chain's posterior (Ho et al. 2020,
  eqs. 5-7, 13) with the decoder integrated by Gauss-Hermite quadrature.
* The test-set function's bits/dim, convention and standard error; clear errors for bad input.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import logsumexp
from scipy.stats import norm

from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE, mixture_2d, mixture_nd
from scoresde.likelihood import evaluate_bounds, evaluate_bpd, variational_bound, ddpm_bound
from scoresde.quantize import dequantize, grid_values, to_levels

pytestmark = pytest.mark.usefixtures("single_thread")

LN2 = math.log(2.0)
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
EPS = 1e-5


def _c(sde, t: float):
    """``(m, s, g^2, f)`` of ``sde`` at ``t`` as float64 scalars (``f`` the drift coefficient, ``f(x, t) = f x``)."""
    tt = torch.tensor([t], dtype=torch.float64)
    m, s = sde.coeffs_unchecked(tt)
    drift, g = sde.sde_unchecked(torch.ones_like(tt), tt)
    return float(m), float(s), float(g) ** 2, float(drift)


def gaussian_bound_quadrature(sde, mu, v, x, eps, kernel="eps"):
    """Theorem 3's bound for data ``N(mu, diag v)`` with its exact score, by quadrature, per coordinate:
    ``x_t = a x + sigma z`` (kernel from ``eps``, or from 0 with ``x`` taken as ``x_0``), ``V_t = m^2 v + s^2``,
    ``E||s||^2 = (a^2 (x - m_0 mu)^2 + sigma^2) / V^2`` and ``E[-2 s . grad log p(x_t | x)] = -2 / V``."""
    m0, s0 = _c(sde, eps)[:2] if kernel == "eps" else (1.0, 0.0)
    mT, sT = _c(sde, sde.T)[:2]
    v_pi = sde.prior_std ** 2
    total = 0.0
    for xd, mud, vd in zip(x, mu, v):
        def integrand(t):
            m, s, g2, f = _c(sde, t)
            a = m / m0
            sig2 = s * s - a * a * s0 * s0
            V = m * m * vd + s * s
            return 0.5 * g2 * ((a * a * (xd - m0 * mud) ** 2 + sig2) / V ** 2 - 2.0 / V) - f
        edges = [eps] + list(np.geomspace(eps * 1.001, sde.T, 24))
        integral = sum(quad(integrand, lo, hi, epsabs=1e-12, epsrel=1e-11, limit=100)[0]
                       for lo, hi in zip(edges[:-1], edges[1:]))
        aT = mT / m0
        sigT2 = sT * sT - aT * aT * s0 * s0
        total += 0.5 * math.log(2 * math.pi * v_pi) + (aT * aT * xd * xd + sigT2) / (2 * v_pi) + integral
    return total


def gaussian_identity(sde, mu, v, x, eps):
    """``-log p_eps(x) + E[log p_T(x_T) - log pi(x_T) | x_eps = x]`` for data ``N(mu, diag v)``, closed form."""
    me, se = _c(sde, eps)[:2]
    mT, sT = _c(sde, sde.T)[:2]
    aT = mT / me
    sigT2 = sT * sT - aT * aT * se * se
    v_pi = sde.prior_std ** 2
    out = 0.0
    for xd, mud, vd in zip(x, mu, v):
        Ve, VT = me * me * vd + se * se, mT * mT * vd + sT * sT
        out += 0.5 * math.log(2 * math.pi * Ve) + (xd - me * mud) ** 2 / (2 * Ve)
        out += -0.5 * math.log(2 * math.pi * VT) - ((aT * xd - mT * mud) ** 2 + sigT2) / (2 * VT)
        out -= -0.5 * math.log(2 * math.pi * v_pi) - (aT * aT * xd * xd + sigT2) / (2 * v_pi)
    return out


def replicated_mean(res, n_points, reps):
    """Per point: mean of ``reps`` independent estimates and its standard error (points are row blocks)."""
    v = res.nll.reshape(n_points, reps)
    return v.mean(1), v.std(1) / math.sqrt(reps)


GAUSS_MU, GAUSS_V = [0.5, -0.3, 0.2], [0.09, 0.25, 0.64]
GAUSS_X = [[1.1, -0.7, 0.0], [0.5, -0.3, 0.2], [-0.2, 0.4, 1.5], [0.9, 0.1, -1.0]]


def _gaussian():
    return GaussianMixture([1.0], [GAUSS_MU], [[math.sqrt(a) for a in GAUSS_V]])


# ---------------------------------------------------------------------------------------------
# The continuous bound: a Gaussian, in closed form.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_bound_matches_its_closed_form_and_the_identity(name):
    sde = SDES[name]
    mix, reps = _gaussian(), 600
    x = torch.tensor(GAUSS_X, dtype=torch.float64).repeat_interleave(reps, 0)
    res = variational_bound(mix.score_fn(sde), sde, x, eps=EPS, n_times=6, generator=torch.Generator().manual_seed(1))
    mean, se = replicated_mean(res, len(GAUSS_X), reps)
    quad_form = torch.tensor([gaussian_bound_quadrature(sde, GAUSS_MU, GAUSS_V, p, EPS) for p in GAUSS_X])
    identity = torch.tensor([gaussian_identity(sde, GAUSS_MU, GAUSS_V, p, EPS) for p in GAUSS_X])
    # The derivation: Theorem 3 for a true score is -log p_eps + the expected log-ratio at T.
    assert torch.allclose(quad_form, identity, rtol=0, atol=1e-8), (quad_form - identity)
    # The estimator: the sum over the points (one comparison per SDE) within 3 standard errors.
    diff = float((mean - quad_form).sum())
    tol = 3 * float(se.pow(2).sum().sqrt())
    assert abs(diff) < tol, (name, diff, tol)
    # the terms add up, the exact ones are exact
    assert torch.allclose(res.terms["prior"] + res.terms["drift"] + res.terms["score"], res.nll)
    D = 3
    lm = sde.log_mean_coeff_unchecked(torch.tensor([EPS, sde.T], dtype=torch.float64))
    assert torch.allclose(res.terms["drift"], torch.full_like(res.nll, float(-D * (lm[1] - lm[0]))))
    assert res.nfe == 12 and res.convention["eps"] == EPS


@pytest.mark.parametrize("sde", [VPSDE(beta_min=0.1, beta_max=0.5), VESDE(sigma_min=0.01, sigma_max=0.5)],
                         ids=["vp-short", "ve-small"])
def test_true_score_gap_is_the_prior_mismatch(sde):
    """Where p_T is far from the prior, the bound of the true score is -log p_eps plus the expected
    log-ratio at T, and that gap is resolved (many standard errors away from zero)."""
    mix, reps = _gaussian(), 600
    pts = GAUSS_X[:2]
    x = torch.tensor(pts, dtype=torch.float64).repeat_interleave(reps, 0)
    res = variational_bound(mix.score_fn(sde), sde, x, eps=EPS, n_times=6, generator=torch.Generator().manual_seed(2))
    mean, se = replicated_mean(res, len(pts), reps)
    nll = -mix.marginal_log_prob(torch.tensor(pts, dtype=torch.float64), EPS, sde)
    gap = torch.tensor([gaussian_identity(sde, GAUSS_MU, GAUSS_V, p, EPS) for p in pts]) - nll
    assert bool((gap > 6 * se).all()), (gap, se)
    assert bool(((mean - nll - gap).abs() < 3 * se).all()), (mean - nll - gap, se)


@pytest.mark.parametrize("sde,eps", [(VESDE(sigma_min=0.3, sigma_max=5.0), 1e-5), (VPSDE(beta_min=2.0), 0.05)],
                         ids=["ve-wide-sigma-min", "vp-large-eps"])
def test_the_kernel_runs_from_eps(sde, eps):
    """The bound concerns p_eps, so the forward process starts at eps; where the kernel from 0 gives
    another number, the estimate is the kernel-from-eps closed form."""
    mix, reps = _gaussian(), 2000
    p = GAUSS_X[0]
    x = torch.tensor([p], dtype=torch.float64).repeat(reps, 1)
    res = variational_bound(mix.score_fn(sde), sde, x, eps=eps, n_times=4, generator=torch.Generator().manual_seed(3))
    mean, se = float(res.nll.mean()), float(res.nll.std() / math.sqrt(reps))
    from_eps = gaussian_bound_quadrature(sde, GAUSS_MU, GAUSS_V, p, eps)
    from_zero = gaussian_bound_quadrature(sde, GAUSS_MU, GAUSS_V, p, eps, kernel="zero")
    assert abs(mean - from_eps) < 3 * se, (mean, from_eps, se)
    assert abs(from_zero - from_eps) > 5 * se
    assert abs(from_eps - gaussian_identity(sde, GAUSS_MU, GAUSS_V, p, eps)) < 1e-8


# ---------------------------------------------------------------------------------------------
# The continuous bound on mixtures.
# ---------------------------------------------------------------------------------------------
def prior_mismatch(mix, sde, x, eps, n=64, seed=0):
    """``E[log p_T(x_T) - log pi(x_T) | x_eps = x]`` per sample, by Monte Carlo over ``x_T``, with its SE."""
    g = torch.Generator().manual_seed(seed)
    lm = sde.log_mean_coeff_unchecked(torch.tensor([eps, sde.T], dtype=torch.float64))
    m, s = sde.coeffs_unchecked(torch.tensor([eps, sde.T], dtype=torch.float64))
    a = float(torch.exp(lm[1] - lm[0]))
    sig = math.sqrt(float(s[1]) ** 2 - a * a * float(s[0]) ** 2)
    xT = a * x.repeat(n, 1) + sig * torch.randn(n * x.shape[0], x.shape[1], generator=g, dtype=torch.float64)
    r = (mix.marginal_log_prob(xT, sde.T, sde) - sde.prior_logp(xT)).reshape(n, -1)
    return r.mean(0), r.std(0) / math.sqrt(n)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("mix_name", ["mixture_2d", "mixture_nd"])
def test_bound_of_the_exact_score_on_mixtures(name, mix_name):
    sde = SDES[name]
    mix = mixture_2d() if mix_name == "mixture_2d" else mixture_nd(D=8, K=3)
    x = mix.sample(256, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = variational_bound(mix.score_fn(sde), sde, x, eps=EPS, n_times=8, generator=torch.Generator().manual_seed(5))
    exact = -mix.marginal_log_prob(x, EPS, sde)
    gap = res.nll - exact
    se = float(gap.std() / math.sqrt(len(gap)))
    mis, mis_se = prior_mismatch(mix, sde, x, EPS)
    assert float(gap.mean()) > -3 * se, (name, mix_name, float(gap.mean()), se)  # a bound
    tol = 3 * math.sqrt(se ** 2 + float(mis_se.pow(2).mean()) / len(gap))
    assert abs(float((gap - mis).mean())) < tol, (name, mix_name, float((gap - mis).mean()), tol)  # and tight
    # The per-sample standard error describes the spread of the per-sample estimates around the truth:
    # its mean square estimates their variance (the estimates are heavy-tailed, so no z-scores).
    ratio = float(res.stderr.pow(2).mean() / (gap - mis).var())
    assert 0.6 < ratio < 1.6, ratio


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_bound_of_another_mixtures_score_is_that_mixtures_nll(name):
    """A score field of another mixture B is a true score of a diffusion: its bound is B's -log p_eps
    (+ B's prior mismatch), and on data of A that lies above A's entropy."""
    sde = SDES[name]
    A = mixture_2d()
    B = GaussianMixture(A.weights, A.means + 0.6, A.stds * 1.4)
    x = A.sample(256, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    res = variational_bound(B.score_fn(sde), sde, x, eps=EPS, n_times=8, generator=torch.Generator().manual_seed(7))
    mis, _ = prior_mismatch(B, sde, x, EPS)
    d = res.nll - (-B.marginal_log_prob(x, EPS, sde)) - mis
    assert abs(float(d.mean())) < 3 * float(d.std() / 16)
    excess = res.nll + A.marginal_log_prob(x, EPS, sde)  # the bound minus A's -log p_eps
    assert float(excess.mean()) > 5 * float(excess.std() / 16)


def test_variance_reduction_keeps_the_mean():
    """Antithetic noise, the control variate and the time sampler change the variance, not the mean."""
    sde, mix = SDES["vp"], _gaussian()
    x = torch.tensor([GAUSS_X[2]], dtype=torch.float64).repeat(3000, 1)
    runs = {}
    for key, kw in {"default": {}, "no-cv": dict(control_variate=False), "no-antithetic": dict(antithetic=False),
                    "uniform": dict(time_sampler="uniform")}.items():
        r = variational_bound(mix.score_fn(sde), sde, x, n_times=2, generator=torch.Generator().manual_seed(8), **kw)
        runs[key] = (float(r.nll.mean()), float(r.nll.std() / math.sqrt(len(x))))
    truth = gaussian_identity(sde, GAUSS_MU, GAUSS_V, GAUSS_X[2], EPS)
    for key, (m, se) in runs.items():
        assert abs(m - truth) < 3 * se, (key, m, truth, se)
    assert runs["no-cv"][1] > 2 * runs["default"][1]


def test_continuous_bound_upper_bounds_the_ode_likelihood():
    """On the same (dequantized) points, the bound of a true score field is the ODE's -log p up to
    the prior mismatch: bits/dim of the two agree within the paired standard error."""
    sde, A = SDES["vp"], mixture_2d()
    B = GaussianMixture(A.weights, A.means + 0.3, A.stds * 1.2)
    n_levels, rng = 64, (-6.0, 6.0)
    levels = to_levels(A.sample(48, generator=torch.Generator().manual_seed(9), dtype=torch.float64), n_levels, rng,
                       mode="floor")
    grid = grid_values(levels, n_levels, rng, dtype=torch.float64)
    pts = dequantize(grid, n_levels, rng, torch.Generator().manual_seed(10))
    kw = dict(n_levels=n_levels, data_range=rng, dequantize=None)
    ode = evaluate_bpd(B.score_fn(sde), sde, pts, trace="exact", progress=False, **kw)
    bnd = evaluate_bounds(B.score_fn(sde), sde, pts, bounds=("continuous",), n_times=16,
                          generator=torch.Generator().manual_seed(11), **kw)["continuous"]
    d = bnd.per_sample_bpd - ode.per_sample_bpd
    se = float(d.std() / math.sqrt(len(d)))
    assert float(d.mean()) > -3 * se and abs(float(d.mean())) < 3 * se + 1e-3, (float(d.mean()), se)


# ---------------------------------------------------------------------------------------------
# The DDPM bound.
# ---------------------------------------------------------------------------------------------
GRID = dict(n_levels=64, data_range=(-6.0, 6.0))


def grid_data(mix, n, seed):
    """Samples of ``mix`` on the grid (the cell that holds each coordinate, extremes clipped) and their levels."""
    k = to_levels(mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
                  GRID["n_levels"], GRID["data_range"], mode="floor")
    return grid_values(k, GRID["n_levels"], GRID["data_range"], dtype=torch.float64), k


def exact_discrete_nll(mix, k):
    """``-log sum_j w_j prod_d [Phi((b_d - mu_jd)/s_jd) - Phi((a_d - mu_jd)/s_jd)]`` with the extreme cells open."""
    lo, hi = GRID["data_range"]
    w = (hi - lo) / GRID["n_levels"]
    kk = k.numpy().astype(float)
    a, b = lo + kk * w, lo + (kk + 1) * w
    a[kk == 0], b[kk == GRID["n_levels"] - 1] = -np.inf, np.inf
    W, M, S = mix.weights.numpy(), mix.means.numpy(), mix.variances.sqrt().numpy()
    with np.errstate(divide="ignore"):
        parts = [np.log(W[j]) + np.log(norm.cdf((b - M[j]) / S[j]) - norm.cdf((a - M[j]) / S[j])).sum(1)
                 for j in range(len(W))]
    return torch.from_numpy(-logsumexp(np.stack(parts), axis=0))


@pytest.mark.parametrize("N,variance", [(100, "beta"), (100, "beta_tilde"), (1000, "beta")])
def test_ddpm_bound_is_above_the_exact_discrete_nll(N, variance):
    sde, mix = VPSDE(N=N), mixture_2d()
    x, k = grid_data(mix, 256, seed=12)
    res = ddpm_bound(mix.score_fn(sde), sde, x, variance=variance, generator=torch.Generator().manual_seed(13), **GRID)
    gap = res.nll - exact_discrete_nll(mix, k)
    se = float(gap.std() / math.sqrt(len(gap)))
    assert float(gap.mean()) > -3 * se, (float(gap.mean()), se)
    # Sanity: for a smooth model and cells much wider than the decoder's std, the chain started at the cell
    # centre loses about log(w / sqrt(2 pi e beta_0)) nats per dimension against the cell's mass.
    w = 12.0 / 64
    expect = 2 * math.log(w / math.sqrt(2 * math.pi * math.e * float(sde.ddpm_schedule().betas[0])))
    slack = 0.25 if variance == "beta" else 2.5
    assert float(gap.mean()) < expect + slack + 3 * se, (float(gap.mean()), expect)
    assert torch.allclose(res.terms["prior"] + res.terms["diffusion"] + res.terms["decoder"], res.nll)
    assert res.nfe == N and res.convention["variance"] == variance


def _linear_eps_score(sde, kappa):
    """A score whose noise prediction is ``kappa x`` at every time, whatever time the bound evaluates it at."""
    def score(x, t):
        s = sde.coeffs_unchecked(t.to(torch.float64))[1].to(x.dtype)
        return -kappa * x / s.reshape((-1,) + (1,) * (x.ndim - 1))
    return score


def ddpm_closed_form(sde, x0, lower, upper, kappa, variance):
    """E[L_VB] for the noise prediction ``kappa x_{i+1}``, from the chain's posterior (Ho et al. eqs. 5-7, 13)."""
    ch = sde.ddpm_schedule()
    beta, ab = ch.betas.numpy(), ch.alphas_cumprod.numpy()
    post, c1, c2 = ch.posterior_variance.numpy(), ch.posterior_mean_coef1.numpy(), ch.posterior_mean_coef2.numpy()
    D, N = len(x0), ch.N
    total = 0.5 * float(np.sum(ab[-1] * x0 ** 2 - ab[-1] - np.log1p(-ab[-1])))  # L_T
    for i in range(1, N):
        var = beta[i] if variance == "beta" else post[i]
        c = (1 - beta[i] * kappa / math.sqrt(1 - ab[i])) / math.sqrt(1 - beta[i])  # mu_theta = c x_{i+1}
        A, C = c1[i], c2[i] - c                                                  # mu~ - mu_theta = A x0 + C x
        e2 = (A + C * math.sqrt(ab[i])) ** 2 * x0 ** 2 + C ** 2 * (1 - ab[i])
        total += 0.5 * float(np.sum(post[i] / var + e2 / var - 1 - math.log(post[i] / var)))
    sd0 = math.sqrt(beta[0] if variance == "beta" else post[1])
    c = (1 - math.sqrt(beta[0]) * kappa) / math.sqrt(1 - beta[0])
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    for d in range(D):  # mu = c x_1, x_1 ~ N(sqrt(ab_0) x0, beta_0)
        mu = c * (math.sqrt(ab[0]) * x0[d] + math.sqrt(beta[0]) * nodes)
        total -= float(np.sum(weights * log_gauss_mass(lower[d], upper[d], mu, sd0)) / math.sqrt(2 * math.pi))
    return total


def log_gauss_mass(a, b, mu, sd):
    """``log P(a < N(mu, sd^2) < b)`` from scipy's log-CDF below the mean and log-survival above it."""
    lo, hi = (a - mu) / sd, (b - mu) / sd
    below = norm.logcdf(hi) + np.log(-np.expm1(norm.logcdf(lo) - norm.logcdf(hi)))
    with np.errstate(invalid="ignore"):
        above = norm.logsf(lo) + np.log(-np.expm1(norm.logsf(hi) - norm.logsf(lo)))
    return np.where(lo + hi < 0, below, above)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_bound_expectation_matches_closed_form(variance):
    sde, kappa = VPSDE(N=50), 0.5
    n_levels, rng = 16, (-2.0, 2.0)
    levels = torch.tensor([[0, 7, 15], [3, 9, 12]])
    x = grid_values(levels, n_levels, rng, dtype=torch.float64)
    w = 4.0 / 16
    reps = 400
    res = ddpm_bound(_linear_eps_score(sde, kappa), sde, x.repeat_interleave(reps, 0), n_levels=n_levels,
                     data_range=rng, variance=variance, generator=torch.Generator().manual_seed(14))
    for j in range(2):
        lv = levels[j].numpy()
        x0 = -2.0 + (lv + 0.5) * w
        lower = np.where(lv == 0, -np.inf, -2.0 + lv * w)
        upper = np.where(lv == n_levels - 1, np.inf, -2.0 + (lv + 1) * w)
        truth = ddpm_closed_form(sde, x0, lower, upper, kappa, variance)
        v = res.nll[j * reps:(j + 1) * reps]
        assert abs(float(v.mean()) - truth) < 3 * float(v.std() / math.sqrt(reps)), (j, float(v.mean()), truth)


def test_ddpm_terms_drawn_at_random_estimate_the_sum():
    sde, mix = VPSDE(N=100), mixture_2d()
    x, _ = grid_data(mix, 8, seed=15)
    x = x.repeat_interleave(150, 0)
    full = ddpm_bound(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(16), **GRID)
    mc = ddpm_bound(mix.score_fn(sde), sde, x, n_terms=4, generator=torch.Generator().manual_seed(17), **GRID)
    d = mc.nll - full.nll
    assert abs(float(d.mean())) < 3 * float(d.std() / math.sqrt(len(d)))
    assert torch.isnan(full.stderr).all() and mc.nfe == 5 and full.nfe == 100
    # the per-sample standard error of the drawn terms describes their spread
    per = mc.nll.reshape(8, 150)
    assert 0.6 < float((per.var(1) / mc.stderr.reshape(8, 150).pow(2).mean(1)).mean()) < 1.6


def test_ddpm_snr_times_match_the_chain_marginals():
    """With ``chain_times="snr"`` the score is evaluated where the SDE's m(t)^2 is the chain's abar (up to
    the clamp at T); with ``"grid"`` at t_i = (i + 1) / N."""
    sde = VPSDE(N=200)
    seen = []

    def spy(x, t):
        seen.append(t.to(torch.float64).clone())
        return -x
    x = grid_values(torch.tensor([[3, 4]]), 16, (-2.0, 2.0), dtype=torch.float64)
    ddpm_bound(spy, sde, x, n_levels=16, data_range=(-2.0, 2.0))
    t = torch.cat(seen)
    ab = sde.ddpm_schedule().alphas_cumprod
    inside = t < sde.T
    assert bool(inside[:-5].all()) and int((~inside).sum()) < 10
    assert torch.allclose(sde.coeffs_unchecked(t[inside])[0] ** 2, ab[inside], rtol=1e-9)
    seen.clear()
    ddpm_bound(spy, sde, x, n_levels=16, data_range=(-2.0, 2.0), chain_times="grid")
    assert torch.allclose(torch.cat(seen), torch.arange(1, 201, dtype=torch.float64) / 200)


# ---------------------------------------------------------------------------------------------
# The test-set function.
# ---------------------------------------------------------------------------------------------
def test_evaluate_bounds_bits_per_dim_and_convention():
    sde, mix = VPSDE(N=100), mixture_2d()
    x, _ = grid_data(mix, 20, seed=18)
    out = evaluate_bounds(mix.score_fn(sde), sde, x, repeats=2, batch_size=8, n_times=4,
                          generator=torch.Generator().manual_seed(19), **GRID)
    assert list(out) == ["continuous", "ddpm"]
    c, d = out["continuous"], out["ddpm"]
    for r in (c, d):
        assert r.bpd.shape == r.nll.shape == (2, 20) and r.n_samples == 20 and r.repeats == 2
        per = r.bpd.mean(0)
        assert r.mean == pytest.approx(float(per.mean())) and r.stderr == pytest.approx(float(per.std() / math.sqrt(20)))
        assert torch.allclose(sum(r.terms.values()), r.nll)
        assert "bits/dim" in str(r) and json.loads(json.dumps(r.to_dict()))["n_samples"] == 20
    offset = math.log2(64 / 12.0)
    assert torch.allclose(c.bpd, c.nll / (2 * LN2) + offset)
    assert torch.allclose(d.bpd, d.nll / (2 * LN2))
    assert c.convention["dequantize"] == "uniform" and c.convention["offset_bits"] == pytest.approx(offset)
    assert d.convention["offset_bits"] == 0.0 and d.convention["variance"] == "beta"
    assert "uniform dequantization" in str(c) and "discrete data" in str(d)
    # The same batches as an iterable give the same numbers for the same seed.
    again = evaluate_bounds(mix.score_fn(sde), sde, [x[:8], x[8:16], x[16:]], repeats=2, batch_size=8, n_times=4,
                            generator=torch.Generator().manual_seed(19), **GRID)
    assert torch.equal(again["continuous"].bpd, c.bpd) and torch.equal(again["ddpm"].bpd, d.bpd)
    # Dequantization: the continuous bound is that of the dequantized points (noise drawn first from the
    # generator, then the draws), or of the data as given with dequantize=None; the DDPM bound reads the grid.
    g = torch.Generator().manual_seed(21)
    direct = variational_bound(mix.score_fn(sde), sde, dequantize(x, 64, GRID["data_range"], g), n_times=4, generator=g)
    via = evaluate_bounds(mix.score_fn(sde), sde, x, bounds="continuous", n_times=4,
                          generator=torch.Generator().manual_seed(21), **GRID)
    assert list(via) == ["continuous"] and torch.allclose(via["continuous"].nll[0], direct.nll)
    plain = variational_bound(mix.score_fn(sde), sde, x, n_times=4, generator=torch.Generator().manual_seed(22))
    via = evaluate_bounds(mix.score_fn(sde), sde, x, bounds=("continuous",), dequantize=None, n_times=4,
                          generator=torch.Generator().manual_seed(22), **GRID)["continuous"]
    assert torch.allclose(via.nll[0], plain.nll) and via.convention["dequantize"] is None
    assert list(evaluate_bounds(mix.score_fn(SDES["ve"]), SDES["ve"], x, n_times=4, **GRID)) == ["continuous"]


def test_runs_on_the_data_device(device):
    """Random numbers and tables live on the data's device; the test-set result comes back on the CPU."""
    sde, mix = VPSDE(N=50), mixture_2d()
    x, _ = grid_data(mix, 6, seed=23)
    x = x.to(device)
    g = torch.Generator(device=device).manual_seed(24)
    for res in (variational_bound(mix.score_fn(sde), sde, x, n_times=3, generator=g),
                ddpm_bound(mix.score_fn(sde), sde, x, n_terms=3, generator=g, **GRID)):
        assert res.nll.device == x.device and bool(torch.isfinite(res.nll).all())
    out = evaluate_bounds(mix.score_fn(sde), sde, x, n_times=3, generator=g, **GRID)
    assert all(r.bpd.device.type == "cpu" and math.isfinite(r.mean) for r in out.values())


def test_clear_errors():
    vp, mix = VPSDE(N=100), mixture_2d()
    x, _ = grid_data(mix, 4, seed=20)
    score = mix.score_fn(vp)
    for sde in (SubVPSDE(), VESDE()):
        with pytest.raises(TypeError, match="needs a VPSDE"):
            ddpm_bound(mix.score_fn(sde), sde, x, **GRID)
        with pytest.raises(TypeError, match="needs a VPSDE"):
            evaluate_bounds(mix.score_fn(sde), sde, x, bounds=("ddpm",), **GRID)
    with pytest.raises(ValueError, match="not on the quantization grid"):
        ddpm_bound(score, vp, x + 0.01, **GRID)
    with pytest.raises(ValueError, match="not on the quantization grid"):
        evaluate_bounds(score, vp, x + 0.01, bounds=("continuous",), **GRID)
    with pytest.raises(ValueError, match="needs grid values even with dequantize=None"):
        evaluate_bounds(score, vp, x + 0.01, dequantize=None, **GRID)
    with pytest.raises(ValueError, match="eps"):
        variational_bound(score, vp, x, eps=0.0)
    with pytest.raises(ValueError, match="n_times"):
        variational_bound(score, vp, x, n_times=0)
    with pytest.raises(ValueError, match="time_sampler"):
        variational_bound(score, vp, x, time_sampler="stratified")
    with pytest.raises(ValueError, match="n_terms"):
        ddpm_bound(score, vp, x, n_terms=0, **GRID)
    with pytest.raises(ValueError, match="variance"):
        ddpm_bound(score, vp, x, variance="learned", **GRID)
    with pytest.raises(ValueError, match="chain_times"):
        ddpm_bound(score, vp, x, chain_times="uniform", **GRID)
    with pytest.raises(ValueError, match="bound"):
        evaluate_bounds(score, vp, x, bounds=("elbo",), **GRID)
    with pytest.raises(ValueError, match="shaped like x"):
        variational_bound(lambda y, t: y[:, :1], vp, x)
    with pytest.raises(ValueError, match="non-finite"):
        variational_bound(score, vp, torch.full((2, 2), math.nan))
    with pytest.raises(TypeError, match="SDE"):
        variational_bound(score, "vp", x)


def test_evaluate_bounds_warns_once_about_a_module_in_train_mode():
    """As evaluate_bpd does: a network in training mode (dropout, batch-norm statistics) gets one warning."""
    import warnings

    from scoresde import VPSDE, evaluate_bounds
    from scoresde.quantize import grid_values

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return 0 * x

    sde = VPSDE()
    data = grid_values(torch.randint(0, 16, (6, 2), generator=torch.Generator().manual_seed(0)), 16)
    for training, expected in ((True, 1), (False, 0)):
        net = Zero().train(training)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            evaluate_bounds(net, sde, data, n_levels=16, bounds=("continuous",), progress=False,
                            generator=torch.Generator().manual_seed(1))
        assert sum("training mode" in str(x.message) for x in w) == expected
