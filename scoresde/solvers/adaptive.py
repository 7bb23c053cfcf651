"""Per-sample adaptive embedded Runge–Kutta (dopri5, bosh3): every sample has its own step size.

One loop runs any embedded FSAL tableau. All per-sample quantities (time, step size, error, accept
flag, counters, status) are ``(B,)`` tensors on the state's device; ``f`` is always called on the
whole batch. A sample that is finished (or failed) is frozen: its step is zero, so its stages are
evaluated at its own ``(t, y)`` and its state is never updated again. The only host read-back per
iteration is the loop's ``any sample still running`` decision (with ``progress=True`` the minimum
covered fraction is read in the same transfer).

Independence from batch mates: every operation is row-wise and uses exactly rounded elementwise
arithmetic, so, for an ``f`` that treats rows independently, a sample's trajectory (steps, accepts,
result, NFE) is the one it would have alone, up to the last-ulp differences that vectorised versus
scalar transcendental kernels (``pow`` in the controller) may introduce.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from .base import ODESolver, Problem, Progress
from .control import initial_step
from .result import RUNNING, ODEResult, SolverStatus
from .state import all_finite, error_scales, lincomb, rms_norm, where_rows
from .tableau import BOSH3, DOPRI5, ButcherTableau

#: A non-finite trial step (NaN/inf in a stage, the new state or the error) is rejected and the step
#: shrunk by ``factor_min``, since a too-large step can overflow; a sample whose trial steps were
#: non-finite more than this many times in total is marked NONFINITE (this also ends a "Zeno"
#: approach to a point where ``f`` turns NaN). A non-finite ``f(t0, y0)`` fails at once.
NONFINITE_RETRIES = 8

#: Underflow threshold: ``|h| < UNDERFLOW_ULPS * eps * max(|t|, 1e-6 |t1 - t0|)`` (Hairer's DOPRI5
#: stops at ``0.1 |h| <= eps |t|``), ``eps`` of the compute dtype.
UNDERFLOW_ULPS = 10.0


class PerSampleRK(ODESolver):
    """Adaptive embedded Runge–Kutta with a step size, error norm and accept/reject decision per sample.

    Error of an attempted step: ``err = rms_i( h sum_j e_j k_j,i / (atol + rtol max(|y_i|, |y_new,i|)) )``
    over all of the sample's components jointly (``e = b - b_hat``), computed in the compute dtype
    (the promotion of the component dtypes); the step is accepted iff ``err <= 1``, and the next
    step follows :class:`~scoresde.solvers.StepSizeController`. The starting step is Hairer's
    algorithm (:func:`~scoresde.solvers.control.initial_step`) unless ``first_step`` is given.
    Stages never leave ``[t0, t1]``: the last step of each sample is shortened to land exactly on
    ``t1`` (and stretched onto ``t1`` when the remainder would fall below the underflow threshold),
    and all stage times ``t + c_i h`` with ``0 <= c_i <= 1`` lie in the current step.

    NFE per sample: 1 (``f(t0, y0)``) + 1 (starting-step probe, unless ``first_step``) +
    ``(stages - 1)`` per attempted step (FSAL), i.e. ``2 + 6 (n_accepted + n_rejected)`` for dopri5.
    ``max_steps`` bounds the attempted (accepted + rejected) steps.
    """

    tableau: ClassVar[ButcherTableau]
    adaptive = True
    per_sample = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            if not (tab.adaptive and tab.fsal):
                raise TypeError(f"{cls.__name__}: the per-sample loop needs an embedded FSAL tableau")
            cls.order = tab.order

    def solve(self, pb: Problem) -> ODEResult:
        tab = self.tableau
        opt = self.options
        ctrl = opt.controller
        S = pb.struct
        B, dev, cd = S.batch, S.device, S.compute_dtype
        direction, t1, span = pb.direction, pb.t1, pb.hi - pb.lo
        q = tab.error_order
        eps = torch.finfo(cd).eps
        floor = 1e-6 * span
        long = dict(dtype=torch.long, device=dev)

        def h_min(t: torch.Tensor) -> torch.Tensor:
            return UNDERFLOW_ULPS * eps * t.abs().clamp(min=floor)

        y = pb.y0
        t = torch.full((B,), pb.t0, dtype=cd, device=dev)
        k1 = pb.call(t, y)
        nfe = torch.ones(B, **long)
        status = torch.where(all_finite(k1, B), torch.full((B,), RUNNING, **long),
                             torch.full((B,), int(SolverStatus.NONFINITE), **long))
        if opt.first_step is None:
            active = status == RUNNING
            h_abs = initial_step(pb.call, y, k1, pb.t0, direction, span, q, opt.rtol, opt.atol, S, active)
            nfe += active.long()
        else:
            h_abs = torch.full((B,), min(opt.first_step, span), dtype=cd, device=dev)

        n_acc = torch.zeros(B, **long)
        n_rej = torch.zeros(B, **long)
        n_bad = torch.zeros(B, **long)
        err_prev = torch.full((B,), 1e-4, dtype=cd, device=dev)
        after_reject = torch.zeros(B, dtype=torch.bool, device=dev)
        zero = torch.zeros((), dtype=cd, device=dev)
        hmin_t = h_min(t)
        e_w = tab.e_f
        bar = Progress(opt.progress, f"{self.name} ODE")
        try:
            while True:
                active = status == RUNNING
                # The one host read-back of this iteration.
                if bar.bar is not None:
                    frac = torch.where(active, (t - pb.t0).abs() / span, torch.ones_like(t))
                    n_active, covered = torch.stack([active.sum().to(cd), frac.min()]).tolist()
                    bar.update(covered)
                    if n_active == 0:
                        break
                elif not bool(active.any()):
                    break

                rem = (t1 - t) * direction
                hits_end = h_abs >= rem - hmin_t
                h_try = torch.where(active, torch.where(hits_end, rem, h_abs), zero)
                hs = h_try * direction

                ks = [k1]
                y_stage = y
                for i in range(1, tab.stages):
                    y_stage = lincomb(y, hs, ks, tab.a_f[i])
                    ks.append(pb.call(t + hs * tab.c_f[i], y_stage))
                y_new = y_stage  # FSAL: the last stage is evaluated at (t + h, y_new)
                k_last = ks[-1]
                nfe += active.long() * (tab.stages - 1)

                err_vec = lincomb(None, hs, ks, e_w)
                err = rms_norm(err_vec, error_scales(y, y_new, opt.rtol, opt.atol), S)
                finite = all_finite(y_new, B) & all_finite(k_last, B) & torch.isfinite(err)
                accept = active & finite & (err <= 1.0)
                reject = active & ~accept

                y = where_rows(accept, y_new, y)
                k1 = where_rows(accept, k_last, k1)
                t_new = torch.where(hits_end, torch.full_like(t, t1), t + hs)
                t = torch.where(accept, t_new, t)
                n_acc += accept.long()
                n_rej += reject.long()

                factor = ctrl.factor(err, err_prev, accept, finite, after_reject, q)
                h_abs = torch.where(active, h_try * factor, h_abs)
                err_prev = torch.where(accept, err.clamp(min=1e-4), err_prev)
                after_reject = torch.where(active, reject, after_reject)
                n_bad = n_bad + (active & ~finite).long()

                status = torch.where(accept & hits_end, int(SolverStatus.SUCCESS), status)
                status = torch.where(active & (n_bad > NONFINITE_RETRIES), int(SolverStatus.NONFINITE), status)
                running = status == RUNNING
                status = torch.where(running & (n_acc + n_rej >= opt.max_steps), int(SolverStatus.MAX_STEPS), status)
                running = status == RUNNING
                hmin_t = h_min(t)
                status = torch.where(running & (h_abs < hmin_t), int(SolverStatus.STEP_UNDERFLOW), status)
        finally:
            bar.close()

        return ODEResult(
            y=S.pack(y),
            t=t.to(S.time_dtype),
            nfe=nfe,
            n_accepted=n_acc,
            n_rejected=n_rej,
            status=status,
            method=self.name,
            total_nfe=pb.rhs.calls,
        )


class Dopri5(PerSampleRK):
    """Dormand–Prince 5(4) (Dormand & Prince 1980), per-sample step sizes. The default method."""

    name = "dopri5"
    tableau = DOPRI5


class Bosh3(PerSampleRK):
    """Bogacki–Shampine 3(2) (Bogacki & Shampine 1989), per-sample step sizes; cheaper at loose tolerances."""

    name = "bosh3"
    tableau = BOSH3
