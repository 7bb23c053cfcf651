"""Samplers checked against truth: the distribution they produce from the exact score of a
Gaussian mixture, convergence orders, batch invariance, reproducibility, and their errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.metrics import calibrate_threshold, energy_distance
from scoresde.sampling import CORRECTORS, PREDICTORS, SAMPLERS, sample
from scoresde.targets import GaussianMixture, mixture_2d, mixture_nd

from conftest import assert_mixture_moments

N_SAMPLES = 1000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oracles():
    """The two oracles with the 99.8th percentile of the mixture-vs-mixture energy distance at n.

    The 0.2% level per case keeps the family of ~30 cases at a family-wise level of about 6%
    (Bonferroni) for exact samplers; a real bias shows as a distance far above it."""
    out = {}
    for name, mix in (("2d", mixture_2d()), ("16d", mixture_nd(D=16, K=4))):
        thr = calibrate_threshold(lambda n, generator=None, m=mix: m.sample(n, generator=generator, dtype=torch.float32),
                                  N_SAMPLES, repeats=300, quantile=0.998, generator=gen(123))
        out[name] = (mix, thr)
    return out


# (sde factory, sampler, options). Langevin correctors use the batch-averaged step size in these
# low dimensions: the per-sample rule is biased there (docs/sampling.md, "Langevin step size").
CASES = [
    ("vp", "euler_maruyama", {}),
    ("subvp", "euler_maruyama", {}),
    ("ve", "euler_maruyama", {}),
    ("vp", "pc", dict(predictor="reverse_diffusion", corrector="langevin", step_size_norm="batch", steps=500)),
    ("ve", "pc", dict(predictor="reverse_diffusion", corrector="langevin", step_size_norm="batch", steps=500)),
    ("subvp", "pc", dict(predictor="euler_maruyama", corrector="annealed_langevin", steps=500)),
    ("vp", "pc", dict(predictor="ancestral", corrector="none")),
    ("ve", "pc", dict(predictor="ancestral", corrector="none")),
    ("vp", "ode", {}),
    ("subvp", "ode", {}),
    ("ve", "ode", {}),
    ("vp", "ddpm", {}),
    ("vp", "ddpm", dict(variance="beta")),
    ("vp", "ddim", dict(steps=100)),
    ("vp", "ddim", dict(steps=500, eta=1.0)),
    # DDPM / DDIM on the continuous schedule of any SDE, and on the VP chain's own schedule.
    ("ve", "ddpm", dict(steps=500)),
    ("subvp", "ddim", dict(steps=100)),
    ("vp", "ddpm", dict(schedule="discrete")),
    ("vp", "ddim", dict(steps=100, schedule="discrete")),
    # The default Langevin step size (pilot rule) in low dimension, where the per-sample rule fails.
    ("vp", "pc", dict(steps=500)),
    ("ve", "pc", dict(steps=500)),
]
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


@pytest.mark.parametrize("oracle", ["2d", "16d"])
@pytest.mark.parametrize("sde_name,sampler,opts", CASES, ids=[f"{a}-{b}-{i}" for i, (a, b, _) in enumerate(CASES)])
def test_sampler_matches_mixture(oracles, oracle, sde_name, sampler, opts):
    mix, threshold = oracles[oracle]
    sde = SDES[sde_name]()
    res = sample(mix.score_fn(sde), sde, (N_SAMPLES, mix.dim), sampler=sampler, generator=gen(7), **opts)
    assert bool(res.ok.all())
    truth = mix.sample(N_SAMPLES, generator=gen(8), dtype=torch.float32)
    dist = energy_distance(res.x, truth)
    assert dist <= threshold, f"energy distance {dist:.4g} above the null 99.8% quantile {threshold:.4g}"
    assert_mixture_moments(res.x, mix)


def test_a_wrong_score_fails_the_distribution_check(oracles):
    """The check above has power: a score whose mixture has shifted means is caught."""
    mix, threshold = oracles["2d"]
    wrong = GaussianMixture(mix.weights, mix.means + 0.3, mix.stds)
    sde = VPSDE()
    res = sample(wrong.score_fn(sde), sde, (N_SAMPLES, 2), sampler="ode", generator=gen(7))
    assert energy_distance(res.x, mix.sample(N_SAMPLES, generator=gen(8))) > threshold


# ---------------------------------------------------------------------------------------------
# Convergence orders.
# ---------------------------------------------------------------------------------------------
def _slope(steps, errors):
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.fixture(scope="module")
def ode_reference():
    mix = mixture_2d()
    sde = VPSDE()
    x_T = sde.prior_sampling((256, 2), generator=gen(3), dtype=torch.float64)
    ref = sample(mix.score_fn(sde), sde, x_T.shape, sampler="ode", x_T=x_T, rtol=1e-10, atol=1e-10, denoise=False)
    assert bool(ref.ok.all())
    return mix, sde, x_T, ref.x


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2)])
def test_probability_flow_fixed_step_order(ode_reference, method, order):
    mix, sde, x_T, ref = ode_reference
    steps = [40, 80, 160, 320]
    errs = []
    for n in steps:
        res = sample(mix.score_fn(sde), sde, x_T.shape, sampler="ode", x_T=x_T, method=method, steps=n, denoise=False)
        errs.append(float((res.x - ref).norm(dim=1).mean()))
        assert int(res.nfe[0]) == n * order
    slope = _slope(steps, errs)
    assert abs(slope + order) < 0.25, f"{method}: slope {slope:.3f}, errors {errs}"


def test_rk45_error_falls_with_rtol(ode_reference):
    mix, sde, x_T, ref = ode_reference
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        res = sample(mix.score_fn(sde), sde, x_T.shape, sampler="ode", x_T=x_T, rtol=tol, atol=tol, denoise=False)
        errs.append(float((res.x - ref).norm(dim=1).max()))
        nfes.append(res.mean_nfe)
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-4
    assert nfes[0] < nfes[1] < nfes[2]


def test_euler_maruyama_weak_order_one():
    """Weak error in the mean for Gaussian data N(mu, v): the exact mean is mu; EM's bias falls like 1/steps."""
    mu, v = 1.0, 0.3**2
    sde = VPSDE()

    def score(x, t):  # exact score of p_t = N(m mu, m^2 v + s^2)
        m, s = sde.coeffs_unchecked(t)
        return -(x - m[:, None] * mu) / (m[:, None] ** 2 * v + s[:, None] ** 2)

    n = 400_000
    steps = [16, 32, 64]
    errs, ses = [], []
    for k, s in enumerate(steps):
        res = sample(score, sde, (n, 1), sampler="euler_maruyama", steps=s, generator=gen(10 + k),
                     dtype=torch.float64, denoise=False)
        errs.append(abs(float(res.x.mean()) - mu))
        ses.append(float(res.x.std()) / math.sqrt(n))
    # The bias dominates the Monte Carlo error at these step counts ...
    assert errs[-1] > 8 * ses[-1], (errs, ses)
    # ... and halves (slope -1) as the steps double.
    slope = _slope(steps, errs)
    assert -1.3 < slope < -0.7, (slope, errs)


