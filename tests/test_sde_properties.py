"""Property tests (hypothesis) tying the SDEs to the discrete chains and to independent truth.

* VP ``discretize`` is the DDPM one-step kernel (Ho et al. 2020, eq. 2) for every step index, and
  VE ``discretize`` is the SMLD perturbation (Song & Ermon 2019); Song et al. (2021), Appendix B.
* The continuous VP marginal and the discrete DDPM chain differ by ``gap_i = log abar_i - 2 log m(t_i)``
  of order 1/N, bounded two-sided by the derivation below (linear betas), and by float64 rounding
  alone for the cosine schedule (Nichol & Dhariwal 2021), whose chain telescopes.
* Monte Carlo: Euler-Maruyama paths of the forward SDE (torchsde) have the mean and variance of
  ``marginal_prob``, within 5 standard errors plus a derived bound on the discretisation bias.
* The probability-flow ODE (Song et al. 2021, eq. 13) of a Gaussian data distribution, with its
  exact score, maps the marginal at t to the marginal at s (a closed-form affine map).
* Shapes of any rank, both float dtypes, every available device; the prior; the log-SNR pair.

The derivation of the O(1/N) gap (linear schedule). With 1-based steps j = 1..N,
``beta_j = beta((j-1)/(N-1)) / N`` (the linspace of Song et al.), so, with ``d = beta_max - beta_min``,

    sum_{j<=k} beta_j - int_0^{k/N} beta = -d k (N - k) / (2 N^2 (N - 1)) =: -R_k        (exact)

(``sum_j (j-1) = k(k-1)/2`` against ``int = beta_min k/N + d k^2/(2N^2)``), and for ``0 < b < 1``,

    b^2 / 2 <= -log(1 - b) - b <= b^2 / (2 (1 - b)).

Since ``log abar_k = sum_j log(1 - beta_j)`` and ``2 log m(k/N) = -int_0^{k/N} beta``, the gap is
``gap_k = R_k - sum_{j<=k} e_j`` with ``e_j = -log(1-beta_j) - beta_j``, hence

    R_k - L_k <= gap_k <= R_k - Lo_k,   L_k = sum_j beta_j^2 / (2(1 - beta_j)),  Lo_k = sum_j beta_j^2 / 2,

and ``|gap_k| <= max(R_k, L_k) <= C / N`` with ``C = d N / (8 (N-1)) + beta_max^2 / (2 (1 - beta_max/N))``
(``R_k <= d / (8 (N-1))`` at ``k = N/2``; ``L_N <= N (beta_max/N)^2 / (2 (1 - beta_max/N))``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchsde
from conftest import devices
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from scoresde import SubVPSDE, VESDE, VPSDE

U64 = np.finfo(np.float64).eps / 2
U32 = float(np.finfo(np.float32).eps / 2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny tensor ops: one intra-op thread is several times faster than two
    on a shared CPU. Restored when the module is done."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# Independent references (numpy, float64), from the papers
# ---------------------------------------------------------------------------------------------
def nd_alpha_bar(t, s=0.008):
    """Nichol & Dhariwal (2021), eq. 17."""
    f = lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2  # noqa: E731
    return f(np.asarray(t, dtype=np.float64)) / f(0.0)


def coeffs(kind, t, p):
    """(m, s, f, g^2, f', (g^2)') at times t: Song et al. (2021), eqs. 9, 11, 17 and Appendix B.
    Linear beta only for the VP family (the derivatives are what the Euler-Maruyama bias bound needs)."""
    t = np.asarray(t, dtype=np.float64)
    if kind == "ve":
        smin, smax, T = p["sigma_min"], p["sigma_max"], p.get("T", 1.0)
        rate = 2.0 * math.log(smax / smin) / T  # d/dt log sigma^2
        sig = smin * (smax / smin) ** (t / T)
        g2 = rate * sig**2
        return np.ones_like(t), sig, np.zeros_like(t), g2, np.zeros_like(t), rate * g2
    bmin, bmax = p["beta_min"], p["beta_max"]
    d = bmax - bmin
    beta, B = bmin + d * t, bmin * t + 0.5 * d * t**2
    m, f, df = np.exp(-0.5 * B), -0.5 * beta, np.full_like(t, -0.5 * d)
    if kind == "vp":
        return m, np.sqrt(-np.expm1(-B)), f, beta, df, np.full_like(t, d)
    e2, one_minus_e2 = np.exp(-2.0 * B), -np.expm1(-2.0 * B)  # expm1: 1 - e^{-2B} cancels at small B
    return m, -np.expm1(-B), f, beta * one_minus_e2, df, d * one_minus_e2 + 2.0 * beta**2 * e2  # sub-VP


def make_sde(kind, p, N=1000):
    if kind == "ve":
        return VESDE(p["sigma_min"], p["sigma_max"], N, T=p.get("T", 1.0))
    return (VPSDE if kind == "vp" else SubVPSDE)(p["beta_min"], p["beta_max"], N)


# ---------------------------------------------------------------------------------------------
# discretize == DDPM kernel / SMLD perturbation, for every index
# ---------------------------------------------------------------------------------------------
@given(N=st.integers(1, 3000), bmin=st.floats(0.01, 5.0), width=st.floats(0.05, 30.0),
       jitter=st.floats(-0.49, 0.49), seed=st.integers(0, 2**31 - 1))
def test_vp_discretize_is_the_ddpm_kernel_for_every_index(N, bmin, width, jitter, seed):
    bmax = bmin + width
    if bmax / N >= 1.0:  # beta_N = beta_max / N must be a probability
        N = int(bmax) + 1
    sde = VPSDE(bmin, bmax, N)
    i = np.arange(N)
    betas = np.linspace(bmin / N, bmax / N, N)  # Song et al. (2021), App. B: beta_i = beta(t)/N
    # step i ends at t_i = (i + 1)/N; any time within half a step of it selects step i
    t = np.clip((i + 1 + jitter) / N, 0.0, 1.0)
    t[-1] = 1.0
    x = torch.randn(N, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    f, G = sde.discretize(x, torch.tensor(t))
    # Ho et al. (2020), eq. 2: q(x_{i+1} | x_i) = N(sqrt(1 - beta_i) x_i, beta_i I)
    mean_ref = np.sqrt(1.0 - betas)[:, None] * x.numpy()
    assert np.all(np.abs((x + f).numpy() - mean_ref) <= 8 * U64 * np.abs(x.numpy()))
    assert np.all(np.abs(G.numpy() - np.sqrt(betas)) <= 8 * U64 * np.sqrt(betas))
    # the same kernel as the DDPM schedule object's step_kernel
    km, ks = sde.ddpm_schedule().step_kernel(x, torch.tensor(i))
    assert ((x + f - km).abs() <= 8 * U64 * x.abs()).all()  # x + f rounds relative to |x|
    torch.testing.assert_close(G, ks.reshape(-1), rtol=0, atol=0)
    # float32 data get float32 coefficients, accurate to float32 rounding
    f32, G32 = sde.discretize(x.float(), torch.tensor(t, dtype=torch.float32))
    assert G32.dtype == torch.float32
    assert np.all(np.abs(G32.double().numpy() - np.sqrt(betas)) <= 4 * U32 * np.sqrt(betas))


@given(N=st.integers(10, 2000), jitter=st.floats(-0.49, 0.49))
def test_cosine_vp_discretize_is_the_cosine_ddpm_kernel(N, jitter):
    sde = VPSDE(schedule="cosine", T=1.0, N=N)
    ab = nd_alpha_bar(np.arange(N + 1) / N)
    betas = np.minimum(1.0 - ab[1:] / ab[:-1], 0.999)  # Nichol & Dhariwal, eq. 17 and their clipping
    betas[-1] = 0.999  # f(1) = 0 exactly (numpy's cos(pi/2) is 6e-17, not 0)
    t = np.clip((np.arange(N) + 1 + jitter) / N, 0.0, 1.0)
    x = torch.ones(N, 2, dtype=torch.float64)
    f, G = sde.discretize(x, torch.tensor(t))
    # numpy's 1 - ratio has absolute error ~ U (4 + cond(cos^2)), cond <= 2 a tan a ~ 2N near t = 1
    tol = 16 * U64 * (4 + 4 * N)
    assert np.all(np.abs(G.numpy() ** 2 - betas) <= tol)
    assert np.all(np.abs((x + f)[:, 0].numpy() - np.sqrt(1.0 - betas)) <= tol / np.sqrt(1.0 - betas))


@given(N=st.integers(2, 2000), smin=st.floats(1e-3, 1.0), ratio=st.floats(1.5, 1e4), T=st.sampled_from([1.0, 0.5, 3.0]),
       jitter=st.floats(-0.49, 0.49))
def test_ve_discretize_is_the_smld_perturbation(N, smin, ratio, T, jitter):
    smax = smin * ratio
    sde = VESDE(smin, smax, N, T=T)
    i = np.arange(N)
    sig = smin * ratio ** (i / (N - 1))  # Song & Ermon (2019): geometric levels; level i at t_i = i T/(N-1)
    t = np.clip((i + jitter) * T / (N - 1), 0.0, T)
    x = torch.randn(N, 2, generator=torch.Generator().manual_seed(N), dtype=torch.float64)
    f, G = sde.discretize(x, torch.tensor(t))
    assert torch.equal(x + f, x)  # VE has no drift
    prev = np.concatenate([[0.0], sig[:-1]])
    # G^2 = sigma_i^2 - sigma_{i-1}^2: relative error ~ U |log ratio| cond, cond = sigma_i^2 / G^2
    cond = sig**2 / (sig**2 - prev**2)
    assert np.all(np.abs(G.numpy() ** 2 / (sig**2 - prev**2) - 1.0) <= 64 * U64 * (1 + math.log(ratio)) * cond)
    # the chain's noise accumulates to the SMLD perturbation x_i ~ N(x_0, sigma_i^2) ...
    np.testing.assert_allclose(np.cumsum(G.numpy() ** 2), sig**2, rtol=64 * U64 * (N + math.log(ratio) * 4))
    # ... which is the continuous marginal at t_i
    tt = torch.tensor(i * T / (N - 1))
    _, std = sde.marginal_prob(x, tt)
    np.testing.assert_allclose(std.numpy(), sig, rtol=64 * U64 * (1 + math.log(ratio)))


# ---------------------------------------------------------------------------------------------
# The O(1/N) gap between the VP marginal and the DDPM chain
# ---------------------------------------------------------------------------------------------
@given(N=st.integers(50, 4000), bmin=st.floats(0.01, 5.0), width=st.floats(0.1, 30.0))
def test_linear_gap_is_within_the_derived_bound(N, bmin, width):
    bmax = bmin + width
    sde = VPSDE(bmin, bmax, N)
    sched = sde.ddpm_schedule()
    k = np.arange(1, N + 1)  # number of steps taken; 0-based index k - 1 ends at t = k/N
    t = torch.tensor(k / N)
    gap = sched.log_alphas_cumprod.numpy() - 2.0 * sde.log_mean_coeff(t).numpy()

    b = bmin / N + (k - 1) / (N - 1) * width / N  # independent of the package: beta((k-1)/(N-1)) / N
    R = width * k * (N - k) / (2.0 * N**2 * (N - 1))
    L = np.cumsum(b**2 / (2.0 * (1.0 - b)))
    Lo = np.cumsum(b**2 / 2.0)
    # float64 slack: recursive summation of k terms errs by <= k U sum|terms| (Higham, Thm 4.1),
    # each log1p term by U |term|, and 2 log m = -B(t) by a few U |B|; sum|log(1-b)| ~ B.
    B = bmin * k / N + 0.5 * width * (k / N) ** 2
    slack = 4 * U64 * (k + 4) * (np.cumsum(-np.log1p(-b)) + B + 1.0)
    assert np.all(gap >= R - L - slack), float(np.max(R - L - slack - gap))
    assert np.all(gap <= R - Lo + slack), float(np.max(gap - R + Lo - slack))
    # the global O(1/N) statement
    C = width * N / (8.0 * (N - 1)) + bmax**2 / (2.0 * (1.0 - bmax / N))
    assert np.max(np.abs(gap)) <= C / N + slack.max()
    # and it is not smaller than order 1/N either: at the last step R_N = 0, so |gap_N| >= Lo_N
    assert abs(gap[-1]) >= Lo[-1] - slack[-1]


@given(N=st.integers(50, 4000), s=st.floats(1e-3, 0.2))
def test_cosine_chain_telescopes_to_the_continuous_marginal(N, s):
    sde = VPSDE(schedule="cosine", T=1.0, N=N, s=s)
    sched = sde.ddpm_schedule()
    clipped = sched.clipped.numpy()
    assert clipped.tolist() == [False] * (N - 1) + [True]  # only the last step, where abar(1) = 0
    keep = ~clipped
    k = np.arange(1, N + 1)[keep]
    t = k / N
    la = sched.log_alphas_cumprod.numpy()[keep]
    gap = la - 2.0 * sde.log_mean_coeff(torch.tensor(t)).numpy()
    # Rounding bound. The chain computes beta_j = -expm1(D_j), D_j = l(t_{j+1}) - l(t_j), then
    # log1p(-beta_j): the errors of l telescope away, each term adds U (|D_j| + beta_j / (1 - beta_j))
    # and the cumulative sum k U sum_j |D_j|; the continuous side is l(t_k) itself (l = log abar).
    grid = np.arange(N + 1) / N
    ab = nd_alpha_bar(grid, s)
    D = np.log(ab[1:] / ab[:-1])[keep]
    bj = -np.expm1(D)
    a = (t + s) / (1 + s) * np.pi / 2
    dl = np.pi / (1 + s) * np.tan(a)  # |dl/dt|, for the ulp of t itself
    tol = 8 * U64 * ((k + 2) * np.cumsum(np.abs(D)) + np.cumsum(bj / (1 - bj)) + t * dl + 1.0)
    assert np.all(np.abs(gap) <= tol), float(np.max(np.abs(gap) / tol))
    # and both equal the paper's formula, within its float64 conditioning (2 a tan a)
    ref = np.log(nd_alpha_bar(t, s))
    assert np.all(np.abs(la - ref) <= tol + 16 * U64 * (4 + 2 * a * np.tan(a)))


# ---------------------------------------------------------------------------------------------
# Monte Carlo: Euler-Maruyama (torchsde) against marginal_prob
# ---------------------------------------------------------------------------------------------
class _TorchSDE(torch.nn.Module):
    """The package's forward SDE on a flattened (B, D) state, as torchsde wants it."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    # the unchecked twin is the documented inner-loop API (the public sde() is tested elsewhere)
    def f(self, t, y):
        return self.sde.sde_unchecked(y, t.to(y.dtype).expand(y.shape[0]))[0]

    def g(self, t, y):
        return self.sde.sde_unchecked(y, t.to(y.dtype).expand(y.shape[0]))[1][:, None].expand_as(y)




