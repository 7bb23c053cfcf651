"""Two-sample distances and moment checks for testing samplers against a known distribution.

- :func:`energy_distance` — the unbiased (U-statistic) estimate of the energy distance
  ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Székely & Rizzo 2013), or the V-statistic on request.
- :func:`mmd` — the unbiased estimate ``MMD_u^2`` of the squared maximum mean discrepancy with a
  Gaussian kernel, bandwidth by the median heuristic by default (Gretton et al. 2012).
- :func:`null_distribution` / :func:`calibrate_threshold` — the statistic's distribution between two
  independent samples of the *true* distribution at the same ``n``, so a test can say "the
  sampler-vs-truth distance is below the truth-vs-truth 99th percentile".
- :func:`moment_errors` — mean/covariance errors with standard-error-scaled versions, and
  per-component weights and moments via the mixture's Bayes classifier.

All statistics flatten ``(n, *dims)`` inputs to ``(n, D)``, accumulate in float64 on the inputs'
device, and build the ``n x m`` distance matrix in row chunks so memory stays bounded
(about ``chunk_size * m`` float64 values at a time) for ``n`` in the tens of thousands.

References: Székely & Rizzo (2013), "Energy statistics: A class of statistics based on distances",
J. Stat. Plann. Inference 143; Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), "A Kernel
Two-Sample Test", JMLR 13 (eq. 3 for the unbiased MMD^2_u, Section 8 for the median heuristic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._utils import check_int
from ._checks import _flat64

__all__ = [
    "energy_distance",
    "mmd",
    "null_distribution",
    "calibrate_threshold",
    "MomentErrors",
    "moment_errors",
]

_CHUNK_ELEMENTS = 1 << 22  # ~32 MB of float64 per distance block (x D when broadcasting differences)
_MEDIAN_SUBSAMPLE = 2000
_SMALL_BLOCK = 1 << 16  # below this many difference entries, broadcast instead of cdist
_DIRECT_MAX_DIM = 32  # up to this D, distances by direct differences; above, by a matrix product


def _pair(x, y):
    xf, yf = _flat64(x, "x"), _flat64(y, "y")
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y must have the same number of values per sample, got {xf.shape[1]} and {yf.shape[1]}")
    if xf.device != yf.device:
        raise ValueError(f"x is on {xf.device} but y is on {yf.device}; move them to the same device")
    # Distances are translation invariant: centring on the pooled mean reduces the cancellation
    # in |a|^2 + |b|^2 - 2 a.b.
    c = torch.cat([xf, yf]).mean(0)
    return xf - c, yf - c


def _direct(a: torch.Tensor) -> bool:
    return a.shape[1] <= _DIRECT_MAX_DIM


def _dist_block(a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor, squared: bool) -> torch.Tensor:
    """Euclidean distances (or their squares) between the rows of ``a`` and ``b``, float64.

    Small ``D``: direct differences (exact zeros on the diagonal, no cancellation), by broadcasting
    on accelerators and for small blocks, by ``cdist`` for large CPU blocks (there it is the fastest
    and broadcasting's thread start-up no longer matters). Large ``D``: ``|a|^2 + |b|^2 - 2 a.b``.
    """
    D = a.shape[1]
    if _direct(a):
        if a.device.type != "cpu" or a.shape[0] * b.shape[0] * D <= _SMALL_BLOCK:
            d2 = (a[:, None, :] - b[None, :, :]).square_().sum(-1)
            return d2 if squared else d2.sqrt_()
        d = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
        return d.square_() if squared else d
    d2 = torch.addmm(b2[None, :], a, b.T, alpha=-2.0).add_(a2[:, None]).clamp_min_(0.0)
    return d2 if squared else d2.sqrt_()


def _pair_sum(a: torch.Tensor, b: Optional[torch.Tensor], fn, squared: bool, chunk_size: Optional[int]) -> torch.Tensor:
    """``sum_{i,j} fn(d(a_i, b_j))`` in float64; with ``b=None`` the sum over ``i != j`` of ``a`` with itself.

    ``d`` is the distance, or its square when ``squared``. Rows are processed in chunks of
    ``chunk_size``; the within-sample sum visits only the upper triangle and doubles it.
    """
    same = b is None
    if same:
        b = a
    n, m = a.shape[0], b.shape[0]
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    if chunk_size is None:
        # entries held at once per row: m distances, times D differences when broadcasting
        per_row = m * (a.shape[1] if (_direct(a) and a.device.type != "cpu") else 1)
        rows = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    else:
        rows = chunk_size
    a2 = (a * a).sum(1)
    b2 = a2 if same else (b * b).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        if same:
            v = fn(_dist_block(a[i0:i1], b[i0:], a2[i0:i1], b2[i0:], squared))
            w = i1 - i0
            r = torch.arange(w, device=a.device)
            upper = r[:, None] < r[None, :]  # strictly above the diagonal of the square part
            total = total + 2.0 * ((v[:, :w] * upper).sum() + v[:, w:].sum())
        else:
            total = total + fn(_dist_block(a[i0:i1], b, a2[i0:i1], b2, squared)).sum()
    return total


def _identity(v):
    return v


def energy_distance(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = True,
                    chunk_size: Optional[int] = None) -> float:
    """Energy distance between the samples ``x`` ``(n, *dims)`` and ``y`` ``(m, *dims)``.

    Estimates ``E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Euclidean norms of the flattened
    samples; Székely & Rizzo 2013), which is ``>= 0`` and zero iff the distributions agree.

    ``unbiased=True`` (default): the U-statistic
    ``2/(nm) sum_ij |x_i - y_j| - 1/(n(n-1)) sum_{i!=j} |x_i - x_j| - 1/(m(m-1)) sum_{i!=j} |y_i - y_j|``,
    whose expectation is exactly ``E(X, Y)`` (so it is zero-mean, and can be negative, when the two
    distributions agree). ``unbiased=False``: the V-statistic (diagonal included, divisors
    ``n^2``, ``m^2``), always ``>= 0``, with expectation ``E(X, Y) + E|X - X'|/n + E|Y - Y'|/m``.

    Returns a Python float. ``chunk_size`` is the number of rows of each distance block
    (default: about 4M entries per block).
    """
    a, b = _pair(x, y)
    n, m = a.shape[0], b.shape[0]
    ident = _identity
    xy = _pair_sum(a, b, ident, False, chunk_size) / (n * m)
    xx = _pair_sum(a, None, ident, False, chunk_size)
    yy = _pair_sum(b, None, ident, False, chunk_size)
    if unbiased:
        xx, yy = xx / (n * (n - 1)), yy / (m * (m - 1))
    else:
        xx, yy = xx / (n * n), yy / (m * m)
    return float(2.0 * xy - xx - yy)


def _median_bandwidth(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median pairwise Euclidean distance of the pooled sample (at most 2000 points, a fixed-seed
    subsample beyond that; the median of an even count is the mean of the middle two)."""
    z = torch.cat([a, b])
    if z.shape[0] > _MEDIAN_SUBSAMPLE:
        idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:_MEDIAN_SUBSAMPLE]
        z = z[idx.to(z.device)]
    h = float(torch.quantile(torch.pdist(z), 0.5))
    if not h > 0:
        raise ValueError("the median pairwise distance is 0 (most samples coincide); pass a bandwidth")
    return h


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: Optional[float] = None, *,
        chunk_size: Optional[int] = None) -> float:
    """Unbiased squared MMD with the Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``.

    Returns ``MMD_u^2`` (Gretton et al. 2012, eq. 3):
    ``1/(n(n-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j) - 2/(nm) sum_ij k(x_i, y_j)``,
    an unbiased estimate of ``MMD^2`` (zero-mean under the null; it can be negative). Inputs are
    ``(n, *dims)`` and ``(m, *dims)``, flattened. ``bandwidth=None`` uses the median heuristic:
    ``h`` = median Euclidean distance between points of the pooled sample (Gretton et al. 2012,
    Section 8), computed on a fixed-seed subsample of at most 2000 points. Returns a Python float.
    """
    a, b = _pair(x, y)
    n, m = a.shape[0], b.shape[0]
    h = _median_bandwidth(a, b) if bandwidth is None else float(bandwidth)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be a finite positive number, got {bandwidth!r}")
    inv = 1.0 / (2.0 * h * h)

    def kern(d2):
        return d2.mul_(-inv).exp_()

    xy = _pair_sum(a, b, kern, True, chunk_size) / (n * m)
    xx = _pair_sum(a, None, kern, True, chunk_size) / (n * (n - 1))
    yy = _pair_sum(b, None, kern, True, chunk_size) / (m * (m - 1))
    return float(xx + yy - 2.0 * xy)