# ---------------------------------------------------------------------------------------------
# Batch invariance, DDIM vs ODE, reproducibility.
# ---------------------------------------------------------------------------------------------
def test_per_sample_rk45_is_batch_invariant_and_torchdiffeq_is_not():
    mix = mixture_nd(D=8, K=3)
    sde = VPSDE()
    x_T = sde.prior_sampling((64, 8), generator=gen(5), dtype=torch.float64)
    # The first sample alone and inside a batch of unrelated samples, some scaled far into the tails.
    x_T[1::2] *= 3.0
    score = mix.score_fn(sde)
    out = {}
    for method in ("dopri5", "torchdiffeq_dopri5"):
        alone = sample(score, sde, (1, 8), sampler="ode", x_T=x_T[:1].clone(), method=method, rtol=1e-4, atol=1e-4)
        batch = sample(score, sde, x_T.shape, sampler="ode", x_T=x_T, method=method, rtol=1e-4, atol=1e-4)
        out[method] = (alone, batch)
    alone, batch = out["dopri5"]
    assert torch.allclose(alone.x[0], batch.x[0], rtol=1e-12, atol=1e-12)
    assert int(alone.nfe[0]) == int(batch.nfe[0])
    assert len(set(batch.nfe.tolist())) > 1  # each sample took its own steps
    alone, batch = out["torchdiffeq_dopri5"]
    assert (alone.x[0] - batch.x[0]).abs().max() > 1e-9
    assert int(alone.nfe[0]) != int(batch.nfe[0])


