"""The quantization grid: integer levels <-> data values, the on-grid check, uniform dequantization.

This module is the one place the grid convention lives; the data loaders, the training loop and
the test-set evaluation all import it.

**Convention** (that of the original score-SDE code, Song et al. 2021, which dequantizes 8-bit
images as ``u/256 + U(0, 1/256)`` on ``[0, 1]`` and then rescales). With ``n_levels`` levels on
``data_range = (lo, hi)`` the cell width is ``w = (hi - lo) / n_levels``; integer level
``k in {0, ..., n_levels - 1}`` owns the cell ``[lo + k w, lo + (k + 1) w)`` and its data value is
the cell's *left edge* ``lo + k w`` (:func:`grid_values`). The largest data value is therefore
``hi - w``, not ``hi``. Uniform dequantization adds ``U(0, w)`` per coordinate (:func:`dequantize`),
which makes the point uniform over its cell. With ``D`` dimensions, for any continuous density ``p``,

    log P(k) = log int_cell p(x) dx >= E_U[log p(x_k + U)] + D log w    (Jensen)

(Theis, van den Oord & Bethge 2016; Ho et al. 2019), so ``bpd = -log p(x) / (D ln 2) +
log2(n_levels / (hi - lo))`` (:func:`scoresde.likelihood.bits_per_dim`, with the offset ``-log2 w``)
is, averaged over the noise, an upper bound on the discrete negative log-likelihood in bits per
dimension.

Note that ``ToTensor()`` followed by ``2x - 1`` maps pixel ``k`` to ``-1 + 2k/255``, which is *not* on
this grid (:func:`check_on_grid` says so and how to map it): map integer levels with
:func:`grid_values`, and data values back with :func:`to_levels`.

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR; Theis, van den Oord & Bethge (2016),
"A note on the evaluation of generative models", ICLR; Ho, Chen, Srinivas, Duan & Abbeel (2019),
"Flow++", ICML (Section 3.1 on dequantization).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import torch

from ._utils import check_int

__all__ = ["GRID_TOL", "grid_cell", "grid_values", "to_levels", "check_on_grid", "dequantize"]

#: A data value is on the grid when it lies within this fraction of a cell width of a grid point.
GRID_TOL = 1e-4

#: Elements converted per chunk by :func:`grid_values` and :func:`to_levels` (bounds float64 temporaries).
_CHUNK = 1 << 22


def grid_cell(n_levels: Any, data_range: Any) -> Tuple[float, float, float]:
    """Check ``n_levels`` and ``data_range``; return ``(lo, hi, w)`` with ``w = (hi - lo) / n_levels``."""
    check_int("n_levels", n_levels, 2, hint="256 for 8-bit data")
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi) of numbers, got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be (lo, hi) with finite lo < hi, got {data_range!r}")
    return lo, hi, (hi - lo) / n_levels



def _check_resolution(n_levels: int, lo: float, hi: float, w: float, dtype: torch.dtype) -> None:
    """Refuse a dtype whose rounding error near ``max(|lo|, |hi|)`` exceeds half the grid check's tolerance."""
    err = 0.5 * torch.finfo(dtype).eps * max(abs(lo), abs(hi))
    if err > 0.5 * GRID_TOL * w:
        raise ValueError(f"{dtype} cannot hold a grid of {n_levels} levels on [{lo:g}, {hi:g}] (cell width {w:.3g}) "
                         f"accurately enough: its rounding error ({err:.2g}) exceeds the grid check's tolerance "
                         f"({GRID_TOL:g} w); use dtype=torch.float64 or fewer levels")



