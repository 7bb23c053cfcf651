"""Per-sample adaptive embedded Runge–Kutta (dopri5, bosh3): every sample has its own step size.

One loop runs any embedded FSAL tableau. All per-sample quantities (time, step size, error, accept
flag, counters, status) are ``(B,)`` tensors on the state's device. A sample that is finished (or
failed) is frozen: its step is zero and its state is never updated again. ``f`` sees only the
samples still running: each stage gathers their rows, calls ``f`` on that sub-batch and scatters the
result back into the full-size stage buffer (a frozen sample's rows keep stale values, which only
ever meet a zero step and masks that never accept them). The running set only shrinks, so its row
index is recomputed (one ``nonzero``) only when the count of running samples, which the loop reads
anyway, changed; while every sample runs there is no gather or scatter at all. The first evaluation
``f(t0, y0)`` and the starting-step probe see the whole batch. ``running_only=False`` restores the
old whole-batch evaluation. The only host read-back per iteration is the loop's ``number of samples
still running`` (with ``progress=True`` the minimum covered fraction is read in the same transfer).

Independence from batch mates: every operation is row-wise and uses exactly rounded elementwise
arithmetic, so, for an ``f`` that treats rows independently, a sample's trajectory (steps, accepts,
result, NFE) is the one it would have alone, up to the last-ulp differences that vectorised versus
scalar transcendental kernels (``pow`` in the controller) may introduce. For such an ``f`` the
sub-batch evaluation changes nothing either: a running sample's stages get the values ``f`` gives
its row, whoever shares the call.
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
    ``max_steps`` bounds the attempted (accepted + rejected) steps. With ``running_only`` (the
    default) each stage calls ``f`` on the running samples only (see the module docstring), so the
    rows ``f`` evaluates add up to the samples' NFE (plus the whole-batch first two calls).
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
        opt = self.options
        S = pb.struct
        B, dev, cd = S.batch, S.device, S.compute_dtype
        long = dict(dtype=torch.long, device=dev)

        t = torch.full((B,), pb.t0, dtype=cd, device=dev)
        k1 = pb.call(t, pb.y0)
        nfe = torch.ones(B, **long)
        status = torch.where(all_finite(k1, B), torch.full((B,), RUNNING, **long),
                             torch.full((B,), int(SolverStatus.NONFINITE), **long))
        if opt.first_step is None:
            active = status == RUNNING
            h_abs = initial_step(pb.call, pb.y0, k1, pb.t0, pb.direction, pb.hi - pb.lo, self.tableau.error_order,
                                 opt.rtol, opt.atol, S, active)
            nfe += active.long()
        else:
            h_abs = torch.full((B,), min(opt.first_step, pb.hi - pb.lo), dtype=cd, device=dev)

        use_graphs = opt.cuda_graphs and dev.type == "cuda"
        st = _StepBuffers(self.tableau, opt, pb, k1, t, h_abs, status, nfe, inplace=use_graphs)
        graphs = _CudaGraphs(st) if use_graphs else None
        bar = Progress(opt.progress, f"{self.name} ODE")
        try:
            while True:
                # The one host read-back of this iteration: (number of running samples, covered fraction).
                n_running, covered = st.report.tolist()
                bar.update(covered)
                if n_running == 0:
                    break
                st.select(int(n_running))
                if graphs is not None and graphs.ready:
                    graphs.step(st)
                else:
                    st.step()
                    if graphs is not None:
                        graphs.capture(st)
        finally:
            bar.close()

        return ODEResult(
            y=S.pack(st.y),
            t=st.t.to(S.time_dtype),
            nfe=st.nfe,
            n_accepted=st.n_acc,
            n_rejected=st.n_rej,
            status=st.status,
            method=self.name,
            total_nfe=pb.rhs.calls,
        )


class _StepBuffers:
    """The per-sample solver's state in persistent tensors, and one iteration of the loop, in place.

    Every tensor the loop reads or writes lives in an attribute. With ``inplace=True`` (CUDA
    graphs) they are allocated once and ``begin``, ``stage(i)`` and ``end`` overwrite them with
    ``copy_``, so the same operations can be replayed from a CUDA graph (:class:`_CudaGraphs`) while
    ``f`` runs eagerly in between; ``f`` then receives the stage buffers ``(t_stage, y_stage)``,
    valid during the call and overwritten by the next stage. With ``inplace=False`` every update
    binds a fresh tensor (no copies; the eager loop on the CPU).

    ``rows`` is ``None`` while ``f`` is called on the whole batch, else the LongTensor of the running
    samples' indices (:meth:`select`); :meth:`evaluate` gathers those rows of the stage buffers,
    calls ``f`` on them and scatters the result into ``ks[i]`` (``index_copy_`` into the persistent
    buffer when in place), so the buffers the graphs read are never re-bound.
    """

    def __init__(self, tab: ButcherTableau, opt, pb: Problem, k1, t, h_abs, status, nfe, inplace: bool):
        S = pb.struct
        self.inplace = inplace
        B, dev, cd = S.batch, S.device, S.compute_dtype
        self.tab, self.opt, self.pb, self.S = tab, opt, pb, S
        self.q = tab.error_order
        self.direction, self.t1, self.span = pb.direction, pb.t1, pb.hi - pb.lo
        self.eps = torch.finfo(cd).eps
        self.floor = 1e-6 * self.span
        long = dict(dtype=torch.long, device=dev)
        self.y = tuple(c.clone() for c in pb.y0)
        self.y_stage = tuple(c.clone() for c in pb.y0)
        self.ks = [tuple(c.clone() for c in k1)] + [tuple(torch.zeros_like(c) for c in k1)
                                                     for _ in range(tab.stages - 1)]
        self.t = t
        self.t_stage = torch.zeros(B, dtype=S.time_dtype, device=dev)
        self.h_abs = h_abs
        self.status = status
        self.nfe = nfe
        self.n_acc = torch.zeros(B, **long)
        self.n_rej = torch.zeros(B, **long)
        self.n_bad = torch.zeros(B, **long)
        self.err_prev = torch.full((B,), 1e-4, dtype=cd, device=dev)
        self.after_reject = torch.zeros(B, dtype=torch.bool, device=dev)
        self.active = torch.zeros(B, dtype=torch.bool, device=dev)
        self.hits_end = torch.zeros(B, dtype=torch.bool, device=dev)
        self.h_try = torch.zeros(B, dtype=cd, device=dev)
        self.hs = torch.zeros(B, dtype=cd, device=dev)
        self.hmin_t = self.h_min(t)
        self.zero = torch.zeros((), dtype=cd, device=dev)
        self.report = torch.zeros(2, dtype=cd, device=dev)
        self._report()
        self.rows = None  # the whole batch
        self.n_rows = B   # the number of rows ``rows`` selects

    def select(self, n_running: int) -> None:
        """Choose the rows ``f`` sees this iteration from the host's count of running samples.

        The running set only shrinks (a status never returns to RUNNING), so an unchanged count is an
        unchanged set and the index is kept; only a new count costs one ``nonzero`` (one host sync).
        All rows running (or ``running_only=False``): ``rows = None``, no gather or scatter.
        """
        if not self.opt.running_only or n_running == self.n_rows:
            return
        self.n_rows = n_running
        self.rows = None if n_running == self.S.batch else torch.nonzero(self.status == RUNNING).squeeze(1)

    def _replace(self, old, new):
        """``new`` in ``old``'s place: copied into ``old``'s storage when in place, else ``new`` itself."""
        if not self.inplace:
            return new
        if isinstance(old, tuple):
            for buf, v in zip(old, new):
                buf.copy_(v)
        else:
            old.copy_(new)
        return old

    def _put(self, name: str, value) -> None:
        setattr(self, name, self._replace(getattr(self, name), value))

    def h_min(self, t: torch.Tensor) -> torch.Tensor:
        return UNDERFLOW_ULPS * self.eps * t.abs().clamp(min=self.floor)

    def _report(self) -> None:
        running = self.status == RUNNING
        frac = torch.where(running, (self.t - self.pb.t0).abs() / self.span, torch.ones_like(self.t))
        self._put("report", torch.stack([running.sum().to(self.report.dtype), frac.min()]))

    def begin(self) -> None:
        """Trial step sizes: the remaining interval where the step would reach (or nearly reach) ``t1``."""
        active = self.status == RUNNING
        rem = (self.t1 - self.t) * self.direction
        hits_end = self.h_abs >= rem - self.hmin_t
        h_try = torch.where(active, torch.where(hits_end, rem, self.h_abs), self.zero)
        self._put("active", active)
        self._put("hits_end", hits_end)
        self._put("h_try", h_try)
        self._put("hs", h_try * self.direction)

    def stage(self, i: int) -> None:
        """Stage ``i``'s input ``(t + c_i h, y + h sum_j a_ij k_j)`` into ``(t_stage, y_stage)``."""
        self._put("y_stage", lincomb(self.y, self.hs, self.ks[:i], self.tab.a_f[i]))
        t = (self.t + self.hs * self.tab.c_f[i]).clamp(self.pb.lo, self.pb.hi)
        self._put("t_stage", t.to(self.S.time_dtype))

    def evaluate(self, i: int) -> None:
        """``k_i = f(t_stage, y_stage)`` on :attr:`rows` (eager: ``f`` is the user's code).

        Rows outside :attr:`rows` (finished or failed samples) keep what ``ks[i]`` held: their step is
        zero and they are never accepted, so stale values (even inf, where ``0 * inf = NaN`` in the
        stage combination) never reach their state, counters or status.
        """
        rows = self.rows
        if rows is None:
            k = self.pb.rhs(self.t_stage, self.y_stage)
            if self.inplace:
                for buf, v in zip(self.ks[i], k):
                    buf.copy_(v)
            else:
                self.ks[i] = k
            return
        k = self.pb.rhs(self.t_stage.index_select(0, rows), tuple(c.index_select(0, rows) for c in self.y_stage),
                        rows=rows)
        if self.inplace:
            for buf, v in zip(self.ks[i], k):
                buf.index_copy_(0, rows, v)
        else:
            self.ks[i] = tuple(buf.index_copy(0, rows, v) for buf, v in zip(self.ks[i], k))

    def end(self) -> None:
        """Error estimate, accept/reject, the state update (FSAL), the next step size and the statuses."""
        tab, opt, B = self.tab, self.opt, self.S.batch
        active, hits_end, h_try = self.active, self.hits_end, self.h_try
        y_new, k_last = self.y_stage, self.ks[-1]  # FSAL: the last stage is evaluated at (t + h, y_new)
        self.nfe.add_(active.long() * (tab.stages - 1))

        err_vec = lincomb(None, self.hs, self.ks, tab.e_f)
        err = rms_norm(err_vec, error_scales(self.y, y_new, opt.rtol, opt.atol), self.S)
        finite = all_finite(y_new, B) & all_finite(k_last, B) & torch.isfinite(err)
        accept = active & finite & (err <= 1.0)
        reject = active & ~accept

        self._put("y", where_rows(accept, y_new, self.y))
        self.ks[0] = self._replace(self.ks[0], where_rows(accept, k_last, self.ks[0]))
        t_new = torch.where(hits_end, torch.full_like(self.t, self.t1), self.t + self.hs)
        self._put("t", torch.where(accept, t_new, self.t))
        self.n_acc.add_(accept.long())
        self.n_rej.add_(reject.long())

        factor = opt.controller.factor(err, self.err_prev, accept, finite, self.after_reject, self.q)
        self._put("h_abs", torch.where(active, h_try * factor, self.h_abs))
        self._put("err_prev", torch.where(accept, err.clamp(min=1e-4), self.err_prev))
        self._put("after_reject", torch.where(active, reject, self.after_reject))
        self.n_bad.add_((active & ~finite).long())

        status = torch.where(accept & hits_end, int(SolverStatus.SUCCESS), self.status)
        status = torch.where(active & (self.n_bad > NONFINITE_RETRIES), int(SolverStatus.NONFINITE), status)
        running = status == RUNNING
        status = torch.where(running & (self.n_acc + self.n_rej >= opt.max_steps), int(SolverStatus.MAX_STEPS), status)
        running = status == RUNNING
        hmin_t = self.h_min(self.t)
        status = torch.where(running & (self.h_abs < hmin_t), int(SolverStatus.STEP_UNDERFLOW), status)
        self._put("hmin_t", hmin_t)
        self._put("status", status)
        self._report()

    def step(self) -> None:
        """One attempted step for every running sample, eagerly."""
        self.begin()
        for i in range(1, self.tab.stages):
            self.stage(i)
            self.evaluate(i)
        self.end()


