"""Shared pieces of the training tests: a tiny configuration, the metrics records, state equality."""
from __future__ import annotations

import json

import torch

from scoresde.training import TrainConfig


def _cfg(tmp_path, name="run", **kw):
    base = dict(dataset="mixture_2d", steps=12, batch_size=32, hidden=16, depth=2, emb_dim=8, lr=1e-2, warmup=3,
                ema_decay=0.9, checkpoint_every=4, log_every=2, out_dir=str(tmp_path / name), device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _records(path, kind="train"):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k

