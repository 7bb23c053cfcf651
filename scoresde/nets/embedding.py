"""Time embeddings: map a batch of network-time values ``(B,)`` to feature vectors ``(B, dim)``.

Two classic choices, both fixed (no trainable parameters):

* :class:`SinusoidalEmbedding` -- the transformer position encoding of Vaswani et al. (2017),
  "Attention is all you need", Section 3.5, used for diffusion time by Ho, Jain & Abbeel (2020),
  "Denoising diffusion probabilistic models" (their U-Net conditions on the step index ``0..999``).
* :class:`GaussianFourierEmbedding` -- random Fourier features of Tancik et al. (2020), "Fourier
  features let networks learn high frequency functions in low dimensional domains", used by
  Song et al. (2021, NCSN++) on ``log sigma``.

Which time value the network sees (``t``, ``999 t``, ``log sigma(t)``, ...) is decided in one place,
:meth:`scoresde.score.ScoreModel.net_time`; the embeddings accept any real input.

The class input of a conditional network is a learned table, :class:`ClassEmbedding`, with one
extra "null" row for the unconditional score: classifier-free guidance (Ho & Salimans 2022,
"Classifier-free diffusion guidance", Section 3.2) trains one network on both by replacing a
label with the null class at random (label dropout, :func:`scoresde.losses.drop_labels`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .._utils import NULL_CLASS, check_int, is_int

__all__ = ["SinusoidalEmbedding", "GaussianFourierEmbedding", "make_embedding", "EMBEDDINGS", "ClassEmbedding",
           "class_features"]

EMBEDDINGS = ("sinusoidal", "fourier")


def _check_dim(dim) -> int:
    if not is_int(dim, 2) or dim % 2:
        raise ValueError(f"embedding dim must be an even int >= 2 (half sines, half cosines), got {dim!r}")
    return dim


def _check_time(t: torch.Tensor) -> torch.Tensor:
    """``t`` must be a ``(B,)`` tensor; integer tensors (step indices) are cast to the default float."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"the time input must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"the time input must have shape (B,) (one value per sample), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020).

    With ``h = dim // 2`` frequencies ``w_i = max_period^(-i / h)``, ``i = 0, ..., h - 1``
    (so ``w_0 = 1`` and the slowest frequency is ``max_period^(-(h-1)/h)``):

        emb(t) = [sin(w_0 t), ..., sin(w_{h-1} t), cos(w_0 t), ..., cos(w_{h-1} t)].

    This is Vaswani's ``PE(pos, 2i) = sin(pos / 10000^(2i / dim))``, ``PE(pos, 2i+1) = cos(...)``
    with the sines and cosines grouped instead of interleaved. The frequencies span the range
    ``[1/max_period, 1]``, so inputs should range over ``O(1) .. O(max_period)``: use it with
    ``t`` scaled to ``[0, 999]`` (the default time input of VP-type SDEs in :class:`~scoresde.score.ScoreModel`).

    Args:
        dim: output size, an even int >= 2.
        max_period: ``1 / (slowest frequency)`` (up to the factor above); > 1.

    Input ``t``: ``(B,)`` floats (ints are cast). Output: ``(B, dim)`` in ``t``'s dtype.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim = _check_dim(dim)
        if not (isinstance(max_period, (int, float)) and math.isfinite(max_period) and max_period > 1):
            raise ValueError(f"max_period must be a finite number > 1, got {max_period!r}")
        self.max_period = float(max_period)
        half = dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.to(torch.get_default_dtype()), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = _check_time(t)
        args = t[:, None] * self.freqs.to(dtype=t.dtype)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020; Song et al. 2021, NCSN++).

    ``W ~ N(0, scale^2)`` of size ``h = dim // 2`` is drawn once from
    ``torch.Generator().manual_seed(seed)`` and kept as a (saved, not trained) buffer:

        emb(t) = [sin(2 pi W_1 t), ..., sin(2 pi W_h t), cos(2 pi W_1 t), ..., cos(2 pi W_h t)].

    Made for inputs of order one, e.g. ``log sigma(t)`` (the default time input of the VE SDE in
    :class:`~scoresde.score.ScoreModel`); ``scale = 16`` is the NCSN++ value.

    Args:
        dim: output size, an even int >= 2.
        scale: std of the frequencies, > 0.
        seed: seed of the frequencies; the same seed gives the same embedding on every machine.

    Input ``t``: ``(B,)`` floats (ints are cast). Output: ``(B, dim)`` in ``t``'s dtype.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        self.dim = _check_dim(dim)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale!r}")
        if not is_int(seed):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.scale, self.seed = float(scale), seed
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim // 2, generator=g, dtype=torch.float64) * self.scale
        self.register_buffer("W", w.to(torch.get_default_dtype()))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = _check_time(t)
        args = (2.0 * math.pi) * t[:, None] * self.W.to(dtype=t.dtype)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale:g}, seed={self.seed}"


