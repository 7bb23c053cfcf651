"""scoresde.likelihood.divergence: the Hutchinson estimate against the exact trace, and the exact
trace against the full autograd Jacobian."""
from __future__ import annotations

import math

import pytest
import torch

from scoresde import VPSDE
from scoresde.likelihood import divergence, draw_probes
from scoresde.targets import mixture_nd

pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_hutchinson_divergence_is_unbiased():
    """Over many probes the estimate's mean matches the exact trace within 4 standard errors."""
    mix, sde = mixture_nd(D=8, K=3), VPSDE()
    rsde = sde.reverse(mix.score_fn(sde), probability_flow=True)
    x = mix.sample(4, generator=gen(3), dtype=torch.float64).requires_grad_(True)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    drift = rsde.sde_unchecked(x, t)[0]
    exact = divergence(drift, x, None, retain_graph=True)
    for kind in ("rademacher", "gaussian"):
        probes = draw_probes(kind, 4000, x.detach(), gen(4))
        single = torch.stack([divergence(drift, x, probes[k:k + 1], retain_graph=True) for k in range(0, 4000, 8)])
        mean, se = single.mean(0), single.std(0) / math.sqrt(single.shape[0])
        assert bool(((mean - exact).abs() < 4 * se + 1e-12).all()), (kind, mean, exact, se)
    # The exact trace equals the trace of the full Jacobian computed by autograd.
    jac = torch.autograd.functional.jacobian(lambda y: rsde.sde_unchecked(y, t)[0].sum(0), x.detach())
    assert torch.allclose(exact, torch.einsum("ibi->b", jac), rtol=1e-10, atol=1e-10)
