"""Small shared helpers: per-sample broadcasting and input validation.

Nothing here is public API; modules import what they need by name.
"""
from __future__ import annotations

import math
from typing import Union

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


def check_positive(**params: float) -> None:
    for k, v in params.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be a finite positive number, got {v!r}")


def log_expm1(x: torch.Tensor) -> torch.Tensor:
    """``log(exp(x) - 1)`` for ``x > 0``, stable for small and large ``x``."""
    big = x > 20.0
    safe = torch.where(big, torch.ones_like(x), x)
    return torch.where(big, x + torch.log1p(-torch.exp(-x)), torch.log(torch.expm1(safe)))


def batch_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, *dims) -> (B,)``."""
    return v.reshape(v.shape[0], -1).sum(dim=1)
