"""score_sde_pytorch adapter (``scoresde.interop.score_sde_adapter``): the original code's conventions.

What is true here comes from outside the module under test:

* the original's conventions are restated in this file from the documentation of its
  ``models/utils.py`` ``get_score_fn`` and ``sde_lib.py`` (score_sde_pytorch, Song et al. 2021):
  the labels each case feeds the network and the std it divides by, written with plain torch in
  float64 (no helper of the adapter is called): :func:`original_labels`, :func:`original_score`;
* the exact scores of Gaussian-mixture oracles (:mod:`scoresde.targets`) under the SDE's or the
  discrete chain's marginals, for stand-in networks that output what a perfect network trained in
  the original's convention outputs.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde import DiscreteBeta, GaussianMixture, SubVPSDE, VESDE, VPSDE
from scoresde.interop import from_score_sde
from scoresde.interop.score_sde_adapter import ChainVPScoreModel
from scoresde.score import ScoreModel

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = [("vp", True), ("vp", False), ("subvp", True), ("ve", True), ("ve", False)]
# Parameters unlike the defaults, so a hard-coded 1000 or 0.1 / 20 / 50 would show.
VP_KW = dict(beta_min=0.05, beta_max=15.0, N=500)
VE_KW = dict(sigma_min=0.02, sigma_max=30.0, N=232)
# Times near 0 and T and between; t = 0 only where the original's std is finite there.
TIMES = [1e-5, 1e-3, 0.0371, 0.25, 0.5, 0.731, 0.999, 1.0 - 1e-6, 1.0]


def kwargs_of(name):
    return VE_KW if name == "ve" else VP_KW


def times_of(name, continuous, dtype=torch.float64):
    ts = list(TIMES) + ([0.0] if (name == "ve" or not continuous) else [])
    return torch.tensor(ts, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The original's conventions, restated from models/utils.py (get_score_fn) and sde_lib.py.
# ---------------------------------------------------------------------------------------------
def vp_log_mean(t, b0, b1):
    """sde_lib.VPSDE.marginal_prob: log m(t) = -t^2 (b1 - b0) / 4 - t b0 / 2."""
    return -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0


def original_labels(name, continuous, t, *, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0, N=1000):
    """What get_score_fn passes as ``labels``: VP/sub-VP continuous (and every sub-VP) ``999 t``;
    VP discrete ``t (N - 1)``; VE continuous the marginal std ``sigma_min (sigma_max/sigma_min)^t``;
    VE discrete ``round((T - t)(N - 1))`` as long (T = 1)."""
    if name == "ve":
        if continuous:
            return sigma_min * (sigma_max / sigma_min) ** t
        return torch.round((1.0 - t) * (N - 1)).long()
    if continuous or name == "subvp":
        return t * 999
    return t * (N - 1)


def original_std(name, continuous, t, labels, *, beta_min=0.1, beta_max=20.0, N=1000, **_):
    """The std get_score_fn divides by (VP family only): VP continuous ``sqrt(1 - m^2)``; sub-VP
    ``1 - m^2``; VP discrete ``sqrt(1 - alphas_cumprod)[labels.long()]`` of the chain with betas
    ``linspace(beta_min / N, beta_max / N, N)`` (sde_lib.VPSDE.sqrt_1m_alphas_cumprod)."""
    if name == "subvp":
        return 1.0 - torch.exp(2.0 * vp_log_mean(t, beta_min, beta_max))
    if continuous:
        return torch.sqrt(1.0 - torch.exp(2.0 * vp_log_mean(t, beta_min, beta_max)))
    betas = torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return torch.sqrt(1.0 - alphas_cumprod).to(t.dtype)[labels.long()]


def original_score(name, continuous, model, x, t, **params):
    """get_score_fn(sde, model, continuous)(x, t), restated: VE returns the output; VP/sub-VP
    return ``-out / std[:, None, None, None]``."""
    labels = original_labels(name, continuous, t, **params)
    out = model(x, labels)
    if name == "ve":
        return out
    return -out / original_std(name, continuous, t, labels, **params)[:, None, None, None]


# ---------------------------------------------------------------------------------------------
# Stand-in networks
# ---------------------------------------------------------------------------------------------
class Recorder(nn.Module):
    """Records the labels it is called with; returns a fixed linear map of ``x`` plus a function of
    the labels (so a wrong label or a wrong scaling shows in the output too)."""

    def __init__(self, channels=2, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, dtype=dtype)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g, dtype=dtype) * 0.3)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g, dtype=dtype) * 0.1)
        self.calls = []

    def forward(self, x, labels):
        self.calls.append(labels.detach().clone())
        lab = labels.to(x.dtype)
        return self.conv(x) + torch.sin(0.01 * lab)[:, None, None, None] + 1e-3 * lab[:, None, None, None]


def images(n, dtype=torch.float64, seed=1):
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 1. The labels the network is called with
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,continuous", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_model_sees_the_original_labels(name, continuous, dtype):
    kw = kwargs_of(name)
    net = Recorder(dtype=dtype)
    score_model, _ = from_score_sde(net, name, continuous=continuous, **kw)
    t = times_of(name, continuous, dtype)
    score_model(images(len(t), dtype), t)
    (labels,) = net.calls
    expected = original_labels(name, continuous, t.double(), **kw)
    if name == "ve" and not continuous:
        assert labels.dtype == torch.long
        assert torch.equal(labels, expected)
        assert labels[t == 0.0].item() == kw["N"] - 1 and labels[t == 1.0].item() == 0  # t = 0: sigma_min's index
    else:
        assert labels.dtype == dtype
        torch.testing.assert_close(labels.double(), expected, rtol=4 * torch.finfo(dtype).eps, atol=0.0)


def test_vp_discrete_labels_are_floats_on_the_chain_grid():
    """VP discrete: the label is t (N - 1), fractional between grid points (the network's embedding
    takes floats); with N = 1000 it is the continuous models' 999 t."""
    net = Recorder()
    score_model, _ = from_score_sde(net, "vp", continuous=False, N=1000)
    t = torch.tensor([0.0, 0.5e-3, 0.25, 1.0], dtype=torch.float64)
    score_model(images(4), t)
    torch.testing.assert_close(net.calls[0], 999.0 * t, rtol=1e-15, atol=0.0)
    assert net.calls[0][1] != torch.floor(net.calls[0][1])


