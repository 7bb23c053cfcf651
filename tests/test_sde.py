"""Forward SDEs (``scoresde.sde``) against closed forms written out in this file.

The reference formulas below come from the papers, not from the package:
Song et al. (2021, ICLR), eqs. 9-11 and 17 (VP / VE / sub-VP SDEs) and Appendix B
(``log m(t) = -t^2 (beta_max - beta_min)/4 - t beta_min / 2``, ``sigma(t) = sigma_min (sigma_max /
sigma_min)^t``); Nichol & Dhariwal (2021), eq. 17 (cosine ``abar``); Ho et al. (2020) (DDPM
defaults ``beta_1 = 1e-4``, ``beta_T = 0.02``, ``T = 1000``).

Independent identities are used where the package's formulas must agree with each other:
for a linear SDE ``dx = f(t) x dt + g(t) dW``, ``d/dt log m = f`` and ``d/dt s^2 = 2 f s^2 + g^2``
(the moment equations of the Fokker-Planck equation), checked with autograd.

``U`` is the unit roundoff of the dtype; tolerances are rounding bounds with the conditioning of
the quantity spelled out.
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from conftest import devices
from scipy import stats

from scoresde import (SDE, CosineBeta, DDPMSchedule, DiscreteBeta, LinearBeta, ReverseSDE, SMLDSchedule, SubVPSDE, VESDE,
                      VPSDE)

U64 = np.finfo(np.float64).eps / 2
U32 = float(np.finfo(np.float32).eps / 2)


# ---------------------------------------------------------------------------------------------
# Independent references (numpy, float64)
# ---------------------------------------------------------------------------------------------
def nd_alpha_bar(t, s=0.008):
    f = lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2  # noqa: E731
    return f(np.asarray(t, dtype=np.float64)) / f(0.0)


def beta_and_integral(kind, t, bmin=0.1, bmax=20.0, s=0.008):
    """beta(t) and B(t) = int_0^t beta. Linear: Song et al. (2021) Appendix B.
    Cosine: B = -log abar (Nichol & Dhariwal), beta = dB/dt = pi/(1+s) tan(((t+s)/(1+s)) pi/2)
    (derivative of -log cos^2(a) is 2 tan(a) da/dt)."""
    t = np.asarray(t, dtype=np.float64)
    if kind == "linear":
        return bmin + t * (bmax - bmin), bmin * t + 0.5 * (bmax - bmin) * t**2
    a = (t + s) / (1.0 + s) * np.pi / 2.0
    return np.pi / (1.0 + s) * np.tan(a), cosine_B_exact(t, s)


def cosine_B_exact(t, s=0.008):
    """-log abar(t) of Nichol & Dhariwal in 40-digit arithmetic (mpmath), rounded once to float64:
    float64 numpy loses the relative accuracy of log(abar) near t = 0, where abar -> 1."""
    with mpmath.workdps(40):
        f = lambda u: mpmath.cos((mpmath.mpf(u) + s) / (1 + mpmath.mpf(s)) * mpmath.pi / 2) ** 2  # noqa: E731
        f0 = f(0)
        out = [float(-mpmath.log(f(u) / f0)) for u in np.ravel(t)]
    return np.array(out).reshape(np.shape(t))


def reference(name, t, **p):
    """(m, s, f, g^2) of the named SDE at times t: Song et al. (2021) eqs. 9, 11, 17."""
    t = np.asarray(t, dtype=np.float64)
    if name == "ve":
        smin, smax, T = p.get("sigma_min", 0.01), p.get("sigma_max", 50.0), p.get("T", 1.0)
        sig = smin * (smax / smin) ** (t / T)
        return np.ones_like(t), sig, np.zeros_like(t), 2.0 * sig**2 * math.log(smax / smin) / T
    kind = p.get("schedule", "linear")
    beta, B = beta_and_integral(kind, t, **{k: v for k, v in p.items() if k in ("bmin", "bmax", "s")})
    m = np.exp(-0.5 * B)
    if name == "vp":
        return m, np.sqrt(-np.expm1(-B)), -0.5 * beta, beta
    return m, -np.expm1(-B), -0.5 * beta, beta * -np.expm1(-2.0 * B)  # sub-VP


def reference_log_m(name, t, **p):
    """log m(t) = -B(t)/2 (0 for VE), without the rounding of log(exp(.)) at small t."""
    if name == "ve":
        return np.zeros_like(np.asarray(t, dtype=np.float64))
    return -0.5 * beta_and_integral(p.get("schedule", "linear"), t,
                                    **{k: v for k, v in p.items() if k in ("bmin", "bmax", "s")})[1]


CASES = {
    "vp": (lambda: VPSDE(), "vp", {}),
    "vp_custom": (lambda: VPSDE(0.5, 7.0, 100), "vp", dict(bmin=0.5, bmax=7.0)),
    "subvp": (lambda: SubVPSDE(), "subvp", {}),
    "vp_cosine": (lambda: VPSDE(schedule="cosine"), "vp", dict(schedule="cosine")),
    "subvp_cosine": (lambda: SubVPSDE(schedule="cosine", s=0.02), "subvp", dict(schedule="cosine", s=0.02)),
    "ve": (lambda: VESDE(), "ve", {}),
    "ve_T2": (lambda: VESDE(0.1, 5.0, 50, T=2.0), "ve", dict(sigma_min=0.1, sigma_max=5.0, T=2.0)),
}


def grid(sde, n=201):
    return torch.cat([torch.tensor([0.0, 1e-7, 1e-5, 1e-3], dtype=torch.float64),
                      torch.linspace(0.0, sde.T, n, dtype=torch.float64)[1:]])


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_coefficients_match_paper_formulas(case):
    make, name, p = CASES[case]
    sde = make()
    t = grid(sde)
    m, s, f, g2 = reference(name, t.numpy(), **p)
    x = torch.ones(t.shape[0], 3, dtype=torch.float64)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    # Relative rounding of the reference: a few U, times the condition number of cos^2 near t = 1
    # for the cosine schedule (2 a tan a <= 400 on [0, 0.995]), times |B| <= 11 through exp.
    rtol = 4096 * U64
    np.testing.assert_allclose(mean[:, 0].numpy(), m, rtol=rtol, atol=0)
    np.testing.assert_allclose(sde.mean_coeff(t).numpy(), m, rtol=rtol, atol=0)
    np.testing.assert_allclose(sde.log_mean_coeff(t).numpy(), reference_log_m(name, t.numpy(), **p), rtol=rtol, atol=0)
    np.testing.assert_allclose(std.numpy(), s, rtol=rtol, atol=0)
    np.testing.assert_allclose(sde.marginal_std(t).numpy(), s, rtol=rtol, atol=0)
    np.testing.assert_allclose(drift[:, 1].numpy(), f, rtol=rtol, atol=0)
    np.testing.assert_allclose(diffusion.numpy() ** 2, g2, rtol=rtol, atol=0)
    assert torch.equal(drift[:, 0], drift[:, 2])
    if name != "ve":
        beta, _ = beta_and_integral(p.get("schedule", "linear"), t.numpy(),
                                    **{k: v for k, v in p.items() if k in ("bmin", "bmax", "s")})
        np.testing.assert_allclose(sde.beta(t).numpy(), beta, rtol=rtol)
    else:
        np.testing.assert_allclose(sde.sigma(t).numpy(), s, rtol=rtol)


def test_song_et_al_closed_form_log_mean_coeff():
    # Song et al. (2021), Appendix B: log m(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2.
    sde = VPSDE(0.1, 20.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    ref = -t.numpy() ** 2 * (20.0 - 0.1) / 4 - t.numpy() * 0.1 / 2
    np.testing.assert_allclose(sde.log_mean_coeff(t).numpy(), ref, rtol=8 * U64, atol=0)
    # and the VE sigma(t): geometric interpolation between sigma_min at t = 0 and sigma_max at t = T
    ve = VESDE(0.01, 50.0)
    assert ve.sigma(0.0).item() == pytest.approx(0.01, rel=1e-6)
    assert ve.sigma(1.0).item() == pytest.approx(50.0, rel=1e-6)
    assert ve.sigma(0.5).item() == pytest.approx(math.sqrt(0.01 * 50.0), rel=1e-6)


def test_cosine_beta_is_derivative_of_paper_integral():
    """beta(t) must be dB/dt with B = -log abar(t) written out from Nichol & Dhariwal (independent of
    the tan formula above): central differences, error h^2 |B'''| / 6 + U |B| / h."""
    sde = VPSDE(schedule="cosine")
    t = np.linspace(0.01, 0.99, 50)
    h = 1e-5
    fd = (-np.log(nd_alpha_bar(t + h)) + np.log(nd_alpha_bar(t - h))) / (2 * h)
    got = sde.beta(torch.tensor(t)).numpy()
    # B''' = beta'' ~ 2 beta^3 (1+s)^-2 near t = 1, so the truncation h^2 |B'''| / 6 is below 1e-10 beta^3
    # and the rounding U |B| / h below 1e-10: both within 1e-6 |beta| (1 + beta^2 / 10).
    assert np.all(np.abs(got - fd) <= 1e-6 * np.abs(got) * (1 + got**2 / 10))


def _chain_betas(N=50):
    """A non-linear chain: betas rising like i^2 from 1e-4 to 0.3."""
    i = torch.arange(N, dtype=torch.float64)
    return 1e-4 + (0.3 - 1e-4) * (i / (N - 1)) ** 2


@pytest.mark.parametrize("sched", [LinearBeta(0.1, 20.0), LinearBeta(2.0, 3.0), CosineBeta(0.008), CosineBeta(0.1),
                                   DiscreteBeta(_chain_betas())])
def test_beta_schedule_inverse_integral_round_trips(sched):
    t = torch.cat([torch.tensor([0.0, 1e-9, 1e-6]), torch.linspace(0.001, 0.99, 200)]).double()
    b = sched.integral(t)
    back = sched.inverse_integral(b)
    # condition of t -> B -> t: dt = dB / beta; rounding of B is ~U |B|, so |dt| <~ 8 U (|B| / beta + t).
    tol = 16 * U64 * (b.abs() / sched.beta(t) + t + 1e-300)
    assert ((back - t).abs() <= tol).all()


# ---------------------------------------------------------------------------------------------
# Moment equations tie drift, diffusion and marginal together (independent of any formula)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_moment_equations_hold(case):
    sde = CASES[case][0]()
    t = torch.linspace(0.02, sde.T * 0.98, 97, dtype=torch.float64).requires_grad_(True)
    logm = sde.log_mean_coeff(t) + 0.0 * t  # VE's log m is a constant 0 with no graph
    var = sde.marginal_std(t) ** 2
    (dlogm,) = torch.autograd.grad(logm.sum(), t)
    (dvar,) = torch.autograd.grad(var.sum(), t)
    with torch.no_grad():
        x = torch.ones(t.shape[0], 1, dtype=torch.float64)
        drift, g = sde.sde(x, t.detach())
        f = drift[:, 0]
        rhs = 2.0 * f * var.detach() + g**2
    # Autograd differentiates the same closed forms exactly; both sides are O(1) combinations of
    # terms of size <= |f| + g^2, so the rounding bound is a few hundred U of that scale.
    scale = f.abs() + g**2 + 1.0
    assert ((dlogm - f).abs() <= 512 * U64 * scale).all()
    assert ((dvar - rhs).abs() <= 512 * U64 * scale * (1.0 + var.detach())).all()


def test_moment_equations_by_finite_differences():
    """The same identity without autograd (central differences, truncation h^2 |v'''| / 6)."""
    for sde in (VPSDE(), SubVPSDE(), VESDE(0.1, 5.0)):
        t = np.linspace(0.05, 0.95, 19)
        h = 1e-5
        v = lambda u: sde.marginal_std(torch.tensor(u)).numpy() ** 2  # noqa: E731
        dv = (v(t + h) - v(t - h)) / (2 * h)
        drift, g = sde.sde(torch.ones(19, 1, dtype=torch.float64), torch.tensor(t))
        rhs = 2 * drift[:, 0].numpy() * v(t) + g.numpy() ** 2
        np.testing.assert_allclose(dv, rhs, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Small-t accuracy in float32 (DESIGN: "the VP std at t=1e-5 must be accurate in float32")
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [1e-7, 1e-5, 1e-3])
def test_small_t_std_in_float32(t):
    for sde, name in ((VPSDE(), "vp"), (SubVPSDE(), "subvp"), (VPSDE(schedule="cosine"), "vp_cos")):
        p = dict(schedule="cosine") if name == "vp_cos" else {}
        _, s_ref, _, _ = reference(name.replace("_cos", ""), np.array([t]), **p)
        x = torch.zeros(1, 2, dtype=torch.float32)
        _, s32 = sde.marginal_prob(x, t)
        assert s32.dtype == torch.float32
        assert abs(s32.item() / s_ref[0] - 1.0) < 1e-5, (name, t)
        lam32 = sde.log_snr(torch.tensor([t], dtype=torch.float32)).item()
        m_ref, s_ref, _, _ = reference(name.replace("_cos", ""), np.array([t]), **p)
        assert abs(lam32 - np.log(m_ref[0] ** 2 / s_ref[0] ** 2)) < 1e-5 * abs(lam32)


# ---------------------------------------------------------------------------------------------
# log-SNR and its inverse
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_snr_definition_monotonicity_and_inverse(case, dtype):
    make, name, p = CASES[case]
    sde = make()
    t = torch.cat([torch.tensor([1e-5, 1e-4], dtype=torch.float64),
                   torch.linspace(1e-3, sde.T, 300, dtype=torch.float64)]).to(dtype)
    lam = sde.log_snr(t)
    m, s, _, _ = reference(name, t.double().numpy(), **p)
    U = U32 if dtype == torch.float32 else U64
    ref = np.log(m**2 / s**2)
    assert np.all(np.abs(lam.double().numpy() - ref) <= 64 * U * (1 + np.abs(ref)))
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease strictly in t"
    back = sde.log_snr_inverse(lam)
    assert back.dtype == dtype
    # Conditioning: lam is rounded to ~U (1 + |lam|), which moves t by that over |dlam/dt|;
    # the inverse's own arithmetic adds a few U relative to t.
    tt = t.double().clamp(max=sde.T).requires_grad_(True)  # float32(0.995) is just above 0.995 in float64
    (dlam,) = torch.autograd.grad(sde.log_snr(tt).sum(), tt)
    tol = 32 * U * ((1 + lam.double().abs()) / dlam.abs() + t.double())
    err = (back.double() - t.double()).abs()
    assert (err <= tol).all(), float((err / tol).max())


def test_log_snr_inverse_bad_input():
    with pytest.raises(ValueError, match="finite"):
        VPSDE().log_snr_inverse(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="finite"):
        VESDE().log_snr_inverse(float("inf"))


# ---------------------------------------------------------------------------------------------
# Prior
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde,std", [(VPSDE(), 1.0), (SubVPSDE(), 1.0), (VESDE(0.01, 50.0), 50.0),
                                     (VESDE(0.1, 3.0), 3.0)])
def test_prior_logp_is_normal_log_density(sde, std):
    z = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * std * 1.3
    ref = stats.norm(0.0, std).logpdf(z.numpy()).reshape(5, -1).sum(axis=1)
    got = sde.prior_logp(z)
    assert got.shape == (5,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=64 * U64)
    assert sde.prior_std == std


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()])
def test_prior_sampling_moments_and_reproducibility(sde):
    n = 200_000
    z = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert z.shape == (n, 2) and z.dtype == torch.float64
    sd = sde.prior_std
    # mean within 5 standard errors (sd / sqrt(n)); variance within 5 SE (sd^2 sqrt(2 / (n - 1))),
    # and the cross-covariance of the two coordinates within 5 SE (sd^2 / sqrt(n)).
    assert (z.mean(0).abs() <= 5 * sd / math.sqrt(n)).all()
    assert ((z.var(0) - sd**2).abs() <= 5 * sd**2 * math.sqrt(2 / (n - 1))).all()
    assert abs(float((z[:, 0] * z[:, 1]).mean())) <= 5 * sd**2 / math.sqrt(n)
    # Gaussian shape, not just two moments: E z^4 = 3 sd^4, with Var(z^4) = (105 - 9) sd^8 -> 5 SE;
    # and the Kolmogorov distance to N(0, sd^2) below the DKW bound P(D_n > e) <= 2 exp(-2 n e^2)
    # at probability 1e-9 (a unit-variance uniform has E z^4 = 1.8 and D ~ 0.06).
    assert abs(float((z**4).mean(0).max()) - 3 * sd**4) <= 5 * sd**4 * math.sqrt(96 / n)
    assert abs(float((z**4).mean(0).min()) - 3 * sd**4) <= 5 * sd**4 * math.sqrt(96 / n)
    d_ks = stats.kstest(z[:, 0].numpy(), stats.norm(0.0, sd).cdf).statistic
    assert d_ks <= math.sqrt(math.log(2 / 1e-9) / (2 * n))
    again = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(z, again)


# ---------------------------------------------------------------------------------------------
# Bridges to the discrete chains
# ---------------------------------------------------------------------------------------------
def test_vp_defaults_bridge_to_ho_et_al_ddpm():
    # Song et al. (2021) beta_min = 0.1, beta_max = 20 with N = 1000 is Ho et al.'s 1e-4 .. 0.02.
    sched = VPSDE().ddpm_schedule()
    assert sched.N == 1000 and sched.name == "linear"
    np.testing.assert_allclose(sched.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=8 * U64)
    back = VPSDE.from_ddpm(DDPMSchedule.linear(1e-4, 0.02, 1000))
    assert back.N == 1000
    assert back.beta_min == pytest.approx(0.1, rel=8 * U64) and back.beta_max == pytest.approx(20.0, rel=8 * U64)
    sub = SubVPSDE(0.3, 9.0, 300).ddpm_schedule()
    np.testing.assert_allclose(sub.betas.numpy(), np.linspace(0.3 / 300, 9.0 / 300, 300), rtol=8 * U64)


def test_from_ddpm_passes_options_and_rejects_cosine():
    sde = VPSDE.from_ddpm(DDPMSchedule.linear(1e-3, 0.05, 50), T=1.0)
    assert (sde.beta_min, sde.N) == (pytest.approx(0.05), 50) and sde.beta_max == pytest.approx(2.5)
    with pytest.raises(ValueError, match="linear DDPM schedule"):
        VPSDE.from_ddpm(DDPMSchedule.cosine(100))


def test_cosine_vp_bridges_to_nichol_dhariwal_ddpm():
    sde = VPSDE(schedule="cosine", N=400)
    assert sde.T == 0.995 and sde.beta_min is None
    sched = sde.ddpm_schedule()
    ab = nd_alpha_bar(np.arange(401) / 400)
    np.testing.assert_allclose(sched.betas.numpy()[:-1], 1 - ab[1:-1] / ab[:-2], rtol=1e-11)


def test_ve_bridges_to_smld():
    ve = VESDE(0.01, 50.0, 100)
    sched = ve.smld_schedule()
    assert isinstance(sched, SMLDSchedule) and (sched.sigma_min, sched.sigma_max, sched.N) == (0.01, 50.0, 100)
    ref = 0.01 * (50.0 / 0.01) ** (np.arange(100) / 99)  # Song & Ermon (2019): geometric ladder
    np.testing.assert_allclose(sched.sigmas.numpy(), ref, rtol=64 * U64 * 10)
    # sigma_i = sigma(t_i) at the level times
    np.testing.assert_allclose(ve.sigma(sched.times()).numpy(), ref, rtol=64 * U64 * 10)
    back = VESDE.from_smld(SMLDSchedule(0.05, 20.0, 77), T=2.0)
    assert (back.sigma_min, back.sigma_max, back.N, back.T) == (0.05, 20.0, 77, 2.0)


def test_subvp_discretize_is_euler_maruyama():
    sde = SubVPSDE(N=250)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    f, G = sde.discretize(x, t)
    _, _, fr, g2 = reference("subvp", t.numpy())
    dt = 1.0 / 250
    np.testing.assert_allclose(f.numpy(), fr[:, None] * x.numpy() * dt, rtol=64 * U64, atol=1e-300)
    np.testing.assert_allclose(G.numpy(), np.sqrt(g2 * dt), rtol=64 * U64)
    assert sde.discrete_chain == "euler_maruyama" and VPSDE.discrete_chain == "ddpm" and VESDE.discrete_chain == "smld"


# ---------------------------------------------------------------------------------------------
# Reverse SDE and probability-flow ODE
# ---------------------------------------------------------------------------------------------
def _score(x, t):
    return torch.sin(x) - t.reshape(-1, *([1] * (x.ndim - 1))) * x


@pytest.mark.parametrize("case", ["vp", "subvp", "ve", "vp_cosine"])
def test_reverse_sde_and_probability_flow(case):
    make, name, p = CASES[case]
    sde = make()
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    _, _, f, g2 = reference(name, t.numpy(), **p)
    fx = f[:, None, None] * x.numpy()
    sc = _score(x, t).numpy()
    rev = sde.reverse(_score)
    assert isinstance(rev, ReverseSDE) and (rev.N, rev.T) == (sde.N, sde.T) and not rev.probability_flow
    drift, diff = rev.sde(x, t)
    np.testing.assert_allclose(drift.numpy(), fx - g2[:, None, None] * sc, rtol=1e-12, atol=1e-12 * (1 + g2.max()))
    np.testing.assert_allclose(diff.numpy() ** 2, g2, rtol=1e-12)
    pf = sde.reverse(_score, probability_flow=True)
    drift, diff = pf.sde(x, t)
    np.testing.assert_allclose(drift.numpy(), fx - 0.5 * g2[:, None, None] * sc, rtol=1e-12,
                               atol=1e-12 * (1 + g2.max()))
    assert isinstance(diff, torch.Tensor) and diff.shape == (3,) and diff.dtype == x.dtype
    assert torch.equal(diff, torch.zeros(3, dtype=torch.float64))
    # the discrete reverse step (Song et al. eq. 46): f_rev = f - G^2 score, G_rev = G (0 for PF)
    fd, G = sde.discretize(x, t)
    rf, rG = rev.discretize(x, t)
    torch.testing.assert_close(rf, fd - G.reshape(3, 1, 1) ** 2 * _score(x, t), rtol=1e-12, atol=1e-12)
    assert torch.equal(rG, G)
    pf_f, pf_G = pf.discretize(x, t)
    torch.testing.assert_close(pf_f, fd - 0.5 * G.reshape(3, 1, 1) ** 2 * _score(x, t), rtol=1e-12, atol=1e-12)
    assert torch.equal(pf_G, torch.zeros_like(G))


def test_reverse_bad_score():
    with pytest.raises(TypeError, match="callable"):
        VPSDE().reverse(3.0)
    rev = VPSDE().reverse(lambda x, t: x[:, :1])
    with pytest.raises(ValueError, match="shaped like x"):
        rev.sde(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="shaped like x"):
        VESDE().reverse(lambda x, t: "nope").discretize(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="outside"):
        VPSDE().reverse(_score).sde(torch.zeros(2, 3), 1.5)


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, devices, per-sample broadcasting
# ---------------------------------------------------------------------------------------------
SHAPES = [(4,), (4, 3), (4, 2, 3), (4, 3, 5, 2)]


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", ["vp", "subvp", "ve", "vp_cosine"])
def test_shapes_dtypes_devices(case, shape, dtype, device):
    sde = CASES[case][0]()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    t = torch.tensor([0.0, 0.1, 0.5, 0.99 * sde.T], device=device, dtype=dtype)
    outs = {
        "drift": sde.sde(x, t)[0], "diffusion": sde.sde(x, t)[1],
        "mean": sde.marginal_prob(x, t)[0], "std": sde.marginal_prob(x, t)[1],
        "f": sde.discretize(x, t)[0], "G": sde.discretize(x, t)[1],
        "prior": sde.prior_sampling(shape, generator=g, dtype=dtype), "logp": sde.prior_logp(x),
    }
    for k, v in outs.items():
        assert v.dtype == dtype and v.device.type == torch.device(device).type, k
        assert v.shape == (shape if k in ("drift", "mean", "f", "prior") else (4,)), k
        assert torch.isfinite(v).all(), k
    # Per-sample broadcasting: sample b of a batched call equals a call on sample b alone with a scalar t,
    # and the answer does not depend on the rank (flattened data give the same numbers).
    for b in range(4):
        xb = x[b:b + 1]
        tb = float(t[b])
        for fn in (sde.sde, sde.marginal_prob, sde.discretize):
            full, single = fn(x, t), fn(xb, tb)
            torch.testing.assert_close(full[0][b:b + 1], single[0], rtol=0, atol=0)
            torch.testing.assert_close(full[1][b:b + 1], single[1], rtol=0, atol=0)
    flat = x.reshape(4, -1)
    torch.testing.assert_close(sde.marginal_prob(x, t)[0].reshape(4, -1), sde.marginal_prob(flat, t)[0])
    torch.testing.assert_close(sde.sde(x, t)[0].reshape(4, -1), sde.sde(flat, t)[0])
    torch.testing.assert_close(sde.prior_logp(x), sde.prior_logp(flat))


@pytest.mark.parametrize("case", ["vp", "subvp", "ve"])
def test_float32_agrees_with_float64(case):
    sde = CASES[case][0]()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(1e-5, 1.0, 64, dtype=torch.float64)
    x32, t32 = x.float(), t.float()
    pairs = [*zip(sde.sde(x, t), sde.sde(x32, t32)), *zip(sde.marginal_prob(x, t), sde.marginal_prob(x32, t32))]
    # discretize returns f = E[x_next] - x, which cancels (|f| ~ beta x / 2 << |x|): compare x + f, as it is used.
    (f64, G64), (f32, G32) = sde.discretize(x, t), sde.discretize(x32, t32)
    pairs += [(x + f64, x32 + f32), (G64, G32)]
    for u, v in pairs:
        # float32 inputs are themselves rounded (relative U32), amplified by |B| <= 11 through exp.
        assert v.dtype == torch.float32
        torch.testing.assert_close(v.double(), u, rtol=64 * U32 * 11, atol=0)


def test_python_float_and_scalar_tensor_times_broadcast():
    sde = VPSDE()
    x = torch.ones(3, 2)
    a = sde.marginal_prob(x, 0.4)
    b = sde.marginal_prob(x, torch.tensor(0.4))
    c = sde.marginal_prob(x, torch.full((3,), 0.4))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    for u, v in zip(a, c):
        assert torch.equal(u, v)
    assert sde.marginal_prob(x, 1)[1].shape == (3,)  # an int time is fine


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
ALL = [VPSDE(), SubVPSDE(), VESDE(), VPSDE(schedule="cosine")]


@pytest.mark.parametrize("sde", ALL, ids=repr)
def test_time_errors(sde):
    x = torch.zeros(3, 2)
    for fn in (sde.sde, sde.marginal_prob, sde.discretize):
        with pytest.raises(ValueError, match=r"outside \[0.0, T="):
            fn(x, sde.T + 0.01)
        with pytest.raises(ValueError, match=r"outside \[0.0, T="):
            fn(x, -1e-6)
        with pytest.raises(ValueError, match="values outside"):
            fn(x, torch.tensor([0.1, 0.2, sde.T * 1.5]))
        with pytest.raises(ValueError, match="values outside"):
            fn(x, torch.tensor([0.1, -0.2, 0.3]))
        with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
            fn(x, torch.tensor([0.1, 0.2]))
        with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
            fn(x, torch.full((3, 1), 0.1))
        with pytest.raises(ValueError, match="finite"):
            fn(x, float("nan"))
        with pytest.raises(ValueError, match="finite"):
            fn(x, float("inf"))
        with pytest.raises(ValueError, match="non-finite"):
            fn(x, torch.tensor([0.1, float("nan"), 0.3]))
        with pytest.raises(ValueError, match="non-finite"):
            fn(x, torch.tensor([0.1, float("inf"), 0.3]))
        with pytest.raises(TypeError, match="bool"):
            fn(x, True)
        # device mismatch (the meta device stands in for a GPU on a CPU-only machine)
        with pytest.raises(ValueError, match="same device"):
            fn(torch.zeros(3, 2, device="meta"), torch.full((3,), 0.5))
        with pytest.raises(ValueError, match=r"shape \(B, \*dims\)"):
            fn(torch.tensor(1.0), 0.5)
        with pytest.raises(ValueError, match=r"shape \(B, \*dims\)"):
            fn(torch.zeros(0, 3), 0.5)
        with pytest.raises(TypeError, match="floating-point"):
            fn(torch.zeros(3, 2, dtype=torch.long), 0.5)
    for fn in (sde.mean_coeff, sde.marginal_std, sde.log_mean_coeff, sde.log_snr):
        with pytest.raises(ValueError, match="outside"):
            fn(torch.tensor([sde.T + 0.5]))
        with pytest.raises(ValueError, match="1-D"):
            fn(torch.zeros(2, 2))
        with pytest.raises(ValueError, match="finite"):
            fn(float("nan"))


@pytest.mark.parametrize("ctor,match", [
    (lambda: VPSDE(20.0, 0.1), "beta_min < beta_max"),
    (lambda: VPSDE(1.0, 1.0), "beta_min < beta_max"),
    (lambda: SubVPSDE(5.0, 2.0), "beta_min < beta_max"),
    (lambda: VPSDE(0.0, 20.0), "beta_min must be a finite positive"),
    (lambda: VPSDE(-0.1, 20.0), "beta_min must be a finite positive"),
    (lambda: VPSDE(0.1, float("inf")), "beta_max must be a finite positive"),
    (lambda: VPSDE(0.1, float("nan")), "beta_max must be a finite positive"),
    (lambda: VESDE(50.0, 0.01), "sigma_min < sigma_max"),
    (lambda: VESDE(1.0, 1.0), "sigma_min < sigma_max"),
    (lambda: VESDE(0.0, 1.0), "sigma_min must be a finite positive"),
    (lambda: VESDE(0.01, -1.0), "sigma_max must be a finite positive"),
    (lambda: VPSDE(N=0), "N .* positive int"),
    (lambda: VESDE(N=-5), "N .* positive int"),
    (lambda: SubVPSDE(N=10.0), "N .* positive int"),
    (lambda: VPSDE(T=0.0), "T must be a finite positive"),
    (lambda: VESDE(T=-1.0), "T must be a finite positive"),
    (lambda: VPSDE(T=float("inf")), "T must be a finite positive"),
    (lambda: VPSDE(schedule="cosine", s=0.0), "s must be a finite positive"),
    (lambda: VPSDE(schedule="cosine", T=1.01), "cosine schedule lives on"),
    (lambda: VPSDE(schedule="quadratic"), "unknown schedule 'quadratic'"),
    (lambda: SubVPSDE(schedule="Linear"), "unknown schedule"),
    (lambda: LinearBeta(3.0, 1.0), "beta_min < beta_max"),
    (lambda: CosineBeta(-1.0), "s must be a finite positive"),
    (lambda: VPSDE(0.1, 20.0, 10), r"beta_max/N = 2, which must be below 1"),  # no DDPM chain with beta_i >= 1
    (lambda: SubVPSDE(0.1, 20.0, 20), r"use N > beta_max"),
])
def test_constructor_errors(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


def test_schedule_object_is_accepted():
    sde = VPSDE(schedule=LinearBeta(0.5, 2.0))
    assert sde.beta_min == 0.5 and sde.beta_max == 2.0
    assert isinstance(sde, SDE)


def test_prior_errors():
    sde = VPSDE()
    for shape in [(), (0, 3), (3, -1)]:
        with pytest.raises(ValueError, match="shape must be"):
            sde.prior_sampling(shape)
    with pytest.raises(ValueError, match="non-finite"):
        sde.prior_logp(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="non-finite"):
        VESDE().prior_logp(torch.tensor([[0.0], [float("-inf")]]))
    with pytest.raises(ValueError, match=r"shape \(B, \*dims\)"):
        sde.prior_logp(torch.tensor(0.0))


def test_custom_schedule_without_a_name_attribute():
    """A user's BetaSchedule subclass needs only the four maths methods; its name defaults to the
    class name (it used to fail with an AttributeError on construction of the SDE)."""
    from scoresde.sde import BetaSchedule

    class ConstantBeta(BetaSchedule):
        def beta(self, t):
            return torch.full_like(t, 2.0)

        def integral(self, t):
            return 2.0 * t

        def inverse_integral(self, b):
            return b / 2.0

        def ddpm(self, N):
            return DDPMSchedule(torch.full((N,), 2.0 / N, dtype=torch.float64))

    sde = VPSDE(schedule=ConstantBeta())
    assert sde.schedule.name == "ConstantBeta" and sde.T == 1.0
    mean, std = sde.marginal_prob(torch.ones(3, 2), 0.5)  # m = exp(-B/2) = exp(-1/2) at t = 0.5
    assert torch.allclose(mean, torch.full((3, 2), math.exp(-0.5)))
    assert torch.allclose(std, torch.full((3,), math.sqrt(1 - math.exp(-1.0))))


# ---------------------------------------------------------------------------------------------
# Public names of the unchecked twins (and the old underscored ones, one more release)
# ---------------------------------------------------------------------------------------------
def test_unchecked_twins_equal_the_checked_methods_and_old_names_warn():
    import warnings

    x, t = torch.randn(4, 3, dtype=torch.float64), torch.linspace(0.1, 0.9, 4, dtype=torch.float64)
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        mean, std = sde.marginal_prob(x, t)
        m, s = sde.coeffs(t)
        torch.testing.assert_close(sde.coeffs_unchecked(t)[1], std, rtol=0, atol=0)
        torch.testing.assert_close(mean, m[:, None] * x, rtol=0, atol=0)
        assert torch.equal(sde.sde_unchecked(x, t)[0], sde.sde(x, t)[0])
        assert torch.equal(sde.prior_logp_unchecked(x), sde.prior_logp(x))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert torch.equal(sde._coeffs(t)[1], std)
            assert torch.equal(sde._log_snr(t), sde.log_snr(t))
        assert [issubclass(c.category, DeprecationWarning) for c in w] == [True, True]
        assert "call coeffs_unchecked" in str(w[0].message)
    with pytest.raises(ValueError, match="outside"):
        VPSDE().coeffs(torch.tensor([1.5]))


# ---------------------------------------------------------------------------------------------
# DiscreteBeta: the VP SDE of a given chain
# ---------------------------------------------------------------------------------------------
def test_discrete_beta_marginals_are_the_chains_at_the_grid_times():
    """At t_i = (i + 1) / N the VP SDE of DiscreteBeta(betas) has m^2 = alpha_bar_i and
    s^2 = 1 - alpha_bar_i, with alpha_bar_i = prod_{j <= i} (1 - beta_j) (Ho et al. 2020, eq. 4)."""
    betas = _chain_betas()
    N = betas.numel()
    sde = VPSDE(schedule=DiscreteBeta(betas), N=N)
    abar = torch.cumprod(1.0 - betas, 0)
    t = torch.arange(1, N + 1, dtype=torch.float64) / N
    m, s = sde.coeffs(t)
    torch.testing.assert_close(m * m, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(s * s, 1.0 - abar, rtol=1e-12, atol=0)
    assert torch.equal(sde.ddpm_schedule().betas, betas)  # the discrete samplers run this very chain
    m0, s0 = sde.coeffs(torch.zeros(1, dtype=torch.float64))
    assert float(m0) == 1.0 and float(s0) == 0.0


def test_discrete_beta_is_piecewise_linear_in_log_alpha_and_beta_is_its_slope():
    betas = _chain_betas()
    N = betas.numel()
    sched = DiscreteBeta(betas)
    k = torch.arange(N, dtype=torch.float64)
    mid = (k + 0.5) / N  # the middle of step k: B is the mean of its two knots
    knots = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.cumsum(torch.log1p(-betas), 0)])
    torch.testing.assert_close(sched.integral(mid), 0.5 * (knots[:-1] + knots[1:]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sched.beta(mid), -N * torch.log1p(-betas), rtol=1e-12, atol=0)
    # beta is dB/dt: a central difference inside each step
    h = 1e-4 / N
    fd = (sched.integral(mid + h) - sched.integral(mid - h)) / (2 * h)
    torch.testing.assert_close(fd, sched.beta(mid), rtol=1e-6, atol=0)


def test_discrete_beta_resamples_to_another_step_count_and_checks_n():
    betas = _chain_betas()
    sched = DiscreteBeta(betas)
    coarse = sched.ddpm(10)  # its alpha_bar at t = (i + 1) / 10 is the schedule's
    t = torch.arange(1, 11, dtype=torch.float64) / 10
    torch.testing.assert_close(coarse.log_alphas_cumprod, -sched.integral(t), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="pass N=50"):
        VPSDE(schedule=sched, N=1000)
    assert "DiscreteBeta(N=50" in repr(VPSDE(schedule=sched, N=50))
    with pytest.raises(ValueError, match="open interval"):
        DiscreteBeta(torch.tensor([0.1, 1.0]))


def test_discrete_beta_of_the_linear_chain_vs_the_continuous_vp():
    """The DDPM betas 1e-4..0.02 (N = 1000) are VPSDE(0.1, 20)'s discretization exactly, but the
    continuous marginal is not the chain's: at t_0 = 1/N the chain's s^2 is beta_0 = 1e-4 and the
    SDE's 1 - exp(-(0.1/N + 9.95/N^2)), 10% more; at t = 1 the chain's -log alpha_bar exceeds the
    SDE's B by sum beta^2 / 2."""
    lin = VPSDE(0.1, 20.0, 1000)
    chain = lin.ddpm_schedule().betas
    torch.testing.assert_close(chain, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-12, atol=0)
    disc = VPSDE(schedule=DiscreteBeta(chain), N=1000)
    t0 = torch.tensor([1e-3], dtype=torch.float64)
    s2_chain, s2_lin = float(disc.coeffs(t0)[1] ** 2), float(lin.coeffs(t0)[1] ** 2)
    assert s2_chain == pytest.approx(1e-4, rel=1e-9)
    assert s2_lin == pytest.approx(-math.expm1(-(0.1e-3 + 9.95e-6)), rel=1e-9)
    assert 0.09 < s2_lin / s2_chain - 1 < 0.11  # 10% at the first step
    # at t = 1: sum_j beta_j = int_0^1 beta (the mean of a linear beta), so the gap in B = -log abar
    # is sum_j (-log(1 - beta_j) - beta_j) = sum beta^2 / 2 + ... = 0.068, not small for N = 1000
    one = torch.ones(1, dtype=torch.float64)
    gap = float(disc.schedule.integral(one) - lin.schedule.integral(one))
    assert gap == pytest.approx(float((-torch.log1p(-chain) - chain).sum()), rel=1e-10)
    assert gap == pytest.approx(float((chain ** 2).sum() / 2), rel=0.02)
