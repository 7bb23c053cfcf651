"""``scoresde.interop.from_diffusers``: a tiny randomly initialised diffusers ``UNet2DModel`` (no
download) with its scheduler, checked against diffusers itself.

Truths, each independent of our code:

1. our ``sample(..., sampler="ddpm", schedule="discrete")`` = diffusers' ``DDPMScheduler`` loop
   (``unet(x, t).sample`` then ``step``) from the same ``x_T`` and the same per-step noise: diffusers'
   CPU noise is ``torch.randn(shape, generator=g)``, one draw per step with ``t > 0``, as ours, so one
   seeded generator on each side gives the same draws (the approach of ``tests/test_crosscheck.py``).
   Full chain and respaced; ``variance_type="fixed_small"`` is our ``variance="posterior"``,
   ``"fixed_large"`` our ``"beta"``.
2. DDIM ``eta`` 0 and 1 = ``DDIMScheduler``. Settings that match ours: ``timestep_spacing="linspace"``
   with ``steps_offset=0`` (our respacing ``ddim_timesteps``; "leading" and "trailing" are other
   grids, see ``test_only_linspace_spacing_is_our_respacing``), ``set_alpha_to_one=True`` (our chain
   ends in the data prediction, alpha_bar = 1), ``clip_sample=False`` (we never clip x0_hat). diffusers'
   ``DDIMScheduler.step`` strides by ``N // num_inference_steps``, not to its next linspace timestep, so
   the test sets ``num_inference_steps = K - 1`` after ``set_timesteps(K)`` (exact where ``K - 1``
   divides ``N - 1``; the same fix as the cross-check). diffusers' tables are float32; the sampling
   comparisons hand it the float64 ``alphas_cumprod`` of the same betas, computed here.
3. our score at the grid times = ``-eps/sqrt(1 - alpha_bar_i)`` from the unet and the scheduler's
   ``alphas_cumprod`` directly, for epsilon, v_prediction and sample schedulers.
4. ``sde="continuous"`` for the linear schedule is ``VPSDE(0.1, 20)`` with the scheduler's betas, and
   its O(1/N) gap to the chain is what the docstring says; cosine and scaled-linear schedulers work.
5. ``log_likelihood`` (exact trace) and every sampler run on the adapted model.
6. the refusals.

The float64 unet: diffusers runs ``UNet2DModel`` in float64, except the sinusoidal time embedding,
which it computes in float32 (so integer timesteps are exact and both sides see the same embedding).
"""
from __future__ import annotations

import math
import types

import pytest
import torch

# diffusers is a test requirement (CI installs the extra, see .ci/run): a missing one fails, never skips.
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, ScoreSdeVeScheduler, UNet2DModel

from scoresde import VPSDE
from scoresde.interop import from_diffusers
from scoresde.likelihood import log_likelihood
from scoresde.sampling import SAMPLERS, sample
from scoresde.sampling.chains import ddim_timesteps

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    # diffusers 0.42 with numpy 2 warns in set_timesteps (np.array of a tensor); not ours to fix
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

F64 = torch.float64
N = 100  # a short chain: the 1000-step 1e-4..0.02 schedule stretched to 100 steps (the same beta(t))
CHAIN = dict(num_train_timesteps=N, beta_start=1e-3, beta_end=0.2, beta_schedule="linear", clip_sample=False,
             timestep_spacing="linspace")
SHAPE = (2, 1, 8, 8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close(a, b, tol, what):
    err = float((a - b).detach().abs().max())
    assert err <= tol * max(1.0, float(b.abs().max())), f"{what}: max |difference| {err:.3e} > {tol:g}"


def tiny_unet(channels: int = 1, size: int = 8, out_channels=None, **kw) -> UNet2DModel:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=out_channels or channels,
                       block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, add_attention=False,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       **kw)
    return unet.to(F64).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def abar64(betas_cfg: dict = CHAIN) -> torch.Tensor:
    """The chain's alpha_bar in float64, from the config (Ho et al. 2020: cumulative product of 1 - beta)."""
    betas = torch.linspace(betas_cfg["beta_start"], betas_cfg["beta_end"], betas_cfg["num_train_timesteps"], dtype=F64)
    return torch.cumprod(1.0 - betas, 0)


