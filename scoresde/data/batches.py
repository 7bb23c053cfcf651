"""Mini-batches of tensors already in memory (on any device), one epoch at a time."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

import torch

from .._utils import check_int

__all__ = ["iterate_batches"]


def iterate_batches(data: Union[torch.Tensor, Sequence[torch.Tensor]], batch_size: int, *,
                    shuffle: bool = True, generator: Optional[torch.Generator] = None,
                    drop_last: bool = False) -> Iterator[Any]:
    """One epoch of mini-batches of a tensor ``(N, ...)`` or of a tuple of tensors sharing ``N``.

    With ``shuffle=True`` the order is ``torch.randperm(N)`` drawn from ``generator`` on the data's
    device (no host round-trip; a GPU-resident data set stays on the GPU). Yields tensors (or
    tuples) of ``batch_size`` rows; the last batch is smaller unless ``drop_last=True`` drops it.
    For worker processes or pinned memory use ``torch.utils.data.DataLoader(ds.tensor_dataset())``.
    """
    single = isinstance(data, torch.Tensor)
    tensors = (data,) if single else tuple(data)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in tensors):
        raise TypeError("data must be a tensor (N, ...) or a non-empty tuple of such tensors")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"all tensors must share the first dimension, got {[t.shape[0] for t in tensors]}")
    check_int("batch_size", batch_size)
    device = tensors[0].device
    order = torch.randperm(n, generator=generator, device=device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for a in range(0, stop, batch_size):
        if order is None:
            parts = tuple(t[a:a + batch_size] for t in tensors)
        else:
            idx = order[a:a + batch_size]
            parts = tuple(t[idx.to(t.device)] for t in tensors)
        yield parts[0] if single else parts
