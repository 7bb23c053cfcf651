"""Class accuracy of conditional samples: does a sample drawn for class ``y`` look like a ``y``?

The accuracy of a fixed classifier on samples drawn with labels ``y`` is the standard check of
class-conditional generation and of guidance strength (Ho & Salimans 2022 report the Inception
score, which rewards the same thing; Dhariwal & Nichol 2021, Section 4, the accuracy of their
classifier). It rises with the guidance weight while the diversity (and so the Fréchet distance)
eventually suffers. For the 8x8 digits the classifier is the built-in one of
:mod:`scoresde.metrics.digits` (98.3% on the digits test split), so the accuracy of real test
images is the ceiling to compare with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from .._utils import check_labels

__all__ = ["ClassAccuracy", "class_accuracy"]


@dataclass(frozen=True)
class ClassAccuracy:
    """``accuracy`` (fraction of samples the classifier assigns to their label), its binomial
    standard error ``stderr = sqrt(a (1 - a) / n)``, and per class ``per_class`` ``(C,)`` (NaN for a
    class without samples) with ``counts`` ``(C,)``; ``n`` samples in all."""

    accuracy: float
    stderr: float
    per_class: torch.Tensor
    counts: torch.Tensor
    n: int

    def to_dict(self) -> dict:
        return dict(accuracy=self.accuracy, stderr=self.stderr, n=self.n, per_class=self.per_class.tolist(),
                    counts=self.counts.tolist())

    def summary(self) -> str:
        return f"class accuracy {100 * self.accuracy:.1f}% ± {100 * self.stderr:.1f} ({self.n} samples)"


def class_accuracy(x: torch.Tensor, y: torch.Tensor,
                   classifier: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "digits", *,
                   num_classes: int = 10, batch_size: int = 1024) -> ClassAccuracy:
    """The accuracy of ``classifier`` on samples ``x`` ``(N, *dims)`` drawn for labels ``y`` ``(N,)``.

    ``classifier``: ``"digits"`` (the built-in 8x8 digits classifier, :func:`digits_classifier`;
    ``x`` on ``[-1, 1]``) or a callable returning logits ``(n, num_classes)``. Labels must be
    ``0 .. num_classes - 1`` (an unconditional row has no class to check).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, *dims), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    y = check_labels(y, x.shape[0], "cpu", num_classes)
    if bool((y < 0).any()):
        raise ValueError("y holds unconditional labels (-1): the accuracy needs a class for every sample")
    if classifier == "digits":
        from .digits import digits_classifier

        model = digits_classifier()[0]
        classifier = model
    if not callable(classifier):
        raise TypeError(f"classifier must be 'digits' or a callable x -> logits, got {classifier!r}")
    preds = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].detach().to("cpu", torch.float32).nan_to_num(0.0, 1e4, -1e4)
            preds.append(classifier(xb).argmax(1))
    hit = (torch.cat(preds) == y).double()
    counts = torch.bincount(y, minlength=num_classes)
    per_class = torch.bincount(y, weights=hit, minlength=num_classes) / counts.clamp_min(1)
    per_class = torch.where(counts > 0, per_class, torch.full_like(per_class, math.nan))
    a = float(hit.mean())
    return ClassAccuracy(accuracy=a, stderr=math.sqrt(a * (1 - a) / hit.numel()), per_class=per_class,
                         counts=counts, n=int(hit.numel()))
