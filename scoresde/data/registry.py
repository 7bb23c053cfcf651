"""The data set names and the one dispatcher, :func:`load_dataset`, that loads any of them."""
from __future__ import annotations

from typing import Any, Optional

from .cifar10 import _CIFAR_WHERE, CIFAR10_ARCHIVE, CIFAR10_DIR, load_cifar10
from .dataset import Dataset, PathLike
from .digits import load_digits
from .mnist import _MNIST_WHERE, load_mnist
from .toy import TOY_DATASETS, load_toy

__all__ = ["DATASETS", "load_dataset"]

#: Every name :func:`load_dataset` accepts.
DATASETS = ("digits", "mnist", "cifar10") + TOY_DATASETS


def load_dataset(name: str, root: Optional[PathLike] = None, **kwargs: Any) -> Dataset:
    """Load a data set by name: ``"digits"``, ``"mnist"``, ``"cifar10"`` or a toy name (:data:`DATASETS`).

    ``root`` is required for ``"mnist"`` and ``"cifar10"`` (the folder or archive you downloaded;
    nothing is downloaded here) and refused for the others. ``kwargs`` go to the loader:
    :func:`load_digits`, :func:`load_mnist`, :func:`load_cifar10` or :func:`load_toy`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, one of {', '.join(DATASETS)}; got {type(name).__name__}")
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if key in ("mnist", "cifar10"):
        if root is None:
            what = ("the folder with the four MNIST IDX files" if key == "mnist"
                    else f"the {CIFAR10_DIR} folder, its parent, or {CIFAR10_ARCHIVE}")
            raise ValueError(f"load_dataset({key!r}) needs root=: {what}. Nothing is downloaded; "
                             + (_MNIST_WHERE if key == "mnist" else _CIFAR_WHERE))
        return (load_mnist if key == "mnist" else load_cifar10)(root, **kwargs)
    if root is not None:
        raise ValueError(f"load_dataset({key!r}) reads no files (it is generated or ships with a package); "
                         "drop root=")
    if key == "digits":
        return load_digits(**kwargs)
    return load_toy(key, **kwargs)
