"""log_likelihood refuses a score it cannot differentiate, instead of a silently wrong density.

The divergence is taken by autograd through the score. A score run under ``torch.no_grad()``, or
one that detaches, used to give a wrong logp without a warning on VP (the drift's ``f(t) x`` part
still depends on x, so autograd ran and the score's part of the divergence was dropped) and a raw
autograd error on VE; inside ``torch.inference_mode()`` nothing can be differentiated. Each case
must raise an error that names the fix. The honest way to write an x-independent score, ``0 * x``,
must work and give the closed-form density:

* VP (linear beta, beta(t) = b0 + (b1 - b0) t), score 0: the probability-flow drift is
  ``-beta(t) x / 2``, so ``z = x exp(-I / 2)`` with ``I = int_eps^T beta = b0 (T - eps) + (b1 - b0)
  (T^2 - eps^2) / 2``, the divergence is ``-D beta(t) / 2`` (exact for a Rademacher probe too:
  ``v^T v = D``), and ``log p_eps(x) = log N(z; 0, I) - D I / 2``.
* VE, score 0: the drift is 0, ``z = x`` and ``log p_eps(x) = log N(x; 0, sigma_max^2 I)``.
"""
from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, evaluate_bpd, mixture_2d
from scoresde.likelihood import log_likelihood
from scoresde.quantize import grid_values

pytestmark = pytest.mark.usefixtures("single_thread")

FIX = r"do not wrap score_fn in torch\.no_grad\(\) or torch\.inference_mode\(\).*0 \* x"


def points(n=4, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def detaching(score):
    return lambda x, t: score(x, t).detach()


def from_detached_input(score):
    """A scale that requires grad, applied to the score of x.detach(): the output requires grad
    (through the parameter) but its graph never reaches x."""
    w = torch.ones((), dtype=torch.float64, requires_grad=True)
    return lambda x, t: w * score(x.detach(), t)


@pytest.mark.parametrize("sde_cls", [VPSDE, VESDE], ids=["vp", "ve"])
@pytest.mark.parametrize("kind", ["no_grad", "detach", "detached_input", "zeros_like"])
@pytest.mark.parametrize("trace", ["exact", "rademacher"])
def test_a_score_that_autograd_cannot_differentiate_is_refused(sde_cls, kind, trace):
    sde = sde_cls()
    good = mixture_2d().score_fn(sde)
    score = {"no_grad": torch.no_grad()(good), "detach": detaching(good),
             "detached_input": from_detached_input(good),
             "zeros_like": lambda x, t: torch.zeros_like(x)}[kind]
    with pytest.raises(ValueError, match=FIX):
        log_likelihood(score, sde, points(), trace=trace)
    assert bool(log_likelihood(good, sde, points(), trace=trace).ok.all())  # the same call works


def test_inside_inference_mode_the_error_says_to_call_it_outside():
    sde = VPSDE()
    score = mixture_2d().score_fn(sde)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="outside inference_mode"):
            log_likelihood(score, sde, points())
        with pytest.raises(RuntimeError, match="outside inference_mode"):
            evaluate_bpd(score, sde, _on_grid(), n_levels=17, rtol=1e-3, atol=1e-3, progress=False)
    # no_grad around the call is fine: the likelihood enables grad where it differentiates
    with torch.no_grad():
        assert bool(log_likelihood(score, sde, points()).ok.all())


def _on_grid(n=6):
    """Points on the 17-level grid of [-1, 1], shaped (n, 2)."""
    levels = torch.randint(0, 17, (n, 2), generator=torch.Generator().manual_seed(3))
    return grid_values(levels, 17, (-1.0, 1.0))


def test_evaluate_bpd_refuses_a_no_grad_score_instead_of_a_wrong_number():
    sde = VPSDE()
    score = mixture_2d().score_fn(sde)
    data = _on_grid()
    kw = dict(n_levels=17, rtol=1e-4, atol=1e-4, progress=False, generator=torch.Generator().manual_seed(4))
    good = evaluate_bpd(score, sde, data, **kw)
    assert good.n_failed == 0 and math.isfinite(good.mean)
    with pytest.raises(ValueError, match=FIX):
        evaluate_bpd(torch.no_grad()(score), sde, data, **kw)


@pytest.mark.parametrize("trace", ["exact", "rademacher"])
def test_zero_score_written_as_0_times_x_gives_the_closed_form_on_vp(trace):
    b0, b1, eps = 0.1, 20.0, 1e-5
    sde = VPSDE(beta_min=b0, beta_max=b1)
    x = points(8)
    res = log_likelihood(lambda y, t: 0 * y, sde, x, trace=trace, eps=eps, rtol=1e-9, atol=1e-9)
    assert bool(res.ok.all())
    D, T = 2, sde.T
    integral = b0 * (T - eps) + (b1 - b0) * (T * T - eps * eps) / 2
    z = x * math.exp(-integral / 2)
    truth = -0.5 * D * math.log(2 * math.pi) - 0.5 * (z * z).sum(dim=1) - D * integral / 2
    assert torch.allclose(res.z, z, rtol=1e-6, atol=0)
    assert torch.allclose(res.delta_logp, torch.full_like(truth, -D * integral / 2), rtol=1e-7, atol=0)
    assert torch.allclose(res.logp, truth, rtol=1e-7, atol=0)


def test_zero_score_written_as_0_times_x_gives_the_prior_on_ve():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    x = points(8)
    res = log_likelihood(lambda y, t: 0 * y, sde, x, trace="exact")
    assert bool(res.ok.all())
    assert torch.equal(res.z, x) and torch.equal(res.delta_logp, torch.zeros(8, dtype=torch.float64))
    s2 = 50.0 ** 2
    truth = -math.log(2 * math.pi * s2) - (x * x).sum(dim=1) / (2 * s2)
    assert torch.allclose(res.logp, truth, rtol=1e-12, atol=0)