def test_ddim_converges_to_the_probability_flow_ode():
    """DDIM with eta = 0 is a first-order integrator of the probability-flow ODE: from the same
    x_T it approaches the ODE solution (run to its last time 1/N, then the same Tweedie step)
    with error falling like 1/steps."""
    mix = mixture_2d()
    sde = VPSDE()
    x_T = sde.prior_sampling((256, 2), generator=gen(11), dtype=torch.float64)
    ode = sample(mix.score_fn(sde), sde, x_T.shape, sampler="ode", x_T=x_T, eps=1.0 / sde.N, rtol=1e-9, atol=1e-9)
    steps, errs = [50, 100, 200, 400], []
    for n in steps:
        res = sample(mix.score_fn(sde), sde, x_T.shape, sampler="ddim", x_T=x_T, steps=n)
        errs.append(float((res.x - ode.x).norm(dim=1).mean()))
    slope = _slope(steps, errs)
    assert -1.3 < slope < -0.7, (slope, errs)
    full = sample(mix.score_fn(sde), sde, x_T.shape, sampler="ddim", x_T=x_T, steps=sde.N)
    assert float((full.x - ode.x).norm(dim=1).mean()) < errs[-1] / 2


@pytest.mark.parametrize("sampler,opts", [("euler_maruyama", dict(steps=50)), ("pc", dict(steps=50)),
                                          ("ddpm", {}), ("ddim", dict(steps=20, eta=1.0)), ("ode", {})])
def test_reproducible_with_a_generator(sampler, opts):
    mix = mixture_2d()
    sde = VPSDE(N=100)
    a = sample(mix.score_fn(sde), sde, (32, 2), sampler=sampler, generator=gen(1), **opts)
    b = sample(mix.score_fn(sde), sde, (32, 2), sampler=sampler, generator=gen(1), **opts)
    c = sample(mix.score_fn(sde), sde, (32, 2), sampler=sampler, generator=gen(2), **opts)
    assert torch.equal(a.x, b.x)
    assert not torch.allclose(a.x, c.x)


@pytest.mark.parametrize("shape", [(16, 3), (16, 1, 2, 2)])
def test_any_rank_and_nfe_accounting(shape):
    mix = GaussianMixture([0.5, 0.5], [[-1.0] * 4 if len(shape) > 2 else [-1.0] * 3,
                                       [1.0] * 4 if len(shape) > 2 else [1.0] * 3], [0.5, 0.5])
    sde = VPSDE(N=25)
    calls = []

    def score(x, t):
        calls.append(x.shape[0])
        return mix.score_fn(sde)(x, t)

    # Default steps: sde.N for EM, PC and DDPM, 50 for DDIM; +1 for the denoising step.
    expected = {"euler_maruyama": (25 + 1, {}), "pc": (25 * 2 + 1, dict(step_size_norm="batch")),
                "ddpm": (25 + 1, {}), "ddim": (50 + 1, {}), ("ddpm", "discrete"): (25, dict(schedule="discrete"))}
    for name, (nfe, opts) in expected.items():
        calls.clear()
        res = sample(score, sde, shape, sampler=name if isinstance(name, str) else name[0], generator=gen(0), **opts)
        assert res.x.shape == shape
        assert int(res.nfe[0]) == nfe == len(calls) == res.total_nfe
    # The pilot run of the default Langevin step size is counted in total_nfe, not in the per-sample NFE.
    calls.clear()
    res = sample(score, sde, shape, sampler="pc", generator=gen(0))
    assert int(res.nfe[0]) == 51 and res.info["pilot_total_nfe"] == 25 * 2
    assert len(calls) == res.total_nfe == 51 + 50 and calls.count(res.info["pilot_size"]) == 50
    calls.clear()
    res = sample(score, sde, shape, sampler="ode", generator=gen(0), method="heun", steps=7)
    assert int(res.nfe[0]) == 15 == len(calls)


