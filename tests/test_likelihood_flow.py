"""scoresde.likelihood.flow: the exact likelihood against the analytic log-density of Gaussian-mixture
oracles, the Hutchinson log-likelihood against the exact one, batch invariance, errors. (The
divergence estimators: test_likelihood_divergence.py; bits/dim: test_likelihood_bpd.py.)"""
from __future__ import annotations

import math

import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.likelihood import log_likelihood
from scoresde.targets import GaussianMixture, mixture_2d, mixture_nd


pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mixture_1d():
    return GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.4, 0.6])


ORACLES = {"1d": mixture_1d, "2d": mixture_2d, "8d": lambda: mixture_nd(D=8, K=3)}
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def analytic_error(res, mix, sde, x):
    """logp from the ODE minus the analytic log p_eps(x), after removing the prior mismatch at T.

    The ODE gives log p_T^prior(z) + int div; the truth is log p_T^mix(z) + int div (the same flow),
    so the difference prior_logp(z) - log p_T^mix(z) is known exactly from z."""
    mismatch = res.prior_logp - mix.marginal_log_prob(res.z.double(), sde.T, sde)
    truth = mix.marginal_log_prob(x, res.eps, sde)
    return (res.logp - mismatch - truth).abs()


@pytest.mark.parametrize("oracle", list(ORACLES))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_exact_trace_gives_the_analytic_log_density(oracle, sde_name):
    mix, sde = ORACLES[oracle](), SDES[sde_name]()
    x = mix.sample(16, generator=gen(1), dtype=torch.float64)
    errs = []
    for tol in (1e-3, 1e-6):
        res = log_likelihood(mix.score_fn(sde), sde, x, trace="exact", rtol=tol, atol=tol)
        assert bool(res.ok.all())
        errs.append(float(analytic_error(res, mix, sde, x).max()))
    # The error falls with the tolerance and is small at the tight one (a few hundred steps of
    # local errors of order tol, times the dimension).
    assert errs[1] < errs[0] / 20, errs
    assert errs[1] < 1e-3 * mix.dim, errs


def test_the_prior_mismatch_is_what_separates_logp_from_the_truth():
    """Without the correction the error is the known mismatch, which is large for a short T."""
    mix, sde = mixture_2d(), VPSDE(beta_max=3.0, N=100)
    x = mix.sample(8, generator=gen(2), dtype=torch.float64)
    res = log_likelihood(mix.score_fn(sde), sde, x, trace="exact", rtol=1e-7, atol=1e-7)
    raw = (res.logp - mix.marginal_log_prob(x, res.eps, sde)).abs()
    assert float(raw.min()) > 1e-2
    assert float(analytic_error(res, mix, sde, x).max()) < 1e-4


def test_hutchinson_log_likelihood_is_unbiased_and_probes_average_down():
    """Copies of one point in a batch get independent probes: their logp estimates scatter around
    the exact-trace value (mean within 4 SE), and 4 probes per evaluation cut the variance ~4x."""
    mix, sde = mixture_2d(), VPSDE()
    x0 = mix.sample(1, generator=gen(5), dtype=torch.float64)
    exact = log_likelihood(mix.score_fn(sde), sde, x0, trace="exact", rtol=1e-7, atol=1e-7).logp[0]
    x = x0.expand(256, 2).clone()
    one = log_likelihood(mix.score_fn(sde), sde, x, trace="rademacher", generator=gen(6), rtol=1e-7, atol=1e-7).logp
    four = log_likelihood(mix.score_fn(sde), sde, x, trace="gaussian", n_probes=4, generator=gen(7),
                          rtol=1e-7, atol=1e-7).logp
    for est in (one, four):
        se = est.std() / math.sqrt(est.numel())
        assert abs(float(est.mean() - exact)) < 4 * float(se)
    # Rademacher has lower variance than Gaussian for the same probe count; 4 Gaussian probes
    # have a quarter of one Gaussian probe's variance: compare with one Gaussian probe.
    one_g = log_likelihood(mix.score_fn(sde), sde, x, trace="gaussian", generator=gen(8), rtol=1e-7, atol=1e-7).logp
    ratio = float(four.var() / one_g.var())
    assert 0.15 < ratio < 0.45, ratio  # 1/4 within the sampling error of two variances at n = 256


