"""The result object every sampler returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class SampleResult:
    """What a sampler produced and what it cost.

    Attributes:
        x: the samples, shape ``(B, *dims)``.
        nfe: score-function evaluations per sample, ``(B,)`` long tensor on the CPU. For fixed-step
            samplers every entry is the same; for adaptive ODE solvers each sample has its own count.
            A final denoising step counts as one evaluation.
        status: per-sample ``(B,)`` int tensor of :class:`scoresde.solvers.SolverStatus` codes
            (0 = success, 1 = non-finite, 2 = step underflow, 3 = max steps).
        sampler: the sampler's name.
        eps: the smallest time the sampler reached.
        total_nfe: number of batched score calls (what wall time is proportional to).
        n_accepted, n_rejected: per-sample step counts of adaptive ODE solvers, else ``None``.
        info: sampler options as used (for studies and reports).
        guidance: ``None`` for an unconditional run; else what :mod:`scoresde.guidance` records:
            ``conditional``, ``convention`` (``"weight"``, ``"scale"`` or ``"none"``),
            ``guidance_weight`` ``w``, ``guidance_scale`` ``1 + w`` and the formula. With ``w != 0``
            one evaluation (one unit of ``nfe``) is one score call on the batch twice (``2B`` rows).
    """

    x: torch.Tensor
    nfe: torch.Tensor
    status: torch.Tensor
    sampler: str
    eps: float
    total_nfe: int
    n_accepted: Optional[torch.Tensor] = None
    n_rejected: Optional[torch.Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)
    guidance: Optional[dict[str, Any]] = None

    @property
    def ok(self) -> torch.Tensor:
        """``(B,)`` bool: which samples finished successfully."""
        return self.status == 0

    @property
    def mean_nfe(self) -> float:
        return float(self.nfe.double().mean())
