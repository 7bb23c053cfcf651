"""Denoising score matching (``scoresde.losses``) against truth computed independently.

References written out here from the papers (numpy, float64), not taken from the package:
Song et al. (2021), Appendix B: VP ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``,
``m = e^{-B/2}``, ``s^2 = 1 - e^{-B}``, ``g^2 = beta``; sub-VP ``s = 1 - e^{-B}``,
``g^2 = beta (1 - e^{-2B})``; VE ``s = sigma_min (sigma_max/sigma_min)^t``,
``g^2 = s^2 2 log(sigma_max/sigma_min)``. Nichol & Dhariwal (2021) for the cosine ``abar``.

Truth used:
* Gaussian data ``N(mu, diag(S))``: the marginal is ``N(m mu, m^2 S + s^2)``, the exact score is
  linear, and ``E|| s score(x_t) + z ||^2 = sum_d m^2 S_d / (m^2 S_d + s^2)``; the expected loss is a
  1-D integral over ``t``, done by ``scipy.integrate.quad``.
* Any data: ``s score = -E[z | x_t]`` (Tweedie), so ``E|| s score + z ||^2 = D - s^2 E|| score ||^2``,
  estimated on independent draws from the time-t marginal.
* A constant shift ``delta`` of the score raises the loss by exactly ``E_t[lambda(t)] ||delta||^2``
  (the cross term ``E[score + z/s | x_t] = 0`` vanishes).
Statistical assertions use fixed seeds and 4 standard errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.losses import dsm_loss, importance_density, sample_importance_time
from scoresde.nets import MLPScoreNet
from scoresde.score import ScoreModel
from scoresde.targets import GaussianMixture, mixture_2d

pytestmark = pytest.mark.usefixtures("single_thread")

BMIN, BMAX, SMIN, SMAX = 0.1, 20.0, 0.01, 50.0
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ref(kind, t):
    """(m, s^2, g^2) from the papers, numpy float64."""
    t = np.asarray(t, dtype=np.float64)
    if kind == "ve":
        s2 = (SMIN * (SMAX / SMIN) ** t) ** 2
        return np.ones_like(t), s2, s2 * 2.0 * math.log(SMAX / SMIN)
    if kind == "vp_cosine":
        sc = 0.008
        f = lambda u: np.cos((u + sc) / (1 + sc) * np.pi / 2) ** 2  # noqa: E731
        B = -np.log(f(t) / f(0.0))
        beta = np.pi / (1 + sc) * np.tan((t + sc) / (1 + sc) * np.pi / 2)
    else:
        B = BMIN * t + 0.5 * (BMAX - BMIN) * t * t
        beta = BMIN + (BMAX - BMIN) * t
    m = np.exp(-B / 2)
    if kind == "subvp":
        return m, np.expm1(-B) ** 2, beta * -np.expm1(-2 * B)
    return m, -np.expm1(-B), beta


def lam_over_s2(kind, weighting, t):
    m, s2, g2 = ref(kind, t)
    return np.ones_like(s2) if weighting == "sigma2" else g2 / s2


def time_average(f, eps, T=1.0):
    """(1 / (T - eps)) int_eps^T f(t) dt, integrated in u = log t (f may behave like 1/t)."""
    val, err = integrate.quad(lambda u: f(math.exp(u)) * math.exp(u), math.log(eps), math.log(T),
                              limit=200, epsabs=0, epsrel=1e-10)
    return val / (T - eps)


def mean_se(v):
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


# ---------------------------------------------------------------------------------------------
# The loss at the exact score equals its analytic minimum.
# ---------------------------------------------------------------------------------------------
GAUSS_MU, GAUSS_SD = [1.0, -0.5, 2.0], [0.5, 1.0, 0.3]
SAMPLERS = [("uniform", 1e-3), ("importance", 1e-5), ("importance", 0.1)]  # 0.1: the 1/(T - eps) matters


@pytest.mark.parametrize("kind", list(SDES))
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
@pytest.mark.parametrize("sampler, eps", SAMPLERS)
def test_loss_at_the_true_score_is_the_analytic_minimum(kind, weighting, sampler, eps):
    sde = SDES[kind]()
    data = GaussianMixture([1.0], [GAUSS_MU], [GAUSS_SD])
    S = np.array(GAUSS_SD) ** 2
    x0 = data.sample(20000, generator=gen(10), dtype=torch.float64)
    loss = dsm_loss(data.score_fn(sde), sde, x0, weighting=weighting, time_sampler=sampler, eps=eps,
                    reduce="sum", generator=gen(11))
    assert loss.shape == (20000,)

    def integrand(t):
        m, s2, _ = ref(kind, t)
        return float(lam_over_s2(kind, weighting, t) * np.sum(m * m * S / (m * m * S + s2)))

    truth = time_average(integrand, eps)
    mean, se = mean_se(loss)
    assert abs(mean - truth) < 4 * se, (mean, truth, se)
    # "mean" reduces by the dimension.
    loss_mean = dsm_loss(data.score_fn(sde), sde, x0, weighting=weighting, time_sampler=sampler, eps=eps,
                         reduce="mean", generator=gen(11))
    assert torch.allclose(loss_mean * 3, loss, rtol=1e-12)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_loss_at_the_true_score_on_a_mixture_matches_tweedie(kind):
    """E||s score + z||^2 = D - s^2 E||score||^2, the right side on independent draws of x_t."""
    sde, mix = SDES[kind](), mixture_2d()
    n, eps = 20000, 1e-3
    sf = mix.score_fn(sde)
    x0 = mix.sample(n, generator=gen(20), dtype=torch.float64)
    loss = dsm_loss(sf, sde, x0, reduce="sum", eps=eps, generator=gen(21))
    g = gen(22)
    t = eps + (sde.T - eps) * torch.rand(n, generator=g, dtype=torch.float64)
    m, s = sde.coeffs_unchecked(t)
    x0b = mix.sample(n, generator=g, dtype=torch.float64)
    xt = m[:, None] * x0b + s[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    other = 2.0 - s * s * sf(xt, t).pow(2).sum(1)
    (a, sa), (b, sb) = mean_se(loss), mean_se(other)
    assert abs(a - b) < 4 * math.hypot(sa, sb), (a, b, sa, sb)


@pytest.mark.parametrize("kind", list(SDES))
def test_a_wrong_score_gives_a_larger_loss(kind):
    """Common random numbers: the same (t, z) for the true and the perturbed score. A shift by delta
    costs exactly E_t[s^2] D delta^2 (sigma2 weighting); a 1.3x scaling costs a positive amount."""
    sde, mix = SDES[kind](), mixture_2d()
    n, eps, delta = 20000, 1e-3, 0.2
    sf = mix.score_fn(sde)
    x0 = mix.sample(n, generator=gen(30), dtype=torch.float64)
    base = dsm_loss(sf, sde, x0, reduce="sum", eps=eps, generator=gen(31))
    shifted = dsm_loss(lambda x, t: sf(x, t) + delta, sde, x0, reduce="sum", eps=eps, generator=gen(31))
    scaled = dsm_loss(lambda x, t: 1.3 * sf(x, t), sde, x0, reduce="sum", eps=eps, generator=gen(31))
    d_mean, d_se = mean_se(shifted - base)
    truth = time_average(lambda t: float(ref(kind, t)[1]), eps) * 2 * delta**2
    assert abs(d_mean - truth) < 4 * d_se + 1e-12, (d_mean, truth, d_se)
    assert d_mean > 4 * d_se
    c_mean, c_se = mean_se(scaled - base)
    assert c_mean > 4 * c_se, (c_mean, c_se)


# ---------------------------------------------------------------------------------------------
# The importance sampler.
# ---------------------------------------------------------------------------------------------
def reference_cdf(kind, eps, T):
    """CDF of q ~ g^2 / s^2 on [eps, T], derived by hand:
    VP: g^2/s^2 = beta / (1 - e^{-B}) = d/dt log(e^B - 1);
    sub-VP: g^2/s^2 = beta (1 + e^{-B}) / (1 - e^{-B}) = beta coth(B/2) = d/dt 2 log sinh(B/2);
    VE: g^2/s^2 = 2 log(sigma_max / sigma_min), constant."""
    def F(t):
        t = np.asarray(t, dtype=np.float64)
        if kind == "ve":
            return t
        if kind == "vp_cosine":
            sc = 0.008
            f = lambda u: np.cos((u + sc) / (1 + sc) * np.pi / 2) ** 2  # noqa: E731
            B = -np.log(f(t) / f(0.0))
        else:
            B = BMIN * t + 0.5 * (BMAX - BMIN) * t * t
        if kind == "subvp":
            return 2 * np.log(np.sinh(B / 2))
        return np.log(np.expm1(B))

    lo, hi = F(eps), F(T)
    return lambda t: np.clip((F(t) - lo) / (hi - lo), 0.0, 1.0)


KINDS = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vp_cosine": lambda: VPSDE(schedule="cosine")}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_importance_sampler_matches_its_density(kind, eps):
    sde = KINDS[kind]()
    t = sample_importance_time(sde, 5000, eps, generator=gen(40), dtype=torch.float64)
    assert t.shape == (5000,) and float(t.min()) >= eps and float(t.max()) <= sde.T
    cdf = reference_cdf(kind, eps, sde.T)
    assert stats.kstest(t.numpy(), cdf).pvalue > 1e-3
    if kind != "ve":  # the test has power: the same draws are far from uniform
        assert stats.kstest(t.numpy(), stats.uniform(eps, sde.T - eps).cdf).pvalue < 1e-6
    # The density is g^2/s^2 over its integral, integrates to one, and is zero outside [eps, T].
    grid = torch.tensor(np.geomspace(eps, sde.T, 50), dtype=torch.float64)
    q = importance_density(sde, grid, eps).numpy()
    _, s2, g2 = ref(kind, grid.numpy())
    total, _ = integrate.quad(lambda u: float(np.exp(u) * np.divide(*ref(kind, np.exp(u))[2:0:-1])),
                              math.log(eps), math.log(sde.T), limit=200, epsrel=1e-10)
    assert np.allclose(q, g2 / s2 / total, rtol=1e-8)
    mass = time_average(lambda u: float(importance_density(sde, torch.tensor([u], dtype=torch.float64), eps)),
                        eps, sde.T) * (sde.T - eps)
    assert abs(mass - 1.0) < 1e-7
    outside = torch.tensor([0.0, eps / 2, sde.T + 0.01], dtype=torch.float64)
    assert torch.equal(importance_density(sde, outside, eps), torch.zeros(3, dtype=torch.float64))


def test_importance_and_uniform_estimate_the_same_objective():
    """Independent runs; means agree within 4 combined SEs. For the likelihood weighting on VP the
    importance sampler has a much smaller variance; for VE it is uniform sampling."""
    mix, n, eps = mixture_2d(), 20000, 1e-3
    for kind in ("vp", "subvp"):
        sde = SDES[kind]()
        sf = mix.score_fn(sde)
        x0 = mix.sample(n, generator=gen(50), dtype=torch.float64)
        for weighting in ("likelihood", "sigma2"):
            u = dsm_loss(sf, sde, x0, weighting=weighting, time_sampler="uniform", eps=eps, generator=gen(51))
            i = dsm_loss(sf, sde, x0, weighting=weighting, time_sampler="importance", eps=eps, generator=gen(52))
            (a, sa), (b, sb) = mean_se(u), mean_se(i)
            assert abs(a - b) < 4 * math.hypot(sa, sb), (kind, weighting, a, b, sa, sb)
            if weighting == "likelihood":
                assert float(i.var()) < 0.25 * float(u.var()), (kind, float(i.var()), float(u.var()))


def test_score_model_loss_is_the_score_matching_loss():
    """The ScoreModel path (residual in network units) equals lambda ||score + z/s||^2 computed here
    from the model's score, for every parameterization, weighting and SDE."""
    g = gen(60)
    x0 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    z = torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = 0.01 + 0.99 * torch.rand(16, generator=g, dtype=torch.float64)
    for kind, make in SDES.items():
        sde = make()
        for param in ("eps", "score", "x0", "v"):
            torch.manual_seed(0)
            model = ScoreModel(MLPScoreNet(2, hidden=16, depth=2, emb_dim=8), sde, param).double()
            m, s2, g2 = (torch.as_tensor(a) for a in ref(kind, t.numpy()))
            xt = m[:, None] * x0 + s2.sqrt()[:, None] * z
            score = model.score(xt, t)
            for weighting, lam in (("sigma2", s2), ("likelihood", g2)):
                direct = lam * (score + z / s2.sqrt()[:, None]).pow(2).sum(1)
                got = dsm_loss(model, sde, x0, weighting=weighting, reduce="sum", t=t, noise=z)
                assert torch.allclose(got, direct, rtol=1e-8), (kind, param, weighting)
                via_fn = dsm_loss(model.score_fn, sde, x0, weighting=weighting, reduce="sum", t=t, noise=z)
                assert torch.allclose(via_fn, direct, rtol=1e-8)


