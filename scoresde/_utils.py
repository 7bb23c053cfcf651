"""Small shared helpers: per-sample broadcasting, input validation and seed derivation.

The validators (:func:`check_int`, :func:`check_number`, :func:`check_choice`,
:func:`check_probability`, :func:`check_eps`) are the one place each check is written; every one
returns the checked value and raises a ``ValueError`` that names the argument, the allowed values
and what was given. Nothing here is public API; modules import what they need by name.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence, Union

import torch

TimeLike = Union[float, int, torch.Tensor]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-sample vector ``v`` of shape ``(B,)`` as ``(B, 1, ..., 1)`` with ``ndim`` dims.

    The one place where per-sample coefficients are broadcast against data of any rank.
    """
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of rank {v.ndim} to rank {ndim}")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def check_x(x: torch.Tensor, name: str = "x") -> None:
    """``x`` must be a floating tensor of shape ``(B, *dims)`` with B >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *dims), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, *dims) with B >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


#: The class label that means "no label": a row with this label is evaluated unconditionally (the
#: network's extra "null" class, the mixture's marginal). The one definition of the convention.
NULL_CLASS = -1


def check_labels(y: Any, batch: int, device: Any = None, num_classes: Any = None, *, name: str = "y") -> torch.Tensor:
    """Class labels as a ``(batch,)`` int64 tensor; returns it (a Python int is broadcast).

    Values are ``0 .. num_classes - 1`` or :data:`NULL_CLASS` (``-1``, unconditional). The value
    range is checked only when ``num_classes`` is given (that reads the labels back to the host, so
    callers do it once at a public entry point, never inside a solver loop).
    """
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"{name} must be a (B,) tensor of integer class labels (or an int for every sample), "
                        f"got {type(y).__name__}")
    if isinstance(y, int):
        y = torch.full((batch,), y, dtype=torch.long, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}; pass y.long()")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one label per sample, got shape {tuple(y.shape)}")
    if device is not None and y.device != torch.device(device):
        y = y.to(device)
    y = y.long()
    if num_classes is not None and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < NULL_CLASS or hi >= num_classes:
            raise ValueError(f"{name} holds labels in [{lo}, {hi}], but the model knows classes 0..{num_classes - 1} "
                             f"and {NULL_CLASS} (no label); pass labels in that range")
    return y


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the input first")


def as_time(t: TimeLike, x: torch.Tensor, T: float, *, name: str = "t", lo: float = 0.0) -> torch.Tensor:
    """Validate and broadcast a time argument against a batch ``x`` of shape ``(B, *dims)``.

    Accepts a Python number or a 0-d tensor (broadcast to every sample) or a tensor of shape
    ``(B,)``. Returns a ``(B,)`` tensor on ``x``'s device in ``x``'s dtype. Raises ``ValueError``
    for the wrong shape, non-finite values or values outside ``[lo, T]``, and for a device mismatch.
    """
    batch = x.shape[0]
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or a tensor, got bool")
    if isinstance(t, (int, float)):
        tf = float(t)
        if not math.isfinite(tf):
            raise ValueError(f"{name} must be finite, got {tf}")
        if tf < lo or tf > T:
            raise ValueError(f"{name}={tf} is outside [{lo}, T={T}]; pass a time in that interval")
        return torch.full((batch,), tf, device=x.device, dtype=x.dtype)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor of shape ({batch},), got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to the same device")
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one time per sample) or be a scalar, got shape {tuple(t.shape)}"
        )
    t = t.to(x.dtype)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains non-finite values")
    if bool(((t < lo) | (t > T)).any()):
        raise ValueError(
            f"{name} has values outside [{lo}, T={T}] (min {float(t.min()):.6g}, max {float(t.max()):.6g}); "
            "pass times in that interval"
        )
    return t


def is_int(v: Any, lo: int = -2**63) -> bool:
    """Whether ``v`` is an ``int`` (not a ``bool``) with ``v >= lo``: the predicate behind :func:`check_int`,
    for checks of sequences and messages of their own."""
    return not isinstance(v, bool) and isinstance(v, int) and v >= lo


def check_int(name: str, v: Any, lo: int = 1, *, hint: str = "") -> int:
    """``v`` must be an ``int`` (not a ``bool``) with ``v >= lo``; returns it. ``hint`` (e.g. a
    typical value) is added to the message."""
    if not is_int(v, lo):
        kind = " (a positive int)" if lo == 1 else ""
        hint = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must be an int >= {lo}{kind}{hint}, got {v!r}")
    return v


def check_number(name: str, v: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    """``v`` must be a finite real number (not a ``bool``) in the interval from ``lo`` to ``hi``,
    each end closed unless ``*_open``; returns it as a float."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left = "(" if lo_open or lo == -math.inf else "["
        right = ")" if hi_open or hi == math.inf else "]"
        raise ValueError(f"{name} must be a finite number in {left}{lo:g}, {hi:g}{right}, got {v!r}")
    return float(v)


def check_probability(name: str, p: Any, *, hi_open: bool = False) -> float:
    """``p`` must be a probability: a number in ``[0, 1]`` (``[0, 1)`` with ``hi_open``)."""
    return check_number(name, p, 0.0, 1.0, hi_open=hi_open)


def check_choice(name: str, v: Any, options: Sequence[Any], *, hint: str = "") -> Any:
    """``v`` must be one of ``options``; returns it. ``hint`` is appended to the list of valid
    values in the message (e.g. ``", or a decreasing sequence of times"``)."""
    if isinstance(v, bool) or v not in options:
        raise ValueError(f"unknown {name} {v!r}; valid: {', '.join(str(o) for o in options)}{hint}")
    return v


def check_eps(eps: Any, T: float, *, name: str = "eps") -> float:
    """A time truncation ``eps`` must be a finite number in the open interval ``(0, T)``."""
    try:
        value = float(eps) if not isinstance(eps, (bool, str, bytes)) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in (0, T={T}), got {eps!r}")
    eps = value
    if not 0.0 < eps < T:
        raise ValueError(f"{name}={eps:g} must lie in (0, T={T}): the time truncation must be positive "
                         "(the score blows up at t = 0) and below T (typical: 1e-5)")
    return eps


def check_positive(**params: float) -> None:
    for k, v in params.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be a finite positive number, got {v!r}")


def derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed from ``(seed, *tags)``: the first 8 bytes (little-endian, shifted right by one)
    of the SHA-256 digest of ``repr((int(seed), *tags))``. Independent streams for independent uses
    (the training loop's init / noise / data streams, the chunks of ``scoresde sample``), each a
    pure function of the seed and its tags; the tags must have a stable ``repr`` (str, int)."""
    digest = hashlib.sha256(repr((int(seed),) + tags).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def log_expm1(x: torch.Tensor) -> torch.Tensor:
    """``log(exp(x) - 1)`` for ``x > 0``, stable for small and large ``x``."""
    big = x > 20.0
    safe = torch.where(big, torch.ones_like(x), x)
    return torch.where(big, x + torch.log1p(-torch.exp(-x)), torch.log(torch.expm1(safe)))


def batch_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, *dims) -> (B,)``."""
    return v.reshape(v.shape[0], -1).sum(dim=1)