# ---------------------------------------------------------------------------------------------
# 2. The score equals the original's get_score_fn, restated
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,continuous", CASES)
@pytest.mark.parametrize("params", ["defaults", "other"])
def test_score_equals_the_original_get_score_fn(name, continuous, params):
    kw = kwargs_of(name) if params == "other" else {}
    net = Recorder()
    score_model, sde = from_score_sde(net, name, continuous=continuous, **kw)
    t = times_of(name, continuous)
    x = images(len(t))
    got = score_model(x, t)
    want = original_score(name, continuous, net, x, t, **kw)
    # The restated VP std sqrt(1 - exp(2 log m)) cancels at small t: relative error ~ eps / s(t)^2
    # (float64: 2e-16 / 1e-6 at t = 1e-5), which ours (expm1) avoids; the tolerance allows for it.
    s2 = 1.0 - torch.exp(2.0 * vp_log_mean(t, kw.get("beta_min", 0.1), kw.get("beta_max", 20.0)))
    rtol = 1e-12 + (8 * torch.finfo(torch.float64).eps / s2 if name != "ve" else 0.0)
    err = ((got - want).abs() / want.abs()).flatten(1).amax(1)
    assert bool((err <= rtol).all()), (err, rtol)


@pytest.mark.parametrize("name,continuous", CASES)
def test_float32_score_equals_the_original_in_float64(name, continuous):
    """A float32 model: our float32 score against the restatement in float64 (same weights, the
    float32 times); the original's own float32 arithmetic is less accurate at small t (next test)."""
    kw = kwargs_of(name)
    net32 = Recorder(dtype=torch.float32)
    net64 = Recorder(dtype=torch.float64)
    net64.load_state_dict({k: v.double() for k, v in net32.state_dict().items()})
    score_model, _ = from_score_sde(net32, name, continuous=continuous, **kw)
    t = times_of(name, continuous, torch.float32)
    x = images(len(t), torch.float32)
    got = score_model(x, t)
    want = original_score(name, continuous, net64, x.double(), t.double(), **kw)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6 * want.abs().max().item())