def test_pc_orders_and_n_corrector_steps_count():
    mix = mixture_2d()
    sde = VESDE(N=30)
    for order in ("corrector_first", "predictor_first"):
        res = sample(mix.score_fn(sde), sde, (8, 2), sampler="pc", generator=gen(0), order=order,
                     n_corrector_steps=3, denoise=False)
        assert int(res.nfe[0]) == 30 * 4


def test_a_failing_sample_gets_a_status_not_a_crash():
    mix = mixture_2d()
    sde = VPSDE()
    inner = mix.score_fn(sde)

    def score(x, t):
        s = inner(x, t)
        return torch.where(x[:, :1] > 50.0, torch.full_like(s, float("nan")), s)

    x_T = sde.prior_sampling((6, 2), generator=gen(0))
    x_T[2] = 100.0
    for sampler, opts in (("ode", {}), ("euler_maruyama", dict(steps=20))):
        res = sample(score, sde, x_T.shape, sampler=sampler, x_T=x_T.clone(), **opts)
        assert res.status.tolist() == [0, 0, 1, 0, 0, 0]
        assert bool(torch.isfinite(res.x[res.ok]).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampler,opts", [("euler_maruyama", dict(steps=50)), ("pc", dict(steps=50)),
                                          ("ode", {}), ("ddpm", {}), ("ddim", dict(steps=20)),
                                          ("ddim", dict(steps=20, schedule="discrete")),
                                          ("dpm_solver_2", {}), ("dpm_solver_3", {}), ("dpmpp_2m", {}),
                                          ("dpmpp_3m", {}), ("dpmpp_2m_sde", {}), ("unipc", dict(order=3)),
                                          ("heun_edm", dict(S_churn=5.0))])
def test_cuda_samples_on_the_device(sampler, opts):
    mix = mixture_2d()
    sde = VPSDE(N=100)
    g = torch.Generator(device="cuda").manual_seed(0)
    res = sample(mix.score_fn(sde), sde, (64, 2), sampler=sampler, generator=g, **opts)
    assert res.x.device.type == "cuda" and bool(res.ok.all())
    g2 = torch.Generator(device="cuda").manual_seed(0)
    again = sample(mix.score_fn(sde), sde, (64, 2), sampler=sampler, generator=g2, **opts)
    assert torch.equal(res.x, again.x)


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------
def test_unknown_names_list_the_valid_ones():
    mix, sde = mixture_2d(), VPSDE(N=30)
    with pytest.raises(ValueError, match="valid: euler_maruyama, pc, ode, ddpm, ddim, dpm_solver_2"):
        sample(mix.score_fn(sde), sde, (4, 2), sampler="heun_sde")
    with pytest.raises(ValueError, match="unknown predictor 'foo'.*ancestral"):
        sample(mix.score_fn(sde), sde, (4, 2), sampler="pc", predictor="foo")
    with pytest.raises(ValueError, match="unknown corrector 'bar'.*langevin"):
        sample(mix.score_fn(sde), sde, (4, 2), sampler="pc", corrector="bar")
    with pytest.raises(ValueError, match="unknown ODE method .rk99.*dopri5"):
        sample(mix.score_fn(sde), sde, (4, 2), sampler="ode", method="rk99")
    assert set(PREDICTORS) == {"euler_maruyama", "reverse_diffusion", "ancestral", "none"}
    assert set(CORRECTORS) == {"langevin", "annealed_langevin", "none"}
    assert set(SAMPLERS) == {"euler_maruyama", "pc", "ode", "ddpm", "ddim", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m",
                             "dpmpp_3m", "dpmpp_2m_sde", "unipc", "heun_edm"}


