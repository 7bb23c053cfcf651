"""Input checks shared by the metrics: samples or features as a float64 ``(n, D)`` matrix."""
from __future__ import annotations

import torch


def _flat64(x: torch.Tensor, name: str, min_n: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, *dims), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < min_n:
        raise ValueError(f"{name} must have shape (n, *dims) with n >= {min_n}, got shape {tuple(x.shape)}")
    xf = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(xf).all()):
        raise ValueError(f"{name} contains NaN or inf; a two-sample statistic needs finite samples")
    return xf