def test_the_original_float32_vp_std_cancels_at_small_t():
    """What differs from the original at the likelihood's eps = 1e-5: in float32 its
    sqrt(1 - exp(2 log m)) loses most digits (exp(-1e-6) is 1 - 1e-6 to within float32's 6e-8), while
    our s(t) (expm1) is accurate to float32 rounding (DESIGN: numerical conventions)."""
    t = torch.tensor([1e-5])
    true = torch.sqrt(-torch.expm1(2.0 * vp_log_mean(t.double(), 0.1, 20.0)))
    original32 = torch.sqrt(1.0 - torch.exp(2.0 * vp_log_mean(t, 0.1, 20.0))).double()
    _, sde = from_score_sde(Recorder(), "vp")
    ours32 = sde.marginal_std(t).double()
    assert abs(float(ours32 / true) - 1) < 1e-6
    assert abs(float(original32 / true) - 1) > 1e-3


def test_returned_sdes_and_score_models():
    for (name, continuous), (cls, param, ti) in zip(CASES, [
            (VPSDE, "eps", "scaled_t"), (VPSDE, "eps", "scaled_t"), (SubVPSDE, "eps", "scaled_t"),
            (VESDE, "score", "sigma"), (VESDE, "score", "reversed_index")]):
        kw = kwargs_of(name)
        score_model, sde = from_score_sde(Recorder(), name, continuous=continuous, **kw)
        assert type(sde) is cls and sde.N == kw["N"] and score_model.sde is sde
        assert isinstance(score_model, ScoreModel)
        assert (score_model.parameterization, score_model.time_input) == (param, ti)
        assert isinstance(score_model, ChainVPScoreModel) == (name == "vp" and not continuous)
        if name == "ve":
            assert (sde.sigma_min, sde.sigma_max) == (kw["sigma_min"], kw["sigma_max"])
        else:
            assert (sde.beta_min, sde.beta_max) == (kw["beta_min"], kw["beta_max"])


def test_vp_discrete_std_is_the_chain_step_not_s_t():
    """The chain's first std is sqrt(beta_0) = sqrt(beta_min / N) = 0.01 (defaults), where the
    SDE's s(0) = 0; the std is constant on [k/(N-1), (k+1)/(N-1)). Our eps() and denoise() use the
    same (m, s) = (sqrt(abar_k), sqrt(1 - abar_k)), so x = m x0_hat + s eps_hat holds exactly."""
    net = Recorder()
    score_model, sde = from_score_sde(net, "vp", continuous=False)
    x = images(3)
    t = torch.tensor([0.0, 0.5 / 999, 0.999 / 999], dtype=torch.float64)
    out = net(x, t * 999)
    score = score_model(x, t)
    std = (-out / score).flatten(1)
    torch.testing.assert_close(std, torch.full_like(std, 0.01), rtol=1e-12, atol=0.0)
    assert float(sde.marginal_std(torch.tensor([0.0]))) == 0.0
    t = torch.tensor([1e-3, 0.3, 0.9], dtype=torch.float64)
    x0_hat, eps_hat = score_model.denoise(x, t), score_model.eps(x, t)
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[torch.floor(t * 999).long()]
    recon = abar.sqrt()[:, None, None, None] * x0_hat + (1 - abar).sqrt()[:, None, None, None] * eps_hat
    torch.testing.assert_close(recon, x, rtol=1e-12, atol=1e-12)
    # the gaps the ChainVPScoreModel docstring states, on a fine grid
    t = torch.linspace(1e-3, 1.0, 200_001, dtype=torch.float64)
    ratio = sde.marginal_std(t) / score_model._broadcast_coeffs(t, 1)[1]
    assert abs(float(ratio[0]) - 1.0486) < 1e-3
    for start, gap in ((0.01, 0.05), (0.1, 0.005), (0.5, 0.0005)):
        assert float((ratio[t >= start] - 1).abs().max()) < gap