def test_score_output_mismatch_is_a_clear_error():
    sde = VPSDE(N=30)
    with pytest.raises(ValueError, match="shaped like x"):
        sample(lambda x, t: x[:, :1], sde, (4, 2), sampler="euler_maruyama")
    with pytest.raises(ValueError, match="dtype"):
        sample(lambda x, t: x.double(), sde, (4, 2), sampler="euler_maruyama")
    with pytest.raises(ValueError, match="dtype"):
        sample(lambda x, t: x.double(), sde, (4, 2), sampler="ode")


@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 2.0, float("nan")])
def test_eps_outside_the_interval_is_an_error(eps):
    sde = VPSDE(N=30)
    with pytest.raises(ValueError, match="eps"):
        sample(lambda x, t: -x, sde, (4, 2), sampler="euler_maruyama", eps=eps)


def test_sampler_sde_mismatches_are_errors():
    with pytest.raises(ValueError, match="VPSDE or VESDE"):
        sample(lambda x, t: -x, SubVPSDE(N=30), (4, 2), sampler="pc", predictor="ancestral")
    with pytest.raises(ValueError, match="needs a VPSDE"):
        sample(lambda x, t: -x, VESDE(N=10), (4, 2), sampler="ddim", schedule="discrete")
    with pytest.raises(ValueError, match="eps=None"):
        sample(lambda x, t: -x, VPSDE(N=30), (4, 2), sampler="ddpm", eps=1e-3, schedule="discrete")
    with pytest.raises(ValueError, match="unknown schedule"):
        sample(lambda x, t: -x, VPSDE(N=30), (4, 2), sampler="ddim", schedule="chain")
    with pytest.raises(ValueError, match="x_T must be a tensor of shape"):
        sample(lambda x, t: -x, VPSDE(N=30), (4, 2), x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="non-finite"):
        sample(lambda x, t: -x, VPSDE(N=30), (2, 2), x_T=torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


def test_readme_example_samples_the_mixture(oracles):
    """The README's example (``sampler="pc"`` with its defaults on ``mixture_2d()``) passes the
    two-sample test; with the per-sample Langevin rule (the old default) it does not: that rule
    makes the step depend on the state, which is not a valid MCMC kernel (docs/sampling.md)."""
    mix, threshold = oracles["2d"]
    sde = VPSDE()
    truth = mix.sample(N_SAMPLES, generator=gen(8), dtype=torch.float32)
    res = sample(mix.score_fn(sde), sde, (N_SAMPLES, 2), sampler="pc", generator=gen(0))
    assert bool(res.ok.all()) and res.info["step_size_norm"] == "pilot"
    assert energy_distance(res.x, truth) <= threshold
    var_se = math.sqrt(2.0 / N_SAMPLES) * mix.covariance().diagonal()
    assert bool(((res.x.double().var(0) - mix.covariance().diagonal()).abs() < 4 * var_se).all())
    biased = sample(mix.score_fn(sde), sde, (N_SAMPLES, 2), sampler="pc", generator=gen(0),
                    step_size_norm="per_sample")
    assert energy_distance(biased.x, truth) > threshold


def test_pilot_step_size_depends_on_t_only():
    """The pilot rule's Langevin step is frozen before the run: the same pilot gives the same steps
    whatever the batch, so a sample's update does not use its batch mates' norms."""
    mix, sde = mixture_2d(), VESDE(N=40)
    steps_seen = {}
    from scoresde.sampling import pc as pc_module

    orig = pc_module.LangevinCorrector.step_size

    def spy(self, grad, noise, t_vec, alpha, key):
        h = orig(self, grad, noise, t_vec, alpha, key)
        if self.frozen is not None:
            steps_seen.setdefault(grad.shape[0], []).append(h.double())
        return h

    pc_module.LangevinCorrector.step_size = spy
    try:
        for n in (8, 64):
            sample(mix.score_fn(sde), sde, (n, 2), sampler="pc", generator=gen(n), steps=40)
    finally:
        pc_module.LangevinCorrector.step_size = orig
    a, b = steps_seen[8], steps_seen[64]
    assert len(a) == len(b) == 40
    for ha, hb in zip(a, b):
        assert float(ha.std()) == 0.0 and torch.allclose(ha[0], hb[0], rtol=1e-12, atol=0)
