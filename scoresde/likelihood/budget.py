"""The solver tolerance of a test-set likelihood, chosen from an error budget.

A test-set mean of bits/dim carries a Monte Carlo standard error (the images, the dequantization
noise, the probes) that is usually far larger than the bias of the ODE solver at the literature's
``rtol = atol = 1e-5``. :func:`choose_tolerance` asks instead for the loosest tolerance whose bias
of the reported mean is a small fraction (``budget``, default 0.1) of that standard error.

The bias is estimated by a *paired pilot*: a subset of ``m`` images, dequantized once, evaluated
with the same probes at the reference tolerance (the literature's ``1e-5``) and at each looser
candidate. The Monte Carlo noise is
then the same in both, and the per-image difference ``d_i = bpd_i(candidate) - bpd_i(reference)``
is the solver's error alone: its mean ``b`` estimates the bias of the mean over images, with
standard error ``s_b = sd(d) / sqrt(m)``. The standard error of the full evaluation is predicted
from the pilot's reference values as ``SE = sd(bpd_ref) / sqrt(N)`` (one repeat per image; more
repeats make the true SE smaller, so this errs on the tight side). The candidates are tried from
the loosest; the first with ``|b| + 2 s_b <= budget * SE`` is taken. If none fits, the reference
tolerance itself is used (today's fixed default) and the choice says so.

The bias is the *extra* bias of loosening the tolerance beyond the reference, not the distance to
the exact solution. The reference's own bias is far smaller: on a 5,000-step digits MLP, ``1e-5``
was 0.00005 bits/dim from a ``1e-8`` solve, against 0.0005-0.002 at ``1e-4 .. 1e-2`` and a
standard error of 0.025 (128 images); the tests check the estimate against ``1e-8`` solves.
The pilot's evaluations are part of the cost (``pilot_nfe``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .. import quantize as Q
from .._utils import check_int, check_number, derive_seed
from .bpd import bits_per_dim
from .flow import log_likelihood

__all__ = ["ToleranceChoice", "choose_tolerance", "budget_tolerance", "CANDIDATES", "REFERENCE"]

#: Default candidate tolerances (``rtol = atol``), tried from the loosest.
CANDIDATES: Tuple[float, ...] = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
#: Default reference tolerance of the paired pilot, and the tolerance used when no candidate fits.
REFERENCE = 1e-5


@dataclass(frozen=True)
class ToleranceChoice:
    """The tolerance :func:`choose_tolerance` picked, and the evidence.

    ``rtol = atol = tol``; ``budget``: the allowed bias as a fraction of the standard error;
    ``bias``, ``bias_stderr``: the pilot's estimate of the solver's bias of the mean at ``tol``
    (bits/dim, against ``reference``) and its standard error; ``predicted_stderr``: the standard
    error of the full evaluation predicted from the pilot (bits/dim); ``pilot_size``: images in the
    pilot; ``pilot_nfe``: score evaluations the pilot spent (summed over its images and solves);
    ``fitted``: whether ``tol`` met the budget (False: no candidate did, or the pilot had fewer than
    two usable images, and the reference tolerance is used, with ``bias`` NaN); ``candidates``: one dict per candidate
    tried (``tol``, ``bias``, ``bias_stderr``, ``mean_nfe``, ``fits``).
    """

    tol: float
    budget: float
    bias: float
    bias_stderr: float
    predicted_stderr: float
    reference: float
    pilot_size: int
    pilot_nfe: int
    fitted: bool
    candidates: Tuple[dict, ...]

    def to_dict(self) -> dict:
        """JSON-serialisable (non-finite numbers become ``None``)."""
        def num(v):
            return v if isinstance(v, (int, bool)) or (isinstance(v, float) and math.isfinite(v)) else None

        return dict(mode="budget", rtol=self.tol, atol=self.tol, budget=self.budget, bias=num(self.bias),
                    bias_stderr=num(self.bias_stderr), predicted_stderr=num(self.predicted_stderr),
                    reference=self.reference, pilot_size=self.pilot_size, pilot_nfe=self.pilot_nfe,
                    fitted=self.fitted, candidates=[{k: num(v) for k, v in c.items()} for c in self.candidates])

    def describe(self) -> str:
        """E.g. ``tolerance from the error budget (solver bias -0.0004 ± 0.0002 bits/dim, budget
        0.1 x SE 0.025; pilot of 32 images, 25,000 NFE)``."""
        pilot = f"pilot of {self.pilot_size} images against {self.reference:g}, {self.pilot_nfe:,} NFE"
        if not self.fitted:
            return (f"reference tolerance: no looser candidate met the error budget (budget {self.budget:g} x SE "
                    f"{self.predicted_stderr:.2g}; {pilot})")
        return (f"tolerance from the error budget (solver bias {self.bias:+.2g} ± {self.bias_stderr:.2g} bits/dim, "
                f"budget {self.budget:g} x SE {self.predicted_stderr:.2g}; {pilot})")


def check_budget(budget: float, candidates: Sequence[float], reference: float, pilot_size: int) -> Tuple[float, ...]:
    """Validate the options; returns the candidates sorted from the loosest."""
    check_number("error_budget", budget, 0.0, lo_open=True)
    check_int("pilot_size", pilot_size, 2, hint="images in the paired pilot, e.g. 32")
    check_number("reference tolerance", reference, 0.0, lo_open=True)
    cands = tuple(sorted({float(c) for c in candidates}, reverse=True))
    if not cands:
        raise ValueError("candidates is empty: give at least one tolerance")
    for c in cands:
        check_number("candidate tolerance", c, 0.0, lo_open=True)
    if min(cands) <= reference:
        raise ValueError(f"the reference tolerance ({reference:g}) must be tighter than every candidate "
                         f"(the tightest is {min(cands):g})")
    return cands


def pilot_rows(n: int, pilot_size: int) -> torch.Tensor:
    """``min(n, pilot_size)`` indices spread evenly over ``[0, n)`` (a sorted test set is covered)."""
    m = min(n, pilot_size)
    return torch.linspace(0, n - 1, m, dtype=torch.float64).round().long().unique()


def choose_tolerance(score_fn: Callable, sde, x: torch.Tensor, n_total: int, *, budget: float = 0.1,
                     candidates: Sequence[float] = CANDIDATES, reference: float = REFERENCE, probe_seed: int = 0,
                     n_levels: int = 256, data_range=(-1.0, 1.0), likelihood_kw: Optional[dict] = None,
                     progress: bool = False) -> ToleranceChoice:
    """The loosest of ``candidates`` whose solver bias of a ``n_total``-image mean fits the budget.

    ``x``: the pilot images as they will be evaluated (dequantized already), ``(m, *dims)`` on the
    evaluation device; every solve draws its probes from a generator seeded with ``probe_seed``, so
    the reference and the candidates see the same probes. ``likelihood_kw``: the other options of
    :func:`~scoresde.likelihood.log_likelihood` (trace, n_probes, eps, backend, max_steps).
    ``progress``: a tqdm bar over the pilot's solves. See the module docstring for the rule.
    """
    cands = check_budget(budget, candidates, reference, max(int(x.shape[0]), 2))
    kw = dict(likelihood_kw or {})
    num_dims = math.prod(x.shape[1:])
    nfe_total = 0

    bar = tqdm(total=1 + len(cands), desc="tolerance pilot", disable=not progress, leave=False)

    def solve(tol: float):
        nonlocal nfe_total
        gen = torch.Generator(device=x.device).manual_seed(probe_seed)
        bar.set_postfix(rtol=f"{tol:g}", refresh=False)
        res = log_likelihood(score_fn, sde, x, rtol=tol, atol=tol, generator=gen, **kw)
        bar.update(1)
        nfe_total += int(res.nfe.sum())
        bpd = bits_per_dim(res.logp.to(torch.float64), num_dims, n_levels=n_levels, data_range=data_range)
        return bpd, (res.status == 0) & torch.isfinite(bpd), float(res.nfe.double().mean())

    ref, ref_ok, _ = solve(reference)
    n_ok = int(ref_ok.sum())
    se = float(ref[ref_ok].std(unbiased=True)) / math.sqrt(n_total) if n_ok >= 2 else math.nan
    tried = []
    chosen = None
    for tol in cands:
        if n_ok < 2:
            break
        bpd, ok, mean_nfe = solve(tol)
        d = (bpd - ref)[ref_ok]
        broken = bool((~ok & ref_ok).any())  # a candidate that fails where the reference does not
        bias = float(d.mean()) if not broken else math.nan
        bias_se = float(d.std(unbiased=True)) / math.sqrt(d.numel()) if not broken else math.nan
        fits = (not broken) and abs(bias) + 2.0 * bias_se <= budget * se
        tried.append(dict(tol=tol, bias=bias, bias_stderr=bias_se, mean_nfe=mean_nfe, fits=bool(fits)))
        if fits:
            chosen = tried[-1]
            break
    bar.close()
    fitted = chosen is not None
    if chosen is None:
        chosen = dict(tol=float(reference), bias=math.nan, bias_stderr=math.nan)
    return ToleranceChoice(tol=chosen["tol"], budget=float(budget), bias=chosen["bias"],
                           bias_stderr=chosen["bias_stderr"], predicted_stderr=se, reference=float(reference),
                           pilot_size=int(x.shape[0]), pilot_nfe=nfe_total, fitted=fitted, candidates=tuple(tried))


def _pilot_generator(generator: Optional[torch.Generator], device: torch.device) -> torch.Generator:
    """The pilot's own stream: seeded from ``generator``'s state without advancing it (0 when None)."""
    base = 0
    if generator is not None:
        clone = torch.Generator(device=generator.device)
        clone.set_state(generator.get_state())
        base = int(torch.randint(0, 2**62, (1,), generator=clone, device=clone.device))
    return torch.Generator(device=device).manual_seed(derive_seed(base, "tolerance pilot"))


def budget_tolerance(score_fn: Callable, sde, source, device: torch.device, generator: Optional[torch.Generator],
                     likelihood_kw: dict, *, error_budget: float, pilot_size: int, dequantize: Optional[str],
                     n_levels: int, data_range, is_dist: bool = False, rank: int = 0,
                     progress: bool = False, labels: Optional[torch.Tensor] = None) -> ToleranceChoice:
    """:func:`choose_tolerance` for :func:`~scoresde.likelihood.evaluate_bpd`: the pilot rows of a
    data ``source`` (a materialised :class:`~scoresde.likelihood.batches.Source`), dequantized once
    from the pilot's own stream; under a process group rank 0 runs it and broadcasts the choice.
    ``labels`` ``(N,)``: the data's class labels (a conditional evaluation), selected with the rows."""
    check_budget(error_budget, CANDIDATES, REFERENCE, pilot_size)

    def run() -> ToleranceChoice:
        gen = _pilot_generator(generator, device)
        rows = pilot_rows(source.size, pilot_size)
        x = source.tensor[rows].to(device)
        if dequantize == "uniform":
            x = Q.dequantize(x, n_levels, data_range, gen)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        kw = likelihood_kw if labels is None else dict(likelihood_kw, y=labels[rows].to(device))
        return choose_tolerance(score_fn, sde, x, source.size, budget=error_budget, probe_seed=seed,
                                n_levels=n_levels, data_range=data_range, likelihood_kw=kw, progress=progress)

    if not is_dist:
        return run()
    box: list = [None]
    if rank == 0:
        try:
            box[0] = run()
        except Exception as err:  # sent to the other ranks, then raised everywhere
            box[0] = f"{type(err).__name__}: {err}"
            torch.distributed.broadcast_object_list(box, src=0)
            raise
    torch.distributed.broadcast_object_list(box, src=0)
    if isinstance(box[0], str):
        raise RuntimeError(f"the tolerance pilot failed on rank 0: {box[0]}")
    return box[0]
