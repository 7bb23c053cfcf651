"""ScoreModel (``scoresde.score``): every parameterization turns the exact prediction of a
Gaussian-mixture oracle into the exact score, for VP, sub-VP and VE.

The "networks" here are oracles that return what a perfect network of each parameterization
would output. They are computed from the exact posterior of the mixture, independently of the
package: for ``x_t = m x_0 + s z`` and a component ``N(mu_k, diag(S_k))`` the posterior of ``x_0``
is Gaussian with mean ``mu_k + S_k m / (m^2 S_k + s^2) (x_t - m mu_k)`` (Bishop 2006, eq. 2.116), so

    E[x_0 | x_t] = sum_k r_k(x_t) (mu_k + S_k m (x_t - m mu_k) / (m^2 S_k + s^2)),
    E[z | x_t]   = (x_t - m E[x_0 | x_t]) / s,

with ``r_k`` the responsibilities. Tweedie's formula (Efron 2011) says the score is
``-E[z | x_t] / s``: the ScoreModel must reproduce ``GaussianMixture.score_fn`` (the exact score).
``v`` follows Salimans & Ho (2022): ``v = alpha eps - sigma x_0`` with ``alpha = m/r``,
``sigma = s/r``, ``r = sqrt(m^2 + s^2)`` (``r = 1`` for VP, where it is exactly their definition).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.nets import MLPScoreNet
from scoresde.score import ScoreModel
from scoresde.targets import mixture_2d

pytestmark = pytest.mark.usefixtures("single_thread")

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vp_cosine": lambda: VPSDE(schedule="cosine")}
PARAMS = ("eps", "score", "x0", "v")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def coeffs(sde, t):
    m, s = sde.coeffs_unchecked(t)
    return m[:, None], s[:, None]


def posterior_means(mix, sde, x, t):
    """E[x_0 | x_t] and E[z | x_t] from the Gaussian posterior of each component (module docstring)."""
    m, s = coeffs(sde, t)
    r = mix.responsibilities(x, t, sde)  # (B, K)
    mu = mix.means.to(x.dtype)  # (K, D)
    S = mix.variances.to(x.dtype)  # (K, D)
    gain = S[None] * m[:, :, None] / (m[:, :, None] ** 2 * S[None] + s[:, :, None] ** 2)  # (B, K, D)
    comp = mu[None] + gain * (x[:, None, :] - m[:, :, None] * mu[None])
    x0 = (r[:, :, None] * comp).sum(1)
    return x0, (x - m * x0) / s


def network_output(kind, x0, ez, m, s):
    """What a perfect network of parameterization ``kind`` outputs, from the posterior means
    ``x0 = E[x_0 | x_t]`` and ``ez = E[z | x_t]`` (the table of scoresde/score.py, written out)."""
    if kind == "eps":
        return ez
    if kind == "score":
        return -ez / s
    if kind == "x0":
        return x0
    r = torch.sqrt(m * m + s * s)
    return (m * ez - s * x0) / r


class Oracle(nn.Module):
    """A perfect network for a parameterization, reading the time directly (``time_input="t"``)."""

    def __init__(self, mix, sde, kind):
        super().__init__()
        self.mix, self.sde, self.kind = mix, sde, kind

    def forward(self, x, t):
        x0, ez = posterior_means(self.mix, self.sde, x, t)
        m, s = coeffs(self.sde, t)
        return network_output(self.kind, x0, ez, m, s)


def noisy_batch(mix, sde, n, seed, lo=1e-3):
    g = gen(seed)
    x0 = mix.sample(n, generator=g, dtype=torch.float64)
    t = lo + (sde.T - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    z = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    m, s = coeffs(sde, t)
    return x0, z, t, m * x0 + s * z


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("param", PARAMS)
def test_oracle_prediction_gives_the_exact_score(sde_name, param):
    mix, sde = mixture_2d(), SDES[sde_name]()
    _, _, t, x = noisy_batch(mix, sde, 256, seed=1)
    model = ScoreModel(Oracle(mix, sde, param), sde, param, time_input="t")
    exact = mix.score_fn(sde)(x, t)
    got = model.score_fn(x, t)
    assert got.shape == x.shape
    scale = exact.abs().max()
    assert float((got - exact).abs().max()) < 1e-9 * float(scale) + 1e-9
    # eps and x0 helpers agree with the posterior means.
    x0_true, ez_true = posterior_means(mix, sde, x, t)
    assert torch.allclose(model.eps(x, t), ez_true, rtol=1e-8, atol=1e-8)
    assert torch.allclose(model.denoise(x, t), x0_true, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_target_is_the_definition(sde_name):
    sde = SDES[sde_name]()
    g = gen(2)
    x0, z = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = 1e-3 + torch.rand(64, generator=g, dtype=torch.float64) * (1 - 1e-3)
    net = MLPScoreNet(3, hidden=8, depth=1, emb_dim=8).double()
    if sde_name == "ve":
        sig = 0.01 * (50.0 / 0.01) ** t
        m, s = torch.ones_like(t), sig
    else:
        B = 0.1 * t + 9.95 * t * t  # Song et al. (2021), Appendix B
        m = torch.exp(-B / 2)
        s = torch.sqrt(-torch.expm1(-B)) if sde_name == "vp" else -torch.expm1(-B)
    m, s = m[:, None], s[:, None]
    assert torch.equal(ScoreModel(net, sde, "eps").target(x0, z, t), z)
    assert torch.allclose(ScoreModel(net, sde, "score").target(x0, z, t), -z / s, rtol=1e-12)
    assert torch.equal(ScoreModel(net, sde, "x0").target(x0, z, t), x0)
    v = ScoreModel(net, sde, "v").target(x0, z, t)
    if sde_name == "vp":  # Salimans & Ho: alpha = sqrt(abar) = m, sigma = sqrt(1 - abar) = s
        assert torch.allclose(v, m * z - s * x0, rtol=1e-12, atol=1e-12)
    else:
        r = torch.sqrt(m * m + s * s)
        assert torch.allclose(v, (m * z - s * x0) / r, rtol=1e-12, atol=1e-12)


@given(sde_name=st.sampled_from(["vp", "subvp", "ve"]), param=st.sampled_from(PARAMS),
       t=st.floats(1e-4, 1.0), seed=st.integers(0, 2**16))
def test_target_round_trips_and_the_prediction_is_affine(sde_name, param, t, seed):
    """A network that outputs the target at x_t = m x0 + s z yields eps = z, x0 = x0, score = -z/s;
    and for any output, eps_hat - z = eps_scale (out - target)."""
    sde = SDES[sde_name]()
    g = gen(seed)
    x0, z = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    tt = torch.full((4,), t, dtype=torch.float64)
    m, s = coeffs(sde, tt)
    xt = m * x0 + s * z
    holder = {}

    class Fixed(nn.Module):
        def forward(self, x, t_net):
            return holder["out"]

    model = ScoreModel(Fixed(), sde, param, time_input="t")
    holder["out"] = model.target(x0, z, tt)
    tol = dict(rtol=1e-9, atol=1e-9)
    assert torch.allclose(model.eps(xt, tt), z, **tol)
    assert torch.allclose(model.denoise(xt, tt) * m, x0 * m, **tol)
    assert torch.allclose(model.score(xt, tt) * s, -z, **tol)
    out = torch.randn(4, 2, generator=g, dtype=torch.float64)
    holder["out"] = out
    k = model.eps_scale(tt)[:, None]
    assert torch.allclose(model.eps(xt, tt) - z, k * (out - model.target(x0, z, tt)), **tol)


def test_net_time_conventions():
    """auto: 999 t / T for VP and sub-VP (Song et al.'s continuous DDPM models), log sigma(t) for VE."""
    t = torch.tensor([1e-3, 0.25, 0.5, 1.0], dtype=torch.float64)
    net = MLPScoreNet(2, hidden=8, depth=1, emb_dim=8)
    for sde in (VPSDE(), SubVPSDE()):
        model = ScoreModel(net, sde)
        assert model.time_input == "scaled_t"
        assert torch.allclose(model.net_time(t), 999.0 * t)
    cos = VPSDE(schedule="cosine")
    assert torch.allclose(ScoreModel(net, cos).net_time(t * cos.T), 999.0 * t)
    ve = ScoreModel(net, VESDE(sigma_min=0.01, sigma_max=50.0))
    assert ve.time_input == "log_sigma"
    assert torch.allclose(ve.net_time(t), math.log(0.01) + t * math.log(50.0 / 0.01))
    # log-SNR of VP: log(m^2 / s^2) = -log(e^B - 1).
    B = 0.1 * t + 9.95 * t * t
    assert torch.allclose(ScoreModel(net, VPSDE(), time_input="log_snr").net_time(t), -torch.log(torch.expm1(B)))
    assert torch.equal(ScoreModel(net, VPSDE(), time_input="t").net_time(t), t)
    assert torch.equal(ScoreModel(net, VPSDE(), time_input=lambda u: 2 * u).net_time(t), 2 * t)
    assert torch.allclose(ScoreModel(net, VPSDE(), time_scale=1000.0).net_time(t), 1000.0 * t)


def test_net_time_of_discrete_and_sigma_conventions():
    """The inputs of models trained elsewhere (docs/interop.md), from their definitions."""
    net = MLPScoreNet(2, hidden=8, depth=1, emb_dim=8)
    sde = VPSDE(N=500)
    grid = torch.arange(1, 501, dtype=torch.float64) / 500  # the chain's step i at t = (i + 1) / N
    idx = ScoreModel(net, sde, time_input="index").net_time(grid)
    torch.testing.assert_close(idx, torch.arange(500, dtype=torch.float64), rtol=0, atol=1e-10)
    dpm = ScoreModel(net, sde, time_input="dpm_solver").net_time(grid)  # 1000 i / N
    torch.testing.assert_close(dpm, 1000.0 * torch.arange(500, dtype=torch.float64) / 500, rtol=0, atol=1e-9)
    ve = VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    t = torch.tensor([1.0, 0.95, 0.5, 1 / 18 + 1e-6, 0.0], dtype=torch.float64)
    rev = ScoreModel(net, ve, time_input="reversed_index").net_time(t)
    assert rev.dtype == torch.long and rev.tolist() == [0, 0, 4, 8, 9]  # round((1 - t) * 9)
    sig = ScoreModel(net, ve, time_input="sigma").net_time(t)
    torch.testing.assert_close(sig, 0.01 * (50.0 / 0.01) ** t)


def test_the_network_sees_net_time():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x, t_net):
            seen["t"] = t_net
            return torch.zeros_like(x)

    model = ScoreModel(Spy(), VESDE(), "eps")
    model.score_fn(torch.zeros(3, 2), 0.5)
    assert seen["t"].shape == (3,)
    assert torch.allclose(seen["t"], torch.full((3,), math.log(0.01 * 5000.0 ** 0.5)))