def test_vp_discrete_matches_the_original_float32_tables_to_their_rounding():
    """The original builds its chain in float32 (torch.linspace, cumprod); ours is float64 rounded
    once. Each of its k + 1 factors 1 - beta_j and products rounds by up to 2^-24 relative, so its
    1 - abar_k is off by up to ~(k + 1) 2^-23 abar_k absolute, and its std by half that relative to
    1 - abar_k: 3e-4 at k = 0 (where 1 - abar_0 = beta_0 = 1e-4), ~1e-6 from k ~ 100 on (plus the
    rounding of its final 1 - abar and sqrt, 2^-23). This bounds
    what 'equal to the original' means for VP discrete in float32."""
    betas32 = torch.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    std32 = torch.sqrt(1.0 - torch.cumprod(1.0 - betas32, dim=0)).double()
    score_model, _ = from_score_sde(Recorder(), "vp", continuous=False)
    k = torch.arange(1000, dtype=torch.float64)
    ours = score_model._broadcast_coeffs((k + 0.5) / 999, 1)[1]  # mid-cell: floor(t (N - 1)) = k
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    bound = (k + 1) * 2.0 ** -23 * abar / (2 * (1 - abar)) + 2.0 ** -23  # + the final 1 - x and sqrt
    rel = (ours / std32 - 1).abs()
    assert bool((rel <= bound).all()), (rel / bound).max()
    assert rel[0] > 1e-5  # the difference is real, not zero by accident