def test_batch_invariance_per_sample_backend_and_not_torchdiffeq():
    mix, sde = mixture_nd(D=4, K=2), VPSDE()
    x = mix.sample(48, generator=gen(9))
    x[1::2] *= 2.5  # unrelated, harder batch mates
    score = mix.score_fn(sde)
    alone = log_likelihood(score, sde, x[:1].clone(), generator=gen(10), rtol=1e-4, atol=1e-4)
    batch = log_likelihood(score, sde, x, generator=gen(10), rtol=1e-4, atol=1e-4)
    assert torch.allclose(alone.logp[0], batch.logp[0], rtol=1e-12, atol=1e-12)
    assert int(alone.nfe[0]) == int(batch.nfe[0])
    alone = log_likelihood(score, sde, x[:1].clone(), generator=gen(10), rtol=1e-4, atol=1e-4, backend="torchdiffeq_dopri5")
    batch = log_likelihood(score, sde, x, generator=gen(10), rtol=1e-4, atol=1e-4, backend="torchdiffeq_dopri5")
    assert abs(float(alone.logp[0] - batch.logp[0])) > 1e-7


def test_float64_accumulator_beside_a_float32_state_and_one_forward_per_evaluation():
    mix, sde = mixture_2d(), VPSDE()
    x = mix.sample(8, generator=gen(11))
    calls = []
    inner = mix.score_fn(sde)

    def score(y, t):
        calls.append(y.dtype)
        return inner(y, t)

    res = log_likelihood(score, sde, x, n_probes=3, generator=gen(12))
    assert res.logp.dtype == torch.float64 and res.z.dtype == torch.float32
    assert len(calls) == res.total_nfe and set(calls) == {torch.float32}
    assert int(res.nfe.max()) <= res.total_nfe
    again = log_likelihood(mix.score_fn(sde), sde, x.double(), n_probes=3, generator=gen(12))
    assert torch.allclose(res.logp, again.logp, atol=1e-3)


def test_backends_agree_on_the_exact_log_density():
    mix, sde = mixture_2d(), VESDE()
    x = mix.sample(4, generator=gen(13), dtype=torch.float64)
    ref = log_likelihood(mix.score_fn(sde), sde, x, trace="exact", rtol=1e-8, atol=1e-8).logp
    for backend in ("torchdiffeq_dopri5", "scipy_rk45"):
        got = log_likelihood(mix.score_fn(sde), sde, x, trace="exact", backend=backend, rtol=1e-6, atol=1e-6).logp
        assert torch.allclose(got, ref, atol=1e-3), backend
    heun = log_likelihood(mix.score_fn(sde), sde, x, trace="exact", backend="heun", steps=400).logp
    assert torch.allclose(heun, ref, atol=5e-2)


def test_a_failing_sample_gets_a_status_and_nan():
    mix, sde = mixture_2d(), VPSDE()
    inner = mix.score_fn(sde)

    def score(y, t):
        s = inner(y, t)
        return torch.where(y[:, :1] > 40.0, torch.full_like(s, float("nan")), s)

    x = mix.sample(4, generator=gen(14))
    x[2] = 50.0
    res = log_likelihood(score, sde, x, trace="exact")
    assert res.status.tolist()[2] != 0 and bool(torch.isnan(res.logp[2]))
    assert bool(res.ok[[0, 1, 3]].all()) and bool(torch.isfinite(res.logp[[0, 1, 3]]).all())


# ---------------------------------------------------------------------------------------------
# Bad input and devices.
# ---------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    mix, sde = mixture_2d(), VPSDE()
    score = mix.score_fn(sde)
    x = mix.sample(4, generator=gen(16))
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(score, sde, bad)
    with pytest.raises(ValueError, match=r"shape \(B, \*dims\)"):
        log_likelihood(score, sde, torch.tensor(1.0))
    with pytest.raises(ValueError, match="score_fn returned shape"):
        log_likelihood(lambda y, t: y[:, :1], sde, x)
    for eps in (0.0, -1e-5, 1.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            log_likelihood(score, sde, x, eps=eps)
    with pytest.raises(ValueError, match="unknown trace estimator 'hutch'.*rademacher, gaussian, exact"):
        log_likelihood(score, sde, x, trace="hutch")
    with pytest.raises(ValueError, match="unknown backend"):
        log_likelihood(score, sde, x, backend="rk99")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(score, sde, x, n_probes=0)
    with pytest.raises(ValueError, match="exact trace"):
        log_likelihood(score, sde, x, trace="exact", n_probes=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_likelihood_matches_cpu():
    mix, sde = mixture_2d(), VPSDE()
    x = mix.sample(32, generator=gen(17), dtype=torch.float64)
    cpu = log_likelihood(mix.score_fn(sde), sde, x, trace="exact", rtol=1e-7, atol=1e-7)
    gpu = log_likelihood(mix.score_fn(sde), sde, x.cuda(), trace="exact", rtol=1e-7, atol=1e-7)
    assert gpu.z.device.type == "cuda"
    assert torch.allclose(cpu.logp, gpu.logp, atol=1e-6)
    g = torch.Generator(device="cuda").manual_seed(0)
    est = log_likelihood(mix.score_fn(sde), sde, x.cuda().float(), generator=g)
    assert bool(est.ok.all()) and est.logp.dtype == torch.float64