@pytest.mark.parametrize("kind", list(SDES))
@pytest.mark.parametrize("param", ["eps", "score", "x0", "v"])
def test_gradients_are_finite_at_t_eps(kind, param):
    sde = SDES[kind]()
    torch.manual_seed(1)
    model = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8), sde, param)
    x0 = mixture_2d().sample(8, generator=gen(70))
    for weighting in ("sigma2", "likelihood"):
        model.zero_grad()
        loss = dsm_loss(model, sde, x0, weighting=weighting, t=1e-5, generator=gen(71))
        assert bool(torch.isfinite(loss).all())
        loss.mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), (name, weighting)


def test_same_seed_same_loss_and_training_lowers_it():
    """Reproducible with a generator; a few Adam steps on the eps loss lower it (a smoke check of the
    gradient direction, with the loss estimated on fixed draws)."""
    sde, mix = VPSDE(), mixture_2d()
    torch.manual_seed(2)
    model = ScoreModel(MLPScoreNet(2, hidden=32, depth=2, emb_dim=16), sde, "eps")
    x0 = mix.sample(512, generator=gen(80))
    a = dsm_loss(model, sde, x0, generator=gen(81))
    assert torch.equal(a, dsm_loss(model, sde, x0, generator=gen(81)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        opt.zero_grad()
        dsm_loss(model, sde, x0, generator=gen(100 + step)).mean().backward()
        opt.step()
    with torch.no_grad():
        before, after = float(a.mean()), float(dsm_loss(model, sde, x0, generator=gen(81)).mean())
    assert after < 0.8 * before, (before, after)


def test_bad_inputs():
    sde, sf = VPSDE(), mixture_2d().score_fn(VPSDE())
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="non-finite"):
        dsm_loss(sf, sde, torch.tensor([[0.0, float("nan")]]))
    for kw, match in [(dict(weighting="snr"), "weighting"), (dict(time_sampler="stratified"), "time_sampler"),
                      (dict(reduce="max"), "reduce"), (dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"),
                      (dict(eps=-1e-3), "eps"), (dict(eps=float("nan")), "eps"),
                      (dict(t=0.5, time_sampler="importance"), "importance"), (dict(t=0.0), "> 0"),
                      (dict(t=torch.zeros(3) + 0.5), "shape"), (dict(noise=torch.zeros(4, 3)), "noise")]:
        with pytest.raises(ValueError, match=match):
            dsm_loss(sf, sde, x0, **kw)
    with pytest.raises(TypeError, match="callable"):
        dsm_loss(3, sde, x0)
    with pytest.raises(TypeError, match="SDE"):
        dsm_loss(sf, "vp", x0)
    with pytest.raises(ValueError, match="shaped like x0"):
        dsm_loss(lambda x, t: x[:, :1], sde, x0)
    model = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8), VESDE())
    with pytest.raises(ValueError, match="model.sde"):
        dsm_loss(model, sde, x0)
    with pytest.raises(ValueError, match="eps"):
        sample_importance_time(sde, 10, eps=2.0)
    with pytest.raises(ValueError, match="n must"):
        sample_importance_time(sde, 0)