def test_real_network_in_the_reverse_sde():
    sde = VPSDE()
    model = ScoreModel(MLPScoreNet(2, hidden=16, depth=2, emb_dim=16), sde, "v")
    x = torch.randn(5, 2)
    drift, diffusion = sde.reverse(model.score_fn).sde(x, 0.4)
    assert drift.shape == x.shape and diffusion.shape == (5,)
    assert model.score_fn(x, torch.full((5,), 0.4)).shape == x.shape


def test_bad_arguments():
    net = MLPScoreNet(2, hidden=8, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match="parameterization"):
        ScoreModel(net, VPSDE(), "noise")
    with pytest.raises(ValueError, match="time_input"):
        ScoreModel(net, VPSDE(), time_input="sigmas")
    with pytest.raises(TypeError, match="SDE"):
        ScoreModel(net, "vp")
    with pytest.raises(TypeError, match="net"):
        ScoreModel(3, VPSDE())
    with pytest.raises(ValueError, match="time_scale"):
        ScoreModel(net, VPSDE(), time_scale=0.0)
    model = ScoreModel(net, VPSDE())
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model.score(torch.zeros(3, 2), torch.zeros(2))

    class Wrong(nn.Module):
        def forward(self, x, t_net):
            return x[:, :1]

    with pytest.raises(ValueError, match="shaped like x"):
        ScoreModel(Wrong(), VPSDE()).score(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match="noise"):
        model.target(torch.zeros(3, 2), torch.zeros(3, 3), 0.5)