def grid_values(levels: Any, n_levels: int = 256, data_range: Sequence[float] = (-1.0, 1.0), *,
          dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Integer levels ``k in {0, ..., n_levels - 1}`` to data values ``lo + k w``, ``w = (hi - lo) / n_levels``.

    The value is the left edge of the level's dequantization cell ``[lo + k w, lo + (k + 1) w)``
    (see the module docstring), computed in float64 and rounded once to ``dtype``, so the output
    always passes :func:`check_on_grid`.

    Args:
        levels: integer tensor or array of any shape (e.g. ``uint8`` pixels).
        n_levels, data_range: the grid; 256 and ``(-1, 1)`` for 8-bit images on ``[-1, 1]``.
        dtype: floating output dtype, default torch's default dtype. A dtype too coarse for the
            grid (e.g. float32 for 65536 levels) is refused with ``ValueError``.

    Returns a tensor shaped like ``levels`` on its device.
    """
    lo, hi, w = grid_cell(n_levels, data_range)
    u = torch.as_tensor(levels)
    if u.is_floating_point() or u.is_complex() or u.dtype == torch.bool:
        raise TypeError(f"levels must be an integer tensor (e.g. uint8 pixels), got dtype {u.dtype}; "
                        "to convert data values back to levels use to_levels")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    _check_resolution(n_levels, lo, hi, w, dtype)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > n_levels - 1):
        raise ValueError(f"levels must lie in [0, {n_levels - 1}] for n_levels={n_levels}, "
                         f"got min {int(u.min())}, max {int(u.max())}")
    table = (lo + torch.arange(n_levels, dtype=torch.float64, device=u.device) * w).to(dtype)
    flat = u.reshape(-1)
    out = torch.empty(flat.shape, dtype=dtype, device=u.device)
    for a in range(0, flat.numel(), _CHUNK):
        out[a:a + _CHUNK] = table[flat[a:a + _CHUNK].long()]
    return out.reshape(u.shape)


def to_levels(x: torch.Tensor, n_levels: int = 256, data_range: Sequence[float] = (-1.0, 1.0), *,
              mode: str = "exact", dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Data values back to integer levels: the inverse of :func:`grid_values`.

    Args:
        x: floating tensor of any shape.
        mode: ``"exact"``: ``x`` must be grid values (checked as ``evaluate_bpd`` checks them,
            within ``GRID_TOL * w``; otherwise ``ValueError``) and ``k = round((x - lo) / w)``.
            ``"floor"``: any finite values (dequantized data, model samples) go to the cell that
            contains them, ``k = floor((x - lo) / w + tol)`` clipped to ``[0, n_levels - 1]``. The
            slack ``tol = min(4 eps max(|lo|, |hi|) / w, GRID_TOL)`` (``eps`` of ``x``'s dtype: a
            few ulps) keeps grid values rounded down by the dtype in their own cell; in float64 it
            is ~1e-13, so ``to_levels(dequantize(x), mode="floor")`` returns ``x``'s levels.
        dtype: integer output dtype (``torch.uint8`` is fine for up to 256 levels).

    Returns an integer tensor shaped like ``x`` on its device.
    """
    lo, hi, w = grid_cell(n_levels, data_range)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor of data values, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    if mode not in ("exact", "floor"):
        raise ValueError(f"mode must be 'exact' (grid values) or 'floor' (any values: their cell), got {mode!r}")
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool or torch.iinfo(dtype).max < n_levels - 1:
        raise TypeError(f"dtype must be an integer dtype that holds {n_levels - 1}, got {dtype}")
    tol = min(4.0 * torch.finfo(x.dtype).eps * max(abs(lo), abs(hi)) / w, GRID_TOL)
    flat = x.detach().reshape(-1)
    out = torch.empty(flat.shape, dtype=dtype, device=x.device)
    for a in range(0, flat.numel(), _CHUNK):
        v = (flat[a:a + _CHUNK].to(torch.float64) - lo) / w
        if not bool(torch.isfinite(v).all()):
            raise ValueError("x contains non-finite values (NaN or inf); clean the data first")
        if mode == "exact":
            k = torch.round(v)
            if bool((((v - k).abs() > GRID_TOL) | (k < 0) | (k > n_levels - 1)).any()):
                try:
                    check_on_grid(x, n_levels, data_range, name="x")  # raises with a full diagnosis
                except ValueError as e:
                    raise ValueError(f"{e} In to_levels: for values that are not grid points (dequantized data, "
                                     "model samples) use mode='floor', which returns the cell holding each value."
                                     ) from None
                raise AssertionError("grid check disagrees with to_levels")  # pragma: no cover
        else:
            k = torch.floor(v + tol).clamp_(0, n_levels - 1)
        out[a:a + _CHUNK] = k.to(dtype)
    return out.reshape(x.shape)


def check_on_grid(x: torch.Tensor, n_levels: int = 256, data_range=(-1.0, 1.0), *, name: str = "data") -> None:
    """Raise ``ValueError`` unless every value of ``x`` is a grid point ``lo + u w``, ``u in {0..n_levels-1}``.

    A value is accepted within ``GRID_TOL * w`` of a grid point (float32 rounding of 8-bit data on
    ``[-1, 1]`` is about ``1e-5 w``). The message says what the data look like and what to do.
    """
    lo, hi, w = grid_cell(n_levels, data_range)
    v = (x.detach().to(torch.float64) - lo) / w
    k = torch.round(v)
    off = (v - k).abs() > GRID_TOL
    out = (k < 0) | (k > n_levels - 1)
    bad = off | out
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    example = float(x.detach().reshape(-1)[bad.reshape(-1).nonzero()[0, 0]])
    what = []
    if bool(out.any()):
        what.append(f"{int(out.sum())} outside [{lo:g}, {hi - w:g}] = [lo, hi - w]")
    if bool(off.any()):
        what.append(f"{int(off.sum())} between grid points")
    hint = ""
    v255 = (x.detach().to(torch.float64) - lo) / (hi - lo) * (n_levels - 1)
    if bool(((v255 - torch.round(v255)).abs() <= GRID_TOL).all()):
        hint = (f" They look like levels u mapped as lo + u/(n_levels-1) (hi - lo) (e.g. ToTensor() then 2x-1); "
                f"this package uses lo + u (hi - lo)/n_levels: pass "
                f"grid_values(torch.round((x - lo) / (hi - lo) * {n_levels - 1}).long(), {n_levels}, data_range).")
    raise ValueError(
        f"{name} is not on the quantization grid of {n_levels} levels on [{lo:g}, {hi:g}] "
        f"(values lo + u (hi - lo)/{n_levels}, u = 0..{n_levels - 1}): {n_bad} of {x.numel()} values are off it "
        f"({', '.join(what)}; e.g. {example!r}).{hint} For continuous data pass dequantize=None; for "
        f"data with another number of levels or range set n_levels and data_range."
    )


def dequantize(x: torch.Tensor, n_levels: int = 256, data_range: Sequence[float] = (-1.0, 1.0),
               generator: Optional[torch.Generator] = None, *, check: bool = False) -> torch.Tensor:
    """Uniform dequantization ``x + u w``, ``u ~ U[0, 1)`` per coordinate, ``w = (hi - lo) / n_levels``.

    ``x`` holds grid values (cell left edges, :func:`grid_values`); the result is uniform over each
    value's cell ``[x, x + w)`` up to the rounding of ``x + u w`` in the result's dtype, and always
    inside it: a value that rounds onto the next edge ``x + w`` is moved one ulp below it. This is
    the noise ``evaluate_bpd`` and the training loop add:
    ``torch.rand`` shaped like ``x``, in ``x``'s dtype, on ``x``'s device, from ``generator``
    (so a generator on ``x``'s device). ``check=True`` first verifies that ``x`` is on the grid
    (one host read-back; off by default for training loops).

    Half-precision data (``float16``, ``bfloat16``) are upcast to ``float32`` first and the result is
    ``float32``: their ulp near ``|x| = 1`` is a sizeable fraction of a 256-level cell (bfloat16's is the
    whole cell), so ``x + u w`` rounded back to half precision would leave its cell or fall back onto
    the grid point. With the same generator, half-precision grid data get exactly the float32 noise.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor of grid values, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}; map integer levels with grid_values() (scoresde.data.scale) first")
    if check:
        check_on_grid(x, n_levels, data_range, name="x")
    _, _, w = grid_cell(n_levels, data_range)
    if torch.finfo(x.dtype).bits < 32:
        x = x.to(torch.float32)
    out = x + torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * w
    top = x + w  # the next cell's edge: a u close to 1 can round onto it; keep such a value in its own cell
    return torch.where(out < top, out, torch.nextafter(top, x))
