"""ODE back ends behind one function, :func:`solve_ode`.

Used by the probability-flow ODE sampler (``x`` from ``T`` to ``eps``) and by the exact likelihood
(the augmented state ``(x, logp)`` from ``eps`` to ``T``). Methods (see :func:`available_methods`):

* ``dopri5`` (default), ``bosh3`` — adaptive embedded Runge–Kutta with a step size, error norm and
  accept/reject decision per sample; a sample's result does not depend on its batch mates.
* ``torchdiffeq_dopri5``, ``scipy_rk45`` — reference back ends with one step size for the batch.
* ``euler``, ``heun``, ``midpoint``, ``rk4`` — fixed uniform steps.

Every Runge–Kutta method is a :class:`ButcherTableau` run by a shared loop.
"""
from .adaptive import NONFINITE_RETRIES, PerSampleRK
from .api import METHODS, available_methods, solve_ode
from .base import ODESolver
from .control import StepSizeController
from .fixed import FixedStepRK
from .result import ODEResult, SolverStatus
from .tableau import BOSH3, DOPRI5, EULER, HEUN, MIDPOINT, RK4, ButcherTableau

__all__ = [
    "solve_ode",
    "ODEResult",
    "SolverStatus",
    "available_methods",
    "METHODS",
    "StepSizeController",
    "ButcherTableau",
    "ODESolver",
    "PerSampleRK",
    "FixedStepRK",
    "NONFINITE_RETRIES",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RK4",
    "BOSH3",
    "DOPRI5",
]
