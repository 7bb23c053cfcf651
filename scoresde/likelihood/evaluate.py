"""Bits per dimension of a score model on a whole test set: dequantization, repeats, distribution.

:func:`evaluate_bpd` runs :func:`~scoresde.likelihood.log_likelihood` (the probability-flow ODE
likelihood, Song et al. 2021, Section 4.3 and Appendix D.2) over every sample of a data set, with
fresh uniform dequantization noise and fresh Hutchinson probes per repeat, and returns a
:class:`~scoresde.likelihood.BPDResult` with the per-sample values and a summary that states its
convention. The data are read by :mod:`~scoresde.likelihood.batches`, sharded across ranks by
:mod:`~scoresde.likelihood.sharding`, and converted by :mod:`~scoresde.likelihood.bpd`.

**Quantization grid.** Data are grid values ``lo + k w``, ``w = (hi - lo) / n_levels`` (the convention of
:mod:`scoresde.quantize`, written out there once), dequantized by adding ``U(0, w)`` per coordinate;
the reported ``bpd = -log p(x) / (D ln 2) + log2(n_levels / (hi - lo))`` is then, averaged over the
noise, an upper bound on the discrete negative log-likelihood in bits per dimension. Data off the
grid are refused with a message that says how to map them.

With ``dequantize=None`` the data are evaluated as given (continuous data, e.g. samples of an
oracle) and the same formula is reported: a continuous density in bits per dimension, shifted by
the same constant ``log2(n_levels / (hi - lo))`` so that tables stay comparable.

**Solver tolerance.** Unless ``rtol`` and ``atol`` are given, they are chosen from an error budget
(:mod:`~scoresde.likelihood.budget`): the loosest tolerance whose solver bias of the reported mean,
estimated by a paired pilot on a subset, stays below ``error_budget`` times its standard error.

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
from tqdm.auto import tqdm

from .._utils import check_int, check_labels
from ..guidance import score_num_classes
from .. import quantize as Q
from ..quantize import check_on_grid, grid_cell
from ..scorefn import ScoreFn
from ..sde import SDE
from .batches import Source, resolve_device
from .bpd import BPDResult, bits_per_dim, summarise
from .budget import ToleranceChoice, budget_tolerance
from .flow import log_likelihood, warns_in_train_mode
from .sharding import dist_context, gather_blocks, rank_generator, shard_bounds, unwrap_ddp

__all__ = ["evaluate_bpd"]

_DEQUANTIZE = ("uniform", None)


@warns_in_train_mode
def evaluate_bpd(
    score_fn: ScoreFn,
    sde: SDE,
    data: Union[torch.Tensor, Iterable],
    *,
    repeats: int = 1,
    dequantize: Optional[str] = "uniform",
    n_levels: int = 256,
    data_range: Tuple[float, float] = (-1.0, 1.0),
    batch_size: int = 256,
    trace: str = "rademacher",
    n_probes: int = 1,
    eps: float = 1e-5,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    error_budget: float = 0.1,
    pilot_size: int = 32,
    backend: str = "dopri5",
    generator: Optional[torch.Generator] = None,
    device=None,
    progress: bool = True,
    max_steps: int = 10_000,
    keep_latents: bool = False,
    distributed: Optional[bool] = None,
    labels: Optional[torch.Tensor] = None,
) -> BPDResult:
    """Bits per dimension of ``score_fn`` on every sample of ``data`` (probability-flow ODE likelihood).

    Args:
        score_fn: ``score_fn(x, t)``. A module wrapped in ``DistributedDataParallel`` is evaluated
            through its ``.module``: DDP's forward may run collectives (buffer broadcast) on every
            call, while the adaptive solver makes a different number of calls on each rank.
            Put a network in ``eval()`` mode first (a module in training mode gets a warning).
        sde: the forward SDE the score belongs to.
        data: a tensor ``(N, *dims)`` or an iterable of batches (tensors or ``(x, label)`` tuples, as
            a ``DataLoader`` gives; use ``shuffle=False`` and ``drop_last=False``). Every sample is
            evaluated, re-batched to ``batch_size`` rows (the last batch may be smaller); when the
            size is known (a tensor, a ``DataLoader`` over a sized dataset) the number of evaluated
            samples is checked against it.
        repeats: evaluations per sample, each with fresh dequantization noise and fresh probes.
        dequantize: ``"uniform"``: the data must be grid values ``lo + u (hi - lo)/n_levels``
            (checked; :mod:`scoresde.quantize`) and get ``U(0, w)`` noise per coordinate; ``None``:
            continuous data, evaluated as given. Half-precision (``float16``, ``bfloat16``) grid data
            are dequantized, and so evaluated, in ``float32`` (half precision cannot hold a point
            inside a 256-level cell), giving the float32 data's answer with the same generator.
        n_levels, data_range: the quantization grid and the bits/dim offset
            ``log2(n_levels / (hi - lo))``.
        batch_size: samples per :func:`~scoresde.likelihood.log_likelihood` call.
        trace, n_probes, eps, backend, max_steps: passed to
            :func:`~scoresde.likelihood.log_likelihood` (``eps`` default 1e-5, Song et al. 2021).
        rtol, atol: the solver tolerances; give both, or neither: then ``rtol = atol`` is chosen
            from the error budget (:func:`~scoresde.likelihood.budget.choose_tolerance`, stated in
            ``BPDResult.tolerance`` and the convention).
        error_budget: the solver's bias of the mean may be at most this fraction of its standard
            error (0.1), judged by its pilot estimate plus two of the estimate's standard errors.
        pilot_size: images of the paired pilot (32), spread evenly over the data; they are
            evaluated at the reference tolerance 1e-5 and at the candidates 1e-2, 3e-3, 1e-3, 3e-4,
            1e-4 from the loosest until one fits (none: 1e-5), with the same dequantization noise
            and probes. Its
            evaluations count in ``BPDResult.total_nfe``. The pilot draws from its own stream,
            seeded from ``generator``'s state without advancing it (seed 0 when ``None``), so the
            main evaluation is the one an explicit ``rtol = atol`` at the chosen value gives.
            An iterable ``data`` is first read into CPU memory (the pilot's rows span the set).
        generator: a ``torch.Generator`` on the evaluation device. Single process: it is used
            directly and advanced in this order: for each batch in data order, for each repeat, the
            dequantization noise (``torch.rand`` shaped like the batch), then the probes drawn by
            ``log_likelihood``. Distributed: see below. ``None``: torch's global RNG.
        device: where to evaluate; default: the module's parameter device, else the generator's,
            else the data tensor's, else the CPU. Batches are moved there.
        progress: a tqdm bar over batches x repeats (on rank 0 only).
        keep_latents: also return the latents ``z`` at ``T``, ``(repeats, N, *dims)`` on the CPU.
        distributed: ``None`` (default): shard across ranks when a ``torch.distributed`` process
            group is initialised; ``False``: evaluate everything in this process without
            collectives (e.g. on rank 0 only); ``True``: require a process group.
        labels: class labels ``(N,)`` of the data, in data order, for a conditional score function
            (``score_fn(x, t, y=...)``; ``-1`` for an unconditional row): the result is then the
            conditional ``-log p(x | y)`` in bits/dim, unguided (``convention["conditional"]``).
            ``labels=dataset.test_labels`` goes with ``data=dataset.test``.

    Distributed evaluation: rank ``r`` of ``W`` evaluates the contiguous index block
    ``[r N // W, (r + 1) N // W)`` (an iterable of unknown length is first read into CPU memory
    on every rank to learn ``N``); the per-sample results are gathered with ``all_gather_object``
    (with NCCL, set ``torch.cuda.set_device(local_rank)`` first) and every rank returns the full
    result in data order. Random streams: every rank draws one integer ``base`` in ``[0, 2^62)``
    from ``generator`` (torch's global CPU RNG when ``None``) -- the same on every rank when they
    are given the same seed -- and evaluates with a fresh ``torch.Generator(device)`` seeded with
    ``base + r``, used as in the single-process case on its block. Results with random
    dequantization or probes therefore depend on ``W`` (they are reproducible for fixed ``W`` and
    seed); with ``trace="exact"`` and ``dequantize=None`` they do not. An error on any rank is
    raised on every rank after the gather (no rank is left waiting).

    With a process group, rank 0 runs the pilot and sends the choice to every rank.

    Returns:
        :class:`BPDResult` with per-sample ``(repeats, N)`` tensors on the CPU and the summary.
        Failed evaluations (``status != 0``) are excluded from the mean with a warning.
    """
    lo, hi, _ = _check_options(repeats, dequantize, batch_size, n_levels, data_range)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    score_fn = unwrap_ddp(score_fn)
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t) -> tensor shaped like x")
    is_dist, rank, world = dist_context(distributed)
    source = Source(data)
    device = resolve_device(device, score_fn, generator, source)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but evaluation runs on {device}; "
                         f"make it with torch.Generator(device='{device.type}')")
    if source.tensor is not None:
        if source.size == 0:
            raise ValueError("data is empty: nothing to evaluate")
        _check_batch(source.tensor, dequantize, n_levels, data_range, "data")
    elif (is_dist and source.size is None) or (rtol is None and atol is None) or labels is not None:
        source.materialise()  # the pilot picks rows across the whole set; labels go by row
        _check_batch(source.tensor, dequantize, n_levels, data_range, "data")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (source.size,):
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a ({source.size},) tensor, one class label per sample of data, got {got}")
        labels = check_labels(labels, source.size, "cpu", score_num_classes(score_fn))

    lik_kw = dict(trace=trace, n_probes=n_probes, eps=eps, backend=backend, max_steps=max_steps, progress=False)
    choice = None
    if rtol is None and atol is None:
        choice = budget_tolerance(score_fn, sde, source, device, generator, lik_kw, error_budget=error_budget,
                                  pilot_size=pilot_size, dequantize=dequantize, n_levels=n_levels,
                                  data_range=(lo, hi), is_dist=is_dist, rank=rank, progress=progress, labels=labels)
        rtol = atol = choice.tol
    elif rtol is None or atol is None:
        raise ValueError("give both rtol and atol, or neither (then the tolerance is chosen from error_budget)")
    convention = dict(eps=eps, trace=trace, n_probes=n_probes, rtol=rtol, atol=atol,
                      backend=backend, dequantize=dequantize, n_levels=n_levels, data_range=(lo, hi),
                      repeats=repeats, max_steps=max_steps, offset_bits=math.log2(n_levels / (hi - lo)),
                      sde=repr(sde), world_size=world, conditional=labels is not None,
                      tolerance=choice.to_dict() if choice is not None else dict(mode="given"))
    plan = _Plan(score_fn=score_fn, sde=sde, device=device, batch_size=batch_size, repeats=repeats,
                 dequantize=dequantize, n_levels=n_levels, lo=lo, hi=hi, keep_latents=keep_latents,
                 progress=progress and rank == 0, convention=convention,
                 likelihood_kw=dict(lik_kw, rtol=rtol, atol=atol), tolerance=choice, labels=labels)
    if is_dist:
        start, stop = shard_bounds(source.size, rank, world)
        gen = rank_generator(generator, device, rank)
        parts = gather_blocks(lambda: _evaluate_block(plan, source, start, stop, gen), rank, world, convention)
    else:
        parts = [_evaluate_block(plan, source, 0, None, generator)]
        parts = [p for p in parts if p["count"] > 0]
    if not parts:
        raise ValueError("data is empty: nothing to evaluate")
    return _assemble(plan, parts, source.size, rank)


@dataclass(frozen=True)
class _Plan:
    """What every block of an evaluation shares: the model, the options and the convention."""

    score_fn: Any
    sde: SDE
    device: torch.device
    batch_size: int
    repeats: int
    dequantize: Optional[str]
    n_levels: int
    lo: float
    hi: float
    keep_latents: bool
    progress: bool
    convention: dict
    likelihood_kw: dict
    tolerance: Optional[ToleranceChoice] = None
    labels: Optional[torch.Tensor] = None


def _evaluate_batch(plan: _Plan, xb: torch.Tensor, gen: Optional[torch.Generator], bar, running: list,
                    yb: Optional[torch.Tensor] = None) -> dict:
    """``repeats`` evaluations of one batch (labels ``yb`` or None), each with fresh dequantization noise and probes."""
    num_dims = math.prod(xb.shape[1:])
    rows: Dict[str, list] = {k: [] for k in ("logp", "nfe", "status", "z")}
    for _ in range(plan.repeats):
        xr = Q.dequantize(xb, plan.n_levels, (plan.lo, plan.hi), gen) if plan.dequantize == "uniform" else xb
        res = log_likelihood(plan.score_fn, plan.sde, xr, generator=gen, y=yb, **plan.likelihood_kw)
        rows["logp"].append(res.logp.detach().to("cpu", torch.float64))
        rows["nfe"].append(res.nfe.detach().to("cpu", torch.long))
        rows["status"].append(res.status.detach().to("cpu", torch.long))
        if plan.keep_latents:
            rows["z"].append(res.z.detach().cpu())
        ok = rows["status"][-1] == 0
        if bool(ok.any()):
            b = bits_per_dim(rows["logp"][-1][ok], num_dims, n_levels=plan.n_levels, data_range=(plan.lo, plan.hi))
            running[0] += float(b.sum())
            running[1] += int(ok.sum())
            bar.set_postfix(bpd=f"{running[0] / running[1]:.4f}", refresh=False)
        bar.update(1)
    return rows


def _evaluate_block(plan: _Plan, source: Source, start: int, stop: Optional[int],
                    gen: Optional[torch.Generator]) -> dict:
    """Evaluate rows ``[start, stop)`` of ``source`` (``stop=None``: to the end) in order."""
    n_local = (stop - start) if stop is not None else source.size  # None: an iterable of unknown length
    total = None if n_local is None else math.ceil(n_local / plan.batch_size) * plan.repeats
    cols: Dict[str, list] = {k: [] for k in ("logp", "nfe", "status", "z")}
    count, num_dims, running = 0, None, [0.0, 0]
    with tqdm(total=total, desc="bits/dim", disable=not plan.progress, leave=False) as bar:
        for first, xb in source.rows(start, stop, plan.batch_size):
            if first != start + count:  # pragma: no cover - internal invariant
                raise AssertionError("rows out of order")
            if source.tensor is None:
                _check_batch(xb, plan.dequantize, plan.n_levels, (plan.lo, plan.hi),
                             f"data rows {first}..{first + len(xb) - 1}")
            xb = xb.to(plan.device)
            num_dims = math.prod(xb.shape[1:])
            yb = None if plan.labels is None else plan.labels[first:first + xb.shape[0]].to(plan.device)
            rows = _evaluate_batch(plan, xb, gen, bar, running, yb)
            for k in cols:
                if rows[k]:
                    cols[k].append(torch.stack(rows[k]))
            count += xb.shape[0]
    if n_local is not None and count != n_local:
        raise RuntimeError(
            f"evaluated {count} samples where {n_local} were expected (rows {start}..{start + n_local - 1} of "
            f"a data set of {source.size}, len(dataset) for a DataLoader): the data yielded another number "
            f"of rows than its size says (a sampler over a subset?); pass the whole test set in order"
        )
    out = dict(start=start, count=count, num_dims=num_dims, size=source.size, convention=plan.convention, error=None)
    for k, parts in cols.items():
        out[k] = torch.cat(parts, dim=1) if parts else None
    return out


def _assemble(plan: _Plan, parts: list, size: Optional[int], rank: int) -> BPDResult:
    """Join the blocks in data order, convert to bits/dim and summarise."""
    num_dims = parts[0]["num_dims"]
    logp = torch.cat([p["logp"] for p in parts], dim=1)
    nfe = torch.cat([p["nfe"] for p in parts], dim=1)
    status = torch.cat([p["status"] for p in parts], dim=1)
    z = torch.cat([p["z"] for p in parts], dim=1) if plan.keep_latents else None
    n = logp.shape[1]
    if size is not None and n != size:
        raise RuntimeError(f"evaluated {n} samples but the data set has {size}")
    bpd = bits_per_dim(logp, num_dims, n_levels=plan.n_levels, data_range=(plan.lo, plan.hi)).to(torch.float64)
    mean, stderr, _, _ = summarise(bpd, status)
    failed = ~((status == 0) & torch.isfinite(bpd))
    n_failed = int(failed.sum())
    if n_failed and rank == 0:
        codes = sorted(set(status[failed].tolist()))
        warnings.warn(f"{n_failed} of {bpd.numel()} likelihood evaluations failed (solver status {codes}) and are "
                      f"excluded from the mean; see BPDResult.status (loosen rtol/atol or raise max_steps)",
                      stacklevel=3)
    return BPDResult(bpd=bpd, logp=logp, nfe=nfe, status=status, mean=mean, stderr=stderr, n_samples=n,
                     n_failed=n_failed, convention=plan.convention, z=z, tolerance=plan.tolerance)


def _check_options(repeats, dequantize, batch_size, n_levels, data_range) -> Tuple[float, float, float]:
    check_int("repeats", repeats)
    check_int("batch_size", batch_size)
    if dequantize not in _DEQUANTIZE:
        raise ValueError(f"dequantize must be 'uniform' (quantized data) or None (continuous data), got {dequantize!r}")
    return grid_cell(n_levels, data_range)


def _check_batch(x: torch.Tensor, dequantize: Optional[str], n_levels: int, data_range, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the data first")
    if dequantize == "uniform":
        check_on_grid(x, n_levels, data_range, name=name)