def test_one_time_sampler_for_the_loss_and_the_training_loop():
    """dsm_loss and the training loop draw their times through draw_times: the same generator state
    gives the same times (checked through the loss at those times) and the same importance weights."""
    from scoresde.losses import draw_times, importance_density

    sde = VPSDE()
    x0 = torch.randn(64, 2, dtype=torch.float64)
    score = lambda x, t: -x  # noqa: E731
    for sampler in ("uniform", "importance"):
        t, w = draw_times(sde, 64, sampler, 1e-3, generator=torch.Generator().manual_seed(5))
        assert t.dtype == torch.float64 and bool(((t >= 1e-3) & (t <= 1.0)).all())
        expect_w = torch.ones(64, dtype=torch.float64) if sampler == "uniform" else \
            1.0 / ((1.0 - 1e-3) * importance_density(sde, t, 1e-3))
        torch.testing.assert_close(w, expect_w, rtol=0, atol=0)
        g = torch.Generator().manual_seed(5)
        drawn = dsm_loss(score, sde, x0, time_sampler=sampler, eps=1e-3, generator=g)
        g2 = torch.Generator().manual_seed(5)  # replay: the times first, then the noise
        draw_times(sde, 64, sampler, 1e-3, generator=g2)
        z = torch.randn(x0.shape, generator=g2, dtype=x0.dtype)
        fixed = dsm_loss(score, sde, x0, t=t, noise=z, eps=1e-3) * w
        torch.testing.assert_close(drawn, fixed, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# Label dropout (Ho & Salimans 2022, Algorithm 1: c <- null with probability p_uncond).
# ---------------------------------------------------------------------------------------------
NULL = -1  # scoresde._utils.NULL_CLASS


def test_label_dropout_frequency_matches_p_uncond():
    """Each label is dropped independently with probability p: over n labels the dropped count is
    Binomial(n, p), within 4 standard errors sqrt(n p (1 - p)); kept labels are unchanged; p = 0
    drops none and draws nothing (the generator is not advanced)."""
    from scoresde.losses import drop_labels

    n = 40000
    y = torch.arange(n) % 10
    for p in (0.1, 0.5, 0.9):
        out = drop_labels(y, p, gen(90))
        dropped = out == NULL
        assert abs(int(dropped.sum()) - n * p) < 4 * math.sqrt(n * p * (1 - p)), p
        assert torch.equal(out[~dropped], y[~dropped])
        # independent of the label: the rate among labels 0 and among labels 9 agree (two-sample z)
        a, b = dropped[y == 0].double(), dropped[y == 9].double()
        assert abs(float(a.mean() - b.mean())) < 4 * math.sqrt(2 * p * (1 - p) / a.numel())
    g = gen(91)
    state = g.get_state()
    assert torch.equal(drop_labels(y, 0.0, g), y) and torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="p_uncond"):
        drop_labels(y, 1.0)


