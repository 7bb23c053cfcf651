"""Reference back ends with ONE step size for the whole batch: torchdiffeq's dopri5 and scipy's RK45.

They exist for parity with other code (scipy RK45 is what the original score-SDE code used for the
probability-flow ODE and the likelihood) and to measure what per-sample step sizes buy. A sample's
result here depends on its batch mates (the shared error norm picks the steps), and every sample
reports the same NFE. A failure of the shared solve (step underflow, too many steps, a non-finite
state) fails every sample with that status (y = the last state the back end returned, or y0);
a non-finite derivative in any sample fails the whole batch as NONFINITE, since the shared error
norm is then non-finite too.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import ODESolver, Problem, Progress
from .result import ODEResult, SolverStatus
from .state import Components, all_finite


def _uniform_result(pb: Problem, solver: ODESolver, ys: Components, t: float, status: torch.Tensor,
                    nfe: int, n_acc: int, n_rej: int) -> ODEResult:
    S = pb.struct
    B, dev = S.batch, S.device
    full = lambda v: torch.full((B,), int(v), dtype=torch.long, device=dev)  # noqa: E731
    return ODEResult(
        y=S.pack(tuple(c.to(d) for c, d in zip(ys, S.dtypes))),
        t=torch.full((B,), t, dtype=S.time_dtype, device=dev),
        nfe=full(nfe),
        n_accepted=full(n_acc),
        n_rejected=full(n_rej),
        status=status,
        method=solver.name,
        total_nfe=pb.rhs.calls,
    )


def _failed_status(nonfinite: torch.Tensor, code: SolverStatus) -> torch.Tensor:
    """The shared solve failed with ``code``; a non-finite derivative anywhere makes it NONFINITE for all.

    (With one error norm for the batch, a NaN in one sample poisons every sample's step.)
    """
    if bool(nonfinite.any()):
        code = SolverStatus.NONFINITE
    return torch.full(nonfinite.shape, int(code), dtype=torch.long, device=nonfinite.device)


class _NonFiniteDerivative(Exception):
    """Raised inside scipy's loop, which does not stop on a NaN derivative by itself."""


class TorchdiffeqDopri5(ODESolver):
    """``torchdiffeq.odeint(method="dopri5")`` over the whole batch, one step size for all samples.

    torchdiffeq's scalar time is expanded to ``(B,)`` for ``f``; a tuple state is passed through
    (torchdiffeq concatenates it in the promoted dtype; components are cast back for ``f`` and in the
    result) and uses torchdiffeq's default mixed norm. ``max_steps`` maps to ``max_num_steps``.
    ``n_accepted`` and ``n_rejected`` are not reported (``-1``).
    """

    name = "torchdiffeq_dopri5"
    order = 5
    adaptive = True
    per_sample = False

    def solve(self, pb: Problem) -> ODEResult:
        import torchdiffeq

        opt = self.options
        S = pb.struct
        B, dev = S.batch, S.device
        nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        bar = Progress(opt.progress, f"{self.name} ODE")
        span = pb.hi - pb.lo

        def func(t: torch.Tensor, y):
            nonlocal nonfinite
            ys = tuple(y) if S.is_tuple else (y,)
            ys = tuple(c if c.dtype == d else c.to(d) for c, d in zip(ys, S.dtypes))
            out = pb.call(t.reshape(()).expand(B), ys)
            nonfinite = nonfinite | ~all_finite(out, B)
            if bar.bar is not None:
                bar.update(abs(float(t) - pb.t0) / span)
            return out if S.is_tuple else out[0]

        y0 = pb.y0 if S.is_tuple else pb.y0[0]
        ts = torch.tensor([pb.t0, pb.t1], dtype=S.compute_dtype, device=dev)
        options = {"max_num_steps": opt.max_steps}
        if opt.first_step is not None:
            options["first_step"] = min(opt.first_step, span)
        try:
            sol = torchdiffeq.odeint(func, y0, ts, rtol=opt.rtol, atol=opt.atol, method="dopri5", options=options)
        except AssertionError as exc:  # torchdiffeq signals failure by assertions
            msg = str(exc)
            if "max_num_steps" in msg:
                code = SolverStatus.MAX_STEPS
            elif "non-finite" in msg:
                code = SolverStatus.NONFINITE
            else:
                code = SolverStatus.STEP_UNDERFLOW
            status = _failed_status(nonfinite, code)
            bar.close()
            return _uniform_result(pb, self, pb.y0, pb.t0, status, pb.rhs.calls, -1, -1)
        bar.close()
        ys = tuple(c[-1] for c in sol) if S.is_tuple else (sol[-1],)
        status = (~all_finite(ys, B)).long() * int(SolverStatus.NONFINITE)
        return _uniform_result(pb, self, ys, pb.t1, status, pb.rhs.calls, -1, -1)


class ScipyRK45(ODESolver):
    """``scipy.integrate.RK45`` (Dormand–Prince 5(4), as ``solve_ivp(method="RK45")``) on the CPU in float64.

    The whole batch is one flattened, concatenated float64 vector; every evaluation copies the state to
    ``y0``'s device and the derivative back to the host, as the original score-SDE code did. ``f`` gets
    ``t`` expanded to ``(B,)`` in the time dtype and each component in its own dtype. The error norm is
    scipy's RMS over the whole batch. ``n_accepted`` is exact; ``n_rejected`` is derived from scipy's
    ``nfev`` (``nfev = init + 6 (accepted + rejected)``). ``max_steps`` bounds accepted + rejected steps.
    """

    name = "scipy_rk45"
    order = 5
    adaptive = True
    per_sample = False

    def solve(self, pb: Problem) -> ODEResult:
        from scipy.integrate import RK45

        opt = self.options
        S = pb.struct
        B, dev = S.batch, S.device
        sizes = [math.prod(shape) for shape in S.shapes]
        nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)

        def unflatten(v: np.ndarray) -> Components:
            parts = np.split(v, np.cumsum(sizes)[:-1])
            return tuple(
                torch.from_numpy(np.ascontiguousarray(p)).reshape(shape).to(device=dev, dtype=d)
                for p, shape, d in zip(parts, S.shapes, S.dtypes)
            )

        def flatten(ys: Components) -> np.ndarray:
            return torch.cat([c.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for c in ys]).numpy()

        def fun(t: float, v: np.ndarray) -> np.ndarray:
            nonlocal nonfinite
            out = pb.call(torch.full((B,), float(t), dtype=torch.float64, device=dev), unflatten(v))
            nonfinite = nonfinite | ~all_finite(out, B)
            v_out = flatten(out)
            if not np.isfinite(v_out).all():  # free: the derivative is on the host anyway
                raise _NonFiniteDerivative
            return v_out

        kwargs = {}
        if opt.first_step is not None:
            kwargs["first_step"] = min(opt.first_step, pb.hi - pb.lo)
        try:
            solver = RK45(fun, pb.t0, flatten(pb.y0), pb.t1, rtol=opt.rtol, atol=opt.atol, **kwargs)
        except _NonFiniteDerivative:
            return _uniform_result(pb, self, pb.y0, pb.t0, _failed_status(nonfinite, SolverStatus.NONFINITE),
                                   pb.rhs.calls, 0, 0)
        n_init = solver.nfev  # f(t0, y0) and, without first_step, the starting-step probe
        bar = Progress(opt.progress, f"{self.name} ODE")
        n_acc = 0
        code = SolverStatus.SUCCESS
        try:
            while solver.status == "running":
                if (solver.nfev - n_init) // 6 >= opt.max_steps:
                    code = SolverStatus.MAX_STEPS
                    break
                try:
                    solver.step()
                except _NonFiniteDerivative:
                    code = SolverStatus.NONFINITE
                    break
                if solver.status == "failed":
                    code = SolverStatus.STEP_UNDERFLOW
                    break
                n_acc += 1
                bar.update(abs(solver.t - pb.t0) / (pb.hi - pb.lo))
        finally:
            bar.close()
        attempted, leftover = divmod(solver.nfev - n_init, 6)
        n_rej = attempted - n_acc if leftover == 0 and code != SolverStatus.NONFINITE else -1
        ys = unflatten(solver.y)
        if code == SolverStatus.SUCCESS:
            status = (~all_finite(ys, B)).long() * int(SolverStatus.NONFINITE)
        else:
            status = _failed_status(nonfinite, code)
        return _uniform_result(pb, self, ys, float(solver.t), status, solver.nfev, n_acc, n_rej)
