"""The classic 2-D toy data sets as reproducible torch generators, and two ready-made oracles."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._utils import check_int
from .mixture import GaussianMixture

__all__ = ["two_moons", "eight_gaussians", "eight_gaussians_mixture", "checkerboard", "swiss_roll",
           "mixture_2d", "mixture_nd"]


# ---------------------------------------------------------------------------------------------
# Classic 2-D toy data sets.
# ---------------------------------------------------------------------------------------------
def _check_n(n):
    check_int("n", n)


def _rng_kwargs(generator, device, dtype):
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return dict(generator=generator, device=device, dtype=torch.get_default_dtype() if dtype is None else dtype)


def two_moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05,
              device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Two interleaving half circles, ``(n, 2)``.

    The upper moon is ``(cos a, sin a)``, the lower ``(1 - cos a, 0.5 - sin a)`` with ``a ~ U[0, pi]``
    (the geometry of scikit-learn's ``make_moons``, but with random angles); each point is chosen
    from either moon with probability 1/2 and gets ``N(0, noise^2 I)`` added.
    """
    _check_n(n)
    kw = _rng_kwargs(generator, device, dtype)
    a = torch.rand(n, **kw) * math.pi
    upper = torch.rand(n, **kw) < 0.5
    x = torch.where(upper, torch.cos(a), 1.0 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x, y], dim=1)
    return pts + noise * torch.randn(n, 2, **kw)


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    """Eight equal-weight isotropic Gaussians of std ``std`` centred on a circle of ``radius`` at
    angles ``k pi / 4``."""
    ang = torch.arange(8, dtype=torch.float64) * (math.pi / 4.0)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return GaussianMixture(torch.full((8,), 1.0 / 8.0), means, torch.full((8,), float(std)))


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None, radius: float = 2.0,
                    std: float = 0.25, device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``n`` samples ``(n, 2)`` of :func:`eight_gaussians_mixture` (same parameters)."""
    _check_n(n)
    return eight_gaussians_mixture(radius, std).sample(n, generator=generator, device=device, dtype=dtype)


def checkerboard(n: int, generator: Optional[torch.Generator] = None, scale: float = 1.0,
                 device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Uniform on the 8 dark cells of a 4x4 checkerboard on ``[-2 scale, 2 scale]^2``, ``(n, 2)``.

    Cells have side ``scale``; a point ``(x, y)`` is in a dark cell iff
    ``floor(x / scale) + floor(y / scale)`` is even.
    """
    _check_n(n)
    kw = _rng_kwargs(generator, device, dtype)
    x1 = torch.rand(n, **kw) * 4.0 - 2.0
    lower = torch.randint(0, 2, (n,), generator=generator, device=kw["device"]).to(kw["dtype"])
    x2 = torch.rand(n, **kw) - 2.0 * lower + torch.remainder(torch.floor(x1), 2.0)
    return torch.stack([x1, x2], dim=1) * scale


def swiss_roll(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05,
               device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A 2-D swiss roll ``(n, 2)``: ``u (cos u, sin u) / 5`` with ``u ~ U[1.5 pi, 4.5 pi]``, plus
    ``N(0, noise^2 I)`` (the 2-D slice of scikit-learn's ``make_swiss_roll``, scaled by 1/5)."""
    _check_n(n)
    kw = _rng_kwargs(generator, device, dtype)
    u = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, **kw))
    pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1) / 5.0
    return pts + noise * torch.randn(n, 2, **kw)


# ---------------------------------------------------------------------------------------------
# Ready-made oracles.
# ---------------------------------------------------------------------------------------------
def mixture_2d() -> GaussianMixture:
    """A separated 2-D mixture of 4 components with unequal weights ``(0.4, 0.3, 0.2, 0.1)`` and
    unequal diagonal covariances; the closest pair of means is 3.5 apart against stds <= 0.6."""
    weights = [0.4, 0.3, 0.2, 0.1]
    means = [[-2.5, 0.0], [2.5, 0.5], [0.0, 3.0], [0.5, -3.0]]
    stds = [[0.6, 0.4], [0.4, 0.6], [0.3, 0.3], [0.5, 0.25]]
    return GaussianMixture(weights, means, stds)


def mixture_nd(D: int = 16, K: int = 4, *, radius: float = 4.0, std_range: tuple = (0.3, 0.8),
               diagonal: bool = True, seed: int = 0) -> GaussianMixture:
    """A deterministic, separated ``D``-dimensional mixture of ``K`` unequal components.

    Means are ``radius`` times orthonormal directions (the Q factor of a seeded Gaussian matrix)
    when ``K <= D``, so every pair of means is ``radius * sqrt(2)`` apart; for ``K > D`` they are
    seeded random unit directions times ``radius``. Weights are proportional to ``1, 2, ..., K``.
    Standard deviations are drawn uniformly from ``std_range``, per coordinate (``diagonal=True``)
    or per component. Everything comes from ``torch.Generator().manual_seed(seed)`` in float64.
    """
    if not (isinstance(D, int) and D >= 1 and isinstance(K, int) and K >= 1):
        raise ValueError(f"D and K must be positive ints, got D={D!r}, K={K!r}")
    lo, hi = float(std_range[0]), float(std_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"std_range must satisfy 0 < lo <= hi, got {std_range}")
    g = torch.Generator().manual_seed(seed)
    if K <= D:
        q, r = torch.linalg.qr(torch.randn(D, K, generator=g, dtype=torch.float64))
        dirs = (q * torch.sign(torch.diagonal(r))).T  # (K, D), orthonormal rows
    else:
        dirs = torch.randn(K, D, generator=g, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
    means = radius * dirs
    weights = torch.arange(1, K + 1, dtype=torch.float64)
    shape = (K, D) if diagonal else (K,)
    stds = lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds)
