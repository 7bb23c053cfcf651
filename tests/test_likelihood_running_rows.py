"""log_likelihood with the per-sample solver evaluating only the samples still integrating.

The field selects the running samples' Hutchinson probes with the solver's ``rows``. On a
Gaussian-mixture oracle (a row-wise score) every sample's result must be bitwise the one the old
whole-batch evaluation (``running_only=False``) gives, and bitwise independent of its batch mates;
the score must see fewer rows, exactly the sum of the samples' NFE.
"""
from __future__ import annotations

import pytest
import torch

from scoresde import VPSDE, mixture_2d
from scoresde.likelihood import log_likelihood

pytestmark = pytest.mark.usefixtures("single_thread")

FIELDS = ("logp", "prior_logp", "delta_logp", "z", "nfe", "status", "n_accepted", "n_rejected")


class Rows:
    """The oracle score, counting the rows it is evaluated on."""

    def __init__(self, fn):
        self.fn, self.rows, self.calls = fn, 0, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        self.calls += 1
        return self.fn(x, t)


def mixed_batch(n=24, seed=0):
    """Mixture samples (easy) among points far in the tails (hard): very different step counts."""
    mix = mixture_2d()
    x = mix.sample(n, generator=torch.Generator().manual_seed(seed))
    x[1::3] *= 3.0
    x[2::3] += 4.0
    return mix, x


def run(score, sde, x, seed=1, **kw):
    return log_likelihood(score, sde, x, trace=kw.pop("trace", "rademacher"), rtol=1e-5, atol=1e-5,
                          generator=torch.Generator().manual_seed(seed), **kw)


def assert_same(a, i, b, j):
    for name in FIELDS:
        u, v = getattr(a, name)[i], getattr(b, name)[j]
        assert torch.equal(u, v), (name, i, j, u, v)


@pytest.mark.parametrize("n_probes", [1, 3])
def test_running_only_is_bitwise_the_whole_batch_evaluation_with_probes(n_probes):
    mix, x = mixed_batch()
    sde = VPSDE()
    new_score, old_score = Rows(mix.score_fn(sde)), Rows(mix.score_fn(sde))
    new = run(new_score, sde, x, n_probes=n_probes)
    old = run(old_score, sde, x, n_probes=n_probes, running_only=False)
    assert bool(new.ok.all())
    assert len(set(new.nfe.tolist())) > 5  # samples needed very different step counts
    for i in range(x.shape[0]):
        assert_same(new, i, old, i)
    assert new.total_nfe == old.total_nfe == new_score.calls == old_score.calls
    # the network saw only the running samples: each sample's NFE, nothing for the finished ones
    assert new_score.rows == int(new.nfe.sum()) < old_score.rows == old.total_nfe * x.shape[0]


def test_a_samples_result_does_not_depend_on_its_batch_mates():
    """The probes are drawn sample-major, so the first sample has the same probe whatever the batch
    (and the exact trace needs none: there every position is compared)."""
    mix, x = mixed_batch()
    sde = VPSDE()
    score = mix.score_fn(sde)
    easy_mates = torch.cat([x[:1], x[3::3]])  # x[0] among mixture samples
    hard_mates = torch.cat([x[:1], x[1::3], x[2::3]])  # x[0] among tail points
    alone = run(score, sde, x[:1].clone())
    for batch in (x, easy_mates, hard_mates):
        res = run(score, sde, batch)
        assert_same(res, 0, alone, 0)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(2))
    full = run(score, sde, x, trace="exact")
    shuffled = run(score, sde, x[perm], trace="exact")
    old = run(score, sde, x[perm], trace="exact", running_only=False)
    assert len(set(full.nfe.tolist())) > 5
    for j, i in enumerate(perm.tolist()):
        assert_same(shuffled, j, full, i)
        assert_same(shuffled, j, old, j)
