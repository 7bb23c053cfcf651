"""The continuous 2-D (and n-D) toy sets of :mod:`scoresde.targets` as :class:`Dataset` objects."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import torch

from .. import targets
from .._utils import check_choice, check_int, is_int
from .dataset import Dataset

__all__ = ["TOY_DATASETS", "load_toy"]

_TOY_SAMPLERS = {
    "two_moons": targets.two_moons,
    "eight_gaussians": targets.eight_gaussians,
    "checkerboard": targets.checkerboard,
    "swiss_roll": targets.swiss_roll,
}
_TOY_ORACLES = {
    "eight_gaussians": targets.eight_gaussians_mixture,
    "mixture_2d": targets.mixture_2d,
    "mixture_nd": targets.mixture_nd,
}
#: Names of the continuous toy sets of :mod:`scoresde.targets` that :func:`load_toy` knows.
TOY_DATASETS = ("two_moons", "eight_gaussians", "checkerboard", "swiss_roll", "mixture_2d", "mixture_nd")


def load_toy(name: str, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0, *,
             params: Optional[Dict[str, Any]] = None, dtype: Optional[torch.dtype] = None) -> Dataset:
    """Continuous toy data from :mod:`scoresde.targets`: ``(n_train, D)`` and ``(n_test, D)`` samples.

    ``name`` is one of :data:`TOY_DATASETS`; ``params`` (a dict) go to the sampler or mixture
    constructor (e.g. ``{"noise": 0.1}`` for ``two_moons``, ``{"D": 16, "K": 4, "seed": 1}`` for
    ``mixture_nd``, whose own ``seed`` fixes the mixture, not the samples). Train samples come from
    ``torch.Generator().manual_seed(2 * seed)`` and test samples from ``manual_seed(2 * seed + 1)``,
    so the test set does not depend on ``n_train`` and no two seeds share a stream. ``n_levels`` and
    ``data_range`` are ``None`` (continuous data); ``info["bounds"]`` is the per-coordinate bounding
    box ``(min, max)`` of train and test together, and for the Gaussian mixtures
    (``eight_gaussians``, ``mixture_2d``, ``mixture_nd``) ``info["oracle"]`` is the exact
    :class:`~scoresde.targets.GaussianMixture` the data were drawn from.
    """
    check_choice("toy data set", name, TOY_DATASETS)
    check_int("n_train", n_train)
    check_int("n_test", n_test)
    if not is_int(seed, 0) or seed >= 2**62:
        raise ValueError(f"seed must be an int in [0, 2**62), got {seed!r}")
    params = {} if params is None else dict(params)
    fn = _TOY_ORACLES.get(name) or _TOY_SAMPLERS[name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("n", "generator", "device", "dtype")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"load_toy({name!r}) got unknown parameter(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(allowed) or 'none'}")
    oracle = _TOY_ORACLES[name](**params) if name in _TOY_ORACLES else None

    def draw(n: int, s: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(s)
        if oracle is not None:
            return oracle.sample(n, generator=g, dtype=dtype)
        return _TOY_SAMPLERS[name](n, generator=g, dtype=dtype, **params)

    train, test = draw(n_train, 2 * seed), draw(n_test, 2 * seed + 1)
    both = torch.cat([train, test])
    info = dict(source=f"scoresde.targets ({name})", params=dict(params), seed=seed,
                split="independent draws: train from manual_seed(2 seed), test from manual_seed(2 seed + 1)",
                bounds=(both.min(0).values.tolist(), both.max(0).values.tolist()), oracle=oracle)
    return Dataset(name, train, test, None, None, tuple(train.shape[1:]), info)
