"""The solver tolerance from an error budget (`scoresde.likelihood.budget`, the default of
`evaluate_bpd`): its bias estimate is checked against the true bias of the mean, measured against a
1e-8 solve of the same images, dequantization noise and probes, on an oracle and on a perturbed
(non-analytic) field; the chosen tolerance keeps the mean within the budget and tightens as the
test set grows."""
from __future__ import annotations

import json
import math

import pytest
import torch

from scoresde import VPSDE, GaussianMixture
from scoresde.likelihood import evaluate_bpd
from scoresde.likelihood.budget import CANDIDATES, REFERENCE, choose_tolerance, pilot_rows
from scoresde.quantize import grid_values

pytestmark = pytest.mark.usefixtures("single_thread")

N_LEVELS = 32


@pytest.fixture(scope="module")
def sde():
    return VPSDE()


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture([0.4, 0.6], [[-0.4, 0.2], [0.35, -0.25]], [[0.15, 0.1], [0.2, 0.12]])


def _grid(mix, n, seed=0):
    x = mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = torch.floor((x + 1.0) / (2.0 / N_LEVELS)).clamp(0, N_LEVELS - 1).long()
    return grid_values(u, N_LEVELS, (-1.0, 1.0), dtype=torch.float64)


def _perturbed(score):
    """A field that is no density's score: the oracle's plus a smooth x- and t-dependent term."""
    def f(x, t):
        return score(x, t) + 0.4 * torch.sin(3.0 * x + 2.0 * t.reshape(-1, 1))
    return f


def _fields(sde, mix):
    return {"oracle": mix.score_fn(sde), "perturbed": _perturbed(mix.score_fn(sde))}


@pytest.mark.parametrize("field", ["oracle", "perturbed"])
def test_bias_estimate_covers_the_true_bias(sde, mix, field):
    score = _fields(sde, mix)[field]
    xq = _grid(mix, 400)
    res = evaluate_bpd(score, sde, xq, n_levels=N_LEVELS, generator=torch.Generator().manual_seed(3),
                       progress=False)
    ch = res.tolerance
    assert ch is not None and ch.fitted and res.convention["rtol"] == ch.tol == res.convention["atol"]
    # the same images, noise and probes (same seed) at 1e-8: the truth the estimate is judged by
    truth = evaluate_bpd(score, sde, xq, n_levels=N_LEVELS, generator=torch.Generator().manual_seed(3),
                         progress=False, rtol=1e-8, atol=1e-8)
    d = (res.bpd - truth.bpd).flatten()
    true_bias = float(d.mean())
    # the pilot's estimate (32 of the 400 images) covers the bias of the whole mean
    assert abs(ch.bias - true_bias) <= 3.0 * ch.bias_stderr + 3.0 * float(d.std()) / math.sqrt(d.numel())
    # ... and the mean the user gets is within the budget of its standard error
    assert abs(res.mean - truth.mean) <= ch.budget * res.stderr
    # the chosen tolerance is looser than the old fixed 1e-5 (the point of the budget)
    assert ch.tol > REFERENCE
    assert res.total_nfe == int(res.nfe.sum()) + ch.pilot_nfe


def test_every_candidate_estimate_covers_its_true_bias(sde, mix):
    """The rule relies on each candidate's estimate, not only the chosen one's: on the perturbed
    field, each candidate's pilot estimate (48 images) covers the bias of the mean over 600 images
    (their own probes) measured against 1e-8, within 3 standard errors of the two estimates."""
    from scoresde.likelihood import log_likelihood

    score = _perturbed(mix.score_fn(sde))
    x = _grid(mix, 600, seed=5) + torch.rand(600, 2, generator=torch.Generator().manual_seed(6)) * (2.0 / N_LEVELS)
    ch = choose_tolerance(score, sde, x[pilot_rows(600, 48)], 600, budget=1e-9, probe_seed=11, n_levels=N_LEVELS)
    assert not ch.fitted and len(ch.candidates) == len(CANDIDATES)  # nothing fits an absurd budget
    assert ch.tol == REFERENCE and math.isnan(ch.bias)
    assert "no looser candidate met the error budget" in ch.describe()

    def bpd(tol):
        r = log_likelihood(score, sde, x, rtol=tol, atol=tol, generator=torch.Generator().manual_seed(11))
        return -r.logp / (2 * math.log(2.0))

    exact = bpd(1e-8)
    for c in ch.candidates:
        d = bpd(c["tol"]) - exact
        se = math.sqrt(c["bias_stderr"] ** 2 + float(d.var()) / d.numel())
        assert abs(c["bias"] - float(d.mean())) <= 3.0 * se, (c, float(d.mean()), se)


