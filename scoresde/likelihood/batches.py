"""The test set as a stream of rows: a tensor or an iterable of batches (a ``DataLoader``), read in
order with global indices and re-batched to a fixed batch size."""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Iterator, Optional, Tuple

import torch

__all__ = ["as_batch", "Source"]


def as_batch(item: Any, where: str) -> torch.Tensor:
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
                        f"use scoresde.quantize.grid_values(levels, n_levels, data_range))")
    return item


class Source:
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
            self.tensor = as_batch(data, "data")
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
        parts = [as_batch(b, f"batch {i} of data").detach().cpu() for i, b in enumerate(self.iterable)]
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
            x = as_batch(item, f"batch {i} of data")
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


def resolve_device(device, score_fn, generator, source: Source) -> torch.device:
    """Where to evaluate: ``device`` if given, else the module's parameter device, else the
    generator's, else the data tensor's, else the CPU."""
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
