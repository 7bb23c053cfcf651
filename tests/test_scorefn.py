"""Tests of scoresde.scorefn: the score-function contract that every sampler and the likelihood check."""
from __future__ import annotations

import pytest
import torch

from scoresde import VPSDE, MLPScoreNet, ScoreModel
from scoresde.scorefn import CheckedScore


def test_passes_a_valid_score_through_and_counts_calls():
    score = CheckedScore(lambda x, t: -x)
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    assert torch.equal(score(x, t), -x) and torch.equal(score(x, t), -x)
    assert score.calls == 2
    assert CheckedScore(score).score_fn is score.score_fn  # wrapping twice checks once


def test_a_score_model_is_a_score_fn():
    torch.manual_seed(0)
    model = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=4), VPSDE())
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    with torch.no_grad():
        assert torch.equal(CheckedScore(model)(x, t), model.score(x, t))


@pytest.mark.parametrize("bad,err,match", [
    (lambda x, t: x.numpy(), TypeError, "must return a tensor"),
    (lambda x, t: x[:, :1], ValueError, "shaped like x"),
    (lambda x, t: x.double(), ValueError, "dtype"),
])
def test_contract_violations_say_what_to_change(bad, err, match):
    with pytest.raises(err, match=match):
        CheckedScore(bad)(torch.randn(3, 2), torch.full((3,), 0.5))


def test_not_callable():
    with pytest.raises(TypeError, match="callable"):
        CheckedScore(3)
