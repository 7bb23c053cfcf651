"""Improved precision and recall (Kynkäänniemi et al. 2019): k-nearest-neighbour manifolds of features.

Each set of features estimates the support of its distribution as a union of balls: around every
feature vector, a ball whose radius is the distance to its ``k``-th nearest neighbour in the same
set (the point itself not counted). Precision is the fraction of generated features inside the
reference manifold (how many samples look real); recall is the fraction of reference features
inside the generated manifold (how much of the data the samples cover). A point on a ball's
boundary counts as inside (``<=``).

Facts a reader can check: a set against itself gives precision = recall = 1 (every point lies in
its own ball); sets farther apart than the largest radius give 0 (no ball reaches across). For
two samples of the same distribution the values are below 1 at any finite size, by an amount
that depends on ``k``, the dimension and the sizes, not only on ``n``; read them against their
null (:func:`~scoresde.metrics.sample_quality`).

Reference: Kynkäänniemi, Karras, Laine, Lehtinen & Aila (2019), "Improved Precision and Recall
Metric for Assessing Generative Models", NeurIPS (Section 2, eq. 1-2; ``k = 3``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._utils import check_int
from ._checks import _flat64

__all__ = ["PrecisionRecall", "precision_recall"]

_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PrecisionRecall:
    """``precision``: fraction of the samples inside the reference's k-NN manifold; ``recall``:
    fraction of the reference inside the samples' manifold; ``k``; ``n_samples``, ``n_reference``."""

    precision: float
    recall: float
    k: int
    n_samples: int
    n_reference: int


def _distances(a: torch.Tensor, b: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    """Distances from rows ``i0:i1`` of ``a`` to every row of ``b``, by direct differences (not the
    ``|a|^2 + |b|^2 - 2 a.b`` expansion), so that duplicated points are exactly 0 apart."""
    return torch.cdist(a[i0:i1], b, compute_mode="donot_use_mm_for_euclid_dist")


def _rows(m: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(m, 1))


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``x`` ``(n, D)`` to its ``k``-th nearest neighbour among the other rows."""
    n = x.shape[0]
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _rows(n)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        d = _distances(x, x, i0, i1)
        d.diagonal(offset=i0).fill_(float("inf"))  # the point itself is not its own neighbour
        out[i0:i1] = d.kthvalue(k, dim=1).values
    return out


def _coverage(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of ``query`` rows within ``radii[j]`` of some ``centres[j]``."""
    inside = 0
    step = _rows(centres.shape[0])
    for i0 in range(0, query.shape[0], step):
        d = _distances(query, centres, i0, min(query.shape[0], i0 + step))
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / query.shape[0]


def precision_recall(samples: torch.Tensor, reference: torch.Tensor, *, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of the features ``samples`` ``(n, *dims)`` against ``reference`` ``(m, *dims)``.

    Manifolds of ``k``-NN balls (Kynkäänniemi et al. 2019, default ``k = 3``; each set needs more
    than ``k`` points); Euclidean distances in float64, in row blocks of bounded memory. See the
    module docstring for the definitions and the values they take in the limiting cases.
    """
    check_int("k", k)
    s = _flat64(samples, "samples", k + 1)
    r = _flat64(reference, "reference", k + 1)
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"samples have {s.shape[1]} features but the reference has {r.shape[1]}")
    if s.device != r.device:
        raise ValueError(f"samples are on {s.device} but the reference is on {r.device}; move them together")
    precision = _coverage(s, r, knn_radii(r, k))
    recall = _coverage(r, s, knn_radii(s, k))
    return PrecisionRecall(precision, recall, k, s.shape[0], r.shape[0])
