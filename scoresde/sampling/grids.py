"""Time grids shared by every fixed-step sampler.

A grid is the descending list of host floats ``T = t_0 > t_1 > ... > t_K = eps`` that a sampler
steps through. Every grid is built from the SDE's closed forms (its log-SNR and the inverse), so
the same name means the same thing for VP, sub-VP and VE:

- ``"uniform"``: equal steps in ``t`` (Song et al. 2021).
- ``"logsnr"``: equal steps in ``lambda = log(m/s)``, the variable of the exponential integrators
  (DPM-Solver, Lu et al. 2022, Sec. 3.3, "time_uniform" vs "logSNR"); ``lambda`` is half the SDE's
  ``log_snr = log(m^2/s^2)``, so equal steps in either are the same grid.
- ``"karras"``: equal steps in ``sigma_bar^(1/rho)`` with ``sigma_bar = s/m`` and ``rho = 7``
  (Karras et al. 2022, eq. 5); ``sigma_bar`` is ``exp(-lambda)``.
- ``"quadratic"``: ``t_k = eps + (T - eps) (1 - k/K)^2``, dense near the data as DDIM's CIFAR-10
  setting (Song, Meng & Ermon 2021, Appendix D.2, which spaces the square roots of the step
  indices evenly over 80% of the chain; here over the whole ``[eps, T]``).
- an explicit sequence of times (strictly decreasing, in ``(0, T]``).

Times come back as Python floats (the GPU rule: schedule scalars live on the host), computed in
float64; the end points are exactly ``T`` and ``eps``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .._utils import check_choice, check_int
from ..sde import SDE

GRIDS = ("uniform", "logsnr", "karras", "quadratic")
GridLike = Union[str, Sequence[float], torch.Tensor, None]


def _lam(sde: SDE, t: float) -> float:
    """``lambda(t) = log(m/s) = log_snr / 2`` as a host float."""
    return 0.5 * float(sde.log_snr(torch.tensor([t], dtype=torch.float64))[0])


def _times_of_lam(sde: SDE, lam: Sequence[float]) -> list[float]:
    """Inverse of ``lambda``: the times whose ``lambda = log(m/s)`` are ``lam`` (the SDE's inverse of
    its ``log_snr``, at ``2 lam``)."""
    t = sde.log_snr_inverse(2.0 * torch.tensor(list(lam), dtype=torch.float64))
    return t.tolist()


def time_grid(sde: SDE, steps: int, eps: float, grid: str = "uniform", *, rho: float = 7.0) -> list[float]:
    """``steps + 1`` descending times from ``sde.T`` to ``eps`` on the named grid (see the module doc)."""
    check_choice("grid", grid, GRIDS, hint=", or a decreasing sequence of times")
    check_int("steps", steps)
    T, K = sde.T, steps
    if grid == "uniform":
        times = [T - k * (T - eps) / K for k in range(K + 1)]
    elif grid == "quadratic":
        times = [eps + (T - eps) * (1.0 - k / K) ** 2 for k in range(K + 1)]
    elif grid == "logsnr":
        lo, hi = _lam(sde, T), _lam(sde, eps)
        times = _times_of_lam(sde, [lo + k * (hi - lo) / K for k in range(K + 1)])
    else:
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite positive number, got {rho}")
        # sigma_bar = s/m = exp(-lambda): equal steps in sigma_bar^(1/rho) (Karras et al. 2022, eq. 5).
        a, b = math.exp(-_lam(sde, T) / rho), math.exp(-_lam(sde, eps) / rho)
        times = _times_of_lam(sde, [-rho * math.log(a + k * (b - a) / K) for k in range(K + 1)])
    times[0], times[-1] = T, eps
    return _check_decreasing(times, sde.T)


def _check_decreasing(times: list[float], T: float) -> list[float]:
    for a, b in zip(times, times[1:]):
        if not b < a:
            raise ValueError(f"the time grid is not strictly decreasing near t={a:.6g} -> {b:.6g}; "
                             "use fewer steps or a larger eps")
    return times


def resolve_grid(sde: SDE, grid: GridLike, steps: Optional[int], eps: Optional[float], default_eps: float,
                 *, default: str = "uniform", rho: float = 7.0) -> tuple[list[float], float]:
    """Turn the shared ``grid`` / ``steps`` / ``eps`` arguments into ``(times, eps)``.

    A named grid needs ``steps``; an explicit sequence fixes the steps (``len - 1``) and the smallest
    time (its last entry), so a ``steps`` or ``eps`` that contradicts it is an error.
    """
    if grid is None:
        grid = default
    if isinstance(grid, str):
        if steps is None:
            raise ValueError("a named grid needs steps=K (or nfe=N, a budget of score evaluations)")
        return time_grid(sde, steps, default_eps if eps is None else eps, grid, rho=rho), (default_eps if eps is None else eps)
    try:
        times = [float(t) for t in (grid.tolist() if isinstance(grid, torch.Tensor) else grid)]
    except (TypeError, ValueError):
        raise ValueError(f"grid must be one of {', '.join(GRIDS)} or a sequence of times, got {grid!r}") from None
    if len(times) < 2:
        raise ValueError(f"an explicit grid needs at least two times (T and the smallest), got {times}")
    if not all(math.isfinite(t) for t in times) or times[-1] <= 0 or times[0] > sde.T:
        raise ValueError(f"an explicit grid must lie in (0, T={sde.T}], got from {times[0]} to {times[-1]}")
    if steps is not None and steps != len(times) - 1:
        raise ValueError(f"steps={steps} contradicts the explicit grid of {len(times) - 1} steps; leave steps=None")
    if eps is not None and not math.isclose(eps, times[-1], rel_tol=1e-12, abs_tol=0.0):
        raise ValueError(f"eps={eps} contradicts the explicit grid, which ends at {times[-1]}; leave eps=None")
    return _check_decreasing(times, sde.T), times[-1]


def lambdas(sde: SDE, times: Sequence[float]) -> list[float]:
    """``lambda(t) = log(m(t)/s(t))`` at each time, as host floats (float64)."""
    return (0.5 * sde.log_snr(torch.tensor(list(times), dtype=torch.float64))).tolist()


def coeffs(sde: SDE, times: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(m(t), s(t))`` at each time, as host floats (float64)."""
    m, s = sde.coeffs_unchecked(torch.tensor(list(times), dtype=torch.float64))
    return m.tolist(), s.tolist()


def time_of_lambda(sde: SDE, lam: float) -> float:
    """The time whose ``lambda = log(m/s)`` is ``lam``."""
    return _times_of_lam(sde, [lam])[0]
