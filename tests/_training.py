"""Shared pieces of the training tests: a tiny configuration, the metrics records, state equality."""
from __future__ import annotations

import dataclasses
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



def _labelled(ds, classes=2):
    """``ds`` with class labels: the quantile bin of the first coordinate, ``classes`` bins (a
    labelled copy of a toy set for class-conditional training)."""
    def label(x):
        edges = torch.quantile(ds.train[:, 0], torch.linspace(0, 1, classes + 1)[1:-1].to(ds.train.dtype))
        return torch.bucketize(x[:, 0].contiguous(), edges).long()
    return dataclasses.replace(ds, train_labels=label(ds.train), test_labels=label(ds.test))
