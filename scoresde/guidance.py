"""Classifier-free guidance: the guided score, formed in one place for every sampler.

A conditional score function takes class labels as a keyword, ``score_fn(x, t, y=labels)``,
with ``y`` a ``(B,)`` long tensor; the label :data:`NULL_CLASS` (``-1``), like ``y=None``, asks for
the unconditional score (the network's extra "null" class, learned with label dropout; the
mixture oracle's marginal). Classifier-free guidance (Ho & Salimans 2022, eq. 6) replaces the
conditional noise prediction by

    eps_guided = (1 + w) eps(x, t, y) - w eps(x, t, null)
               = eps(x, t, null) + (1 + w) (eps(x, t, y) - eps(x, t, null)),

and since ``score = -eps / s(t)`` with a ``y``-free ``s(t)``, the same combination of scores:
``score_guided = (1 + w) score(x, t | y) - w score(x, t)``. Two conventions name the strength:

* the guidance **weight** ``w`` (Ho & Salimans 2022): ``w = 0`` is the plain conditional score;
* the guidance **scale** ``1 + w`` (the "guidance scale" of GLIDE, Nichol et al. 2022, and of
  diffusers' pipelines): scale ``1`` is the conditional score, scale ``0`` the unconditional one.

They are different arguments here (``guidance_weight=``, ``guidance_scale=``; giving both is an
error), and every result states both numbers (:meth:`Guidance.as_dict`). ``w >= -1`` (scale
``>= 0``) is required: below that the field points away from the class.

Cost: with ``w != 0`` each evaluation is ONE call of the score function on ``2B`` rows (the
batch twice, with the labels and with :data:`NULL_CLASS`), so a network runs one larger batch
instead of two. For row-wise score functions (oracles) this equals two separate calls bitwise;
for networks, to float tolerance (kernels vary with the batch size). With ``w = 0`` the score is
called once on the ``B`` rows with their labels.

A guided field is not the score of any density (Ho & Salimans 2022, Section 3.1), so the
likelihood refuses a nonzero guidance (:func:`scoresde.likelihood.log_likelihood` computes
``log p(x | y)`` with ``w = 0``).

Reference: Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", arXiv:2207.12598.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ._utils import NULL_CLASS, check_labels

__all__ = ["NULL_CLASS", "Guidance", "GuidedScore", "resolve_guidance", "guided_score", "score_num_classes"]

#: The formula every result quotes.
FORMULA = "(1 + w) score(x, t | y) - w score(x, t); scale = 1 + w"


@dataclass(frozen=True)
class Guidance:
    """The guidance of a run: ``weight`` is ``w``, ``scale`` is ``1 + w``; ``convention`` says which
    one the caller gave (``"weight"``, ``"scale"``, or ``"none"`` when neither was given)."""

    weight: float = 0.0
    convention: str = "none"

    @property
    def scale(self) -> float:
        return 1.0 + self.weight

    @property
    def active(self) -> bool:
        """Whether the unconditional score is needed (``w != 0``)."""
        return self.weight != 0.0

    def as_dict(self, conditional: bool = True) -> dict:
        """What a result records: the convention given, both numbers and the formula."""
        return dict(conditional=conditional, convention=self.convention, guidance_weight=self.weight,
                    guidance_scale=self.scale, formula=FORMULA)


def _finite(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def resolve_guidance(guidance_weight: Optional[float] = None, guidance_scale: Optional[float] = None) -> Guidance:
    """One :class:`Guidance` from the two conventions (at most one of them may be given)."""
    if guidance_weight is not None and guidance_scale is not None:
        raise ValueError(f"give guidance_weight=w (the score is (1 + w) score(x | y) - w score(x)) or "
                         f"guidance_scale=1 + w, not both (got guidance_weight={guidance_weight!r}, "
                         f"guidance_scale={guidance_scale!r})")
    if guidance_scale is not None:
        scale = _finite("guidance_scale", guidance_scale)
        if scale < 0:
            raise ValueError(f"guidance_scale={scale:g} is below 0 (guidance_weight {scale - 1:g} < -1) and pushes "
                             "samples away from the class; use a scale >= 0 (1: conditional, 0: unconditional)")
        return Guidance(scale - 1.0, "scale")
    if guidance_weight is not None:
        w = _finite("guidance_weight", guidance_weight)
        if w < -1:
            raise ValueError(f"guidance_weight={w:g} is below -1 (guidance_scale {w + 1:g} < 0) and pushes "
                             "samples away from the class; use a weight >= -1 (0: conditional, -1: unconditional)")
        return Guidance(w, "weight")
    return Guidance()


def score_num_classes(score_fn: Callable) -> Optional[int]:
    """The number of classes a score function declares (``num_classes`` attribute of a
    :class:`~scoresde.score.ScoreModel`, of the model a bound method belongs to, or of a mixture's
    ``score_fn``), or ``None`` if it declares none."""
    for owner in (score_fn, getattr(score_fn, "__self__", None)):  # a ScoreModel's bound score_fn too
        n = getattr(owner, "num_classes", None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def _takes_labels(score_fn: Callable) -> bool:
    target = getattr(score_fn, "forward", score_fn) if isinstance(score_fn, torch.nn.Module) else score_fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return True  # cannot tell (a builtin): let the call decide
    return any(p.name == "y" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class GuidedScore:
    """``score_fn`` with labels ``y`` and a :class:`Guidance`: a plain ``(x, t) -> score`` callable.

    ``w = 0`` calls ``score_fn(x, t, y=y)``; otherwise one call on ``2B`` rows (module docstring).
    :meth:`take` restricts it to some rows (the per-sample ODE solver evaluates only the running
    samples, so their labels must be selected with them).
    """

    def __init__(self, score_fn: Callable, y: torch.Tensor, guidance: Guidance):
        self.score_fn, self.y, self.guidance = score_fn, y, guidance
        self._null: Optional[torch.Tensor] = None

    def take(self, rows: Optional[torch.Tensor]) -> "GuidedScore":
        """The guided score of the rows ``rows`` (a LongTensor of batch indices; None: all rows)."""
        return self if rows is None else GuidedScore(self.score_fn, self.y.index_select(0, rows), self.guidance)

    def for_batch(self, n: int) -> "GuidedScore":
        """The same guidance for an auxiliary batch of ``n`` samples (the PC sampler's pilot run):
        labels ``0, 1, ..., C-1`` repeated, with ``C`` the score function's ``num_classes``, so the
        auxiliary run does not depend on which labels this batch holds (without a declared
        ``num_classes``, this batch's labels repeated)."""
        c = score_num_classes(self.score_fn)
        src = torch.arange(c, device=self.y.device) if c else self.y
        return GuidedScore(self.score_fn, src[torch.arange(n, device=self.y.device) % src.shape[0]], self.guidance)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = self.y
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"the labels have {y.shape[0]} rows but x has {x.shape[0]}; pass one label per sample")
        if not self.guidance.active:
            return self.score_fn(x, t, y=y)
        if self._null is None or self._null.shape != y.shape:
            self._null = torch.full_like(y, NULL_CLASS)
        both = self.score_fn(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, self._null]))
        cond, uncond = both[: x.shape[0]], both[x.shape[0]:]
        return cond + self.guidance.weight * (cond - uncond)


