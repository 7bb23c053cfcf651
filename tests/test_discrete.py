"""Discrete chains (``scoresde.discrete``) against independent truth.

Every expected value here is computed in the test from the paper's formula (numpy, float64) or
from an independent derivation (composition of one-step kernels; Gaussian conditioning for the
posterior), never copied from the package. Tolerances are float64 rounding bounds: ``U`` is the
unit roundoff, and each bound says which operations it covers.

Papers: Ho, Jain & Abbeel (2020) (DDPM, eqs. 4, 6, 7); Nichol & Dhariwal (2021) (cosine schedule,
eq. 17); Song & Ermon (2019) (SMLD geometric noise levels).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import devices

from scoresde import DDPMSchedule, SMLDSchedule
from scoresde.discrete import cosine_log_alpha_bar

U = np.finfo(np.float64).eps / 2  # unit roundoff of float64


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def nd_alpha_bar(t, s=0.008):
    """Nichol & Dhariwal (2021), eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t + s)/(1 + s)) pi/2)."""
    f = lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2  # noqa: E731
    return f(np.asarray(t, dtype=np.float64)) / f(0.0)


def cos2_condition(t, s=0.008):
    """Relative condition number of ``cos^2(a)`` in ``a = (t+s)/(1+s) pi/2``: ``2 a tan(a)``.

    numpy's ``cos`` is accurate to ~1 ulp of its argument's rounding, so ``nd_alpha_bar`` carries a
    relative error of about ``U * (2 + cond)``; it grows like 1/(1 - t) near t = 1.
    """
    a = (np.asarray(t, dtype=np.float64) + s) / (1.0 + s) * np.pi / 2.0
    return 2.0 * a * np.tan(a)


def chain_moments(betas):
    """Mean coefficient and variance of x_{i+1} | x_0 by composing the one-step kernels
    q(x_{i+1} | x_i) = N(sqrt(1 - beta_i) x_i, beta_i): c <- sqrt(1-b) c, v <- (1-b) v + b."""
    c, v, cs, vs = 1.0, 0.0, [], []
    for b in betas:
        c, v = math.sqrt(1.0 - b) * c, (1.0 - b) * v + b
        cs.append(c)
        vs.append(v)
    return np.array(cs), np.array(vs)


# ---------------------------------------------------------------------------------------------
# DDPM, linear
# ---------------------------------------------------------------------------------------------
def test_linear_betas_are_ho_et_al_linspace():
    sched = DDPMSchedule.linear(1e-4, 0.02, 1000)
    ref = np.linspace(1e-4, 0.02, 1000)
    assert sched.N == 1000 and sched.name == "linear"
    assert sched.betas.dtype == torch.float64
    np.testing.assert_allclose(sched.betas.numpy(), ref, rtol=4 * U, atol=0)
    np.testing.assert_allclose(sched.alphas.numpy(), 1.0 - ref, rtol=4 * U, atol=0)


@pytest.mark.parametrize("make", [lambda: DDPMSchedule(torch.tensor([0.3])), lambda: DDPMSchedule.linear(0.1, 0.5, 2),
                                  lambda: DDPMSchedule.linear(1e-4, 0.02, 1000), lambda: DDPMSchedule.cosine(500)])
def test_alphas_cumprod_is_the_composition_of_step_kernels(make):
    sched = make()
    N = sched.N
    betas = sched.betas.numpy()
    c, v = chain_moments(betas)
    # Both sides are products / sums of N well-conditioned terms: relative error <= ~4 N U
    # (recursive products; the package goes through exp(cumsum(log1p)), whose error is
    # U * N * |log abar| at most, also covered).
    tol = 8 * N * U * (1.0 + np.abs(np.log(c**2)))
    assert np.all(np.abs(sched.alphas_cumprod.numpy() / c**2 - 1.0) <= tol)
    assert np.all(np.abs(sched.sqrt_alphas_cumprod.numpy() / c - 1.0) <= tol)
    assert np.all(np.abs(sched.sqrt_one_minus_alphas_cumprod.numpy() ** 2 / v - 1.0) <= tol)
    assert sched.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(sched.alphas_cumprod_prev[1:].numpy(), sched.alphas_cumprod[:-1].numpy())
    np.testing.assert_allclose(sched.times().numpy(), np.arange(1, N + 1) / N, rtol=2 * U)


def test_q_mean_std_and_q_sample_match_the_chain():
    sched = DDPMSchedule.linear(1e-4, 0.02, 1000)
    c, v = chain_moments(sched.betas.numpy())
    x0 = torch.linspace(-2.0, 3.0, 5 * 3, dtype=torch.float64).reshape(5, 3)
    i = torch.tensor([0, 1, 499, 998, 999])
    mean, std = sched.q_mean_std(x0, i)
    assert mean.shape == x0.shape and std.shape == (5, 1)
    tol = 8 * 1000 * U * 10
    np.testing.assert_allclose(mean.numpy(), c[i.numpy(), None] * x0.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(std[:, 0].numpy(), np.sqrt(v[i.numpy()]), rtol=tol)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xs = sched.q_sample(x0, i, noise=noise)
    assert torch.equal(xs, mean + std * noise)
    # generator draws are reproducible and the scalar index broadcasts to every sample
    a = sched.q_sample(x0, 7, generator=torch.Generator().manual_seed(3))
    b = sched.q_sample(x0, torch.full((5,), 7), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_step_kernel_is_q_of_x_next_given_x_prev():
    sched = DDPMSchedule.linear(1e-4, 0.02, 1000)
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    i = torch.tensor([0, 10, 500, 999])
    beta = np.linspace(1e-4, 0.02, 1000)[i.numpy()]
    mean, std = sched.step_kernel(x, i)
    assert std.shape == (4, 1, 1)
    np.testing.assert_allclose(mean.numpy(), np.sqrt(1 - beta)[:, None, None] * x.numpy(), rtol=8 * U)
    np.testing.assert_allclose(std.reshape(-1).numpy(), np.sqrt(beta), rtol=8 * U)


@pytest.mark.parametrize("make", [lambda: DDPMSchedule.linear(1e-4, 0.02, 1000), lambda: DDPMSchedule.cosine(200)])
def test_posterior_is_gaussian_conditioning(make):
    """q(x_i | x_{i+1}, x_0) from the joint Gaussian of (x_i, x_{i+1}) given x_0:
    Var(x_i) = 1 - abar_{i-1}, Var(x_{i+1}) = 1 - abar_i, Cov = sqrt(alpha_i) (1 - abar_{i-1});
    mean = E x_i + Cov / Var(x_{i+1}) (x_{i+1} - E x_{i+1}), var = Var(x_i) - Cov^2 / Var(x_{i+1}).
    (Ho et al. eqs. 6-7 are the same posterior written as a product of Gaussians.)"""
    sched = make()
    N = sched.N
    betas = sched.betas.numpy()
    c, v = chain_moments(betas)  # c_i^2 = abar_i, v_i = 1 - abar_i, built by composition
    c_prev, v_prev = np.concatenate([[1.0], c[:-1]]), np.concatenate([[0.0], v[:-1]])
    cov = np.sqrt(1.0 - betas) * v_prev
    post_var = v_prev - cov**2 / v
    k_next = cov / v  # coefficient of x_{i+1}
    k_x0 = c_prev - k_next * c  # coefficient of x_0

    i = torch.arange(N)
    x0 = torch.full((N, 1), 0.7, dtype=torch.float64)
    xn = torch.full((N, 1), -1.3, dtype=torch.float64)
    mean, var = sched.q_posterior(x0, xn, i)
    assert var.shape == (N, 1)
    # Conditioning subtracts nearly equal numbers at small i (relative cancellation ~ v_prev / post_var);
    # the bound below is U times that amplification times a small constant, plus the chain's N U.
    amp = 1.0 + v_prev / np.maximum(post_var, 1e-300)
    tol = 64 * U * (N + amp)
    ref_mean = k_x0 * 0.7 + k_next * -1.3
    assert np.all(np.abs(mean[:, 0].numpy() - ref_mean) <= tol * (1 + np.abs(ref_mean)))
    assert np.all(np.abs(var[:, 0].numpy() - post_var) <= tol * post_var + 64 * U * betas[0] * (i.numpy() == 0))
    # i = 0: x_0 is known, so the posterior is a point mass at x_0.
    assert var[0, 0] == 0.0 and mean[0, 0] == pytest.approx(0.7, rel=1e-15)
    # clipped log-variance: index 0 borrows index 1 (variance 0 has no log)
    lv = sched.posterior_log_variance_clipped.numpy()
    assert lv[0] == pytest.approx(np.log(post_var[1]), rel=1e-10)
    np.testing.assert_allclose(lv[1:], np.log(post_var[1:]), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# DDPM, cosine (Nichol & Dhariwal 2021)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,s", [(1000, 0.008), (50, 0.008), (4000, 0.008), (300, 0.001), (300, 0.05)])
def test_cosine_betas_match_nichol_dhariwal(N, s):
    sched = DDPMSchedule.cosine(N, s=s)
    t = np.arange(N + 1) / N
    ab = nd_alpha_bar(t, s)
    ratio = ab[1:] / ab[:-1]
    ref = np.minimum(1.0 - ratio, 0.999)
    # 1 - ratio: ratio carries relative error ~ U (4 + cond(t_i) + cond(t_{i+1})); at t = 1 numpy's
    # cos(pi/2) is not 0 but ~6e-17, so the last (clipped) step is compared after clipping only.
    cond = cos2_condition(t, s)
    tol = 4 * U * (8 + cond[1:] + cond[:-1]) * ratio + 4 * U
    got = sched.betas.numpy()
    assert np.all(np.abs(got[:-1] - ref[:-1]) <= tol[:-1])
    assert got[-1] == 0.999  # f(1) = 0 so beta_{N-1} = 1, clipped to max_beta
    assert sched.clipped.tolist() == [False] * (N - 1) + [True]
    # alphas_cumprod telescopes to abar(t_i) at t_i = (i + 1)/N (all but the clipped last index)
    rel = np.abs(sched.alphas_cumprod.numpy()[:-1] / ab[1:-1] - 1.0)
    assert np.all(rel <= 4 * U * (8 + cond[1:-1] + np.arange(1, N) * 4))


def test_cosine_max_beta_clips():
    sched = DDPMSchedule.cosine(20, max_beta=0.3)
    ab = nd_alpha_bar(np.arange(21) / 20)
    raw = 1.0 - ab[1:] / ab[:-1]
    assert np.all(sched.betas.numpy() <= 0.3)
    np.testing.assert_array_equal(sched.clipped.numpy(), raw >= 0.3)
    assert sched.clipped.any() and not sched.clipped.all()


@pytest.mark.parametrize("s", [0.008, 0.001, 0.05, 0.3])
def test_cosine_log_alpha_bar_matches_paper_formula(s):
    t = np.concatenate([np.linspace(0.0, 0.999, 2001), [1e-8, 1e-6, 1e-4, 0.4999999, 0.5, 0.5000001]])
    got = cosine_log_alpha_bar(torch.tensor(t), s).numpy()
    ref = np.log(nd_alpha_bar(t, s))
    # abs error of log(ref) ~ U (4 + cond); the package's error is of the same order.
    assert np.all(np.abs(got - ref) <= 16 * U * (4 + cos2_condition(t, s)) + 16 * U * np.abs(ref))
    # near t = 0 (where log abar(t) -> 0 and only a relative comparison means anything) use the Taylor
    # series log(cos(a0 + d)/cos a0) = -tan(a0) d - d^2 / (2 cos^2 a0) + O(d^3), d = t pi / (2 (1 + s));
    # the neglected term is relative O((d / a0)^2) < 1e-12 here.
    a0 = s / (1 + s) * np.pi / 2
    small = np.array([1e-14, 1e-12, 1e-10])
    d = small * np.pi / (2 * (1 + s))
    series = 2 * (-np.tan(a0) * d - d**2 / (2 * np.cos(a0) ** 2))
    np.testing.assert_allclose(cosine_log_alpha_bar(torch.tensor(small), s).numpy(), series, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [0.008, 0.001, 0.05])
def test_cosine_log_alpha_bar_is_finite_up_to_one(dtype, s):
    # Regression: the log1p form rounded below -1 near t = 1 (NaN for s = 0.001 in float64 and for
    # s = 0.008 in float32). abar(1) = 0 exactly, so log abar(1) = -inf.
    t = torch.linspace(0.0, 1.0, 10001, dtype=dtype)
    out = cosine_log_alpha_bar(t, s)
    assert not torch.isnan(out).any()
    assert torch.isfinite(out[:-1]).all() and out[-1] == -math.inf
    assert (out[1:] < out[:-1]).all()  # strictly decreasing
    # float32 against the float64 paper formula where abar is not tiny
    keep = t.double().numpy() <= 0.99
    ref = np.log(nd_alpha_bar(t.double().numpy()[keep], s))
    eps = torch.finfo(dtype).eps
    assert np.all(np.abs(out.double().numpy()[keep] - ref) <= 8 * eps * (1 + cos2_condition(t.double().numpy()[keep], s)
                                                                          + np.abs(ref)))


# ---------------------------------------------------------------------------------------------
# SMLD (Song & Ermon 2019)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smin,smax,N", [(0.01, 50.0, 1000), (0.01, 1.0, 10), (0.5, 2.0, 2)])
def test_smld_ladder_is_geometric(smin, smax, N):
    sched = SMLDSchedule(smin, smax, N)
    i = np.arange(N)
    ref = smin * (smax / smin) ** (i / (N - 1))
    np.testing.assert_allclose(sched.sigmas.numpy(), ref, rtol=64 * U * (1 + abs(math.log(smax / smin))))
    assert sched.sigmas[0] == pytest.approx(smin, rel=1e-15) and sched.sigmas[-1] == pytest.approx(smax, rel=1e-14)
    np.testing.assert_allclose(sched.times().numpy(), i / (N - 1), rtol=2 * U)
    # The step variances telescope: sum_{j <= i} (sigma_j^2 - sigma_{j-1}^2) = sigma_i^2, so x_i ~ N(x_0, sigma_i^2).
    x = torch.zeros(N, 2, dtype=torch.float64)
    mean, std = sched.step_kernel(x, torch.arange(N))
    assert torch.equal(mean, x)
    cum = np.cumsum(std.reshape(-1).numpy() ** 2)
    np.testing.assert_allclose(cum, ref**2, rtol=64 * U * N)
    m, sd = sched.q_mean_std(torch.ones(N, 2, dtype=torch.float64), torch.arange(N))
    assert torch.equal(m, torch.ones(N, 2, dtype=torch.float64))
    np.testing.assert_allclose(sd.reshape(-1).numpy(), ref, rtol=64 * U * (1 + abs(math.log(smax / smin))))
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(sched.q_sample(torch.ones(N, 2, dtype=torch.float64), torch.arange(N), noise=noise),
                       m + sd * noise)


# ---------------------------------------------------------------------------------------------
# dtype / device
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tables_follow_data_dtype_and_device(device, dtype):
    sched, smld = DDPMSchedule.linear(), SMLDSchedule()
    x = torch.ones(3, 2, 2, 2, device=device, dtype=dtype)
    i = torch.tensor([0, 5, 999], device=device)
    for out in (*sched.q_mean_std(x, i), *sched.step_kernel(x, 3), *sched.q_posterior(x, x, i),
                *smld.q_mean_std(x, i), *smld.step_kernel(x, 2), sched.q_sample(x, i), smld.q_sample(x, 1)):
        assert out.dtype == dtype and out.device.type == torch.device(device).type
        assert out.ndim == 4
    # the tables themselves stay float64 on the CPU
    assert sched.betas.dtype == torch.float64 and sched.betas.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("betas", [[0.0, 0.1], [0.1, 1.0], [0.1, -0.2], [0.1, float("nan")], [[0.1, 0.2]], []])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="beta"):
        DDPMSchedule(torch.tensor(betas, dtype=torch.float64))


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_start=0.02, beta_end=1e-4), "beta_start < beta_end"),
    (dict(beta_start=0.02, beta_end=0.02), "beta_start < beta_end"),
    (dict(beta_start=1e-4, beta_end=1.5), "beta_end < 1"),
    (dict(beta_start=0.0, beta_end=0.02), "beta_start must be a finite positive"),
    (dict(beta_start=1e-4, beta_end=float("inf")), "beta_end must be a finite positive"),
    (dict(N=0), "N .* positive int"),
    (dict(N=2.5), "N .* positive int"),
    (dict(N=True), "N .* positive int"),
])
def test_bad_linear_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMSchedule.linear(**kwargs)


def test_bad_cosine_and_smld_parameters():
    with pytest.raises(ValueError, match="s must be a finite positive"):
        DDPMSchedule.cosine(100, s=0.0)
    with pytest.raises(ValueError, match="N .* positive int"):
        DDPMSchedule.cosine(-3)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        SMLDSchedule(1.0, 1.0, 10)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        SMLDSchedule(2.0, 1.0, 10)
    with pytest.raises(ValueError, match="sigma_min must be a finite positive"):
        SMLDSchedule(-0.1, 1.0, 10)
    with pytest.raises(ValueError, match="N .* positive int"):
        SMLDSchedule(0.1, 1.0, 0)


def test_bad_indices_and_shapes():
    sched, smld = DDPMSchedule.linear(N=10), SMLDSchedule(N=10)
    x = torch.zeros(3, 2)
    for obj in (sched, smld):
        with pytest.raises(ValueError, match=r"outside \[0, 9\]"):
            obj.q_mean_std(x, 10)
        with pytest.raises(ValueError, match=r"outside \[0, 9\]"):
            obj.q_mean_std(x, -1)
        with pytest.raises(ValueError, match=r"lie in \[0, 9\]"):
            obj.step_kernel(x, torch.tensor([0, 1, 10]))
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            obj.q_mean_std(x, torch.tensor([0, 1]))
        with pytest.raises(TypeError, match="integer tensor"):
            obj.q_mean_std(x, torch.tensor([0.0, 1.0, 2.0]))
        with pytest.raises(TypeError, match="bool"):
            obj.q_mean_std(x, True)
        with pytest.raises(ValueError, match=r"shape \(B, \*dims\)"):
            obj.q_mean_std(torch.zeros(0, 2), 0)
    with pytest.raises(ValueError, match="x_next must have the shape of x0"):
        sched.q_posterior(x, torch.zeros(3, 3), 1)
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        sched.q_sample(x, 1, noise=torch.zeros(3))
