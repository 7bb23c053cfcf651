"""Kernel Inception Distance (Bińkowski et al. 2018) on any features, with an honest standard error.

KID is the unbiased estimate ``MMD_u^2`` (Gretton et al. 2012, eq. 3) of the squared maximum mean
discrepancy with the cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3`` (``D`` = feature
dimension). As in Bińkowski et al., it is averaged over ``subsets`` random subsets of size
``subset_size`` (default ``min(1000, n)``), drawn without replacement within a subset and
independently across subsets and between the two sets. Each subset estimate is unbiased, so the
mean is too (zero-mean when the two distributions agree; it can be negative).

Standard error. Given the data, the subsets average to the full-data U-statistic ``U`` (every pair
is equally likely to be drawn), so by the law of total variance

    Var(KID) = Var(U) + E[Var(subset value | data)] / subsets.

The second term is estimated by the sample variance of the subset values (it is zero when the
subsets are the whole sets). The first starts from the two-sample delete-one jackknife of ``U``
(Arvesen 1969), computed exactly from the kernel's row sums in ``O((n_a + n_b)^2 D)`` time and
bounded memory. For a degree-2 U-statistic the jackknife is exact in expectation for the
first-order (``1/n``) term of the variance and counts the degenerate (``1/n^2``) term about twice;
that excess is estimated (unbiased U-statistics of the Hoeffding components) and subtracted, and
the result is floored at the degenerate term, below which ``Var(U)`` cannot be. So the standard
error is accurate when the distributions differ (the first-order term dominates); when they agree
the first-order term vanishes, the unfloored estimate would be nearly unbiased but negative a fifth
of the time, and the floor makes the standard error conservative (by about 10-30% in the tests;
the plain jackknife would be ``sqrt(2)`` too large).

References: Bińkowski, Sutherland, Arbel & Gretton (2018), "Demystifying MMD GANs", ICLR
(Section 3 and Appendix for KID); Gretton et al. (2012), "A Kernel Two-Sample Test", JMLR 13;
Arvesen (1969), "Jackknifing U-statistics", Ann. Math. Statist. 40.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._utils import check_int
from ._checks import _flat64

__all__ = ["KIDResult", "kid"]

_CHUNK_ELEMENTS = 1 << 22  # kernel entries per block (32 MB of float64)
DEFAULT_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class KIDResult:
    """The KID estimate and its standard error.

    ``value``: the mean over subsets of ``MMD_u^2`` with the cubic kernel (in squared kernel units;
    papers often quote ``1000 x`` it); ``stderr``: its standard error over draws of the data and
    the subsets; ``full``: the U-statistic on all the data (the subsets' conditional mean);
    ``n_a``, ``n_b``: the set sizes; ``subset_size``, ``subsets``: the subsets used (``subsets`` is 1
    when the subsets are the whole sets).
    """

    value: float
    stderr: float
    full: float
    n_a: int
    n_b: int
    subset_size: int
    subsets: int


def _kernel_sums(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Sums of the cubic kernel ``K`` and of ``K^2`` over the pairs the U-statistic uses (the
    diagonal of the within-set matrices excluded), in float64, in row blocks.

    ``ra``/``rb``: row sums of ``K_aa``/``K_bb``; ``ca``/``cb``: row/column sums of ``K_ab``;
    ``qa``, ``qb``, ``qca``, ``qcb``: the same for ``K^2`` (for the variance's second-order term).
    """
    d = a.shape[1]
    one = torch.ones((), dtype=a.dtype, device=a.device)

    def rows(x, y, same):
        out = x.new_empty((2, x.shape[0]), dtype=torch.float64)
        cols = x.new_zeros((2, y.shape[0]), dtype=torch.float64)
        step = max(1, _CHUNK_ELEMENTS // max(y.shape[0], 1))
        for i in range(0, x.shape[0], step):
            k = torch.addmm(one, x[i:i + step], y.T, alpha=1.0 / d).pow_(3)
            if same:
                k.diagonal(offset=i).zero_()
            k2 = k.square()
            out[0, i:i + step], out[1, i:i + step] = k.sum(1), k2.sum(1)
            cols[0] += k.sum(0)
            cols[1] += k2.sum(0)
        return out, cols

    (ra, qa), _ = rows(a, a, True)
    (rb, qb), _ = rows(b, b, True)
    (ca, qca), (cb, qcb) = rows(a, b, False)
    return dict(ra=ra, rb=rb, ca=ca, cb=cb, qa=qa, qb=qb, qca=qca, qcb=qcb)


def _u_statistic(s: dict) -> torch.Tensor:
    n_a, n_b = s["ra"].shape[0], s["rb"].shape[0]
    return s["ra"].sum() / (n_a * (n_a - 1)) + s["rb"].sum() / (n_b * (n_b - 1)) - 2.0 * s["ca"].sum() / (n_a * n_b)


def _jackknife(s: dict) -> float:
    """Two-sample delete-one jackknife variance of the U-statistic (Arvesen 1969), from the row sums.

    Deleting ``a_i`` gives ``U_(-i) = (A - 2 ra_i)/((n_a-1)(n_a-2)) + B/(n_b(n_b-1))
    - 2 (C - ca_i)/((n_a-1) n_b)`` (``A, B, C`` the sums of ``ra, rb, ca``); only the deviations
    from the mean over ``i`` enter, and they are formed directly (no cancellation).
    """
    ra, rb, ca, cb = s["ra"], s["rb"], s["ca"], s["cb"]
    n_a, n_b = ra.shape[0], rb.shape[0]
    dev_a = -2.0 * (ra - ra.mean()) / ((n_a - 1) * (n_a - 2)) + 2.0 * (ca - ca.mean()) / ((n_a - 1) * n_b)
    dev_b = -2.0 * (rb - rb.mean()) / ((n_b - 1) * (n_b - 2)) + 2.0 * (cb - cb.mean()) / ((n_b - 1) * n_a)
    return float((n_a - 1) / n_a * dev_a.square().sum() + (n_b - 1) / n_b * dev_b.square().sum())


def _degenerate(r, q, n) -> float:
    """Unbiased ``delta = E psi^2 = E k^2 - 2 E mu(X)^2 + theta^2`` of a within-set kernel, from its
    row sums ``r`` and squared row sums ``q`` (U-statistics over distinct pairs, triples, quadruples)."""
    S, Q, t = r.sum(), q.sum(), (r.square() - q).sum()
    ek2 = Q / (n * (n - 1))
    emu2 = t / (n * (n - 1) * (n - 2))
    theta2 = (S * S - 2.0 * Q - 4.0 * t) / (n * (n - 1) * (n - 2) * (n - 3))
    return float(ek2 - 2.0 * emu2 + theta2)


def _degenerate_cross(ca, cb, qca, qcb, n_a, n_b) -> float:
    """Unbiased ``delta_ab = E k^2 - E mu_a(X)^2 - E mu_b(Y)^2 + theta^2`` of the cross kernel."""
    C, Q = ca.sum(), qca.sum()
    ta, tb = (ca.square() - qca).sum(), (cb.square() - qcb).sum()
    ek2 = Q / (n_a * n_b)
    emu_a2 = ta / (n_a * n_b * (n_b - 1))
    emu_b2 = tb / (n_b * n_a * (n_a - 1))
    theta2 = (C * C - ta - tb - Q) / (n_a * (n_a - 1) * n_b * (n_b - 1))
    return float(ek2 - emu_a2 - emu_b2 + theta2)


def _variance(s: dict) -> float:
    """Variance of the U-statistic: the jackknife less its excess on the degenerate term.

    With the Hoeffding decomposition ``k(x, x') = theta + g(x) + g(x') + psi(x, x')`` and ``delta =
    E psi^2``, the jackknife's expectation is exact for the first-order (``g``) part and exceeds
    ``Var(U)`` by ``delta_aa (4/(n_a(n_a-2)) - 2/(n_a(n_a-1))) + delta_bb (same in n_b)
    + 4 delta_ab/(n_a n_b)``, which is subtracted with unbiased estimates of the ``delta``. ``Var(U)``
    is at least its degenerate part ``2 delta_aa/(n_a(n_a-1)) + 2 delta_bb/(n_b(n_b-1))
    + 4 delta_ab/(n_a n_b)``, the floor of the result.
    """
    n_a, n_b = s["ra"].shape[0], s["rb"].shape[0]
    d_aa = max(_degenerate(s["ra"], s["qa"], n_a), 0.0) if n_a > 3 else 0.0
    d_bb = max(_degenerate(s["rb"], s["qb"], n_b), 0.0) if n_b > 3 else 0.0
    d_ab = max(_degenerate_cross(s["ca"], s["cb"], s["qca"], s["qcb"], n_a, n_b), 0.0)
    excess = (d_aa * (4.0 / (n_a * (n_a - 2)) - 2.0 / (n_a * (n_a - 1)))
              + d_bb * (4.0 / (n_b * (n_b - 2)) - 2.0 / (n_b * (n_b - 1))) + 4.0 * d_ab / (n_a * n_b))
    floor = 2.0 * d_aa / (n_a * (n_a - 1)) + 2.0 * d_bb / (n_b * (n_b - 1)) + 4.0 * d_ab / (n_a * n_b)
    return max(_jackknife(s) - excess, floor)


def kid(feat_a: torch.Tensor, feat_b: torch.Tensor, *, subset_size: Optional[int] = None, subsets: int = 100,
        generator: Optional[torch.Generator] = None) -> KIDResult:
    """Kernel Inception Distance between the features ``feat_a`` ``(n_a, *dims)`` and ``feat_b`` ``(n_b, *dims)``.

    The mean over ``subsets`` random subsets of size ``subset_size`` (default
    ``min(1000, n_a, n_b)``) of the unbiased ``MMD_u^2`` with the kernel ``(x.y / D + 1)^3``
    (Bińkowski et al. 2018), with its standard error (see the module docstring: accurate when the
    distributions differ, somewhat conservative when they agree). The
    subsets are drawn with ``generator`` (a CPU ``torch.Generator``; default: the global one). When
    the subsets are the whole sets, ``value`` is the full-data U-statistic and no subsets are drawn.
    Features are used as given (the polynomial kernel is not translation invariant), in float64.
    """
    a, b = _flat64(feat_a, "feat_a", 3), _flat64(feat_b, "feat_b", 3)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two feature sets have {a.shape[1]} and {b.shape[1]} dimensions")
    if a.device != b.device:
        raise ValueError(f"feat_a is on {a.device} but feat_b is on {b.device}; move them together")
    n_a, n_b = a.shape[0], b.shape[0]
    m = min(DEFAULT_SUBSET_SIZE, n_a, n_b) if subset_size is None else subset_size
    check_int("subset_size", m, 2)
    check_int("subsets", subsets)
    if m > min(n_a, n_b):
        raise ValueError(f"subset_size={m} is larger than the smaller set ({min(n_a, n_b)} samples); "
                         "pass a smaller subset_size")
    whole = m == n_a and m == n_b
    if not whole and subsets < 2:
        raise ValueError(f"subsets={subsets}: with subsets smaller than the sets (subset_size={m}) at least 2 are "
                         "needed to estimate the subsampling noise in the standard error")
    sums = _kernel_sums(a, b)
    full = float(_u_statistic(sums))
    var = _variance(sums)
    if whole:
        return KIDResult(full, math.sqrt(var), full, n_a, n_b, m, 1)
    vals = []
    for _ in range(subsets):
        ia = torch.randperm(n_a, generator=generator)[:m].to(a.device)
        ib = torch.randperm(n_b, generator=generator)[:m].to(b.device)
        vals.append(float(_u_statistic(_kernel_sums(a[ia], b[ib]))))
    v = torch.tensor(vals, dtype=torch.float64)
    mc = float(v.var()) / subsets
    return KIDResult(float(v.mean()), math.sqrt(var + mc), full, n_a, n_b, m, subsets)
