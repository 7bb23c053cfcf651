"""Classifier-free guidance on labelled mixture oracles, against truth.

The truth is computed from the mixture's components directly: the class-``y`` data are the
unlabelled mixture of that class's components (weights renormalised), the marginal is the
unlabelled mixture of all of them, and the guided score is ``(1 + w)`` times the first's exact
score minus ``w`` times the second's (Ho & Salimans 2022). None of it goes through the labels code
of :class:`~scoresde.targets.GaussianMixture` or through :mod:`scoresde.guidance`.
"""
from __future__ import annotations

import math

import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.guidance import NULL_CLASS, Guidance, GuidedScore, guided_score, resolve_guidance
from scoresde.likelihood import evaluate_bpd, log_likelihood
from scoresde.metrics import calibrate_threshold, energy_distance
from scoresde.sampling import SAMPLERS, sample
from scoresde.targets import GaussianMixture

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
WEIGHTS = [0.4, 0.3, 0.2, 0.1]
MEANS = [[-2.5, 0.0], [2.5, 0.5], [0.0, 3.0], [0.5, -3.0]]
STDS = [[0.6, 0.4], [0.4, 0.6], [0.3, 0.3], [0.5, 0.25]]
LABELS = [0, 1, 1, 0]  # class 0: components 0 and 3; class 1: components 1 and 2
N = 500


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled() -> GaussianMixture:
    return GaussianMixture(WEIGHTS, MEANS, STDS, labels=LABELS)


def class_mixture(c: int) -> GaussianMixture:
    """Class ``c``'s data written out from the component table (not through ``labels``)."""
    keep = [k for k, lab in enumerate(LABELS) if lab == c]
    w = [WEIGHTS[k] for k in keep]
    return GaussianMixture([v / sum(w) for v in w], [MEANS[k] for k in keep], [STDS[k] for k in keep])


def marginal_mixture() -> GaussianMixture:
    return GaussianMixture(WEIGHTS, MEANS, STDS)


def true_guided(sde, y, w: float):
    """``(1 + w) grad log p_t(x | y) - w grad log p_t(x)`` per row (``y`` a tensor of labels, or one
    int for every row of any batch), from the component table."""
    cond = {c: class_mixture(c).score_fn(sde) for c in (0, 1)}
    marg = marginal_mixture().score_fn(sde)

    def score(x, t):
        if isinstance(y, int):
            c = cond[y](x, t)
        else:
            c = torch.stack([cond[int(v)](x[i:i + 1], t[i:i + 1])[0] for i, v in enumerate(y)])
        return (1 + w) * c - w * marg(x, t)

    return score


# ---------------------------------------------------------------------------------------------
# The oracle and the guided score.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("w", [0.0, 1.5, -1.0])
def test_guided_score_equals_the_combination_of_exact_scores(sde_name, w):
    sde = SDES[sde_name]()
    x = 3 * torch.randn(12, 2, generator=gen(0), dtype=torch.float64)
    t = torch.linspace(0.02, 0.95, 12, dtype=torch.float64)
    y = torch.tensor([0, 1] * 6)
    guided, info = guided_score(labelled().score_fn(sde), y, guidance_weight=w, batch=12)
    torch.testing.assert_close(guided(x, t), true_guided(sde, y, w)(x, t), rtol=1e-10, atol=1e-10)
    assert info["guidance_weight"] == w and info["guidance_scale"] == 1 + w and info["convention"] == "weight"


@pytest.mark.parametrize("sde_name", list(SDES))
def test_labelled_mixture_densities_are_the_class_mixtures(sde_name):
    sde = SDES[sde_name]()
    mix = labelled()
    x = 2 * torch.randn(10, 2, generator=gen(1), dtype=torch.float64)
    t = torch.full((10,), 0.3, dtype=torch.float64)
    for c in (0, 1):
        y = torch.full((10,), c)
        torch.testing.assert_close(mix.marginal_log_prob(x, t, sde, y=y), class_mixture(c).marginal_log_prob(x, t, sde))
        torch.testing.assert_close(mix.score(x, t, sde, y=y), class_mixture(c).score(x, t, sde))
        torch.testing.assert_close(mix.log_prob(x, y=c), class_mixture(c).log_prob(x))
    null = torch.full((10,), NULL_CLASS)
    torch.testing.assert_close(mix.marginal_log_prob(x, t, sde, y=null), marginal_mixture().marginal_log_prob(x, t, sde))
    # Bayes: p(x) = sum_y p(y) p(x | y)
    py = mix.class_probs()
    torch.testing.assert_close(py, torch.tensor([0.5, 0.5], dtype=torch.float64))
    mixed = torch.logsumexp(torch.stack([math.log(py[c]) + mix.log_prob(x, y=c) for c in (0, 1)]), 0)
    torch.testing.assert_close(mixed, mix.log_prob(x))