class Recorder:
    """A conditional score function that records what the loss gives it (and returns -x)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone(), None if y is None else y.clone()))
        return -x


def test_labels_are_drawn_after_the_times_and_the_noise():
    """Adding labels leaves the t and z of a call unchanged (the recorded x_t and t are bitwise
    those of the unconditional call); the dropout uniforms come next on the same generator, as
    the docstring says: replaying t (float64 uniforms), z, then B float64 uniforms reproduces
    the mask."""
    sde = VPSDE()
    x0 = torch.randn(256, 2, generator=gen(92))
    y = torch.arange(256) % 3
    plain, cond = Recorder(), Recorder()
    a = dsm_loss(plain, sde, x0, generator=gen(93))
    b = dsm_loss(cond, sde, x0, generator=gen(93), y=y, p_uncond=0.3)
    (xa, ta, ya), (xb, tb, yb) = plain.calls[0], cond.calls[0]
    assert ya is None and torch.equal(xa, xb) and torch.equal(ta, tb) and torch.equal(a, b)
    g = gen(93)
    torch.rand(256, generator=g, dtype=torch.float64)  # the times
    torch.randn(x0.shape, generator=g)  # the noise
    u = torch.rand(256, generator=g, dtype=torch.float64)
    assert torch.equal(yb, torch.where(u < 0.3, torch.full_like(y, NULL), y))
    assert 0 < int((yb == NULL).sum()) < 256
    # p_uncond = 0: the labels reach the score function unchanged
    dsm_loss(cond, sde, x0, generator=gen(93), y=y)
    assert torch.equal(cond.calls[-1][2], y)


def test_labels_reach_a_conditional_score_model():
    """The loss of a conditional ScoreModel evaluates the network at the given labels: with fixed t
    and z it equals the loss written out from the model's own score at those labels."""
    sde = VPSDE()
    torch.manual_seed(3)
    model = ScoreModel(MLPScoreNet(2, hidden=16, depth=2, emb_dim=8, num_classes=3), sde, "v")
    x0, z = torch.randn(32, 2, generator=gen(94)), torch.randn(32, 2, generator=gen(95))
    t = 0.05 + 0.9 * torch.rand(32, generator=gen(96))
    y = torch.arange(32) % 4 - 1
    m, s = sde.coeffs(t)
    xt = m[:, None] * x0 + s[:, None] * z
    with torch.no_grad():
        want = (s[:, None] * model.score(xt, t, y) + z).pow(2).mean(dim=1)
        got = dsm_loss(model, sde, x0, t=t, noise=z, y=y)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        other = dsm_loss(model, sde, x0, t=t, noise=z, y=(y + 2) % 3)
    assert float((got - other).abs().max()) > 1e-4  # the labels matter


def test_label_errors():
    sde = VPSDE()
    x0 = torch.zeros(4, 2)
    cond = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8, num_classes=3), sde)
    plain = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8), sde)
    y = torch.tensor([0, 1, 2, NULL])
    with pytest.raises(ValueError, match="no labels y"):
        dsm_loss(cond, sde, x0, p_uncond=0.1)
    with pytest.raises(ValueError, match="p_uncond"):
        dsm_loss(cond, sde, x0, y=y, p_uncond=1.0)
    with pytest.raises(ValueError, match="unconditional"):
        dsm_loss(plain, sde, x0, y=y)
    with pytest.raises(ValueError, match=r"classes 0\.\.2"):
        dsm_loss(cond, sde, x0, y=torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        dsm_loss(cond, sde, x0, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        dsm_loss(cond, sde, x0, y=torch.zeros(4))
