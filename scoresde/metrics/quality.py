"""Sample quality of a generative model in one call: Fréchet distance, KID and precision/recall of
the samples against a reference set, each next to its null (the same statistic between two
disjoint halves of the reference at the same sizes), so that a number is read against the floor
that finite samples of the true distribution would reach.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .._utils import check_choice, check_int
from .digits import digits_features
from .frechet import frechet_distance
from .kernel_distance import kid
from .knn_manifolds import precision_recall

__all__ = ["SampleQuality", "sample_quality"]

FEATURES = ("digits",)
Features = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class SampleQuality:
    """Sample-quality statistics of ``samples`` against ``reference`` on one feature map.

    ``fd``: Fréchet distance (:func:`frechet_distance`); ``kid``, ``kid_stderr``: KID and its
    standard error (:func:`kid`); ``precision``, ``recall``: k-NN precision and recall
    (:func:`precision_recall`). The ``*_null`` fields hold the same statistics between two disjoint
    halves of the reference at the same sizes (``None`` when ``null=False``): a perfect sampler's
    ``fd`` and ``kid`` are near ``fd_null`` and ``kid_null`` (``kid_null`` is near 0), its precision
    and recall near ``precision_null`` and ``recall_null``. ``n_samples`` and ``n_reference`` are
    the sizes the statistics were computed at; ``features`` names the feature map; ``feature_dim``
    its dimension; ``k`` the neighbour count.
    """

    fd: float
    kid: float
    kid_stderr: float
    precision: float
    recall: float
    fd_null: Optional[float]
    kid_null: Optional[float]
    kid_null_stderr: Optional[float]
    precision_null: Optional[float]
    recall_null: Optional[float]
    n_samples: int
    n_reference: int
    features: str
    feature_dim: int
    k: int

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A small table: each statistic, its value and its null."""
        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        rows = [("FD", num(self.fd, ".4g"), num(self.fd_null, ".4g")),
                ("KID", f"{self.kid:.3g} +- {self.kid_stderr:.2g}",
                 "-" if self.kid_null is None else f"{self.kid_null:.3g} +- {self.kid_null_stderr:.2g}"),
                (f"precision (k={self.k})", num(self.precision, ".3f"), num(self.precision_null, ".3f")),
                (f"recall (k={self.k})", num(self.recall, ".3f"), num(self.recall_null, ".3f"))]
        head = (f"sample quality on {self.features} features (D={self.feature_dim}), "
                f"{self.n_samples} samples vs {self.n_reference} reference")
        lines = [head, f"{'statistic':<16} {'samples':>20} {'null':>20}"]
        lines += [f"{name:<16} {v:>20} {nv:>20}" for name, v, nv in rows]
        return "\n".join(lines)


def _extract(x: torch.Tensor, features: Features, batch_size: int) -> torch.Tensor:
    if features is None:
        return x.detach().reshape(x.shape[0], -1)
    if isinstance(features, str):
        check_choice("features", features, FEATURES, hint=", None (the inputs are the features) or a callable")
        return digits_features(x, batch_size=batch_size)
    if not callable(features):
        raise TypeError(f"features must be None, one of {FEATURES} or a callable (N, *dims) -> (N, D), "
                        f"got {type(features).__name__}")
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            out.append(features(xb).detach().reshape(xb.shape[0], -1))
    return torch.cat(out)


def _feature_name(features: Features) -> str:
    if features is None:
        return "raw"
    if isinstance(features, str):
        return features
    return getattr(features, "__name__", type(features).__name__)


def sample_quality(samples: torch.Tensor, reference: torch.Tensor, *, features: Features = None, null: bool = True,
                   k: int = 3, kid_subset_size: Optional[int] = None, kid_subsets: int = 100,
                   batch_size: int = 1024, generator: Optional[torch.Generator] = None) -> SampleQuality:
    """Fréchet distance, KID and precision/recall of ``samples`` against ``reference``, with their nulls.

    ``samples`` ``(n, *dims)`` and ``reference`` ``(m, *dims)`` are mapped by ``features``: ``None``
    uses the inputs themselves (flattened), ``"digits"`` the built-in 8x8-digits network
    (:func:`digits_features`, for images ``(N, 1, 8, 8)`` on ``[-1, 1]``), a callable ``(B, *dims) ->
    (B, D)`` any other map (called under ``torch.no_grad()`` in batches of ``batch_size``).

    With ``null=True`` (default) the reference is split at random into two disjoint halves ``A``
    and ``B`` of ``h = m // 2`` each; the statistics are computed for samples vs ``B`` and, as
    the null, for ``A`` vs ``B``, both with ``min(n, h)`` points on the first side (the samples
    are subsampled at random when there are more), so each number and its null share their sizes
    and with them the finite-sample bias of FD and of precision/recall. With ``null=False`` all
    samples are compared with the whole reference. ``generator`` (a CPU ``torch.Generator``) drives
    the split, the subsampling and KID's subsets (``kid_subset_size``, ``kid_subsets``; see
    :func:`kid`); ``k`` is the neighbour count of precision/recall.
    """
    check_int("k", k)
    check_int("batch_size", batch_size)
    fs, fr = _extract(samples, features, batch_size), _extract(reference, features, batch_size)
    if fs.shape[1] != fr.shape[1]:
        raise ValueError(f"the samples have {fs.shape[1]} features but the reference has {fr.shape[1]}")
    fs, fr = fs.to(torch.float64), fr.to(fs.device, torch.float64)

    def stats(x, y):
        kd = kid(x, y, subset_size=kid_subset_size, subsets=kid_subsets, generator=generator)
        pr = precision_recall(x, y, k=k)
        return frechet_distance(x, y), kd, pr

    if null:
        h = fr.shape[0] // 2
        if h < k + 1 or h < 3:
            raise ValueError(f"a reference of {fr.shape[0]} points is too small to split in halves for the "
                             "null; pass more reference points or null=False")
        perm = torch.randperm(fr.shape[0], generator=generator).to(fr.device)
        half_a, half_b = fr[perm[:h]], fr[perm[h:2 * h]]
        n = min(fs.shape[0], h)
        if fs.shape[0] > n:
            fs = fs[torch.randperm(fs.shape[0], generator=generator)[:n].to(fs.device)]
        fd, kd, pr = stats(fs, half_b)
        fd0, kd0, pr0 = stats(half_a[:n], half_b)
        nulls = dict(fd_null=fd0, kid_null=kd0.value, kid_null_stderr=kd0.stderr, precision_null=pr0.precision,
                     recall_null=pr0.recall)
        n_ref = h
    else:
        fd, kd, pr = stats(fs, fr)
        nulls = dict(fd_null=None, kid_null=None, kid_null_stderr=None, precision_null=None, recall_null=None)
        n, n_ref = fs.shape[0], fr.shape[0]
    return SampleQuality(fd=fd, kid=kd.value, kid_stderr=kd.stderr, precision=pr.precision, recall=pr.recall,
                         **nulls, n_samples=n, n_reference=n_ref, features=_feature_name(features),
                         feature_dim=fs.shape[1], k=k)