def test_one_batched_call_equals_two_separate_calls_bitwise():
    sde = VPSDE()
    score_fn = labelled().score_fn(sde)
    calls = []

    def counting(x, t, y=None):
        calls.append(x.shape[0])
        return score_fn(x, t, y=y)

    x = torch.randn(7, 2, generator=gen(2))
    t = torch.rand(7, generator=gen(3)) * 0.9 + 0.05
    y = torch.tensor([0, 1, 1, 0, NULL_CLASS, 1, 0])
    w = 2.5
    out = GuidedScore(counting, y, Guidance(w, "weight"))(x, t)
    assert calls == [14]  # one call on 2B rows
    cond, uncond = score_fn(x, t, y=y), score_fn(x, t)
    assert torch.equal(out, cond + w * (cond - uncond))
    # the unconditional row is unguided: cond == uncond there
    assert torch.equal(out[4], uncond[4])


def test_the_two_conventions_agree_and_are_stated():
    sde = VPSDE()
    sf = labelled().score_fn(sde)
    y = torch.tensor([0, 1] * 8)
    a = sample(sf, sde, (16, 2), sampler="dpmpp_2m", nfe=15, y=y, guidance_weight=2.0, generator=gen(4))
    b = sample(sf, sde, (16, 2), sampler="dpmpp_2m", nfe=15, y=y, guidance_scale=3.0, generator=gen(4))
    assert torch.equal(a.x, b.x)
    assert a.guidance["convention"] == "weight" and b.guidance["convention"] == "scale"
    assert a.guidance["guidance_scale"] == b.guidance["guidance_scale"] == 3.0
    assert a.guidance["guidance_weight"] == b.guidance["guidance_weight"] == 2.0
    plain = sample(sf, sde, (16, 2), sampler="dpmpp_2m", nfe=15, generator=gen(4))
    assert plain.guidance is None


