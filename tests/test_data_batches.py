"""Tests of scoresde.data.batches: iterate_batches."""
from __future__ import annotations

import pytest
import torch

from scoresde.data import iterate_batches


def test_iterate_batches():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    batches = list(iterate_batches((x, y), 4, generator=torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    xs = torch.cat([b[0] for b in batches])[:, 0]
    assert sorted(xs.tolist()) == list(range(10)) and not torch.equal(xs, torch.arange(10.0))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)  # rows stay aligned
    again = list(iterate_batches((x, y), 4, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert [len(b) for b in iterate_batches(x, 4, shuffle=False, drop_last=True)] == [4, 4]
    assert torch.equal(next(iterate_batches(x, 3, shuffle=False)), x[:3])
    with pytest.raises(ValueError, match="first dimension"):
        next(iterate_batches((x, y[:5]), 2))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(x, 0))