def x_T(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


# ---------------------------------------------------------------------------------------------
# 1-2. Our chains = diffusers' scheduler loops, same noise.
# ---------------------------------------------------------------------------------------------
def diffusers_loop(unet, d, x, seed, **step_kw):
    """diffusers' pipeline loop: ``unet(x, t).sample`` at its integer timesteps, then ``step``."""
    g = gen(seed)
    d.alphas_cumprod = abar64()  # the same table in float64 (diffusers keeps float32 tables)
    with torch.no_grad():
        for t in d.timesteps:
            x = d.step(unet(x, t).sample, t, x, generator=g, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("K,variance,variance_type,prediction", [
    (N, "posterior", "fixed_small", "epsilon"),       # the full chain
    (10, "posterior", "fixed_small", "v_prediction"),  # respaced: 99, 88, ..., 0
    (10, "beta", "fixed_large", "sample"),
])
def test_ddpm_equals_diffusers_ddpm_scheduler(unet, K, variance, variance_type, prediction):
    d = DDPMScheduler(**CHAIN, variance_type=variance_type, prediction_type=prediction)
    model, sde = from_diffusers(unet, d)
    d.set_timesteps(K)
    assert d.timesteps.tolist() == ddim_timesteps(N - 1, K)
    x0 = x_T()
    ref = diffusers_loop(unet, d, x0.clone(), seed=3)
    ours = sample(model, sde, SHAPE, sampler="ddpm", schedule="discrete", steps=K, x_T=x0, generator=gen(3),
                  variance=variance)
    assert ours.status.eq(0).all() and ours.info["indices"] == d.timesteps.tolist()
    assert_close(ours.x, ref, 1e-11, f"ddpm {variance_type} {prediction} K={K}")


@pytest.mark.parametrize("K,eta,prediction", [(10, 0.0, "epsilon"), (10, 1.0, "epsilon"),
                                              (12, 0.0, "v_prediction"), (12, 1.0, "sample")])
def test_ddim_equals_diffusers_ddim_scheduler(unet, K, eta, prediction):
    d = DDIMScheduler(**CHAIN, set_alpha_to_one=True, steps_offset=0, prediction_type=prediction)
    model, sde = from_diffusers(unet, d)
    d.set_timesteps(K)
    assert d.timesteps.tolist() == ddim_timesteps(N - 1, K)
    assert (N - 1) % (K - 1) == 0 and N // (K - 1) == (N - 1) // (K - 1)
    d.num_inference_steps = K - 1  # step() strides by N // num_inference_steps: make it the linspace gap
    x0 = x_T()
    ref = diffusers_loop(unet, d, x0.clone(), seed=3, eta=eta)
    ours = sample(model, sde, SHAPE, sampler="ddim", schedule="discrete", steps=K, x_T=x0, generator=gen(3), eta=eta)
    assert ours.status.eq(0).all()
    assert_close(ours.x, ref, 1e-11, f"ddim eta={eta} {prediction} K={K}")


def test_only_linspace_spacing_is_our_respacing():
    """Of diffusers' timestep spacings only "linspace" (steps_offset 0) is ours: "leading" is
    ``(N // K) j + steps_offset`` (never the last step N - 1), "trailing" ends at ``N / K - 1``, not 0."""
    K = 10
    ours = ddim_timesteps(N - 1, K)
    got = {}
    for spacing in ("linspace", "leading", "trailing"):
        d = DDIMScheduler(**dict(CHAIN, timestep_spacing=spacing))
        d.set_timesteps(K)
        got[spacing] = d.timesteps.tolist()
    assert got["linspace"] == ours and ours[0] == N - 1 and ours[-1] == 0
    assert got["leading"][0] < N - 1 and got["trailing"][-1] > 0, got


# ---------------------------------------------------------------------------------------------
# 3. The score at the grid times.
# ---------------------------------------------------------------------------------------------
def reference_eps(out, x, abar, prediction):
    """eps from the unet's output (diffusers' DDIMScheduler.step, "pred_epsilon")."""
    if prediction == "epsilon":
        return out
    if prediction == "v_prediction":
        return math.sqrt(abar) * out + math.sqrt(1.0 - abar) * x
    return (x - math.sqrt(abar) * out) / math.sqrt(1.0 - abar)  # sample


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_score_at_grid_times_is_minus_eps_over_sigma(unet, prediction):
    d = DDPMScheduler(**CHAIN, prediction_type=prediction)
    model, sde = from_diffusers(unet, d)
    assert model.parameterization == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    x = x_T(1)
    a64 = abar64()
    a32 = d.alphas_cumprod.double()  # diffusers' own float32 table
    u = 2.0 ** -24
    with torch.no_grad():
        for i in (0, 1, 37, N - 1):
            out = unet(x, torch.full((SHAPE[0],), i)).sample  # diffusers' call: an integer timestep
            ours = model(x, torch.full((SHAPE[0],), (i + 1) / N, dtype=F64))
            ref = -reference_eps(out, x, float(a64[i]), prediction) / math.sqrt(1.0 - float(a64[i]))
            assert_close(ours, ref, 1e-11, f"{prediction} i={i} (float64 alpha_bar)")
            # against the float32 table as shipped: a cumulative product of i + 1 rounded factors (each
            # 1 - beta rounded, then the product) has a relative error <= 3 (i + 1) u; the tolerance is how
            # far the reference moves when alpha_bar moves by that much
            a, rel = float(a32[i]), 3 * (i + 1) * u

            def ref_at(abar):
                return -reference_eps(out, x, abar, prediction) / math.sqrt(1.0 - abar)

            ref32 = ref_at(a)
            tol = torch.maximum((ref_at(a * (1 + rel)) - ref32).abs(), (ref_at(a * (1 - rel)) - ref32).abs())
            assert bool(((ours - ref32).abs() <= tol + 1e-12).all()), (prediction, i)


def test_the_network_sees_a_float_timestep(unet):
    """Between grid times the index is fractional and reaches the unet unrounded (a Python float
    timestep would be truncated by ``UNet2DModel.forward``; shown here as a fact of diffusers)."""
    model, _ = from_diffusers(unet, DDPMScheduler(**CHAIN))
    x = x_T(2)
    with torch.no_grad():
        frac = unet(x, torch.full((SHAPE[0],), 41.5, dtype=F64)).sample
        assert_close(model.net_output(x, 42.5 / N), frac, 1e-12, "index 41.5")
        assert float((frac - unet(x, torch.full((SHAPE[0],), 41)).sample).abs().max()) > 1e-6
        assert torch.equal(unet(x, 41.7).sample, unet(x, 41).sample)  # diffusers truncates a Python float


# ---------------------------------------------------------------------------------------------
# 4. The SDE: continuous for the linear schedule, discrete for the others.
# ---------------------------------------------------------------------------------------------
def test_continuous_linear_schedule_is_vpsde_0_1_20(unet):
    d = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    model, sde = from_diffusers(unet, d, sde="continuous")
    assert isinstance(sde, VPSDE) and sde.N == 1000
    assert math.isclose(sde.beta_min, 0.1, rel_tol=1e-12) and math.isclose(sde.beta_max, 20.0, rel_tol=1e-12)
    betas = sde.ddpm_schedule().betas
    assert torch.equal(betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    # diffusers' float32 linspace: within a few float32 ulps (2^-24 relative each) of the exact values
    assert torch.allclose(betas, d.betas.double(), rtol=4 * 2.0 ** -24, atol=0)
    assert model.time_input == "index"
    # the O(1/N) gap of the docstring: s(t)^2 = 1 - exp(-(0.1 t + 9.95 t^2)) (Song et al. 2021, eq. 33)
    t0 = torch.tensor([1e-3], dtype=F64)
    s2 = float(sde.marginal_prob(torch.zeros(1, 1, dtype=F64), t0)[1][0] ** 2)
    assert math.isclose(s2, -math.expm1(-(0.1e-3 + 9.95e-6)), rel_tol=1e-12)
    assert math.isclose(s2 / 1e-4, 1.0994, rel_tol=1e-4)  # 1 - alpha_bar_0 = beta_0 = 1e-4
    _, disc = from_diffusers(unet, d)  # the default: the chain's own marginals at the grid times
    t = torch.arange(1, 1001, dtype=F64) / 1000
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    m, s = disc.coeffs_unchecked(t)
    assert torch.allclose(m * m, abar, rtol=1e-12, atol=0) and torch.allclose(s * s, 1.0 - abar, rtol=1e-11, atol=0)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "scaled_linear"])
def test_other_schedules_use_the_chain_itself(unet, schedule):
    d = DDPMScheduler(num_train_timesteps=N, beta_start=1e-3, beta_end=0.2, beta_schedule=schedule, clip_sample=False)
    model, sde = from_diffusers(unet, d)
    assert torch.allclose(sde.ddpm_schedule().betas, d.betas.double(), rtol=1e-6, atol=1e-9)
    t = torch.arange(1, N + 1, dtype=F64) / N
    m, s = sde.coeffs_unchecked(t)
    assert torch.allclose(m * m, d.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)  # diffusers' float32 table
    res = sample(model, sde, SHAPE, sampler="ddim", schedule="discrete", steps=5, generator=gen(0), dtype=F64)
    assert res.status.eq(0).all() and torch.isfinite(res.x).all()
    with pytest.raises(ValueError, match="linear"):
        from_diffusers(unet, d, sde="continuous")


# ---------------------------------------------------------------------------------------------
# 5. The likelihood and every sampler run on it.
# ---------------------------------------------------------------------------------------------
def test_log_likelihood_exact_trace_runs():
    small = tiny_unet(size=4)  # D = 16: the exact trace takes 16 VJPs per evaluation
    model, sde = from_diffusers(small, DDPMScheduler(**CHAIN))
    x = torch.rand(2, 1, 4, 4, generator=gen(4), dtype=F64) * 2 - 1
    res = log_likelihood(model, sde, x, trace="exact", rtol=1e-2, atol=1e-2, eps=1e-3)
    assert res.status.eq(0).all() and torch.isfinite(res.logp).all(), res
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs(unet, name):
    model, sde = from_diffusers(unet, DDIMScheduler(**CHAIN))
    kw = dict(method="heun", nfe=6) if name == "ode" else dict(nfe=6)
    res = sample(model, sde, SHAPE, sampler=name, generator=gen(0), dtype=F64, **kw)
    assert res.status.eq(0).all() and torch.isfinite(res.x).all() and res.x.shape == SHAPE, name


# ---------------------------------------------------------------------------------------------
# Other networks and schedulers, modes.
# ---------------------------------------------------------------------------------------------
class Recorder(torch.nn.Module):
    """A stand-in network: records the timestep it was called with; output ``k x`` in the chosen form."""

    def __init__(self, form="tensor", channels_out=1):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))
        self.form, self.channels_out, self.seen = form, channels_out, []

    def forward(self, x, timestep):
        self.seen.append(timestep)
        out = self.k * x.repeat(1, self.channels_out, 1, 1)
        if self.channels_out > 1:
            out[:, 1:] = 1e3  # the variance part, which must be dropped
        return {"tensor": out, "tuple": (out,), "sample": types.SimpleNamespace(sample=out)}[self.form]