def test_guidance_arguments_are_checked():
    sde = VPSDE()
    sf = labelled().score_fn(sde)
    with pytest.raises(ValueError, match="not both"):
        resolve_guidance(1.0, 2.0)
    with pytest.raises(ValueError, match="below -1"):
        resolve_guidance(guidance_weight=-1.5)
    with pytest.raises(ValueError, match="below 0"):
        resolve_guidance(guidance_scale=-0.1)
    with pytest.raises(ValueError, match="finite"):
        resolve_guidance(guidance_weight=float("nan"))
    with pytest.raises(ValueError, match="needs class labels"):
        sample(sf, sde, (4, 2), sampler="ddim", nfe=5, guidance_weight=1.0)
    with pytest.raises(ValueError, match="unconditional"):
        sample(marginal_mixture().score_fn(sde), sde, (4, 2), sampler="ddim", nfe=5, y=0)
    with pytest.raises(ValueError, match="unconditional"):
        sample(lambda x, t: -x, sde, (4, 2), sampler="ddim", nfe=5, y=0)
    with pytest.raises(ValueError, match=r"classes 0..1"):
        sample(sf, sde, (4, 2), sampler="ddim", nfe=5, y=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        sample(sf, sde, (4, 2), sampler="ddim", nfe=5, y=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        sample(sf, sde, (4, 2), sampler="ddim", nfe=5, y=torch.zeros(4))
    with pytest.raises(ValueError, match="no component"):
        GaussianMixture(WEIGHTS, MEANS, STDS, labels=[0, 2, 2, 0])


# ---------------------------------------------------------------------------------------------
# Sampling: every sampler, and the distributions against truth.
# ---------------------------------------------------------------------------------------------
def _options(name: str) -> dict:
    if name == "ode":
        return dict(rtol=1e-7, atol=1e-7)
    if name == "pc":  # the pilot's labels differ from the explicit field's class: use the batch rule
        return dict(steps=30, step_size_norm="batch")
    if name == "euler_maruyama":
        return dict(steps=30)
    return dict(nfe=12)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_uses_the_guided_score(name):
    """Each sampler with ``y`` and guidance gives the run of the same sampler on the explicit
    guided field of the component table (same noise), and records the guidance."""
    sde = VPSDE()
    y = torch.ones(24, dtype=torch.long)
    w = 1.5
    guided = sample(labelled().score_fn(sde), sde, (24, 2), sampler=name, y=y, guidance_weight=w, generator=gen(5),
                    dtype=torch.float64, **_options(name))
    explicit = sample(true_guided(sde, 1, w), sde, (24, 2), sampler=name, generator=gen(5), dtype=torch.float64,
                      **_options(name))
    torch.testing.assert_close(guided.x, explicit.x, rtol=1e-6, atol=1e-6)
    assert guided.guidance["guidance_weight"] == w and guided.guidance["conditional"]
    assert torch.equal(guided.nfe, explicit.nfe)


def test_the_ode_sampler_selects_the_labels_of_its_running_samples():
    """Samples with different labels finish after different numbers of steps; each equals its run alone."""
    sde = VPSDE()
    sf = labelled().score_fn(sde)
    y = torch.tensor([0, 1, NULL_CLASS, 1, 0, 1])
    x_T = sde.prior_sampling((6, 2), generator=gen(6), dtype=torch.float64)
    batch = sample(sf, sde, (6, 2), sampler="ode", x_T=x_T, y=y, guidance_weight=3.0)
    assert len(set(batch.nfe.tolist())) > 1
    for i in range(6):
        alone = sample(sf, sde, (1, 2), sampler="ode", x_T=x_T[i:i + 1], y=y[i:i + 1], guidance_weight=3.0)
        assert torch.equal(alone.x[0], batch.x[i]), i
        assert int(alone.nfe[0]) == int(batch.nfe[i])


@pytest.fixture(scope="module")
def thresholds():
    """The 99.8% quantile of the null energy distance at n = N for each class and the marginal."""
    out = {}
    for key, mix in (("0", class_mixture(0)), ("1", class_mixture(1)), ("marginal", marginal_mixture())):
        out[key] = (mix, calibrate_threshold(lambda n, generator=None, m=mix: m.sample(n, generator=generator),
                                             N, repeats=200, quantile=0.998, generator=gen(7)))
    return out


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("sampler", ["ode", "euler_maruyama"])
def test_unguided_labels_sample_the_class_and_the_null_label_the_marginal(thresholds, sde_name, sampler):
    sde = SDES[sde_name]()
    sf = labelled().score_fn(sde)
    opts = dict(steps=500) if sampler == "euler_maruyama" else {}
    for key, label in (("1", 1), ("0", 0), ("marginal", NULL_CLASS)):
        mix, thr = thresholds[key]
        res = sample(sf, sde, (N, 2), sampler=sampler, y=label, guidance_weight=0.0, generator=gen(8), **opts)
        assert bool(res.ok.all())
        d = energy_distance(res.x, mix.sample(N, generator=gen(9)))
        assert d <= thr, f"{key}: energy distance {d:.4g} above the null 99.8% quantile {thr:.4g}"


def test_the_distribution_check_has_power_against_the_wrong_class(thresholds):
    sde = VPSDE()
    mix, thr = thresholds["1"]
    res = sample(labelled().score_fn(sde), sde, (N, 2), sampler="ode", y=0, generator=gen(8))
    assert energy_distance(res.x, mix.sample(N, generator=gen(9))) > thr


def test_guidance_sharpens_towards_the_class():
    """With w > 0 the samples of class 1 land in class 1's components more often than at w = 0
    (the guided density is proportional to p(x | y)^(1+w) / p(x)^w at t -> 0)."""
    sde = VPSDE()
    mix = labelled()
    frac = []
    for w in (0.0, 3.0):
        res = sample(mix.score_fn(sde), sde, (400, 2), sampler="dpmpp_2m", nfe=30, y=1, guidance_weight=w,
                     generator=gen(10))
        comp = marginal_mixture().component_of(res.x)
        frac.append(float(((comp == 1) | (comp == 2)).double().mean()))
    assert frac[0] > 0.9 and frac[1] >= frac[0]


# ---------------------------------------------------------------------------------------------
# Conditional likelihood.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", list(SDES))
def test_conditional_likelihood_equals_the_analytic_log_density(sde_name):
    """``delta_logp + log p_T(z | y)`` is ``log p_eps(x | y)`` exactly (up to the solver tolerance)."""
    sde = SDES[sde_name]()
    mix = labelled()
    x, y = mix.sample_labelled(12, generator=gen(11), dtype=torch.float64)
    res = log_likelihood(mix.score_fn(sde), sde, x, y=y, trace="exact", rtol=1e-9, atol=1e-9)
    assert res.conditional and bool(res.ok.all())
    at_T = mix.marginal_log_prob(res.z, sde.T, sde, y=y)
    exact = torch.stack([class_mixture(int(c)).marginal_log_prob(x[i:i + 1], 1e-5, sde)[0] for i, c in enumerate(y)])
    torch.testing.assert_close(res.delta_logp + at_T, exact, rtol=0, atol=1e-5)


def test_the_likelihood_refuses_guidance_and_evaluate_bpd_takes_labels():
    sde = VPSDE()
    mix = labelled()
    x, y = mix.sample_labelled(20, generator=gen(12))
    with pytest.raises(ValueError, match="not the score of a density"):
        log_likelihood(mix.score_fn(sde), sde, x, y=y, guidance_weight=1.0)
    log_likelihood(mix.score_fn(sde), sde, x[:2], y=y[:2], guidance_scale=1.0, trace="exact")  # w = 0 is fine
    res = evaluate_bpd(mix.score_fn(sde), sde, x, labels=y, dequantize=None, trace="exact", rtol=1e-6, atol=1e-6,
                       batch_size=8, progress=False)
    assert res.convention["conditional"]
    one = log_likelihood(mix.score_fn(sde), sde, x, y=y, trace="exact", rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.logp[0], one.logp.double(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(20,\) tensor"):
        evaluate_bpd(mix.score_fn(sde), sde, x, labels=y[:5], dequantize=None, progress=False)


# ---------------------------------------------------------------------------------------------
# Networks.
# ---------------------------------------------------------------------------------------------
def _conditional_model():
    from scoresde import MLPScoreNet, ScoreModel

    torch.manual_seed(0)
    return ScoreModel(MLPScoreNet(4, hidden=32, depth=2, num_classes=3), VPSDE(), "v").eval()


def test_for_a_network_the_batched_call_equals_two_calls_to_float_tolerance():
    model = _conditional_model()
    x = torch.randn(9, 4, generator=gen(13))
    t = torch.rand(9, generator=gen(14)) * 0.9 + 0.05
    y = torch.tensor([0, 1, 2, -1, 0, 1, 2, 0, 1])
    for fn in (model, model.score_fn):  # the module and its bound method both declare num_classes
        guided, info = guided_score(fn, y, guidance_scale=2.5, batch=9)
        with torch.no_grad():
            cond, uncond = model(x, t, y=y), model(x, t)
            torch.testing.assert_close(guided(x, t), cond + 1.5 * (cond - uncond), rtol=1e-5, atol=1e-6)
        assert info["convention"] == "scale" and info["guidance_weight"] == 1.5
    with pytest.raises(ValueError, match=r"classes 0..2"):
        guided_score(model.score_fn, torch.tensor([3] * 9), guidance_weight=1.0, batch=9)


def test_an_unconditional_network_refuses_labels():
    from scoresde import MLPScoreNet, ScoreModel

    model = ScoreModel(MLPScoreNet(4, hidden=16, depth=1), VPSDE(), "v")
    with pytest.raises(ValueError, match="unconditional"):
        sample(model, VPSDE(), (3, 4), sampler="ddim", nfe=4, y=0, guidance_weight=1.0)
