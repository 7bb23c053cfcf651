"""``solve_ode``: one entry point for every ODE back end, and the method registry."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple, Type

import torch

from .._utils import check_int
from .adaptive import Bosh3, Dopri5
from .base import ODESolver, Problem, SolveOptions
from .control import StepSizeController
from .external import ScipyRK45, TorchdiffeqDopri5
from .fixed import RK4, Euler, Heun, Midpoint
from .result import ODEResult, State
from .state import CheckedRHS, analyse_state

#: Registry ``name -> solver class``; a study sweeps ``for m in available_methods()``.
METHODS: Dict[str, Type[ODESolver]] = {
    cls.name: cls for cls in (Dopri5, Bosh3, TorchdiffeqDopri5, ScipyRK45, Euler, Heun, Midpoint, RK4)
}


def available_methods(*, adaptive: Optional[bool] = None, per_sample: Optional[bool] = None) -> Tuple[str, ...]:
    """Names accepted by :func:`solve_ode`, optionally filtered by the solver class attributes."""
    return tuple(
        name for name, cls in METHODS.items()
        if (adaptive is None or cls.adaptive == adaptive) and (per_sample is None or cls.per_sample == per_sample)
    )


def _finite_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def solve_ode(
    f: Callable[[torch.Tensor, State], State],
    y0: State,
    t0: float,
    t1: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: Optional[int] = None,
    max_steps: int = 10_000,
    first_step: Optional[float] = None,
    progress: bool = False,
    controller: Optional[StepSizeController] = None,
    cuda_graphs: bool = True,
    running_only: bool = True,
) -> ODEResult:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` for a batch of ``B`` independent initial values.

    Args:
        f: ``f(t, y) -> dy/dt``. ``t`` is a ``(B,)`` tensor of per-sample times in the dtype of ``y0``'s
            first component, on its device; ``y`` has the structure of ``y0``; ``f`` returns that
            structure (a floating output of another dtype is cast to the component's dtype). The
            per-sample methods call ``f`` on the samples still running only (see ``running_only``):
            then ``t`` and ``y`` have ``n <= B`` rows and ``f`` returns ``n`` rows. An ``f`` that
            holds per-sample data (tensors ``(B, ...)`` in a closure, e.g. the likelihood's probes)
            declares a parameter ``rows`` and is then always called as ``f(t, y, rows=rows)``:
            ``rows`` is the ``(n,)`` LongTensor of the rows' indices in the batch (increasing), or
            ``None`` when ``y`` is the whole batch in order. ``f`` is never evaluated outside
            ``[t0, t1]``.
        y0: a tensor ``(B, *dims)`` or a tuple of tensors with leading dimension ``B`` (ranks and dtypes
            may differ, e.g. ``(x (B, C, H, W) float32, logp (B,) float64)``); finite; one device.
        t0, t1: Python floats, ``t0 != t1``; ``t1 < t0`` integrates backwards (e.g. ``T -> eps``).
        method: one of :func:`available_methods`:
            ``"dopri5"`` (default) and ``"bosh3"``: per-sample adaptive step sizes (a sample's result
            does not depend on its batch mates), see :class:`~scoresde.solvers.adaptive.PerSampleRK`;
            ``"torchdiffeq_dopri5"``: torchdiffeq, one step size for the batch;
            ``"scipy_rk45"``: scipy RK45 on the host in float64, one step size for the batch;
            ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``: fixed uniform steps (``steps`` required).
        rtol, atol: relative and absolute tolerance of the adaptive methods (> 0): a step is accepted
            when the per-sample RMS of ``err_i / (atol + rtol max(|y_i|, |y_new,i|))`` is at most 1.
        steps: number of uniform steps of a fixed-step method (ignored by adaptive methods, so one
            call signature sweeps all methods).
        max_steps: bound on attempted (accepted + rejected) steps per sample; a sample that reaches it
            gets ``SolverStatus.MAX_STEPS`` (for the shared-step back ends, every sample).
        first_step: initial ``|h|`` of the adaptive methods (default: Hairer's starting-step algorithm,
            one extra evaluation); clipped to ``|t1 - t0|``.
        progress: show a tqdm bar over the fraction of ``[t0, t1]`` covered (the minimum over samples).
        controller: step-size controller of the per-sample methods (default ``StepSizeController()``:
            PI control, safety 0.9, factor bounds [0.2, 10], beta 0.04, as Hairer's DOPRI5).
        cuda_graphs: on a CUDA device, the per-sample methods replay their own work between
            evaluations of ``f`` (stage combinations, error norm, step control) from CUDA graphs
            captured after the first step: the same kernels on the same buffers, so bitwise the same
            result, at a fraction of the launch cost. ``f`` always runs eagerly. ``False`` keeps the
            eager loop; ignored elsewhere.
        running_only: the per-sample methods evaluate ``f`` on the samples still running only: each
            stage gathers their rows, calls ``f`` on them and scatters the result back (finished and
            failed samples are frozen and need no derivative). Only the first evaluation and the
            starting-step probe see the whole batch. For an ``f`` that treats rows independently
            every sample's result, NFE, step counts and status are bitwise those of ``False``, which
            calls ``f`` on the whole batch every time (finished samples at their own final ``(t, y)``,
            derivatives ignored): the old behaviour, kept for comparison and for an ``f`` that
            cannot work on a sub-batch. Ignored by the other methods.

    Returns:
        :class:`ODEResult` with ``y`` (structure of ``y0``), per-sample ``t``, ``nfe``, ``n_accepted``,
        ``n_rejected``, ``status`` (:class:`SolverStatus`), ``method`` and ``total_nfe`` (batched calls).
        One failed sample never raises: it gets its status and the rest of the batch finishes.

    Autograd: ``solve_ode`` leaves the grad mode as it finds it. Call it under ``torch.no_grad()``
    (with ``torch.enable_grad()`` inside ``f`` where ``f`` itself differentiates, e.g. a divergence)
    unless you mean to backpropagate through the steps; otherwise memory grows with the steps.

    The per-sample methods pass ``f`` their stage buffers: ``y`` and ``t`` are valid during the call
    and are overwritten by the next stage, so ``f`` must not modify them or keep references to them
    (clone what you want to keep).

    Raises:
        ValueError: unknown method, ``t0 == t1``, non-finite ``t0``/``t1``/``y0``, ``rtol``/``atol`` <= 0,
            missing or non-positive ``steps`` for a fixed-step method, ``max_steps`` < 1,
            ``first_step`` <= 0, or ``f`` returning a different structure/shape than ``y0``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid methods are: {', '.join(METHODS)}")
    cls = METHODS[method]
    t0 = _finite_float("t0", t0)
    t1 = _finite_float("t1", t1)
    if t0 == t1:
        raise ValueError(f"t0 and t1 are both {t0}; the integration interval must have non-zero length")
    rtol = _finite_float("rtol", rtol)
    atol = _finite_float("atol", atol)
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if cls.needs_steps:
        if steps is None:
            raise ValueError(f"method {method!r} takes fixed steps: pass steps=N (a positive int)")
        check_int("steps", steps)
    check_int("max_steps", max_steps)
    if first_step is not None:
        first_step = _finite_float("first_step", first_step)
        if first_step <= 0:
            raise ValueError(f"first_step must be positive (its sign follows t1 - t0), got {first_step}")
    if controller is None:
        controller = StepSizeController()
    elif not isinstance(controller, StepSizeController):
        raise TypeError(f"controller must be a StepSizeController, got {type(controller).__name__}")

    comps, struct = analyse_state(y0)
    options = SolveOptions(rtol=rtol, atol=atol, steps=steps, max_steps=max_steps, first_step=first_step,
                           progress=bool(progress), controller=controller,
                           cuda_graphs=bool(cuda_graphs), running_only=bool(running_only))
    problem = Problem(rhs=CheckedRHS(f, struct), y0=comps, t0=t0, t1=t1, struct=struct)
    return cls(options).solve(problem)