def test_tolerance_tightens_as_the_test_set_grows(sde, mix):
    """The same pilot, a larger test set: a smaller standard error, so a tighter tolerance."""
    x = _grid(mix, 32, seed=1) + torch.rand(32, 2, generator=torch.Generator().manual_seed(2)) * (2.0 / N_LEVELS)
    chosen = [choose_tolerance(mix.score_fn(sde), sde, x, n, probe_seed=4, n_levels=N_LEVELS) for n in (12, 400, 40000)]
    tols = [c.tol for c in chosen]
    assert tols[0] >= tols[1] >= tols[2] and tols[0] > tols[2], tols
    se = [c.predicted_stderr for c in chosen]
    assert se[0] > se[1] > se[2] > 0
    assert all(c.fitted and abs(c.bias) + 2 * c.bias_stderr <= 0.1 * c.predicted_stderr for c in chosen)


def test_pilot_does_not_change_the_evaluation(sde, mix):
    """The pilot draws from its own stream: the result equals an explicit run at the chosen tolerance."""
    xq = _grid(mix, 50)
    g = torch.Generator().manual_seed(9)
    res = evaluate_bpd(mix.score_fn(sde), sde, xq, n_levels=N_LEVELS, generator=g, progress=False)
    after = torch.rand(1, generator=g)
    tol = res.tolerance.tol
    g2 = torch.Generator().manual_seed(9)
    explicit = evaluate_bpd(mix.score_fn(sde), sde, xq, n_levels=N_LEVELS, generator=g2, progress=False,
                            rtol=tol, atol=tol)
    assert torch.equal(res.bpd, explicit.bpd) and torch.equal(res.nfe, explicit.nfe)
    assert torch.equal(after, torch.rand(1, generator=g2))  # the generator advanced the same way
    assert explicit.tolerance is None and explicit.convention["tolerance"] == {"mode": "given"}


def test_the_choice_is_stated(sde, mix):
    res = evaluate_bpd(mix.score_fn(sde), sde, _grid(mix, 40), n_levels=N_LEVELS, progress=False,
                       error_budget=0.2, pilot_size=16)
    line = res.summary()
    assert "tolerance from the error budget" in line and "budget 0.2 x SE" in line and "pilot of 16 images" in line
    d = json.loads(json.dumps(res.to_dict(per_sample=False)))
    tol = d["convention"]["tolerance"]
    assert tol["mode"] == "budget" and tol["budget"] == 0.2 and tol["rtol"] == d["convention"]["rtol"]
    assert tol["bias_stderr"] > 0 and tol["pilot_size"] == 16 and d["total_nfe"] > tol["pilot_nfe"] > 0
    assert [c["tol"] for c in tol["candidates"]] == list(CANDIDATES[:len(tol["candidates"])])
    assert tol["candidates"][-1]["fits"] and not any(c["fits"] for c in tol["candidates"][:-1])


def test_clear_errors(sde, mix):
    xq = _grid(mix, 10)
    with pytest.raises(ValueError, match="give both rtol and atol, or neither"):
        evaluate_bpd(mix.score_fn(sde), sde, xq, n_levels=N_LEVELS, rtol=1e-4, progress=False)
    with pytest.raises(ValueError, match="error_budget"):
        evaluate_bpd(mix.score_fn(sde), sde, xq, n_levels=N_LEVELS, error_budget=0.0, progress=False)
    with pytest.raises(ValueError, match="pilot_size"):
        evaluate_bpd(mix.score_fn(sde), sde, xq, n_levels=N_LEVELS, pilot_size=1, progress=False)
    with pytest.raises(ValueError, match="reference tolerance"):
        choose_tolerance(mix.score_fn(sde), sde, xq, 10, candidates=(1e-3,), reference=-1.0)
    with pytest.raises(ValueError, match="must be tighter than every candidate"):
        choose_tolerance(mix.score_fn(sde), sde, xq, 10, candidates=(1e-3,), reference=1e-2)
