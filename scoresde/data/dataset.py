"""The data set object: train and test tensors together with the quantization grid they live on."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .._utils import check_choice
from ..quantize import grid_cell

__all__ = ["Dataset", "PathLike", "DataRange"]

PathLike = Union[str, Path]
DataRange = Tuple[float, float]
#: The two splits every :class:`Dataset` holds.
_SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair with the quantization grid it lives on.

    Attributes:
        name: the data set's name (``"digits"``, ``"mnist"``, ``"cifar10"``, a toy name).
        train: ``(N_train, *shape)`` floating tensor of data values.
        test: ``(N_test, *shape)`` floating tensor of data values.
        n_levels: number of quantization levels (17 for digits, 256 for 8-bit images), or ``None``
            for continuous data. Quantized values are exactly the grid values ``lo + k w``,
            ``w = (hi - lo) / n_levels``, ``k in {0, ..., n_levels - 1}`` (see :mod:`scoresde.quantize`).
        data_range: ``(lo, hi)`` of the grid, or ``None`` for continuous data.
        shape: the per-sample shape, e.g. ``(1, 28, 28)`` or ``(2,)``.
        info: provenance: source files, split rule, seed, class names, an exact oracle for
            mixture toy sets (``info["oracle"]``, a :class:`~scoresde.targets.GaussianMixture`).
        train_labels, test_labels: ``(N,)`` long class labels, or ``None``.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    n_levels: Optional[int]
    data_range: Optional[DataRange]
    shape: Tuple[int, ...]
    info: Dict[str, Any] = field(default_factory=dict)
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        if (self.n_levels is None) != (self.data_range is None):
            raise ValueError("n_levels and data_range go together: give both (quantized data) or neither "
                             f"(continuous data), got n_levels={self.n_levels!r}, data_range={self.data_range!r}")
        if self.n_levels is not None:
            lo, hi, _ = grid_cell(self.n_levels, self.data_range)
            object.__setattr__(self, "data_range", (lo, hi))
        for split in _SPLITS:
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError(f"Dataset.{split} must be a floating tensor (N, *shape); "
                                f"got {type(x).__name__} {getattr(x, 'dtype', '')}")
            if tuple(x.shape[1:]) != shape:
                raise ValueError(f"Dataset.{split} has shape {tuple(x.shape)} but shape={shape}; "
                                 f"pass tensors of shape (N, *{shape})")
            y = getattr(self, f"{split}_labels")
            if y is not None and (not isinstance(y, torch.Tensor) or tuple(y.shape) != (x.shape[0],)):
                raise ValueError(f"Dataset.{split}_labels must be a tensor of shape ({x.shape[0]},), "
                                 f"got {tuple(getattr(y, 'shape', ()))}")

    @property
    def num_dims(self) -> int:
        """``D = prod(shape)``, the number of dimensions bits/dim divides by."""
        return math.prod(self.shape)

    @property
    def quantized(self) -> bool:
        """Whether the data live on a quantization grid (``n_levels`` is not ``None``)."""
        return self.n_levels is not None

    @property
    def cell_width(self) -> Optional[float]:
        """``w = (hi - lo) / n_levels``, or ``None`` for continuous data."""
        if self.n_levels is None:
            return None
        lo, hi = self.data_range
        return (hi - lo) / self.n_levels

    def bpd_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for :func:`scoresde.likelihood.evaluate_bpd`: the grid and uniform dequantization.

        ``evaluate_bpd(score_fn, sde, ds.test, **ds.bpd_kwargs())``. Continuous data have no grid,
        so there is no bits/dim offset to take from them: this raises ``ValueError``.
        """
        if self.n_levels is None:
            raise ValueError(f"{self.name!r} is continuous data (n_levels=None): it has no quantization grid, so "
                             "bits/dim has no natural offset. Report log_likelihood in nats, or call evaluate_bpd "
                             "with dequantize=None and an n_levels/data_range you state yourself.")
        return dict(n_levels=self.n_levels, data_range=self.data_range, dequantize="uniform")

    def labels(self, split: str) -> Optional[torch.Tensor]:
        """``train_labels`` or ``test_labels``."""
        return getattr(self, f"{check_choice('split', split, _SPLITS)}_labels")

    def tensor_dataset(self, split: str = "train") -> torch.utils.data.TensorDataset:
        """A ``TensorDataset`` of ``(x,)`` or ``(x, label)`` for ``torch.utils.data.DataLoader``."""
        split = check_choice("split", split, _SPLITS)
        y = self.labels(split)
        x = getattr(self, split)
        return torch.utils.data.TensorDataset(x) if y is None else torch.utils.data.TensorDataset(x, y)

    def to(self, device: Union[str, torch.device]) -> "Dataset":
        """A copy with every tensor on ``device`` (values, grid and info unchanged)."""
        move = (lambda t: None if t is None else t.to(device))
        return dataclasses.replace(self, train=move(self.train), test=move(self.test),
                                   train_labels=move(self.train_labels), test_labels=move(self.test_labels))

    def __repr__(self) -> str:
        if self.n_levels is None:
            grid = "continuous"
        else:
            lo, hi = self.data_range
            grid = f"{self.n_levels} levels on [{lo:g}, {hi:g}]"
        lab = ", labels" if self.train_labels is not None else ""
        return (f"Dataset({self.name!r}, train={tuple(self.train.shape)}, test={tuple(self.test.shape)}, "
                f"{grid}, {self.train.dtype}{lab})")