def em_bias_bounds(kind, p, ts, h, x0_abs):
    """Bounds on |E[x_EM] - m x0| and |Var[x_EM] - s^2| after Euler-Maruyama steps of size h.

    For dx = f x dt + g dW with f <= 0 and h |f| <= 1, one EM step has mean factor 1 + f_k h and
    variance map v -> (1 + f_k h)^2 v + g_k^2 h, against exp(F_k) and exp(2 F_k) v + int exp(..) g^2
    (F_k = int_step f). Taylor with remainder gives the local errors
        mean:  |1 + f_k h - e^{F_k}| <= h^2 (sup|f'| + sup f^2) / 2,
        var:   |(1 + f_k h)^2 - e^{2F_k}| v + |g_k^2 h - int e^{..} g^2| <= h^2 [(sup|f'| + 3 sup f^2) V
               + sup|(g^2)'| / 2 + 2 sup|f| sup g^2],
    and the propagation factors are <= 1 in magnitude, so the global errors are the sums of the local
    ones (|m_k| <= |x0|, V = sup of the exact variance). Sups per step: max over 5 points of the step.
    """
    out_m, out_v = [], []
    for t_end in ts:
        n = int(round(t_end / h))
        tk = (np.arange(n)[:, None] + np.linspace(0, 1, 5)[None, :]) * h
        _, s, f, g2, df, dg2 = coeffs(kind, tk, p)
        F1, F2, G, G1 = np.abs(df).max(1), (f**2).max(1), g2.max(1), np.abs(dg2).max(1)
        V = (s**2).max()
        assert np.all(h * np.sqrt(F2) <= 1.0)
        out_m.append(x0_abs * np.sum(h**2 * (F1 + F2) / 2))
        out_v.append(np.sum(h**2 * ((F1 + 3 * F2) * V + G1 / 2 + 2 * np.sqrt(F2) * G)))
    return np.array(out_m), np.array(out_v)


