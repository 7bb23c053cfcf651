"""Noise schedules of the VP family: ``beta(t)``, its integral ``B(t) = int_0^t beta(s) ds`` and the
inverse, and the discrete DDPM betas each one corresponds to.

* :class:`LinearBeta`: ``beta(t) = beta_min + t (beta_max - beta_min)`` (Ho et al. 2020 in
  continuous time; Song et al. 2021);
* :class:`CosineBeta`: the cosine schedule of Nichol & Dhariwal (2021), ``alpha_bar(t) = cos^2``;
* :class:`DiscreteBeta`: the schedule of a given discrete chain (its betas), with ``log alpha_bar``
  interpolated piecewise-linearly between the chain's steps (DPM-Solver's "discrete" schedule), so
  the marginals equal the chain's at the grid times (for models trained on a chain, e.g. diffusers').
"""
from __future__ import annotations

import abc
import hashlib
import math

import torch

from ._utils import check_positive
from .discrete import DDPMSchedule, cosine_log_alpha_bar

__all__ = ["BetaSchedule", "LinearBeta", "CosineBeta", "DiscreteBeta"]


# ---------------------------------------------------------------------------------------------
# Noise schedules of the VP family: beta(t) and its integral B(t) = int_0^t beta(s) ds.
# ---------------------------------------------------------------------------------------------
class BetaSchedule(abc.ABC):
    """``beta(t)`` of a VP-type SDE with its integral ``B(t)`` and the inverse of ``B``."""

    @property
    def name(self) -> str:
        """Short name of the schedule (a subclass may set a class attribute; default: the class name)."""
        return type(self).__name__

    @abc.abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = int_0^t beta(s) ds``, accurate for small ``t``."""

    @abc.abstractmethod
    def inverse_integral(self, b: torch.Tensor) -> torch.Tensor:
        """The ``t`` with ``B(t) = b``."""

    @abc.abstractmethod
    def ddpm(self, N: int) -> DDPMSchedule:
        """The discrete DDPM chain with ``N`` steps that this schedule corresponds to."""


class LinearBeta(BetaSchedule):
    """``beta(t) = beta_min + t (beta_max - beta_min)``; ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``."""

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        check_positive(beta_min=beta_min, beta_max=beta_max)
        if not beta_min < beta_max:
            raise ValueError(f"need beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t):
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))

    def inverse_integral(self, b):
        # Root of (d/2) t^2 + b0 t - b = 0 in the cancellation-free form 2b / (b0 + sqrt(b0^2 + 2 d b)).
        b0, d = self.beta_min, self.beta_max - self.beta_min
        return 2.0 * b / (b0 + torch.sqrt(b0 * b0 + 2.0 * d * b))

    def ddpm(self, N):
        # Song et al. (2021), Appendix B: beta_i = beta(t) / N on an N-point linspace.
        return DDPMSchedule.linear(self.beta_min / N, self.beta_max / N, N)

    def __repr__(self):
        return f"LinearBeta(beta_min={self.beta_min}, beta_max={self.beta_max})"


class CosineBeta(BetaSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021) in continuous time:
    ``m(t)^2 = abar(t) = f(t)/f(0)``, ``f(t) = cos^2((t + s)/(1 + s) pi/2)``,
    hence ``B(t) = -log abar(t)`` and ``beta(t) = pi/(1+s) tan((t + s)/(1 + s) pi/2)``,
    which diverges at ``t = 1``: use ``T < 1``."""

    name = "cosine"

    def __init__(self, s: float = 0.008):
        check_positive(s=s)
        self.s = float(s)

    def _angle(self, t):
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2.0)

    def beta(self, t):
        return math.pi / (1.0 + self.s) * torch.tan(self._angle(t))

    def integral(self, t):
        return -cosine_log_alpha_bar(t, self.s)

    def inverse_integral(self, b):
        # The angle a(t) solves cos(a) = cos(a0) e^{-b/2}; arccos of that is ill-conditioned near the small
        # angle a0 (t -> 0). Solve for delta = a - a0 instead, with q = 1 - e^{-b} = -expm1(-b):
        #   sin(a) = sqrt(sin^2 a0 + cos^2 a0 q),
        #   sin(delta) = cos(a0) q / (sin a + e^{-b/2} sin a0),  cos(delta) = e^{-b/2} cos^2 a0 + sin a sin a0,
        # where every term is non-negative (no cancellation), and t = delta (1 + s) 2 / pi.
        a0 = self._angle(0.0)
        c0, s0 = math.cos(a0), math.sin(a0)
        q = -torch.expm1(-b)
        e = torch.exp(-0.5 * b)
        sin_a = torch.sqrt(s0 * s0 + c0 * c0 * q)
        delta = torch.atan2(c0 * q / (sin_a + e * s0), e * (c0 * c0) + sin_a * s0)
        return delta * (2.0 * (1.0 + self.s) / math.pi)

    def ddpm(self, N):
        return DDPMSchedule.cosine(N, s=self.s)

    def __repr__(self):
        return f"CosineBeta(s={self.s})"