class _CudaGraphs:
    """CUDA graphs of the solver's own work between evaluations of ``f``, replayed every step.

    On a GPU a small batch makes the loop launch-bound: an attempted dopri5 step launches a few
    hundred tiny kernels besides ``f``. Captured once (after one eager step, which warms up the
    kernels), ``begin + stage(1)``, ``stage(i)`` for ``i >= 2`` and ``end`` replay as one launch each,
    with the same kernels on the same buffers, so the results are bitwise those of the eager loop.
    ``f`` is not captured: it runs eagerly between replays, together with the gather of the running
    rows and the scatter of ``f``'s output into the stage buffers (``index_copy_``, same storage),
    so the graphs stay valid however the running set shrinks. If capture fails (e.g. an allocator or
    stream setting that forbids it), the solver warns once and stays eager.
    """

    def __init__(self, st: _StepBuffers):
        self.ready = False
        self.failed = False
        self.stages: list = []
        self.end = None
        self.pool = None

    def capture(self, st: _StepBuffers) -> None:
        if self.ready or self.failed:
            return
        try:
            self.pool = torch.cuda.graph_pool_handle()
            first = torch.cuda.CUDAGraph()
            with torch.cuda.graph(first, pool=self.pool):
                st.begin()
                st.stage(1)
            self.stages = [first]
            for i in range(2, st.tab.stages):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self.pool):
                    st.stage(i)
                self.stages.append(g)
            end = torch.cuda.CUDAGraph()
            with torch.cuda.graph(end, pool=self.pool):
                st.end()
            self.end = end
            self.ready = True
        except Exception as exc:  # pragma: no cover - depends on the CUDA setup
            import warnings

            warnings.warn(f"per-sample ODE solver: CUDA graph capture failed ({exc}); running eagerly")
            self.failed = True
            self.stages, self.end = [], None

    def step(self, st: _StepBuffers) -> None:
        for i, g in enumerate(self.stages, start=1):
            g.replay()
            st.evaluate(i)
        self.end.replay()


class Dopri5(PerSampleRK):
    """Dormand–Prince 5(4) (Dormand & Prince 1980), per-sample step sizes. The default method."""

    name = "dopri5"
    tableau = DOPRI5


class Bosh3(PerSampleRK):
    """Bogacki–Shampine 3(2) (Bogacki & Shampine 1989), per-sample step sizes; cheaper at loose tolerances."""

    name = "bosh3"
    tableau = BOSH3