def null_distribution(sample_fn: Callable[..., torch.Tensor], n: int, *,
                      statistic: Callable[[torch.Tensor, torch.Tensor], float] = energy_distance,
                      repeats: int = 100, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``repeats`` values of ``statistic(x, y)`` for independent ``x, y = sample_fn(n, generator=generator)``
    drawn from the true distribution: the statistic's null distribution at sample size ``n``.
    Returns a float64 CPU tensor of shape ``(repeats,)``. ``sample_fn`` is e.g. ``mixture.sample``.
    """
    check_int("n", n, 2)
    check_int("repeats", repeats)
    vals = []
    for _ in range(repeats):
        x = sample_fn(n, generator=generator)
        y = sample_fn(n, generator=generator)
        vals.append(float(statistic(x, y)))
    return torch.tensor(vals, dtype=torch.float64)


def calibrate_threshold(sample_fn: Callable[..., torch.Tensor], n: int, *,
                        statistic: Callable[[torch.Tensor, torch.Tensor], float] = energy_distance,
                        repeats: int = 100, quantile: float = 0.99,
                        generator: Optional[torch.Generator] = None) -> float:
    """The ``quantile`` of :func:`null_distribution` (linear interpolation between order statistics).

    A sampler whose ``n`` samples are ``x`` passes at level ``1 - quantile`` when
    ``statistic(x, sample_fn(n)) <= calibrate_threshold(sample_fn, n, ...)``. The returned value is
    itself an estimate from ``repeats`` draws: for ``quantile=0.99`` use ``repeats >= 100``.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    null = null_distribution(sample_fn, n, statistic=statistic, repeats=repeats, generator=generator)
    return float(torch.quantile(null, float(quantile)))


@dataclass(frozen=True)
class MomentErrors:
    """Moment comparison of a sample with a :class:`~scoresde.targets.GaussianMixture`.

    Global: ``mean_error = max_i |mean_i - true_i|``, ``mean_z`` the same scaled by the standard
    error ``sqrt(true_cov_ii / n)``; ``cov_error = max_ij |cov_ij - true_ij|``, ``cov_z`` scaled by
    the sample's own standard error of each entry (std of ``(x_i - mean_i)(x_j - mean_j)`` over
    ``sqrt(n)``). Per component ``k`` (samples assigned by the mixture's Bayes classifier
    ``component_of``): ``weights`` (empirical fractions) vs ``true_weights``, ``weight_z =
    max_k |w_hat_k - w_k| / sqrt(w_k (1 - w_k) / n)``, ``component_mean_error`` and
    ``component_cov_error`` (max abs entry error, ``nan`` for fewer than 2 samples), ``counts``.
    The hard assignment biases per-component moments where components overlap.
    """

    n: int
    mean: torch.Tensor
    covariance: torch.Tensor
    mean_error: float
    mean_z: float
    cov_error: float
    cov_z: float
    weights: torch.Tensor
    true_weights: torch.Tensor
    weight_z: float
    counts: torch.Tensor
    component_mean_error: torch.Tensor
    component_cov_error: torch.Tensor


def _sample_cov(xf: torch.Tensor) -> torch.Tensor:
    c = xf - xf.mean(0)
    return c.T @ c / (xf.shape[0] - 1)


def moment_errors(x: torch.Tensor, mixture) -> MomentErrors:
    """Compare the sample ``x`` ``(n, *dims)`` with ``mixture`` (a ``GaussianMixture``) moment by moment.

    Everything is computed in float64 on the CPU; see :class:`MomentErrors` for the fields.
    """
    xf = _flat64(x, "x").cpu()
    n, D = xf.shape
    if D != mixture.dim:
        raise ValueError(f"x has {D} values per sample but the mixture has D={mixture.dim}")
    mean = xf.mean(0)
    cov = _sample_cov(xf)
    true_mean, true_cov = mixture.mean(), mixture.covariance()
    mean_diff = (mean - true_mean).abs()
    mean_z = float((mean_diff / torch.sqrt(torch.diagonal(true_cov) / n)).max())
    c = xf - mean
    c2 = c * c
    # Var of the product (x_i - mean_i)(x_j - mean_j): E[c_i^2 c_j^2] - E[c_i c_j]^2, in (D, D) memory.
    prod_var = (c2.T @ c2 / n - (c.T @ c / n) ** 2).clamp_min(0.0)
    cov_se = torch.sqrt(prod_var / n)
    cov_diff = (cov - true_cov).abs()
    cov_z = float((cov_diff / cov_se.clamp_min(torch.finfo(torch.float64).tiny)).max())

    K = mixture.n_components
    k = mixture.component_of(xf)
    counts = torch.bincount(k, minlength=K)
    w_hat = counts.to(torch.float64) / n
    w = mixture.weights
    weight_z = float(((w_hat - w).abs() / torch.sqrt(w * (1 - w) / n).clamp_min(1e-300)).max())
    mus, var = mixture.means, mixture.variances
    cm_err = torch.full((K,), float("nan"), dtype=torch.float64)
    cc_err = torch.full((K,), float("nan"), dtype=torch.float64)
    for j in range(K):
        xs = xf[k == j]
        if xs.shape[0] >= 1:
            cm_err[j] = (xs.mean(0) - mus[j]).abs().max()
        if xs.shape[0] >= 2:
            cc_err[j] = (_sample_cov(xs) - torch.diag(var[j])).abs().max()
    return MomentErrors(
        n=n, mean=mean, covariance=cov, mean_error=float(mean_diff.max()), mean_z=mean_z,
        cov_error=float(cov_diff.max()), cov_z=cov_z, weights=w_hat, true_weights=w, weight_z=weight_z,
        counts=counts, component_mean_error=cm_err, component_cov_error=cc_err,
    )
