"""The Fréchet distance between two feature sets (the "FID" of Heusel et al. 2017 on any features).

Each set of features is summarised by its mean and covariance, and the distance is the squared
2-Wasserstein distance between the two Gaussians with those moments (Dowson & Landau 1982):

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

``Tr((S_a S_b)^{1/2})`` is computed as ``sum_i sqrt(lambda_i)`` over the eigenvalues of the symmetric
positive semi-definite matrix ``S_a^{1/2} S_b S_a^{1/2}``, which has the same eigenvalues as
``S_a S_b``; both symmetric eigendecompositions are in float64, and eigenvalues within rounding
of 0 (below ``D * eps * max``, or negative) are set to 0. No general (non-symmetric) eigenproblem or iterative square root is involved, so a
singular covariance (fewer samples than dimensions, dead ReLU units) is handled as well.

The estimate from samples is biased upward: with ``n`` samples per set the mean term alone has
expectation ``|mu_a - mu_b|^2 + Tr(S_a)/n_a + Tr(S_b)/n_b``, and the covariance term has a bias of
order ``D^2 / n`` as well. FD values are therefore comparable only at the same sample sizes; read
one against its null (:func:`~scoresde.metrics.sample_quality`).

References: Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter (2017), "GANs trained by a two
time-scale update rule converge to a local Nash equilibrium", NeurIPS; Dowson & Landau (1982),
"The Fréchet distance between multivariate normal distributions", J. Multivariate Anal. 12.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from ._checks import _flat64

__all__ = ["GaussianStats", "feature_statistics", "frechet_distance"]


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``n`` feature vectors, float64 (the covariance with
    the unbiased divisor ``n - 1``). Population moments can be given directly (``n`` is then only
    informative; use ``0`` for "exact")."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int

    def __post_init__(self):
        if self.mean.ndim != 1 or self.cov.shape != (self.mean.shape[0],) * 2:
            raise ValueError(f"GaussianStats needs mean (D,) and cov (D, D), got {tuple(self.mean.shape)} "
                             f"and {tuple(self.cov.shape)}")


def feature_statistics(features: torch.Tensor) -> GaussianStats:
    """Mean and covariance of ``features`` ``(n, *dims)`` (flattened to ``(n, D)``), in float64 on their
    device. The covariance is computed from centred values (no ``E[x x^T] - mu mu^T`` cancellation)."""
    f = _flat64(features, "features")
    mean = f.mean(0)
    c = f - mean
    return GaussianStats(mean, c.T @ c / (f.shape[0] - 1), f.shape[0])


def _stats(x, name: str) -> GaussianStats:
    if isinstance(x, GaussianStats):
        return GaussianStats(x.mean.to(torch.float64), x.cov.to(torch.float64), x.n)
    if isinstance(x, torch.Tensor):
        return feature_statistics(x)
    raise TypeError(f"{name} must be a features tensor (n, D) or GaussianStats, got {type(x).__name__}")


def _psd_eigvals(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a numerically PSD matrix with its rounding noise set to 0: those below
    ``D * eps * max|w|`` (which the eigensolver cannot tell from 0) and the negative ones. Their
    square roots would otherwise add ``sqrt(noise)`` each to the trace."""
    tol = w.shape[0] * torch.finfo(w.dtype).eps * w.abs().max()
    return torch.where(w > tol, w, torch.zeros_like(w))


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a (numerically) positive semi-definite matrix."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * _psd_eigvals(w).sqrt()) @ v.T


def frechet_distance(feat_a: Union[torch.Tensor, GaussianStats], feat_b: Union[torch.Tensor, GaussianStats]) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` between two feature sets.

    Each argument is a features tensor ``(n, *dims)`` (its mean and covariance are taken with
    :func:`feature_statistics`) or a :class:`GaussianStats` (e.g. population moments, for which the
    result is the exact squared 2-Wasserstein distance of the two Gaussians). Computed in float64;
    returns a Python float ``>= 0`` (in squared feature units). See the module docstring for the
    method and the estimator's upward bias at finite ``n``.
    """
    a, b = _stats(feat_a, "feat_a"), _stats(feat_b, "feat_b")
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"the two feature sets have {a.mean.shape[0]} and {b.mean.shape[0]} dimensions")
    if a.mean.device != b.mean.device:
        raise ValueError(f"feat_a is on {a.mean.device} but feat_b is on {b.mean.device}; move them together")
    root_a = _sqrt_psd(a.cov)
    m = root_a @ b.cov @ root_a
    tr_sqrt = _psd_eigvals(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()
    d2 = (a.mean - b.mean).square().sum() + torch.trace(a.cov) + torch.trace(b.cov) - 2.0 * tr_sqrt
    return max(float(d2), 0.0)
