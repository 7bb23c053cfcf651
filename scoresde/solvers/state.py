"""Batched ODE state: a tensor ``(B, *dims)`` or a tuple of such tensors with mixed dtypes and ranks.

Solvers work on a tuple of components internally; this module holds the structure (shapes, dtypes,
the time and compute dtypes), the checked right-hand side, the per-sample weighted RMS norm and the
Runge–Kutta linear combinations. Every operation here is row-wise: sample ``i``'s output depends on
sample ``i``'s inputs only, which is what makes the per-sample solvers independent of batch mates.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from .._utils import append_dims
from .result import State

Components = Tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Structure:
    """Shape/dtype description of a batched state.

    ``time_dtype`` is the dtype of the first component: ``f`` receives ``t`` in it.
    ``compute_dtype`` is the promotion of all component dtypes (at least float32): internal times,
    step sizes and error norms use it, so a float64 component is controlled in float64.
    """

    is_tuple: bool
    shapes: Tuple[torch.Size, ...]
    dtypes: Tuple[torch.dtype, ...]
    device: torch.device
    batch: int
    time_dtype: torch.dtype
    compute_dtype: torch.dtype
    numel_per_sample: int

    def pack(self, ys: Sequence[torch.Tensor]) -> State:
        """Internal tuple -> the user's structure (a bare tensor when ``y0`` was one)."""
        return tuple(ys) if self.is_tuple else ys[0]

    def describe(self) -> str:
        parts = [f"{tuple(s)} {d}" for s, d in zip(self.shapes, self.dtypes)]
        return ("tuple(" + ", ".join(parts) + ")") if self.is_tuple else ("tensor " + parts[0])


def analyse_state(y0: State, name: str = "y0") -> Tuple[Components, Structure]:
    """Validate ``y0`` and return it as a tuple of components together with its :class:`Structure`.

    Raises ``TypeError``/``ValueError`` for anything that is not a floating tensor ``(B, *dims)`` or a
    non-empty tuple of such tensors sharing ``B`` and a device, and for non-finite values.
    """
    is_tuple = isinstance(y0, (tuple, list))
    comps = tuple(y0) if is_tuple else (y0,)
    if is_tuple and len(comps) == 0:
        raise ValueError(f"{name} is an empty tuple; pass a tensor (B, *dims) or a tuple of such tensors")
    for i, c in enumerate(comps):
        label = f"{name}[{i}]" if is_tuple else name
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor of shape (B, *dims), got {type(c).__name__}")
        if c.ndim < 1 or c.shape[0] == 0:
            raise ValueError(f"{label} must have shape (B, *dims) with B >= 1, got shape {tuple(c.shape)}")
        if not c.is_floating_point():
            raise TypeError(f"{label} must be a floating-point tensor, got dtype {c.dtype}")
    batch = comps[0].shape[0]
    device = comps[0].device
    for i, c in enumerate(comps[1:], start=1):
        if c.shape[0] != batch:
            raise ValueError(
                f"{name}[{i}] has leading dimension {c.shape[0]} but {name}[0] has {batch}; "
                "every component must have the batch size as its first dimension"
            )
        if c.device != device:
            raise ValueError(f"{name}[{i}] is on {c.device} but {name}[0] is on {device}; use one device")
    for i, c in enumerate(comps):
        finite = torch.isfinite(c)
        if not bool(finite.all()):
            label = f"{name}[{i}]" if is_tuple else name
            bad = int((~finite.reshape(batch, -1).all(dim=1)).sum())
            raise ValueError(f"{label} contains non-finite values (NaN or inf) in {bad} sample(s); clean the input first")
    compute = torch.float32
    for c in comps:
        compute = torch.promote_types(compute, c.dtype)
    struct = Structure(
        is_tuple=is_tuple,
        shapes=tuple(c.shape for c in comps),
        dtypes=tuple(c.dtype for c in comps),
        device=device,
        batch=batch,
        time_dtype=comps[0].dtype,
        compute_dtype=compute,
        numel_per_sample=sum(math.prod(c.shape[1:]) for c in comps),
    )
    return comps, struct


