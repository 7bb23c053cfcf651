"""The score-function contract: the :data:`ScoreFn` type and :class:`CheckedScore`, the one wrapper
that checks it on every call.

A score function is any callable ``score_fn(x, t) -> tensor shaped like x``, with ``x`` of shape
``(B, *dims)`` and ``t`` of shape ``(B,)``; it estimates ``grad_x log p_t(x)``. A
:class:`~scoresde.score.ScoreModel` is one (its ``forward`` returns the score), and so is an
oracle's ``score`` method. Samplers and the likelihood wrap what they are given in
:class:`CheckedScore`, so a wrong shape, device or dtype is an error that says what to change,
raised where it happens rather than deep inside a solver.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["ScoreFn", "CheckedScore"]

#: ``score_fn(x, t) -> tensor shaped like x``: ``x`` is ``(B, *dims)``, ``t`` is ``(B,)``.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CheckedScore:
    """Wraps a score function: checks its output on every call (shape, device and dtype are
    Python-side attributes, so the check costs no host synchronisation) and counts batched calls
    in :attr:`calls`."""

    def __init__(self, score_fn: ScoreFn):
        if isinstance(score_fn, CheckedScore):
            score_fn = score_fn.score_fn
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t) -> tensor shaped like x")
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.score_fn(x, t)
        self.calls += 1
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"score_fn must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"score_fn returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
                             "it must return a tensor shaped like x")
        if out.device != x.device:
            raise ValueError(f"score_fn returned a tensor on {out.device} for x on {x.device}; "
                             "move the model to the sampling device")
        if out.dtype != x.dtype:
            raise ValueError(f"score_fn returned dtype {out.dtype} for x of dtype {x.dtype}; "
                             "sample in the model's dtype (dtype=...) or cast inside score_fn")
        return out
