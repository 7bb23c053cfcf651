"""Step-size control for the per-sample adaptive solvers: the PI controller and the starting step.

Both act on ``(B,)`` tensors, one entry per sample, with no host read-back.

References:
    E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential Equations I*, 2nd ed.,
    Springer 1993: Sec. II.4 "Automatic step size control" (eq. 4.12 and 4.13, the starting step
    size algorithm (a)–(f)) and the step-size stabilisation of Sec. IV.2 (PI control, Gustafsson 1991)
    as used, with ``beta = 0.04``, by the authors' DOPRI5 code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .state import Components, Structure, error_scales, lincomb, rms_norm


def batch_invariant_pow(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent`` for a ``(B,)`` tensor, rounded the same way whatever ``B`` is.

    PyTorch's CPU ``pow`` runs a vectorised (SLEEF) kernel on whole SIMD blocks and a scalar
    ``std::pow`` on the remainder; the two can differ in the last bit, so a sample's step size would
    depend on its position in the batch and on the batch size. Padding to a multiple of 64 keeps
    every entry on the vectorised path. (CUDA kernels are per element and need no padding.)
    """
    n = x.shape[0]
    pad = (-n) % 64
    if x.device.type != "cpu" or pad == 0:
        return x.pow(exponent)
    return torch.cat([x, x.new_ones(pad)]).pow(exponent)[:n]


@dataclass(frozen=True)
class StepSizeController:
    """Per-sample PI step-size controller (``beta = 0`` gives the standard integral controller).

    With ``err`` the weighted RMS error of the attempted step (accept iff ``err <= 1``), ``q`` the
    error order of the pair (4 for dopri5) and ``alpha = 1/(q+1) - 0.75 beta``:

    * accepted: ``h_new = h * clip(safety * err^(-alpha) * err_prev^beta, factor_min, factor_max)``,
      where ``err_prev = max(err of the last accepted step, 1e-4)`` (``1e-4`` initially) and
      ``factor_max`` is replaced by 1 right after a rejection (no growth after a rejected step);
    * rejected: ``h_new = h * max(factor_min, safety * err^(-alpha))``;
    * non-finite trial step (NaN/inf in the stages or error): ``h_new = h * factor_min``.

    Defaults ``safety=0.9, factor_min=0.2, factor_max=10, beta=0.04`` are those of Hairer's DOPRI5
    (Hairer et al. I, Sec. II.4 and IV.2).
    """

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    beta: float = 0.04

    def __post_init__(self) -> None:
        if not 0.0 < self.safety < 1.0:
            raise ValueError(f"safety must lie in (0, 1), got {self.safety}")
        if not 0.0 < self.factor_min < 1.0 < self.factor_max:
            raise ValueError(
                f"need 0 < factor_min < 1 < factor_max, got factor_min={self.factor_min}, factor_max={self.factor_max}"
            )
        if not 0.0 <= self.beta < 0.2:
            raise ValueError(f"beta must lie in [0, 0.2), got {self.beta}")

    def alpha(self, q: int) -> float:
        a = 1.0 / (q + 1) - 0.75 * self.beta
        if a <= 0:
            raise ValueError(f"beta={self.beta} is too large for a pair of error order {q}")
        return a

    def factor(self, err: torch.Tensor, err_prev: torch.Tensor, accepted: torch.Tensor, finite: torch.Tensor,
               after_reject: torch.Tensor, q: int) -> torch.Tensor:
        """Step-size multiplier per sample (``(B,)`` tensors; see the class docstring)."""
        alpha = self.alpha(q)
        e = torch.where(finite, err, torch.ones_like(err)).clamp(min=1e-10)
        e_pow = batch_invariant_pow(e, -alpha)
        grow = e_pow * self.safety
        if self.beta > 0:
            grow = grow * batch_invariant_pow(err_prev, self.beta)
        upper = torch.where(after_reject, torch.ones_like(e), torch.full_like(e, self.factor_max))
        f_acc = torch.minimum(grow.clamp(min=self.factor_min), upper)
        f_rej = (e_pow * self.safety).clamp(min=self.factor_min, max=1.0)
        out = torch.where(accepted, f_acc, f_rej)
        return torch.where(finite, out, torch.full_like(out, self.factor_min))


def initial_step(call: Callable[[torch.Tensor, Components], Components], y0: Components, k0: Components,
                 t0: float, direction: float, span: float, q: int, rtol: float, atol: float,
                 struct: Structure, active: torch.Tensor) -> torch.Tensor:
    """Hairer's starting step size (Hairer et al. I, Sec. II.4, algorithm (a)–(f)), per sample.

    ``d0 = ||y0||``, ``d1 = ||f(t0, y0)||`` with scale ``atol + rtol |y0|``;
    ``h0 = 0.01 d0/d1`` (``1e-6`` if either is below ``1e-5``); one explicit Euler step of size ``h0``
    gives ``d2 = ||f(t0 + h0, y1) - f(t0, y0)|| / h0``; ``h1 = (0.01 / max(d1, d2))^(1/(q+1))``
    (``max(1e-6, 1e-3 h0)`` if ``max(d1, d2) <= 1e-15``); the step is ``min(100 h0, h1)``.
    Both ``h0`` and the result are clipped to the interval length ``span``, so the extra evaluation
    (one whole-batch call of ``f``) lies inside the integration interval. Returns ``|h|`` as ``(B,)``.
    Inactive samples get a zero trial step (they are evaluated at ``t0``).
    """
    cd = struct.compute_dtype
    sc = error_scales(y0, None, rtol, atol)
    d0 = rms_norm(y0, sc, struct)
    d1 = rms_norm(k0, sc, struct)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300 if cd == torch.float64 else 1e-30))
    h0 = h0.clamp(max=span)
    h0 = torch.where(active, h0, torch.zeros_like(h0))
    hs = h0 * direction
    y1 = lincomb(y0, hs, [k0], [1.0])
    k1 = call(t0 + hs, y1)
    diff = tuple(a - b for a, b in zip(k1, k0))
    d2 = rms_norm(diff, sc, struct) / h0
    dmax = torch.maximum(d1, d2)
    tiny = dmax <= 1e-15
    h1 = torch.where(tiny, torch.clamp(h0 * 1e-3, min=1e-6), batch_invariant_pow(0.01 / dmax.clamp(min=1e-15), 1.0 / (q + 1)))
    h = torch.minimum(100.0 * h0, h1)
    h = torch.where(torch.isfinite(h) & (h > 0), h, h0)
    return h.clamp(max=span)