@pytest.mark.parametrize("form", ["tensor", "tuple", "sample"])
def test_any_module_with_the_unet_call(form):
    net = Recorder(form)
    model, sde = from_diffusers(net, DDPMScheduler(**CHAIN))
    x = x_T(5)
    score = model(x, 0.3)
    a = float(abar64()[29])  # t = 0.3 is step i = 29
    assert_close(score, -0.5 * x / math.sqrt(1.0 - a), 1e-12, form)
    t = net.seen[-1]
    assert t.dtype == F64 and t.shape == (SHAPE[0],) and torch.allclose(t, torch.full_like(t, 29.0))


def test_learned_variance_output_is_split():
    net = Recorder(channels_out=2)
    model, _ = from_diffusers(net, DDPMScheduler(**CHAIN, variance_type="learned_range"))
    x = x_T(6)
    assert_close(model.eps(x, 0.5), 0.5 * x, 1e-12, "first C channels")
    with pytest.raises(ValueError, match="shaped like x"):  # without the learned variance type: 2C channels refused
        from_diffusers(net, DDPMScheduler(**CHAIN))[0](x, 0.5)


def test_scheduler_given_by_its_tables_only(unet):
    d = DDPMScheduler(**CHAIN)
    _, ref = from_diffusers(unet, d)
    bare = types.SimpleNamespace(alphas_cumprod=abar64())
    model, sde = from_diffusers(unet, bare)
    assert model.parameterization == "eps"
    assert torch.allclose(sde.ddpm_schedule().betas, ref.ddpm_schedule().betas, rtol=1e-12, atol=0)


