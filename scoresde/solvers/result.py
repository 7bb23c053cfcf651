"""What an ODE solve returns: the per-sample :class:`ODEResult` and its :class:`SolverStatus` codes."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Tuple, Union

import torch

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class SolverStatus(enum.IntEnum):
    """Per-sample outcome of :func:`~scoresde.solvers.solve_ode`, stored in ``ODEResult.status``.

    ``SUCCESS``         the sample reached ``t1``.
    ``NONFINITE``       NaN or inf appeared in the sample's state or derivative; ``y`` is its last finite state.
    ``STEP_UNDERFLOW``  the adaptive step size fell below ``10 * eps * max(|t|, 1e-6 |t1 - t0|)`` (``eps`` of
                        the compute dtype: no further progress possible), or a shared-step back end gave
                        up on its step size.
    ``MAX_STEPS``       the sample used ``max_steps`` attempted (accepted + rejected) steps before reaching ``t1``.
    """

    SUCCESS = 0
    NONFINITE = 1
    STEP_UNDERFLOW = 2
    MAX_STEPS = 3


#: Internal marker for a sample that is still being integrated; never appears in a returned result.
RUNNING = -1


@dataclass(frozen=True)
class ODEResult:
    """Result of :func:`~scoresde.solvers.solve_ode` for a batch of ``B`` independent initial values.

    Attributes:
        y: the state at ``t1`` for successful samples, the last good state otherwise; same structure,
            shapes and dtypes as ``y0`` (a tensor ``(B, *dims)`` or a tuple of tensors with leading dim ``B``).
        t: ``(B,)`` time reached per sample, in the dtype of ``y0``'s first component (``t1`` where ``ok``).
        nfe: ``(B,)`` int64, evaluations of ``f`` while the sample was active (for shared-step back ends
            every sample reports the same count).
        n_accepted: ``(B,)`` int64 accepted steps, ``-1`` where the back end does not report it.
        n_rejected: ``(B,)`` int64 rejected steps, ``-1`` where the back end does not report it.
        status: ``(B,)`` int64 codes of :class:`SolverStatus`.
        method: the method name passed to ``solve_ode``.
        total_nfe: number of (whole-batch) calls of ``f``; wall time scales with this, not with ``nfe``.
    """

    y: State
    t: torch.Tensor
    nfe: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    status: torch.Tensor
    method: str
    total_nfe: int = -1

    @property
    def ok(self) -> torch.Tensor:
        """``(B,)`` bool: which samples reached ``t1`` (``status == SolverStatus.SUCCESS``)."""
        return self.status == int(SolverStatus.SUCCESS)

    @property
    def all_ok(self) -> bool:
        """Whether every sample succeeded (one host read-back)."""
        return bool(self.ok.all())

    def status_counts(self) -> dict:
        """``{SolverStatus: count}`` over the batch, for reports (one host read-back)."""
        counts = torch.bincount(self.status.clamp(min=0).cpu(), minlength=len(SolverStatus)).tolist()
        return {s: counts[int(s)] for s in SolverStatus}