def guided_score(score_fn: Callable, y: Any = None, *, guidance_weight: Optional[float] = None,
                 guidance_scale: Optional[float] = None, batch: Optional[int] = None, device: Any = None):
    """The score a sampler uses, and what to record about it: ``(score, info)``.

    ``y=None`` with no guidance gives back ``score_fn`` itself and ``info = None`` (an unconditional
    run). Otherwise ``y`` (a ``(batch,)`` tensor of labels or an int for every sample; ``-1`` rows are
    unconditional) is checked once here (shape, dtype, and the range against the score function's
    ``num_classes`` where it declares one), and ``score`` is a :class:`GuidedScore`; ``info`` is
    :meth:`Guidance.as_dict`. Guidance without labels is an error (there is nothing to guide towards).
    """
    g = resolve_guidance(guidance_weight, guidance_scale)
    if y is None:
        if g.convention != "none":
            raise ValueError(f"guidance_{g.convention}= needs class labels: pass y= (a (B,) tensor of labels, "
                             "or an int for every sample) with a conditional model")
        return score_fn, None
    n = score_num_classes(score_fn)
    if n == 0 or not _takes_labels(score_fn):
        raise ValueError("y= was given but the score function is unconditional (it has num_classes=0 or takes no "
                         "y= keyword); train a conditional model (TrainConfig(num_classes=K)) or drop y")
    if batch is None:
        raise ValueError("guided_score needs the batch size to check the labels against")
    labels = check_labels(y, batch, device, n)
    return GuidedScore(score_fn, labels, g), g.as_dict()
