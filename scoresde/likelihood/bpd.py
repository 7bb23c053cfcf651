"""Bits per dimension: the conversion from a log-density (:func:`bits_per_dim`) and the result of a
whole test set (:class:`BPDResult`: per-sample values, mean, standard error, convention).

**Standard error.** Repeats of one test point share that point, so their values are not
independent draws; ``stderr`` first averages each sample over its repeats, then takes
``std(per-sample means, ddof=1) / sqrt(N)``. It is the standard error of ``mean`` as an estimate
of the expected bits/dim over the data distribution, the dequantization noise and the probes
(the noise and probe variance enter through the per-sample means, divided by ``repeats``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from .._utils import check_int
from ..quantize import grid_cell

__all__ = ["bits_per_dim", "BPDResult"]


def bits_per_dim(logp, num_dims: int, *, n_levels: int = 256,
                 data_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """Bits per dimension of data quantized to ``n_levels`` levels on ``data_range = (lo, hi)``:

        bpd = -logp / (D ln 2) + log2(n_levels / (hi - lo)).

    ``logp`` is the log-density (nats) of the continuous, dequantized data in the model's
    coordinates; the offset converts that density into the probability of the quantization cell of
    width ``(hi - lo)/n_levels`` (uniform dequantization gives a lower bound on the discrete
    log-likelihood, Theis et al. 2016). The original score-SDE code's "+ 7" is this offset for
    8-bit data on ``[-1, 1]``: ``log2(256 / 2) = 7``; on ``[0, 1]`` it is ``log2(256) = 8``, and
    ``-logp/(D ln 2)`` differs between the two scalings by exactly ``log2(2) = 1``, so both give
    the same number. Works on tensors (any shape) or floats.
    """
    check_int("num_dims", num_dims)
    lo, hi, _ = grid_cell(n_levels, data_range)
    logp = torch.as_tensor(logp, dtype=torch.float64) if not isinstance(logp, torch.Tensor) else logp
    return -logp / (num_dims * math.log(2.0)) + math.log2(n_levels / (hi - lo))


def summarise(bpd: torch.Tensor, status: torch.Tensor) -> Tuple[float, float, torch.Tensor, int]:
    """``(mean, stderr, per-sample mean over ok repeats (N,), number of samples with >= 1 ok repeat)``."""
    ok = (status == 0) & torch.isfinite(bpd)
    count = ok.sum(0)
    per_sample = torch.where(ok, bpd, torch.zeros_like(bpd)).sum(0) / count.clamp(min=1)
    per_sample = torch.where(count > 0, per_sample, torch.full_like(per_sample, math.nan))
    valid = per_sample[count > 0]
    n = valid.numel()
    mean = float(valid.mean()) if n else math.nan
    stderr = float(valid.std(unbiased=True) / math.sqrt(n)) if n >= 2 else math.nan
    return mean, stderr, per_sample, n


def _g(v: float) -> str:
    return f"{v:g}"


def _json_float(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class BPDResult:
    """Bits per dimension of a data set, per sample and summarised.

    Attributes:
        bpd: ``(repeats, N)`` float64, bits/dim of every sample in every repeat (data order).
        logp: ``(repeats, N)`` float64, ``log p_eps`` of the (dequantized) sample in nats.
        nfe: ``(repeats, N)`` long, score evaluations per sample.
        status: ``(repeats, N)`` long, the solver's :class:`scoresde.solvers.SolverStatus` (0 ok).
        mean: mean bits/dim: each sample averaged over its successful repeats, then over samples
            (with nothing failed, the plain mean of ``bpd``).
        stderr: ``std(per-sample means, ddof=1) / sqrt(N)``; repeats of one point are not
            independent test points, so they are averaged first (NaN when fewer than 2 samples).
        n_samples: ``N``, the number of data points evaluated (the whole data set).
        n_failed: number of ``(repeat, sample)`` evaluations with ``status != 0`` (or a non-finite
            value); they are excluded from ``mean`` and ``stderr``.
        convention: everything the number depends on (eps, trace, n_probes, rtol, atol, backend,
            dequantize, n_levels, data_range, repeats, sde, ...).
        z: ``(repeats, N, *dims)`` latents at ``T`` when ``keep_latents=True``, else ``None``.
        tolerance: the :class:`~scoresde.likelihood.budget.ToleranceChoice` when ``rtol``/``atol``
            came from the error budget (the chosen tolerance, the pilot's bias estimate with its
            standard error, the budget), ``None`` when they were given.
    """

    bpd: torch.Tensor
    logp: torch.Tensor
    nfe: torch.Tensor
    status: torch.Tensor
    mean: float
    stderr: float
    n_samples: int
    n_failed: int
    convention: dict
    z: Optional[torch.Tensor] = None
    tolerance: Optional[Any] = None

    @property
    def repeats(self) -> int:
        return self.bpd.shape[0]

    @property
    def ok(self) -> torch.Tensor:
        """``(repeats, N)`` bool: which evaluations succeeded."""
        return (self.status == 0) & torch.isfinite(self.bpd)

    @property
    def per_sample_bpd(self) -> torch.Tensor:
        """``(N,)`` float64: each sample's bits/dim averaged over its successful repeats (NaN if none)."""
        return summarise(self.bpd, self.status)[2]

    @property
    def mean_nfe(self) -> float:
        """Score evaluations per sample and repeat of the evaluation itself (the pilot not included)."""
        return float(self.nfe.double().mean())

    @property
    def total_nfe(self) -> int:
        """Every score evaluation the result cost: all samples and repeats, plus the tolerance pilot's."""
        return int(self.nfe.sum()) + (self.tolerance.pilot_nfe if self.tolerance is not None else 0)

    def summary(self) -> str:
        """One line, e.g. ``3.412 ± 0.008 bits/dim (N=1797, repeats=3; eps=1e-05, rademacher x1,
        dopri5 rtol=atol=1e-05, uniform dequantization, 256 levels on [-1, 1])``."""
        c = self.convention
        se = self.stderr
        digits = 3 if not (math.isfinite(se) and 0 < se < 1e-3) else min(10, 1 - math.floor(math.log10(se)))
        trace = "exact trace" if c["trace"] == "exact" else f"{c['trace']} x{c['n_probes']}"
        tol = (f"rtol=atol={_g(c['rtol'])}" if c["rtol"] == c["atol"]
               else f"rtol={_g(c['rtol'])}, atol={_g(c['atol'])}")
        lo, hi = c["data_range"]
        grid = f"{c['n_levels']} levels on [{_g(lo)}, {_g(hi)}]"
        deq = ("uniform dequantization, " + grid if c["dequantize"] == "uniform"
               else "no dequantization (continuous density), offset of " + grid)
        failed = f"; {self.n_failed} failed evaluations excluded" if self.n_failed else ""
        chosen = f", {self.tolerance.describe()}" if self.tolerance is not None else ""
        return (f"{self.mean:.{digits}f} ± {se:.{digits}f} bits/dim (N={self.n_samples}, repeats={self.repeats}; "
                f"eps={_g(c['eps'])}, {trace}, {c['backend']} {tol}{chosen}, {deq}{failed})")

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"BPDResult({self.summary()})"

    def to_dict(self, per_sample: bool = True) -> dict:
        """A JSON-serialisable dict (non-finite numbers become ``None``); ``per_sample=False`` keeps
        only the summary and the convention."""
        c = dict(self.convention)
        c["data_range"] = list(c["data_range"])
        out = dict(mean=_json_float(self.mean), stderr=_json_float(self.stderr), n_samples=self.n_samples,
                   repeats=self.repeats, n_failed=self.n_failed, mean_nfe=self.mean_nfe, total_nfe=self.total_nfe,
                   convention=c,
                   summary=self.summary())
        if per_sample:
            out["bpd"] = [[_json_float(v) for v in row] for row in self.bpd.tolist()]
            out["logp"] = [[_json_float(v) for v in row] for row in self.logp.tolist()]
            out["nfe"] = self.nfe.tolist()
            out["status"] = self.status.tolist()
        return out