def test_vp_discrete_index_floors_the_label_as_the_original():
    """labels.long() floors t (N - 1): at a grid time k / (N - 1) the float product may land just below
    k and take index k - 1, in the original and here alike (same float32 label, same floor)."""
    score_model, _ = from_score_sde(Recorder(dtype=torch.float32), "vp", continuous=False)
    k = torch.arange(1000, dtype=torch.float32)
    t = k / 999
    torch.testing.assert_close(score_model.chain_index(t), (t * 999).long(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# 3. Truth: perfect networks in the original's convention give the oracle's exact score
# ---------------------------------------------------------------------------------------------
ORACLE = GaussianMixture([0.3, 0.7], [[0.5, -0.3, 0.2, 0.0] * 8, [-0.4, 0.1, 0.0, 0.6] * 8], [0.2, 0.35])


class PerfectContinuous(nn.Module):
    """What a perfect original-convention network outputs: it reads t back from its labels
    (``t = labels / 999``, or ``log(sigma / sigma_min) / log(sigma_max / sigma_min)`` for VE) and returns
    the exact noise prediction ``-s(t) score`` (VP family) or the exact score (VE) of the oracle."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, labels):
        if isinstance(self.sde, VESDE):
            t = torch.log(labels / self.sde.sigma_min) / math.log(self.sde.sigma_max / self.sde.sigma_min)
            return ORACLE.score(x, t, self.sde)
        t = labels / 999.0
        return -self.sde.marginal_std(t)[:, None, None, None] * ORACLE.score(x, t, self.sde)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_perfect_continuous_network_gives_the_exact_score(name):
    kw = kwargs_of(name)
    _, sde = from_score_sde(Recorder(), name, **kw)
    score_model, _ = from_score_sde(PerfectContinuous(sde), name, **kw)
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    x = images(len(t), seed=3) * 0.5
    torch.testing.assert_close(score_model(x, t), ORACLE.score(x, t, sde), rtol=1e-9, atol=1e-9)


def test_perfect_discrete_vp_network_gives_the_chain_marginal_score():
    """A perfect DDPM network at label t (N - 1) predicts the noise of the chain's marginal after step
    k = floor(label): N(sqrt(abar_k) x0, (1 - abar_k) I). That marginal is our DiscreteBeta VP SDE's at
    t_k = (k + 1) / N, so the adapted score must be the oracle's score there."""
    N = VP_KW["N"]
    betas = torch.linspace(VP_KW["beta_min"] / N, VP_KW["beta_max"] / N, N, dtype=torch.float64)
    chain = VPSDE(schedule=DiscreteBeta(betas), N=N)

    class PerfectDDPM(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, labels):
            tk = (torch.floor(labels) + 1) / N
            return -chain.marginal_std(tk)[:, None, None, None] * ORACLE.score(x, tk, chain)

    score_model, _ = from_score_sde(PerfectDDPM(), "vp", continuous=False, **VP_KW)
    t = torch.tensor([0.0, 1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    x = images(len(t), seed=4) * 0.5
    tk = (torch.floor(t * (N - 1)) + 1) / N
    torch.testing.assert_close(score_model(x, t), ORACLE.score(x, tk, chain), rtol=1e-9, atol=1e-9)


def test_perfect_discrete_ve_network_gives_the_exact_score_at_its_level():
    """A perfect NCSN network at index i returns the exact score of the data convolved with
    N(0, sigma_i^2), sigma_i = sigma_max (sigma_min / sigma_max)^(i / (N - 1)) (the descending table
    of get_sigmas): the VE marginal at t_i = 1 - i / (N - 1). On the grid t = j / (N - 1) the adapted
    score is the exact score at t; between grid points, at the nearest level."""
    N, lo, hi = VE_KW["N"], VE_KW["sigma_min"], VE_KW["sigma_max"]
    sde = VESDE(lo, hi, N)

    class PerfectNCSN(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, labels):
            assert labels.dtype == torch.long
            sigma = hi * (lo / hi) ** (labels.double() / (N - 1))
            t_level = torch.log(sigma / lo) / math.log(hi / lo)
            return ORACLE.score(x, t_level, sde)

    score_model, _ = from_score_sde(PerfectNCSN(), "ve", continuous=False, **VE_KW)
    j = torch.tensor([0, 1, 57, 115, 230, 231], dtype=torch.float64)
    t = j / (N - 1)
    x = images(len(t), seed=5)
    torch.testing.assert_close(score_model(x, t), ORACLE.score(x, t, sde), rtol=1e-9, atol=1e-9)
    t_off = torch.tensor([0.3 / (N - 1), 0.49, 0.7 / (N - 1) + 0.5], dtype=torch.float64)
    nearest = 1.0 - torch.round((1.0 - t_off) * (N - 1)) / (N - 1)
    x = images(3, seed=6)
    torch.testing.assert_close(score_model(x, t_off), ORACLE.score(x, nearest, sde), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# 4. Errors
# ---------------------------------------------------------------------------------------------
def test_config_spellings_are_accepted():
    for alias, cls in [("VPSDE", VPSDE), ("subvpsde", SubVPSDE), ("VE", VESDE)]:
        assert type(from_score_sde(Recorder(), alias)[1]) is cls


@pytest.mark.parametrize("bad", ["vpx", "", "edm", None, 3])
def test_unknown_sde_name(bad):
    with pytest.raises(ValueError, match="unknown sde_name"):
        from_score_sde(Recorder(), bad)


def test_subvp_discrete_is_refused():
    with pytest.raises(ValueError, match="sub-VP models are continuous"):
        from_score_sde(Recorder(), "subvp", continuous=False)


@pytest.mark.parametrize("name,kw,match", [
    ("vp", dict(sigma_max=348.0), "sigma_max is a parameter of the VE SDE"),
    ("subvp", dict(sigma_min=0.002, sigma_max=80.0), "sigma_min, sigma_max are parameters of the VE SDE"),
    ("ve", dict(beta_max=10.0), "beta_max is a parameter of the VP SDE"),
    ("vp", dict(beta_min=5.0, beta_max=1.0), "beta_min < beta_max"),
    ("ve", dict(sigma_min=50.0, sigma_max=1.0), "sigma_min < sigma_max"),
    ("vp", dict(beta_min=-0.1), "beta_min must be a finite number"),
    ("ve", dict(sigma_max=math.inf), "sigma_max must be a finite number"),
    ("vp", dict(N=10), "N > beta_max"),
    ("ve", dict(N=0), "N"),
])
def test_wrong_parameters(name, kw, match):
    with pytest.raises(ValueError, match=match):
        from_score_sde(Recorder(), name, **kw)


def test_discrete_needs_two_steps():
    with pytest.raises(ValueError, match="N >= 2"):
        from_score_sde(Recorder(), "ve", continuous=False, N=1)
    from_score_sde(Recorder(), "ve", continuous=True, N=1)  # continuous: N is only the SDE's step count


def test_the_wrapper_starts_in_the_model_mode():
    net = Recorder().eval()
    score_model, _ = from_score_sde(net, "vp")
    assert not score_model.training and not net.training
    score_model.train()
    assert net.training
    assert from_score_sde(Recorder().train(), "ve")[0].training


def test_type_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        from_score_sde(lambda x, labels: x, "vp")
    with pytest.raises(TypeError, match="continuous must be True or False"):
        from_score_sde(Recorder(), "vp", continuous=0)