def test_passing_the_score_model_itself_uses_its_score():
    """A ScoreModel called directly returns its score (its raw output is net_output); the samplers and
    the likelihood take the model itself as well as its score_fn, with identical results (a model
    that returned its raw output was once silently read as a score: 18.5 bits/dim per digit
    instead of ~3)."""
    from scoresde import VPSDE, MLPScoreNet, ScoreModel, log_likelihood, sample

    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(MLPScoreNet(3, hidden=16, depth=2, emb_dim=8), sde).eval()
    x = torch.randn(4, 3)
    a = log_likelihood(model, sde, x, trace="exact", rtol=1e-4, atol=1e-4)
    b = log_likelihood(model.score_fn, sde, x, trace="exact", rtol=1e-4, atol=1e-4)
    assert torch.equal(a.logp, b.logp)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    with torch.no_grad():
        s1 = sample(model, sde, (4, 3), sampler="euler_maruyama", steps=5, generator=g())
        s2 = sample(model.score_fn, sde, (4, 3), sampler="euler_maruyama", steps=5, generator=g())
    assert torch.equal(s1.x, s2.x)
    with torch.no_grad():
        t = torch.full((4,), 0.3)
        _, std = sde.marginal_prob(x, t)
        assert torch.equal(model(x, t), model.score(x, t))
        # the raw eps output, read independently of score(): score = -eps / s
        torch.testing.assert_close(model(x, t), -model.net(x, 999.0 * t) / std[:, None])
        assert torch.equal(model.net_output(x, t), model.net(x, 999.0 * t))


# ---------------------------------------------------------------------------------------------
# Class labels (Ho & Salimans 2022): y is passed through to the network.
# ---------------------------------------------------------------------------------------------
NULL = -1  # scoresde._utils.NULL_CLASS, the label "no label"