MC_CASES = {  # parameters, output times, EM step (small enough that the bias bound stays below one SE)
    "vp": (dict(beta_min=0.1, beta_max=20.0), [0.1, 0.25, 0.4], 5e-4),
    "subvp": (dict(beta_min=0.1, beta_max=20.0), [0.1, 0.25, 0.4], 5e-4),
    "ve": (dict(sigma_min=0.01, sigma_max=50.0), [0.3, 0.5, 0.7], 1e-3),
}


@pytest.mark.parametrize("kind", list(MC_CASES))
def test_monte_carlo_marginals(kind):
    p, ts, h = MC_CASES[kind]
    sde = make_sde(kind, p)
    n = 4000
    x0 = torch.tensor([1.5, -3.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1234)
    y0 = x0.expand(n, 2).clone()
    if kind == "ve":
        # VE marginal std is sigma(t), not sqrt(sigma^2 - sigma_min^2): the process starts from x0 + N(0, sigma_min^2)
        y0 = y0 + p["sigma_min"] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    grid = torch.tensor([0.0, *ts], dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=ts[-1], size=(n, 2), dtype=torch.float64, entropy=1234, dt=h)
    ys = torchsde.sdeint(_TorchSDE(sde), y0, grid, method="euler", dt=h, bm=bm)[1:]

    bias_m, bias_v = em_bias_bounds(kind, p, ts, h, float(x0.abs().max()))
    for j, t in enumerate(ts):
        m, s, *_ = coeffs(kind, np.array(t), p)
        mean, std = sde.marginal_prob(x0[None], t)
        # the package's marginal agrees with the paper formula (tested exactly elsewhere) ...
        np.testing.assert_allclose(std.numpy(), s, rtol=1e-12)
        # ... and with the simulated paths: 5 standard errors plus the EM bias bound
        se_mean = float(s) / math.sqrt(n)
        se_var = float(s) ** 2 * math.sqrt(2.0 / (n - 1))
        emp_mean, emp_var = ys[j].mean(0), ys[j].var(0)
        assert ((emp_mean - mean[0]).abs() <= 5 * se_mean + bias_m[j]).all(), (t, emp_mean, mean[0], se_mean)
        assert ((emp_var - std**2).abs() <= 5 * se_var + bias_v[j]).all(), (t, emp_var, std**2, se_var)
        # the bias bound must not swamp the test (otherwise it could not fail)
        assert bias_m[j] < se_mean and bias_v[j] < se_var


# ---------------------------------------------------------------------------------------------
# Probability-flow ODE of a Gaussian data distribution
# ---------------------------------------------------------------------------------------------
def _rk4(fun, x, ta, tb, n):
    h = (tb - ta) / n
    hh = h.reshape(-1, *([1] * (x.ndim - 1)))
    t = ta.clone()
    for _ in range(n):
        k1 = fun(x, t)
        k2 = fun(x + 0.5 * hh * k1, t + 0.5 * h)
        k3 = fun(x + 0.5 * hh * k2, t + 0.5 * h)
        k4 = fun(x + hh * k3, t + h)
        x = x + hh / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t + h
    return x


PF_KINDS = ["vp", "subvp", "ve", "vp_cosine"]


def _pf_setup(kind):
    if kind == "vp_cosine":
        sde = VPSDE(schedule="cosine")  # T = 0.995

        def m_v(t, sigma0):
            ab = nd_alpha_bar(t)
            return np.sqrt(ab), ab * sigma0**2 + (1.0 - ab)
        return sde, m_v
    p = dict(sigma_min=0.01, sigma_max=50.0) if kind == "ve" else dict(beta_min=0.1, beta_max=20.0)
    sde = make_sde(kind, p)

    def m_v(t, sigma0):
        m, s, *_ = coeffs(kind, t, p)
        return m, m**2 * sigma0**2 + s**2
    return sde, m_v


def _pf_fixture(kind, sigma0, mu):
    """The PF ODE of data N(mu, sigma0^2 I) with its exact score, and the closed-form flow.

    p_t = N(m(t) mu, v(t) I), v = m^2 sigma0^2 + s^2, score -(x - m mu)/v. The PF ODE
    dx/dt = f x + g^2 (x - m mu) / (2 v) keeps z = (x - m(t) mu) / sqrt(v(t)) constant, because
    d/dt log sqrt(v) = f + g^2 / (2v) (the moment equation v' = 2 f v + g^2, with (m^2)' = 2 f m^2);
    so the flow from (t, x) is x(s) = m(s) mu + sqrt(v(s)/v(t)) (x - m(t) mu).
    """
    sde, m_v = _pf_setup(kind)
    mu_t = torch.tensor(mu, dtype=torch.float64)

    def score(x, t):
        m, v = m_v(t.numpy(), sigma0)
        return -(x - torch.tensor(m)[:, None] * mu_t) / torch.tensor(v)[:, None]

    def flow(x, ta, tb):
        ma, va = m_v(ta.numpy(), sigma0)
        mb, vb = m_v(tb.numpy(), sigma0)
        ma, va, mb, vb = (torch.tensor(a)[:, None] for a in (ma, va, mb, vb))
        return mb * mu_t + torch.sqrt(vb / va) * (x - ma * mu_t)

    return sde, sde.reverse(score, probability_flow=True), m_v, mu_t, flow


@given(kind=st.sampled_from(PF_KINDS), sigma0=st.floats(0.01, 3.0),
       mu=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
       t=st.lists(st.floats(1e-5, 1.0), min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_probability_flow_velocity_is_that_of_the_closed_form_flow(kind, sigma0, mu, t, seed):
    """Everywhere on [1e-5, T], including the stiff region near t = 0 with small sigma0: the PF drift
    at (x, t) equals d/ds x(s) at s = t of the closed-form flow through (t, x),
    m' mu + v' / (2 v) (x - m mu), with m' = f m and v' = 2 f v + g^2 from the paper's f and g."""
    sde, pf, m_v, mu_t, _ = _pf_fixture(kind, sigma0, mu)
    tt = torch.tensor(t, dtype=torch.float64) * sde.T
    B = tt.shape[0]
    x = torch.randn(B, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    if kind == "vp_cosine":
        ab = nd_alpha_bar(tt.numpy())
        a = (tt.numpy() + 0.008) / 1.008 * np.pi / 2
        beta = np.pi / 1.008 * np.tan(a)  # -d/dt log abar (Nichol & Dhariwal's abar differentiated)
        f, g2 = -0.5 * beta, beta
    else:
        p = dict(sigma_min=0.01, sigma_max=50.0) if kind == "ve" else dict(beta_min=0.1, beta_max=20.0)
        _, _, f, g2, _, _ = coeffs(kind, tt.numpy(), p)
    m, v = m_v(tt.numpy(), sigma0)
    vel = (torch.tensor(f * m)[:, None] * mu_t
           + torch.tensor((2 * f * v + g2) / (2 * v))[:, None] * (x - torch.tensor(m)[:, None] * mu_t))
    drift, diffusion = pf.sde(x, tt)
    # rounding: each side is a few operations on terms of size (|f| + g^2 / v) (|x| + |mu|)
    scale = torch.tensor(np.abs(f) + g2 / v)[:, None] * (x.abs() + mu_t.abs() + 1.0)
    assert ((drift - vel).abs() <= 64 * U64 * scale).all()
    assert torch.equal(diffusion, torch.zeros(B, dtype=torch.float64))  # PF: a zero diffusion tensor


@given(kind=st.sampled_from(PF_KINDS), sigma0=st.floats(0.1, 2.0),
       mu=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
       times=st.lists(st.tuples(st.floats(0.02, 0.99), st.floats(0.02, 0.99)), min_size=4, max_size=6),
       seed=st.integers(0, 1000))
@settings(max_examples=10)
def test_probability_flow_maps_marginal_to_marginal(kind, sigma0, mu, times, seed):
    """Integrate the PF ODE (RK4) from t to s for a batch of pairs, starting from draws of p_t, and
    compare with the closed-form flow x(s) = m(s) mu + sqrt(v(s)/v(t)) (x(t) - m(t) mu).
    (Below t ~ 10 sigma0^2 the ODE is stiff and a fixed-step RK4 is pre-asymptotic; the velocity test
    above covers that region exactly.)"""
    sde, pf, m_v, mu_t, flow = _pf_fixture(kind, sigma0, mu)
    ta = torch.tensor([a for a, _ in times], dtype=torch.float64) * sde.T
    tb = torch.tensor([b for _, b in times], dtype=torch.float64) * sde.T
    B = ta.shape[0]
    ma, va = m_v(ta.numpy(), sigma0)
    z = torch.randn(B, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    xa = torch.tensor(ma)[:, None] * mu_t + torch.tensor(np.sqrt(va))[:, None] * z  # a draw from p_t
    exact = flow(xa, ta, tb)
    drift = lambda x, t: pf.sde(x, t)[0]  # noqa: E731
    n = 32
    coarse = _rk4(drift, xa, ta, tb, n)
    fine = _rk4(drift, xa, ta, tb, 2 * n)
    # Error bound without trusting the asymptotic RK4 constant: if halving the step cuts the error at
    # least 3x (RK4 asymptotically cuts it 16x), then e_fine <= |fine - coarse| / (3 - 1), in the max
    # norm over the batch (elementwise, an entry whose leading error term happens to vanish is
    # dominated by the next one, of either sign). Plus rounding: 2n steps x ~10 operations x U.
    # A wrong drift (e.g. g^2 score instead of g^2 score / 2) converges to another flow: off by O(1).
    scale = float((exact.abs() + xa.abs() + 1.0).max())
    err = float((fine - exact).abs().max())
    assert err <= float((fine - coarse).abs().max()) / 2 + 2 * n * 10 * U64 * scale
    assert err < 1e-4 * scale  # the integration itself is accurate


# ---------------------------------------------------------------------------------------------
# Linear-SDE moment equations for drawn parameters
# ---------------------------------------------------------------------------------------------
@given(kind=st.sampled_from(["vp", "subvp", "ve", "vp_cosine", "subvp_cosine"]), a=st.floats(0.01, 5.0),
       w=st.floats(0.1, 30.0), s=st.floats(1e-3, 0.2))
def test_moment_equations_for_drawn_parameters(kind, a, w, s):
    if kind == "ve":
        sde = VESDE(a, a * (1 + w))
    elif kind.endswith("cosine"):
        sde = (VPSDE if kind.startswith("vp") else SubVPSDE)(schedule="cosine", s=s)
    else:
        sde = (VPSDE if kind == "vp" else SubVPSDE)(a, a + w)
    t = torch.linspace(0.01, 0.98 * sde.T, 49, dtype=torch.float64).requires_grad_(True)
    logm = sde.log_mean_coeff(t) + 0.0 * t
    var = sde.marginal_std(t) ** 2
    (dlogm,) = torch.autograd.grad(logm.sum(), t)
    (dvar,) = torch.autograd.grad(var.sum(), t)
    with torch.no_grad():
        drift, g = sde.sde(torch.ones(49, 1, dtype=torch.float64), t.detach())
        f = drift[:, 0]
        scale = f.abs() + g**2 + 1.0
        assert ((dlogm - f).abs() <= 512 * U64 * scale).all()
        assert ((dvar - (2 * f * var + g**2)).abs() <= 512 * U64 * scale * (1 + var)).all()


# ---------------------------------------------------------------------------------------------
# log-SNR for drawn parameters
# ---------------------------------------------------------------------------------------------
@given(kind=st.sampled_from(["vp", "subvp", "ve"]), a=st.floats(0.01, 5.0), w=st.floats(0.1, 30.0),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_log_snr_round_trip_for_drawn_parameters(kind, a, w, dtype):
    sde = VESDE(a, a * (1 + w)) if kind == "ve" else (VPSDE if kind == "vp" else SubVPSDE)(a, a + w)
    t64 = torch.cat([torch.logspace(-5, -1, 20, dtype=torch.float64),
                     torch.linspace(0.1, 1.0, 41, dtype=torch.float64)[1:]])
    t = t64.to(dtype)
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    back = sde.log_snr_inverse(lam)
    U = U32 if dtype == torch.float32 else U64
    tt = t.double().requires_grad_(True)
    (dlam,) = torch.autograd.grad(sde.log_snr(tt).sum(), tt)
    tol = 32 * U * ((1 + lam.double().abs()) / dlam.abs() + t.double())
    assert ((back.double() - t.double()).abs() <= tol).all()


# ---------------------------------------------------------------------------------------------
# Prior
# ---------------------------------------------------------------------------------------------
@given(kind=st.sampled_from(["vp", "subvp", "ve"]), smax=st.floats(1.5, 200.0),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), scale=st.floats(0.0, 3.0),
       seed=st.integers(0, 1000))
def test_prior_logp_is_the_normal_log_density(kind, smax, shape, scale, seed):
    sde = VESDE(0.01, smax) if kind == "ve" else make_sde(kind, dict(beta_min=0.1, beta_max=20.0))
    sd = sde.prior_std
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sd * scale
    ref = stats.norm(0.0, sd).logpdf(z.numpy()).reshape(shape[0], -1).sum(axis=1)
    got = sde.prior_logp(z)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), ref, rtol=64 * U64 * z[0].numel(), atol=64 * U64)


# ---------------------------------------------------------------------------------------------
# Shapes of any rank, dtypes, devices: values per sample against the reference
# ---------------------------------------------------------------------------------------------
@given(kind=st.sampled_from(["vp", "subvp", "ve"]), shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float64]), device=st.sampled_from(devices),
       seed=st.integers(0, 1000))
@settings(max_examples=30)
def test_any_rank_dtype_device(kind, shape, dtype, device, seed):
    p = dict(sigma_min=0.01, sigma_max=50.0) if kind == "ve" else dict(beta_min=0.1, beta_max=20.0)
    sde = make_sde(kind, p)
    B = shape[0]
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64)
    t64 = torch.rand(B, generator=g, dtype=torch.float64)
    x, t = x64.to(device=device, dtype=dtype), t64.to(device=device, dtype=dtype)
    drift, diff = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    f, G = sde.discretize(x, t)
    z = sde.prior_sampling(shape, generator=torch.Generator(device=device).manual_seed(seed), dtype=dtype)
    lp = sde.prior_logp(x)
    for v, shp in ((drift, shape), (mean, shape), (f, shape), (z, shape), (diff, (B,)), (std, (B,)), (G, (B,)),
                   (lp, (B,))):
        assert tuple(v.shape) == tuple(shp) and v.dtype == dtype and v.device.type == torch.device(device).type
    # per-sample values against the paper formulas at the (rounded) times actually passed
    tr = t.double().cpu().numpy()
    m, s, fr, g2, _, _ = coeffs(kind, tr, p)
    bshape = (B,) + (1,) * (len(shape) - 1)
    U = U32 if dtype == torch.float32 else U64
    rt = 64 * U * 12  # a few U, amplified by |B(t)| <= 10.05 through exp
    xr = x.double().cpu().numpy()
    np.testing.assert_allclose(mean.double().cpu().numpy(), m.reshape(bshape) * xr, rtol=rt, atol=0)
    np.testing.assert_allclose(drift.double().cpu().numpy(), fr.reshape(bshape) * xr, rtol=rt, atol=0)
    np.testing.assert_allclose(std.double().cpu().numpy(), s, rtol=rt)
    np.testing.assert_allclose(diff.double().cpu().numpy() ** 2, g2, rtol=rt)
    ref_lp = stats.norm(0.0, sde.prior_std).logpdf(xr).reshape(B, -1).sum(1)
    np.testing.assert_allclose(lp.double().cpu().numpy(), ref_lp, rtol=rt * xr[0].size, atol=rt)
