"""Fixed-step explicit Runge–Kutta on a uniform grid (euler, heun, midpoint, rk4): one loop, any tableau.

The grid ``t_n = t0 + n (t1 - t0) / steps`` (``t_steps = t1`` exactly) and the stage times live on the
host as Python floats; the loop has no host read-back. A sample whose new state or derivative is
non-finite is frozen at its last finite state and reported NONFINITE; the rest run to ``t1``.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from .base import ODESolver, Problem, Progress
from .result import ODEResult, SolverStatus
from .state import all_finite, lincomb, where_rows
from .tableau import EULER, HEUN, MIDPOINT, RK4, ButcherTableau


class FixedStepRK(ODESolver):
    """Explicit Runge–Kutta with ``steps`` equal steps from ``t0`` to ``t1``.

    NFE per sample: ``stages * steps`` (Euler ``steps``, Heun/midpoint ``2 steps``, RK4 ``4 steps``),
    counted while the sample is finite. ``n_accepted = steps`` for successful samples, ``n_rejected = 0``.
    """

    tableau: ClassVar[ButcherTableau]
    needs_steps = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            cls.order = tab.order

    def solve(self, pb: Problem) -> ODEResult:
        tab = self.tableau
        steps = self.options.steps
        S = pb.struct
        B, dev = S.batch, S.device
        t0, t1 = pb.t0, pb.t1
        grid = [t0 + (t1 - t0) * (n / steps) for n in range(steps)] + [t1]

        y = pb.y0
        bad = torch.zeros(B, dtype=torch.bool, device=dev)
        n_good = torch.zeros(B, dtype=torch.long, device=dev)
        bar = Progress(self.options.progress, f"{self.name} ODE")
        try:
            for n in range(steps):
                ta, tb = grid[n], grid[n + 1]
                h = tb - ta
                ks = []
                for i in range(tab.stages):
                    y_stage = y if i == 0 else lincomb(y, h, ks, tab.a_f[i])
                    c = tab.c_f[i]
                    tc = tb if c == 1.0 else (ta if c == 0.0 else ta + c * h)
                    k = pb.rhs(torch.full((B,), tc, dtype=S.time_dtype, device=dev), y_stage)
                    ks.append(k)
                y_new = lincomb(y, h, ks, tab.b_f)
                finite = all_finite(y_new, B)
                for k in ks:  # a non-finite stage with zero weight must still fail the sample
                    finite = finite & all_finite(k, B)
                good = finite & ~bad
                y = where_rows(good, y_new, y)
                n_good += good.long()
                bad = bad | ~finite
                bar.update((n + 1) / steps)
        finally:
            bar.close()

        t_end = torch.tensor(grid, dtype=S.time_dtype, device=dev)[n_good]
        status = bad.long() * int(SolverStatus.NONFINITE)  # SUCCESS (0) elsewhere
        return ODEResult(
            y=S.pack(y),
            t=t_end,
            nfe=n_good * tab.stages + bad.long() * tab.stages,
            n_accepted=n_good,
            n_rejected=torch.zeros_like(n_good),
            status=status,
            method=self.name,
            total_nfe=pb.rhs.calls,
        )


class Euler(FixedStepRK):
    """Explicit Euler, order 1."""

    name = "euler"
    tableau = EULER


class Heun(FixedStepRK):
    """Heun's method (explicit trapezoidal rule), order 2, 2 evaluations per step."""

    name = "heun"
    tableau = HEUN


class Midpoint(FixedStepRK):
    """Explicit midpoint rule, order 2, 2 evaluations per step."""

    name = "midpoint"
    tableau = MIDPOINT


class RK4(FixedStepRK):
    """Classical Runge–Kutta, order 4, 4 evaluations per step."""

    name = "rk4"
    tableau = RK4