def component_posterior(mix, sde, x, t, k):
    """E[x_0 | x_t, y = k] for data of class k = component k alone, N(mu_k, diag(S_k)) (Bishop 2006,
    eq. 2.116), and the exact conditional score -(x - m mu_k) / (m^2 S_k + s^2)."""
    m, s = coeffs(sde, t)
    mu, S = mix.means[k].to(x.dtype), mix.variances[k].to(x.dtype)
    x0 = mu + S * m / (m * m * S + s * s) * (x - m * mu)
    return x0, -(x - m * mu) / (m * m * S + s * s)


class CondOracle(Oracle):
    """A perfect conditional network: class k is component k of the mixture; NULL rows (and y=None)
    get the mixture's own prediction."""

    def __init__(self, mix, sde, kind):
        super().__init__(mix, sde, kind)
        self.num_classes = mix.means.shape[0]
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        x0, _ = posterior_means(self.mix, self.sde, x, t)
        if y is not None:
            for k in range(self.num_classes):
                rows = y == k
                x0 = torch.where(rows[:, None], component_posterior(self.mix, self.sde, x, t, k)[0], x0)
        m, s = coeffs(self.sde, t)
        return network_output(self.kind, x0, (x - m * x0) / s, m, s)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("param", PARAMS)
def test_labels_reach_the_network_and_give_the_conditional_score(sde_name, param):
    mix, sde = mixture_2d(), SDES[sde_name]()
    K = mix.means.shape[0]
    _, _, t, x = noisy_batch(mix, sde, 64, seed=4)
    y = torch.arange(64) % (K + 1) - 1  # every class and NULL
    net = CondOracle(mix, sde, param)
    model = ScoreModel(net, sde, param, time_input="t")
    assert model.num_classes == K
    got = model.score(x, t, y)
    exact_null = mix.score_fn(sde)(x, t)
    for k in range(-1, K):
        rows = y == k
        want = exact_null[rows] if k == NULL else component_posterior(mix, sde, x[rows], t[rows], k)[1]
        torch.testing.assert_close(got[rows], want, rtol=1e-7, atol=1e-9)
    assert net.seen[-1] is y
    # every method passes y on; y=None calls net(x, t_net) (the unconditional score)
    assert torch.equal(model(x, t, y), got) and torch.equal(model.score_fn(x, t, y), got)
    x0k = torch.stack([component_posterior(mix, sde, x[i:i + 1], t[i:i + 1], int(y[i]))[0][0] if y[i] >= 0
                       else posterior_means(mix, sde, x[i:i + 1], t[i:i + 1])[0][0] for i in range(64)])
    torch.testing.assert_close(model.denoise(x, t, y), x0k, rtol=1e-7, atol=1e-7)
    m, s = coeffs(sde, t)
    torch.testing.assert_close(model.eps(x, t, y), -s * got, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.score(x, t), exact_null, rtol=1e-7, atol=1e-9)
    assert net.seen[-1] is None


def test_num_classes_and_labels_for_an_unconditional_model():
    sde = VPSDE()
    cond = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8, num_classes=5), sde)
    plain = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8), sde)
    assert cond.num_classes == 5 and plain.num_classes == 0 and "num_classes=5" in repr(cond)

    class Bare(nn.Module):  # a custom network with no num_classes attribute and no y argument
        def forward(self, x, t_net):
            return -x

    bare = ScoreModel(Bare(), sde, "score")
    assert bare.num_classes == 0
    x = torch.randn(3, 2)
    assert torch.equal(bare.score(x, 0.5), -x)  # called as net(x, t_net), as before
    y = torch.tensor([0, 1, NULL])
    for model in (plain, bare):
        for method in (model.score, model.eps, model.denoise, model.net_output, model):
            with pytest.raises(ValueError, match="unconditional.*num_classes"):
                method(x, 0.5, y)
    assert cond.score(x, 0.5, y).shape == x.shape


def test_net_kwargs_reach_every_network_call():
    """ScoreModel wraps any net(x, t_net, **kw): fixed keywords go to every call, labels too."""
    seen = []

    class Needs(nn.Module):
        num_classes = 2

        def forward(self, x, t_net, *, scale, y=None):
            seen.append((scale, None if y is None else y.tolist()))
            return scale * x

    model = ScoreModel(Needs(), VPSDE(), "eps", net_kwargs=dict(scale=2.0))
    x = torch.ones(2, 3)
    torch.testing.assert_close(model.net_output(x, 0.5), 2.0 * x)
    model.eps(x, 0.5, y=torch.tensor([0, 1]))
    assert seen == [(2.0, None), (2.0, [0, 1])]
    with pytest.raises(ValueError, match="'y'"):
        ScoreModel(Needs(), VPSDE(), net_kwargs=dict(y=1))
    with pytest.raises(TypeError, match="dict"):
        ScoreModel(Needs(), VPSDE(), net_kwargs=[("scale", 1.0)])