class DiscreteBeta(BetaSchedule):
    """The VP schedule of a discrete DDPM chain with betas ``beta_0 .. beta_{N-1}``.

    ``B(t) = -log alpha_bar(t)`` is piecewise linear in ``t`` through the knots ``B(0) = 0`` and
    ``B((i + 1) / N) = -log alpha_bar_i = -sum_{j <= i} log(1 - beta_j)``, so ``beta(t) = dB/dt`` is
    ``-N log(1 - beta_i)`` on the step ``(i/N, (i + 1)/N]``. The chain's step ``i`` sits at our
    grid time ``t_i = (i + 1) / N`` (the convention of :meth:`scoresde.sde.VPSDE.ddpm_schedule`),
    where the SDE's marginal ``N(sqrt(abar_i) x0, (1 - abar_i) I)`` is the chain's exactly; between
    the knots ``log alpha_t = -B/2`` is linear, as in DPM-Solver's schedule for discrete-time models
    (Lu et al. 2022, "DPM-Solver", Appendix D; its ``NoiseScheduleVP('discrete')``). :meth:`ddpm`
    with the same ``N`` returns these betas exactly (float64), so the discrete samplers
    (``schedule="discrete"``) run the chain itself. ``t`` outside ``[0, 1]`` extrapolates the end
    segments linearly. Use with ``VPSDE(schedule=DiscreteBeta(betas), N=len(betas))``.
    """

    name = "discrete"

    def __init__(self, betas):
        chain = DDPMSchedule(betas, name="discrete")  # checks 0 < beta < 1
        self.betas = chain.betas
        self.N = chain.N
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), -chain.log_alphas_cumprod])  # (N + 1,)
        self._cache: dict = {}

    def _table(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self._knots.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _segment(self, t: torch.Tensor):
        """The step index ``k`` (clamped to ``0 .. N-1``) whose segment ``[k/N, (k+1)/N]`` holds ``t``,
        and ``t``'s position ``u = N t`` on the knot axis."""
        u = t * self.N
        return torch.floor(u).clamp(0, self.N - 1).long(), u

    def beta(self, t):
        b = self._table(t)
        k, _ = self._segment(t)
        return (b[k + 1] - b[k]) * self.N

    def integral(self, t):
        b = self._table(t)
        k, u = self._segment(t)
        return b[k] + (u - k.to(u.dtype)) * (b[k + 1] - b[k])

    def inverse_integral(self, b):
        knots = self._table(b)
        k = (torch.searchsorted(knots.contiguous(), b.contiguous(), right=True) - 1).clamp(0, self.N - 1)
        return (k.to(b.dtype) + (b - knots[k]) / (knots[k + 1] - knots[k])) / self.N

    def ddpm(self, N):
        if N == self.N:
            return DDPMSchedule(self.betas.clone(), name="discrete")
        # another step count: the chain whose alpha_bar matches this schedule at t = (i + 1) / N
        t = torch.arange(1, N + 1, dtype=torch.float64) / N
        log_abar = -self.integral(t)
        prev = torch.cat([torch.zeros(1, dtype=torch.float64), log_abar[:-1]])
        return DDPMSchedule(-torch.expm1(log_abar - prev), name="discrete")

    def __repr__(self):
        digest = hashlib.sha256(self.betas.numpy().tobytes()).hexdigest()[:12]
        return f"DiscreteBeta(N={self.N}, beta_0={float(self.betas[0]):.6g}, beta_N={float(self.betas[-1]):.6g}, sha256={digest})"