def make_embedding(kind: str, dim: int, *, max_period: float = 10000.0, fourier_scale: float = 16.0,
                   seed: int = 0) -> nn.Module:
    """``"sinusoidal"`` -> :class:`SinusoidalEmbedding` (``max_period``), ``"fourier"`` ->
    :class:`GaussianFourierEmbedding` (``fourier_scale``, ``seed``)."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, max_period)
    if kind == "fourier":
        return GaussianFourierEmbedding(dim, fourier_scale, seed)
    raise ValueError(f"unknown embedding {kind!r}; choose one of {EMBEDDINGS}")


class ClassEmbedding(nn.Module):
    """A learned class embedding with a null class: ``num_classes + 1`` rows of size ``dim``.

    Row ``k`` (``0 <= k < num_classes``) is class ``k``; the last row, ``num_classes``, is the null
    class, used for the label :data:`~scoresde._utils.NULL_CLASS` (``-1``) and for ``y=None``
    (every row unconditional). So ``emb(None)`` equals ``emb(full(NULL_CLASS))`` bitwise, and one
    network holds both the conditional score ``score(x, t | y)`` and the unconditional one
    ``score(x, t)`` that classifier-free guidance combines (Ho & Salimans 2022, Algorithm 1:
    ``c = null`` with probability ``p_uncond`` during training). The rows are initialised
    ``N(0, 1)`` (``nn.Embedding``'s default) and trained with the network.

    ``forward(y, batch, device)``: ``y`` ``None`` or a ``(batch,)`` integer tensor on ``device``
    with values in ``0 .. num_classes - 1`` or ``-1``; returns ``(batch, dim)``. Only Python-side
    checks (type, shape, dtype, device; no host synchronisation), so it runs inside sampling
    loops; a value out of range fails in the table lookup (validate labels once, at the public
    entry point, with :func:`scoresde._utils.check_labels`).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.dim = check_int("dim", dim)
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Optional[torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            idx = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"y must be a ({batch},) tensor of integer class labels or None, got "
                                f"{type(y).__name__}")
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}; pass y.long()")
            if tuple(y.shape) != (batch,):
                raise ValueError(f"y must have shape ({batch},), one label per sample, got shape {tuple(y.shape)}")
            if y.device != torch.device(device):
                raise ValueError(f"y is on {y.device} but x is on {device}; pass y.to(x.device)")
            y = y.long()
            idx = torch.where(y == NULL_CLASS, torch.full_like(y, self.num_classes), y)
        return self.table(idx)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+1 null), dim={self.dim}"


def class_features(embed: Optional[ClassEmbedding], y: Optional[torch.Tensor], x: torch.Tensor,
                   net: str) -> Optional[torch.Tensor]:
    """The class features ``(B, dim)`` of a network's class input ``y`` (``None`` for an
    unconditional network, ``embed is None``, where a given ``y`` is a ``ValueError``)."""
    if embed is None:
        if y is not None:
            raise ValueError(f"this {net} is unconditional (built with num_classes=0) but was given class labels "
                             f"y; build it with num_classes=K to train a class-conditional model, or pass y=None")
        return None
    return embed(y, x.shape[0], x.device)