def accepts_rows(f: Callable) -> bool:
    """Whether ``f`` declares a parameter ``rows`` that can be passed by keyword (``**kwargs`` does not count)."""
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):  # a builtin or an extension type without a signature
        return False
    p = params.get("rows")
    return p is not None and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class CheckedRHS:
    """``f`` wrapped for the solvers: takes and returns tuples, checks the returned structure, counts calls.

    ``rhs(t, ys, rows=None)`` with ``t`` a ``(n,)`` tensor in the time dtype and ``ys`` the state of
    ``n`` samples: the whole batch (``rows=None``, ``n = B``) or the sub-batch of the samples whose
    indices in the batch are the LongTensor ``rows`` (the per-sample solver's running samples). The
    output must have the structure, trailing shapes and device of the state and ``n`` rows; a
    floating output of another dtype is cast to the component's dtype (e.g. a float32 divergence for
    a float64 log-density component). If ``f`` declares a parameter ``rows`` (detected once, with
    :func:`inspect.signature`), every call passes it by keyword: ``None`` for the whole batch, else
    the indices, so an ``f`` holding per-sample data (e.g. probes ``(B, ...)`` in a closure) can
    select its rows. ``calls`` counts batched calls, ``rows_evaluated`` the rows they held in total.
    """

    def __init__(self, f: Callable[[torch.Tensor, State], State], struct: Structure):
        if not callable(f):
            raise TypeError(f"f must be callable as f(t, y) -> dy/dt, got {type(f).__name__}")
        self.f = f
        self.struct = struct
        self.takes_rows = accepts_rows(f)
        self.calls = 0
        self.rows_evaluated = 0

    def __call__(self, t: torch.Tensor, ys: Sequence[torch.Tensor], rows: Optional[torch.Tensor] = None) -> Components:
        self.calls += 1
        n = self.struct.batch if rows is None else rows.shape[0]  # a Python-side shape: no sync
        self.rows_evaluated += n
        y = self.struct.pack(ys)
        try:
            out = self.f(t, y, rows=rows) if self.takes_rows else self.f(t, y)
        except Exception as exc:
            if rows is not None and not self.takes_rows and hasattr(exc, "add_note"):
                exc.add_note(self._sub_batch_hint(n))
            raise
        return self.check(out, n, rows is not None)

    def _sub_batch_hint(self, n: int) -> str:
        return (f"(f was called on the {n} of {self.struct.batch} samples still running, as the per-sample "
                "solvers do by default: an f that holds per-sample data, e.g. tensors (B, ...) in a closure, "
                "must take a keyword argument rows (the LongTensor of those samples' indices in the batch; None "
                "for the whole batch) and select its data with it, or pass solve_ode(..., running_only=False))")

    def check(self, out, n: Optional[int] = None, sub_batch: bool = False) -> Components:
        """Check ``f``'s output for ``n`` rows (default: the whole batch) and cast it to the state's dtypes."""
        s = self.struct
        n = s.batch if n is None else n
        if s.is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(s.shapes):
                got = f"a tuple of length {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
                raise ValueError(f"f must return the structure of y0 ({s.describe()}), got {got}")
            comps = tuple(out)
        else:
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"f must return a tensor shaped like y0 ({s.describe()}), got {type(out).__name__}")
            comps = (out,)
        fixed = []
        for i, (c, shape, dtype) in enumerate(zip(comps, s.shapes, s.dtypes)):
            label = f"f(t, y)[{i}]" if s.is_tuple else "f(t, y)"
            if not isinstance(c, torch.Tensor):
                raise ValueError(f"{label} must be a tensor, got {type(c).__name__}")
            expected = torch.Size((n,) + tuple(shape[1:]))
            if c.shape != expected:
                hint = " " + self._sub_batch_hint(n) if sub_batch and not self.takes_rows else ""
                raise ValueError(f"{label} has shape {tuple(c.shape)} but the state component has shape "
                                 f"{tuple(expected)}{hint}")
            if c.device != s.device:
                raise ValueError(f"{label} is on {c.device} but the state is on {s.device}")
            if not c.is_floating_point():
                raise ValueError(f"{label} must be floating point, got {c.dtype}")
            fixed.append(c if c.dtype == dtype else c.to(dtype))
        return tuple(fixed)


def lincomb(y: Components | None, h: torch.Tensor | float | None, ks: Sequence[Components],
            coeffs: Sequence[float]) -> Components:
    """``y + h * sum_j coeffs[j] * ks[j]`` per component (``y=None``: no ``y`` term).

    ``h`` is a ``(B,)`` tensor of per-sample steps (broadcast over each component, in its dtype) or a
    Python float. Zero coefficients are skipped. Only exactly rounded elementwise multiplies and adds
    are used (no fused multiply-add), so a sample's result is bitwise independent of its batch mates.
    """
    ncomp = len(ks[0]) if ks else len(y)
    out = []
    for c in range(ncomp):
        acc = None
        for a, k in zip(coeffs, ks):
            if a == 0.0:
                continue
            term = k[c] if a == 1.0 else k[c] * a
            acc = term if acc is None else acc + term
        if acc is None:
            base = y[c] if y is not None else torch.zeros_like(ks[0][c])
            out.append(base)
            continue
        if isinstance(h, torch.Tensor):
            acc = acc * append_dims(h.to(acc.dtype), acc.ndim)
        elif h is not None:
            acc = acc * h
        out.append(acc if y is None else y[c] + acc)
    return tuple(out)


def rms_norm(vals: Sequence[torch.Tensor], scales: Sequence[torch.Tensor], struct: Structure) -> torch.Tensor:
    """Per-sample weighted RMS ``sqrt(mean_i (v_i / s_i)^2)`` over all components jointly -> ``(B,)``.

    Hairer, Nørsett & Wanner, *Solving ODEs I*, eq. (II.4.11). Computed in ``struct.compute_dtype``
    (every component is upcast first), so a float64 component is measured in float64.
    """
    cd = struct.compute_dtype
    total = None
    for v, s in zip(vals, scales):
        r = (v.to(cd) / s.to(cd)).reshape(struct.batch, -1)
        part = (r * r).sum(dim=1)
        total = part if total is None else total + part
    return torch.sqrt(total / struct.numel_per_sample)


def error_scales(ys: Sequence[torch.Tensor], ys_new: Sequence[torch.Tensor] | None, rtol: float,
                 atol: float) -> Components:
    """``atol + rtol * max(|y|, |y_new|)`` per component (``|y|`` alone when ``ys_new`` is None)."""
    out = []
    for i, y in enumerate(ys):
        mag = y.abs() if ys_new is None else torch.maximum(y.abs(), ys_new[i].abs())
        out.append(mag * rtol + atol)
    return tuple(out)


def all_finite(vals: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
    """``(B,)`` bool: whether every entry of the sample in every component is finite."""
    ok = None
    for v in vals:
        f = torch.isfinite(v).reshape(batch, -1).all(dim=1)
        ok = f if ok is None else ok & f
    return ok


def where_rows(mask: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Components:
    """Per component ``a`` on the rows where ``mask`` (``(B,)`` bool) holds, ``b`` elsewhere."""
    return tuple(torch.where(append_dims(mask, x.ndim), x, y) for x, y in zip(a, b))
