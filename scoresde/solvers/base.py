"""The solver interface shared by every back end, and the options they receive."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .control import StepSizeController
from .result import ODEResult
from .state import CheckedRHS, Components, Structure


@dataclass(frozen=True)
class SolveOptions:
    """Validated options of one :func:`~scoresde.solvers.solve_ode` call.

    ``running_only`` (per-sample methods): evaluate ``f`` on the samples still running only
    (``False``: on the whole batch every time, the old behaviour, kept for comparison).
    """

    rtol: float
    atol: float
    steps: Optional[int]
    max_steps: int
    first_step: Optional[float]
    progress: bool
    controller: StepSizeController
    cuda_graphs: bool = True
    running_only: bool = True


@dataclass(frozen=True)
class Problem:
    """``dy/dt = rhs(t, y)`` from ``t0`` to ``t1`` for the batch ``y0`` (a tuple of components)."""

    rhs: CheckedRHS
    y0: Components
    t0: float
    t1: float
    struct: Structure

    @property
    def direction(self) -> float:
        return 1.0 if self.t1 > self.t0 else -1.0

    @property
    def lo(self) -> float:
        return min(self.t0, self.t1)

    @property
    def hi(self) -> float:
        return max(self.t0, self.t1)

    def call(self, t: torch.Tensor, ys: Components) -> Components:
        """Evaluate ``f`` at per-sample times ``t`` (any dtype), clamped to ``[lo, hi]`` and cast to the time dtype.

        The clamp only absorbs rounding of ``t + c_i h`` at the interval ends: every solver keeps its
        stages inside the interval by construction.
        """
        t = t.clamp(self.lo, self.hi).to(self.struct.time_dtype)
        return self.rhs(t, ys)


class ODESolver:
    """Base class of the back ends registered in :data:`~scoresde.solvers.METHODS`.

    Class attributes describe the method (torchsde style) so a study can filter the registry:
    ``name``, ``order``, ``adaptive`` (error-controlled step size), ``per_sample`` (each sample has its
    own step size, so its result does not depend on its batch mates), ``needs_steps`` (fixed grid).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 0
    adaptive: ClassVar[bool] = False
    per_sample: ClassVar[bool] = False
    needs_steps: ClassVar[bool] = False

    def __init__(self, options: SolveOptions):
        self.options = options

    def solve(self, problem: Problem) -> ODEResult:  # pragma: no cover - interface
        raise NotImplementedError


class Progress:
    """A tqdm bar over the fraction of ``[t0, t1]`` covered (a no-op when disabled)."""

    RESOLUTION = 1000

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        self.shown = 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.RESOLUTION, desc=desc, unit="‰", leave=False)

    def update(self, fraction: float) -> None:
        if self.bar is None:
            return
        target = int(max(0.0, min(1.0, fraction)) * self.RESOLUTION)
        if target > self.shown:
            self.bar.update(target - self.shown)
            self.shown = target

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
