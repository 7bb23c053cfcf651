"""Bits per dimension of a score model on a whole test set: dequantization, repeats, distribution.

:func:`evaluate_bpd` runs :func:`scoresde.likelihood.log_likelihood` (the probability-flow ODE
likelihood, Song et al. 2021, Section 4.3 and Appendix D.2) over every sample of a data set, with
fresh uniform dequantization noise and fresh Hutchinson probes per repeat, and returns a
:class:`BPDResult` with the per-sample values and a summary that states its convention.

**Quantization grid.** Data are grid values ``lo + k w``, ``w = (hi - lo) / n_levels`` (the convention of
:mod:`scoresde.quantize`, written out there once), dequantized by adding ``U(0, w)`` per coordinate;
the reported ``bpd = -log p(x) / (D ln 2) + log2(n_levels / (hi - lo))`` is then, averaged over the
noise, an upper bound on the discrete negative log-likelihood in bits per dimension. Data off the
grid are refused with a message that says how to map them.

With ``dequantize=None`` the data are evaluated as given (continuous data, e.g. samples of an
oracle) and the same formula is reported: a continuous density in bits per dimension, shifted by
the same constant ``log2(n_levels / (hi - lo))`` so that tables stay comparable.

**Standard error.** Repeats of one test point share that point, so their values are not
independent draws; ``stderr`` first averages each sample over its repeats, then takes
``std(per-sample means, ddof=1) / sqrt(N)``. It is the standard error of ``mean`` as an estimate
of the expected bits/dim over the data distribution, the dequantization noise and the probes
(the noise and probe variance enter through the per-sample means, divided by ``repeats``).

**torch.distributed.** Under ``torchrun`` (a default process group initialised), rank ``r`` of
``W`` evaluates the contiguous block of indices ``[r N // W, (r + 1) N // W)`` and the blocks are
gathered with ``all_gather_object``, so every rank returns the full result in the original order.

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Tuple, Union

import torch
from tqdm.auto import tqdm

from .likelihood import bits_per_dim, log_likelihood
from . import quantize as Q
from .quantize import check_on_grid, grid_cell, grid_values
from .scorefn import ScoreFn
from .sde import SDE

__all__ = ["evaluate_bpd", "BPDResult", "grid_values", "dequantize_uniform", "check_on_grid"]

_DEQUANTIZE = ("uniform", None)

#: Uniform dequantization (:func:`scoresde.quantize.dequantize`), under the name this module exported.
dequantize_uniform = Q.dequantize


def _summarise(bpd: torch.Tensor, status: torch.Tensor) -> Tuple[float, float, torch.Tensor, int]:
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
        return _summarise(self.bpd, self.status)[2]

    @property
    def mean_nfe(self) -> float:
        return float(self.nfe.double().mean())

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
        return (f"{self.mean:.{digits}f} ± {se:.{digits}f} bits/dim (N={self.n_samples}, repeats={self.repeats}; "
                f"eps={_g(c['eps'])}, {trace}, {c['backend']} {tol}, {deq}{failed})")

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
                   repeats=self.repeats, n_failed=self.n_failed, mean_nfe=self.mean_nfe, convention=c,
                   summary=self.summary())
        if per_sample:
            out["bpd"] = [[_json_float(v) for v in row] for row in self.bpd.tolist()]
            out["logp"] = [[_json_float(v) for v in row] for row in self.logp.tolist()]
            out["nfe"] = self.nfe.tolist()
            out["status"] = self.status.tolist()
        return out


# ---------------------------------------------------------------------------------------------
# The data: a tensor or an iterable of batches, read as a stream of rows with global indices.
# ---------------------------------------------------------------------------------------------
def _as_batch(item: Any, where: str) -> torch.Tensor:
    if isinstance(item, (tuple, list)):
        if len(item) == 0:
            raise ValueError(f"{where} is an empty tuple; batches must be tensors or (x, label) tuples")
        item = item[0]
    if not isinstance(item, torch.Tensor):
        try:
            import numpy as np
            if isinstance(item, np.ndarray):
                item = torch.from_numpy(item)
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"{where} must be a tensor (B, *dims) or a tuple whose first entry is one, "
                        f"got {type(item).__name__}")
    if item.ndim < 1:
        raise ValueError(f"{where} must have shape (B, *dims), got a 0-d tensor")
    if not item.is_floating_point():
        raise TypeError(f"{where} has dtype {item.dtype}; pass floating data values (for integer levels "
                        f"use scoresde.evaluate.grid_values(levels, n_levels, data_range))")
    return item


class _Source:
    """Rows of the data set with their global indices, re-batched to ``batch_size``."""

    def __init__(self, data: Any):
        self.tensor: Optional[torch.Tensor] = None
        self.iterable: Optional[Iterable] = None
        self.size: Optional[int] = None
        try:
            import numpy as np
            if isinstance(data, np.ndarray):
                data = torch.from_numpy(data)
        except ImportError:  # pragma: no cover
            pass
        if isinstance(data, torch.Tensor):
            self.tensor = _as_batch(data, "data")
            self.size = data.shape[0]
            return
        from torch.utils.data import DataLoader, Dataset, IterableDataset
        from torch.utils.data.distributed import DistributedSampler

        if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            raise TypeError("data is a Dataset (it yields single samples, not batches); wrap it in "
                            "DataLoader(dataset, batch_size=..., shuffle=False)")
        if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
            raise TypeError(f"data must be a tensor (N, *dims) or an iterable of batches, got {type(data).__name__}")
        if isinstance(data, DataLoader):
            if data.drop_last:
                raise ValueError("the DataLoader has drop_last=True, which drops the last partial batch; "
                                 "the whole test set must be evaluated: use drop_last=False")
            if isinstance(data.sampler, DistributedSampler):
                raise ValueError("the DataLoader uses a DistributedSampler; pass a loader over the whole test "
                                 "set (evaluate_bpd shards the data across ranks itself)")
            if not isinstance(data.dataset, IterableDataset) and data.batch_sampler is not None:
                try:
                    self.size = len(data.dataset)
                except TypeError:
                    self.size = None
            if isinstance(data.sampler, torch.utils.data.RandomSampler):
                warnings.warn("the DataLoader shuffles (shuffle=True): per-sample results follow the loader's "
                              "random order, not the data set's", stacklevel=3)
        self.iterable = data

    def materialise(self) -> None:
        """Read an iterable of unknown length into one CPU tensor (distributed runs need ``N``)."""
        parts = [_as_batch(b, f"batch {i} of data").detach().cpu() for i, b in enumerate(self.iterable)]
        if not parts:
            raise ValueError("data is empty: nothing to evaluate")
        self.tensor = torch.cat(parts)
        self.size = self.tensor.shape[0]
        self.iterable = None

    def rows(self, start: int, stop: Optional[int], batch_size: int) -> Iterator[Tuple[int, torch.Tensor]]:
        """Yield ``(global index of the first row, batch)`` covering rows ``[start, stop)`` in order."""
        if self.tensor is not None:
            stop = self.size if stop is None else stop
            for a in range(start, stop, batch_size):
                yield a, self.tensor[a:min(a + batch_size, stop)]
            return
        pos, first, buf, n_buf, dims = 0, start, [], 0, None
        for i, item in enumerate(self.iterable):
            if stop is not None and pos >= stop:
                break
            x = _as_batch(item, f"batch {i} of data")
            if dims is None:
                dims = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != dims:
                raise ValueError(f"batch {i} of data has sample shape {tuple(x.shape[1:])}, earlier batches {dims}")
            end = pos + x.shape[0]
            a, c = max(pos, start), (end if stop is None else min(end, stop))
            if c > a:
                buf.append(x[a - pos:c - pos])
                n_buf += c - a
            pos += x.shape[0]
            while n_buf >= batch_size:
                cat = buf[0] if len(buf) == 1 else torch.cat(buf)
                yield first, cat[:batch_size]
                first += batch_size
                rest = cat[batch_size:]
                buf, n_buf = ([rest] if rest.shape[0] else []), rest.shape[0]
        if n_buf:
            yield first, (buf[0] if len(buf) == 1 else torch.cat(buf))


# ---------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------
def _dist_context(distributed: Optional[bool]) -> Tuple[bool, int, int]:
    avail = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed is None:
        distributed = avail
    elif distributed and not avail:
        raise ValueError("distributed=True but no torch.distributed process group is initialised "
                         "(run under torchrun and call torch.distributed.init_process_group first)")
    if not distributed:
        return False, 0, 1
    return True, torch.distributed.get_rank(), torch.distributed.get_world_size()


def _unwrap(score_fn: Any) -> Any:
    """The model inside ``DistributedDataParallel``: DDP's forward runs collectives (buffer
    broadcast) on every call, and the adaptive solver makes a different number of calls on each
    rank, so evaluating through the wrapper would deadlock or mix states."""
    from torch.nn.parallel import DistributedDataParallel

    return score_fn.module if isinstance(score_fn, DistributedDataParallel) else score_fn


def _resolve_device(device, score_fn, generator, source: _Source) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(score_fn, torch.nn.Module):
        p = next(iter(score_fn.parameters()), None)
        if p is not None:
            return p.device
    if generator is not None:
        return generator.device
    if source.tensor is not None:
        return source.tensor.device
    return torch.device("cpu")


def _check_options(repeats, dequantize, batch_size, n_levels, data_range) -> Tuple[float, float, float]:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if dequantize not in _DEQUANTIZE:
        raise ValueError(f"dequantize must be 'uniform' (quantized data) or None (continuous data), got {dequantize!r}")
    return grid_cell(n_levels, data_range)


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
    rtol: float = 1e-5,
    atol: float = 1e-5,
    backend: str = "dopri5",
    generator: Optional[torch.Generator] = None,
    device=None,
    progress: bool = True,
    max_steps: int = 10_000,
    keep_latents: bool = False,
    distributed: Optional[bool] = None,
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
            (checked; see the module docstring) and get ``U(0, w)`` noise per coordinate; ``None``:
            continuous data, evaluated as given.
        n_levels, data_range: the quantization grid and the bits/dim offset
            ``log2(n_levels / (hi - lo))``.
        batch_size: samples per :func:`~scoresde.likelihood.log_likelihood` call.
        trace, n_probes, eps, rtol, atol, backend, max_steps: passed to
            :func:`~scoresde.likelihood.log_likelihood` (``eps`` default 1e-5, Song et al. 2021).
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

    Returns:
        :class:`BPDResult` with per-sample ``(repeats, N)`` tensors on the CPU and the summary.
        Failed evaluations (``status != 0``) are excluded from the mean with a warning.
    """
    lo, hi, _ = _check_options(repeats, dequantize, batch_size, n_levels, data_range)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    score_fn = _unwrap(score_fn)
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t) -> tensor shaped like x")
    if isinstance(score_fn, torch.nn.Module) and score_fn.training:
        warnings.warn("score_fn is a module in training mode (dropout, batch-norm statistics); call .eval() "
                      "before evaluating the likelihood", stacklevel=2)
    is_dist, rank, world = _dist_context(distributed)
    source = _Source(data)
    device = _resolve_device(device, score_fn, generator, source)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but evaluation runs on {device}; "
                         f"make it with torch.Generator(device='{device.type}')")
    if source.tensor is not None:
        if source.size == 0:
            raise ValueError("data is empty: nothing to evaluate")
        _check_batch(source.tensor, dequantize, n_levels, data_range, "data")
    elif is_dist and source.size is None:
        source.materialise()
        _check_batch(source.tensor, dequantize, n_levels, data_range, "data")

    if is_dist:
        if source.size is None:  # pragma: no cover - materialised above
            raise AssertionError
        start, stop = source.size * rank // world, source.size * (rank + 1) // world
        base_gen = generator if generator is not None else torch.default_generator
        base = int(torch.randint(0, 2**62, (1,), generator=base_gen, device=base_gen.device))
        gen: Optional[torch.Generator] = torch.Generator(device=device).manual_seed(base + rank)
    else:
        start, stop, gen = 0, None, generator

    convention = dict(eps=eps, trace=trace, n_probes=n_probes, rtol=rtol, atol=atol,
                      backend=backend, dequantize=dequantize, n_levels=n_levels, data_range=(lo, hi),
                      repeats=repeats, max_steps=max_steps, offset_bits=math.log2(n_levels / (hi - lo)),
                      sde=repr(sde), world_size=world)
    lik_kw = dict(trace=trace, n_probes=n_probes, eps=eps, rtol=rtol, atol=atol, backend=backend,
                  max_steps=max_steps, progress=False)

    def run_local() -> dict:
        n_local = (stop - start) if stop is not None else source.size  # None: an iterable of unknown length
        total = None if n_local is None else math.ceil(n_local / batch_size) * repeats
        cols = {k: [] for k in ("logp", "nfe", "status", "z")}
        count, num_dims, running = 0, None, [0.0, 0]
        with tqdm(total=total, desc="bits/dim", disable=not progress or rank != 0, leave=False) as bar:
            for first, xb in source.rows(start, stop, batch_size):
                if first != start + count:  # pragma: no cover - internal invariant
                    raise AssertionError("rows out of order")
                if source.tensor is None:
                    _check_batch(xb, dequantize, n_levels, data_range, f"data rows {first}..{first + len(xb) - 1}")
                xb = xb.to(device)
                num_dims = math.prod(xb.shape[1:])
                rows = {k: [] for k in cols}
                for _ in range(repeats):
                    xr = Q.dequantize(xb, n_levels, (lo, hi), gen) if dequantize == "uniform" else xb
                    res = log_likelihood(score_fn, sde, xr, generator=gen, **lik_kw)
                    rows["logp"].append(res.logp.detach().to("cpu", torch.float64))
                    rows["nfe"].append(res.nfe.detach().to("cpu", torch.long))
                    rows["status"].append(res.status.detach().to("cpu", torch.long))
                    if keep_latents:
                        rows["z"].append(res.z.detach().cpu())
                    ok = rows["status"][-1] == 0
                    if bool(ok.any()):
                        b = bits_per_dim(rows["logp"][-1][ok], num_dims, n_levels=n_levels, data_range=(lo, hi))
                        running[0] += float(b.sum())
                        running[1] += int(ok.sum())
                        bar.set_postfix(bpd=f"{running[0] / running[1]:.4f}", refresh=False)
                    bar.update(1)
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
        out = dict(start=start, count=count, num_dims=num_dims, size=source.size, convention=convention, error=None)
        for k, parts in cols.items():
            out[k] = torch.cat(parts, dim=1) if parts else None
        return out

    if not is_dist:
        local = run_local()
        if local["count"] == 0:
            raise ValueError("data is empty: nothing to evaluate")
        parts = [local]
    else:
        local_err: Optional[BaseException] = None
        try:
            local = run_local()
        except Exception as err:  # re-raised below, after every rank has reached the gather
            local_err = err
            local = dict(error=f"{type(err).__name__}: {err}")
        parts = [None] * world
        torch.distributed.all_gather_object(parts, local)
        if local_err is not None:
            raise local_err
        errors = [f"rank {r}: {p['error']}" for r, p in enumerate(parts) if p["error"] is not None]
        if errors:
            raise RuntimeError("evaluate_bpd failed on another rank: " + "; ".join(errors))
        if len({p["size"] for p in parts}) != 1:
            raise ValueError(f"the ranks passed data sets of different sizes {[p['size'] for p in parts]}; "
                             "pass the same whole test set on every rank")
        diff = [r for r, p in enumerate(parts) if p["convention"] != convention]
        if diff:
            raise ValueError(f"ranks {diff} called evaluate_bpd with other options than rank {rank}; "
                             "pass the same options on every rank")
        expect = 0
        for p in parts:
            if p["start"] != expect:  # pragma: no cover - blocks are contiguous by construction
                raise AssertionError("gathered blocks are not contiguous")
            expect += p["count"]
        parts = [p for p in parts if p["count"] > 0]
        if not parts:
            raise ValueError("data is empty: nothing to evaluate")

    num_dims = parts[0]["num_dims"]
    logp = torch.cat([p["logp"] for p in parts], dim=1)
    nfe = torch.cat([p["nfe"] for p in parts], dim=1)
    status = torch.cat([p["status"] for p in parts], dim=1)
    z = torch.cat([p["z"] for p in parts], dim=1) if keep_latents else None
    n = logp.shape[1]
    if source.size is not None and n != source.size:
        raise RuntimeError(f"evaluated {n} samples but the data set has {source.size}")
    bpd = bits_per_dim(logp, num_dims, n_levels=n_levels, data_range=(lo, hi)).to(torch.float64)
    mean, stderr, _, _ = _summarise(bpd, status)
    failed = ~((status == 0) & torch.isfinite(bpd))
    n_failed = int(failed.sum())
    if n_failed and rank == 0:
        codes = sorted(set(status[failed].tolist()))
        warnings.warn(f"{n_failed} of {bpd.numel()} likelihood evaluations failed (solver status {codes}) and are "
                      f"excluded from the mean; see BPDResult.status (loosen rtol/atol or raise max_steps)",
                      stacklevel=2)
    return BPDResult(bpd=bpd, logp=logp, nfe=nfe, status=status, mean=mean, stderr=stderr, n_samples=n,
                     n_failed=n_failed, convention=convention, z=z)


def _check_batch(x: torch.Tensor, dequantize: Optional[str], n_levels: int, data_range, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the data first")
    if dequantize == "uniform":
        check_on_grid(x, n_levels, data_range, name=name)
