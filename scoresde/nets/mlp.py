"""A small MLP score network for low-dimensional data (toy 2-D sets, Gaussian-mixture oracles)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .._utils import check_int
from .embedding import ClassEmbedding, class_features, make_embedding

__all__ = ["MLPScoreNet"]


class MLPScoreNet(nn.Module):
    """SiLU MLP with a time embedding added at every hidden layer.

    With ``e = SiLU(A emb(t_net))`` (``emb`` sinusoidal or Gaussian-Fourier, ``A`` linear to
    ``hidden``), the network is

        h_0 = W_in x,    h_l = SiLU(W_l h_{l-1} + U_l e)  (l = 1..depth),    out = W_out h_depth,

    so the time enters every layer (additive conditioning, as in Ho et al. 2020's residual blocks).
    A conditional network (``num_classes = K > 0``) adds a learned class embedding ``C[y]``
    (:class:`~scoresde.nets.embedding.ClassEmbedding`, ``K + 1`` rows of size ``hidden``, the last
    the null class) *after* the time MLP: ``e = SiLU(A emb(t_net)) + C[y]``, so every layer sees
    ``U_l (e_t + C[y])`` -- the label conditioning of classifier-free guidance (Ho & Salimans 2022).
    Default PyTorch initialisation everywhere (no zero-initialised layer, so every parameter
    gets a gradient from the first step). The raw output is what :class:`scoresde.score.ScoreModel`
    turns into a score according to its parameterization.

    Args:
        dim: number of data values per sample ``D``.
        hidden: width of the hidden layers.
        depth: number of time-conditioned hidden layers (>= 1).
        embedding: ``"sinusoidal"`` (for inputs like ``999 t``) or ``"fourier"`` (for ``log sigma``).
        emb_dim: size of the time embedding (even).
        max_period, fourier_scale, seed: passed to the embedding.
        num_classes: ``0`` (default): unconditional; ``K > 0``: class-conditional on labels ``0..K-1``
            (and :data:`~scoresde._utils.NULL_CLASS` ``-1``, no label). Stored as :attr:`num_classes`.

    ``forward(x, t_net, y=None)``: ``x`` of shape ``(B, D)`` or ``(B, *dims)`` with ``prod(dims) = D``
    (flattened and reshaped back), ``t_net`` of shape ``(B,)``, ``y`` ``None`` (unconditional: the
    null class) or a ``(B,)`` integer tensor of labels on ``x``'s device (a conditional network
    only; an unconditional one given ``y`` raises ``ValueError``); returns a tensor shaped like ``x``.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embedding: str = "sinusoidal",
                 emb_dim: int = 64, *, max_period: float = 10000.0, fourier_scale: float = 16.0, seed: int = 0,
                 num_classes: int = 0):
        super().__init__()
        self.dim = check_int("dim", dim)
        self.hidden = check_int("hidden", hidden)
        self.depth = check_int("depth", depth)
        self.embed = make_embedding(embedding, emb_dim, max_period=max_period, fourier_scale=fourier_scale, seed=seed)
        self.embedding = embedding
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()
        self.num_classes = check_int("num_classes", num_classes, 0)
        self.class_embed = ClassEmbedding(num_classes, hidden) if num_classes else None

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise ValueError("x must be a tensor of shape (B, *dims)")
        d = math.prod(x.shape[1:])
        if d != self.dim:
            raise ValueError(f"x has shape {tuple(x.shape)}, i.e. {d} values per sample, but the network was "
                             f"built with dim={self.dim}; pass (B, *dims) with prod(dims) = {self.dim}")
        if not isinstance(t_net, torch.Tensor) or t_net.shape != (x.shape[0],):
            got = tuple(t_net.shape) if isinstance(t_net, torch.Tensor) else type(t_net).__name__
            raise ValueError(f"t_net must be a tensor of shape ({x.shape[0]},) (one time per sample), got {got}")
        e = self.time_mlp(self.embed(t_net.to(x.dtype)))
        c = class_features(self.class_embed, y, x, "MLPScoreNet")
        if c is not None:
            e = e + c.to(e.dtype)
        h = self.inp(x.reshape(x.shape[0], d))
        for layer, proj in zip(self.layers, self.time_proj):
            h = self.act(layer(h) + proj(e))
        return self.out(h).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, embedding={self.embedding!r}" + (
            f", num_classes={self.num_classes}" if self.num_classes else "")