def test_mode_follows_the_unet():
    unet = tiny_unet()
    model, _ = from_diffusers(unet, DDPMScheduler(**CHAIN))
    assert not model.training and not unet.training
    unet.train()
    model, _ = from_diffusers(unet, DDPMScheduler(**CHAIN))
    assert model.training and unet.training


# ---------------------------------------------------------------------------------------------
# 6. Refusals.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,kw,error,match", [
    (lambda: DDPMScheduler(**CHAIN), dict(sde="exact"), ValueError, "sde must be one of"),
    (lambda: ScoreSdeVeScheduler(), {}, TypeError, "VP"),
    (lambda: DDPMScheduler(**CHAIN, prediction_type="flow_prediction"), {}, ValueError, "flow"),
    (lambda: DDPMScheduler(**CHAIN, prediction_type="velocity"), {}, ValueError, "unknown prediction_type"),
    (lambda: DDPMScheduler(**CHAIN, rescale_betas_zero_snr=True), {}, ValueError, "zero_snr"),
    (lambda: EulerDiscreteScheduler(**{k: v for k, v in CHAIN.items() if k != "clip_sample"},
                                    timestep_type="continuous"), {}, ValueError, "timestep_type"),
    (lambda: DDPMScheduler(**dict(CHAIN, beta_schedule="squaredcos_cap_v2")), dict(sde="continuous"),
     ValueError, "linear"),
    (lambda: DDPMScheduler(trained_betas=[1e-3, 2e-3], num_train_timesteps=5), {}, ValueError, "num_train_timesteps"),
])
def test_refusals(unet, make, kw, error, match):
    with pytest.raises(error, match=match):
        from_diffusers(unet, make(), **kw)


def test_refuses_changed_tables_and_conditional_unets(unet):
    d = DDPMScheduler(**CHAIN)
    d.betas = d.betas * 2
    with pytest.raises(ValueError, match="differ from what its config"):
        from_diffusers(unet, d)
    with pytest.raises(ValueError, match="class-conditional"):
        from_diffusers(tiny_unet(num_class_embeds=3), DDPMScheduler(**CHAIN))
    with pytest.raises(TypeError, match="unet must be"):
        from_diffusers(None, DDPMScheduler(**CHAIN))
