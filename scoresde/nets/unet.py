"""A small U-Net score network for images ``(B, C, H, W)``.

The architecture follows the DDPM U-Net of Ho, Jain & Abbeel (2020), "Denoising diffusion
probabilistic models", Appendix B (itself a PixelCNN++ / Wide-ResNet backbone), scaled down:

* a time embedding ``emb(t_net)`` (sinusoidal or Gaussian-Fourier) passed through a two-layer SiLU
  MLP to ``4 * channels`` features; a conditional U-Net (``num_classes = K > 0``) adds a learned
  class embedding ``C[y]`` of the same size *after* the time MLP, ``e = MLP(emb(t_net)) + C[y]``
  (:class:`~scoresde.nets.embedding.ClassEmbedding`, ``K + 1`` rows, the last the null class), as
  the class-conditional U-Nets of Dhariwal & Nichol (2021) and Ho & Salimans (2022) do;
* residual blocks ``x + conv(SiLU(GN(h) (1 + a) + b))``, ``h = conv(SiLU(GN(x)))``, where
  ``(a, b) = P e`` is the projected time (and class) embedding, a per-channel scale and shift
  applied *after* the second GroupNorm ("scale-shift norm", Dhariwal & Nichol 2021, Appendix A),
  with an optional dropout before the second convolution. DDPM's own block,
  ``x + conv(SiLU(GN(h + P e)))`` (``conditioning="add"``), adds the embedding *before* that norm,
  which subtracts each group's mean: with one channel per group (a level of at most
  ``norm_groups`` channels, e.g. the 32-channel level of a small U-Net) it removes the shift
  entirely and the level cannot see ``t`` or the class; with ``k`` channels per group only the
  part of the shift that varies within the group survives. The scale-shift block keeps all of it;
* single-head (or multi-head) self-attention blocks at the listed spatial resolutions and always
  in the middle (bottleneck), ``x + proj(Attention(GN(x)))`` (Vaswani et al. 2017);
* ``len(channel_mults) - 1`` downsamplings (3x3 convolution, stride 2) and as many upsamplings
  (nearest neighbour x2 then 3x3 convolution), with the activations of the down path concatenated
  into the up path (skip connections, Ronneberger et al. 2015).

Every operation acts on one sample at a time (GroupNorm normalises within a sample), so a
sample's output does not depend on the rest of its batch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import append_dims, check_int, check_probability, is_int
from .embedding import ClassEmbedding, class_features, make_embedding

__all__ = ["UNet", "CONDITIONINGS"]

#: How a residual block takes the time (and class) embedding: after or before its second norm.
CONDITIONINGS = ("scale_shift", "add")


def _num_groups(channels: int, max_groups: int) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is at most ``max_groups``
    (``gcd(channels, 32) = 32`` for the usual widths; ``channels`` itself for narrow layers)."""
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, groups: int, scale_shift: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(_num_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.scale_shift = scale_shift
        self.temb = nn.Linear(temb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = nn.GroupNorm(_num_groups(cout, groups), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x, temb):
        h = self.conv1(self.act(self.norm1(x)))
        e = append_dims(self.temb(temb), h.ndim)
        if self.scale_shift:  # after the norm: the whole per-channel signal reaches the convolution
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1.0 + scale) + shift
        else:  # DDPM: before the norm, which subtracts each group's mean
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(self.act(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_num_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.heads = heads

    def forward(self, x, temb=None):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class _Down(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, temb=None):
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, temb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))



class UNet(nn.Module):
    """DDPM-style U-Net for images; see the module docstring for the architecture.

    Args:
        in_channels: image channels ``C`` (1 for digits/MNIST, 3 for CIFAR-10).
        channels: base width; level ``i`` has ``channels * channel_mults[i]`` channels.
        channel_mults: one multiplier per resolution level; the image is downsampled
            ``len(channel_mults) - 1`` times, so ``H`` and ``W`` must be divisible by
            ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
        attn_resolutions: spatial sizes (feature-map height) of the levels that get self-attention
            after each residual block, e.g. ``(16,)`` for 32x32 images as in DDPM. The level sizes
            are ``H, H/2, H/4, ...``, so this needs ``image_size``; the bottleneck always has
            attention. Every listed size must be one of the level sizes.
        dropout: dropout rate inside the residual blocks (active in ``train()`` mode only).
        embedding: ``"sinusoidal"`` or ``"fourier"`` time embedding of size ``channels``.
        image_size: ``H`` (square) or ``(H, W)``; when given, inputs must have that size. ``None``
            accepts any divisible size (then ``attn_resolutions`` must be empty).
        out_channels: output channels (default ``in_channels``; the score has the shape of ``x``).
        num_heads: attention heads; must divide the channels of every attention level.
        norm_groups: at most this many GroupNorm groups (the largest divisor of the width <= it).
        conditioning: ``"scale_shift"`` (default): the time and class embedding scales and shifts
            each channel after the residual block's second norm; ``"add"``: DDPM's block, which adds
            it before that norm and so loses it at levels with one channel per group (module
            docstring). Checkpoints written before this option existed were ``"add"``, and load as such.
        max_period, fourier_scale, seed: passed to the embedding.
        num_classes: ``0`` (default): unconditional; ``K > 0``: class-conditional on labels ``0..K-1``
            (and :data:`~scoresde._utils.NULL_CLASS` ``-1``, no label). Stored as :attr:`num_classes`.

    ``forward(x, t_net, y=None)``: ``x`` of shape ``(B, C, H, W)``, ``t_net`` of shape ``(B,)``,
    ``y`` ``None`` (unconditional: the null class) or a ``(B,)`` integer tensor of labels on
    ``x``'s device (a conditional U-Net only; an unconditional one given ``y`` raises
    ``ValueError``); returns a tensor of shape ``(B, out_channels, H, W)``.
    """

    def _check_attention(self, attn: tuple, mults: tuple, channels: int, num_heads: int) -> tuple:
        """The attention resolutions, checked against the level sizes and the heads."""
        if attn and self.image_size is None:
            raise ValueError("attn_resolutions are spatial sizes of the levels, which depend on the image size: "
                             "pass image_size=... (or attn_resolutions=() for attention only at the bottleneck)")
        level_sizes = [] if self.image_size is None else [self.image_size[0] // 2**i for i in range(len(mults))]
        for r in attn:
            if r not in level_sizes:
                raise ValueError(f"attention resolution {r!r} is not a level size; the levels of a "
                                 f"{self.image_size[0]}x{self.image_size[1]} input are {level_sizes}")
        for i, m in enumerate(mults):
            if level_sizes and level_sizes[i] in attn and (channels * m) % num_heads:
                raise ValueError(f"num_heads={num_heads} must divide the {channels * m} channels of the attention "
                                 f"level {level_sizes[i]}")
        if (channels * mults[-1]) % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {channels * mults[-1]} bottleneck channels")
        return attn

    def __init__(self, in_channels: int = 1, channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (), dropout: float = 0.0,
                 embedding: str = "sinusoidal", image_size: Optional[Union[int, Sequence[int]]] = None, *,
                 out_channels: Optional[int] = None, num_heads: int = 1, norm_groups: int = 32,
                 max_period: float = 10000.0, fourier_scale: float = 16.0, seed: int = 0, num_classes: int = 0,
                 conditioning: str = "scale_shift"):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.conditioning = conditioning
        ss = conditioning == "scale_shift"
        self.num_classes = check_int("num_classes", num_classes, 0)
        self.in_channels = check_int("in_channels", in_channels)
        self.out_channels = check_int("out_channels", in_channels if out_channels is None else out_channels)
        self.channels = check_int("channels", channels)
        check_int("num_res_blocks", num_res_blocks)
        check_int("num_heads", num_heads)
        check_int("norm_groups", norm_groups)
        mults = tuple(channel_mults)
        if len(mults) == 0 or any(not is_int(m, 1) for m in mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults!r}")
        if channels % 2:
            raise ValueError(f"channels must be even (it is also the size of the time embedding), got {channels}")
        check_probability("dropout", dropout, hi_open=True)
        self.channel_mults = mults
        self.factor = 2 ** (len(mults) - 1)
        if image_size is None:
            self.image_size = None
        else:
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if len(hw) != 2 or any(not is_int(v, 1) for v in hw):
                raise ValueError(f"image_size must be a positive int or a pair (H, W), got {image_size!r}")
            self._check_divisible(hw)
            self.image_size = hw
        self.attn_resolutions = attn = self._check_attention(tuple(attn_resolutions), mults, channels, num_heads)
        level_sizes = [] if self.image_size is None else [self.image_size[0] // 2**i for i in range(len(mults))]

        temb_dim = 4 * channels
        self.embedding = embedding
        self.embed = make_embedding(embedding, channels, max_period=max_period, fourier_scale=fourier_scale,
                                    seed=seed)
        self.time_mlp = nn.Sequential(nn.Linear(channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(self.in_channels, channels, 3, padding=1)

        # Down path: record the width of every activation pushed on the skip stack.
        self.down = nn.ModuleList()
        skips = [channels]
        cur = channels
        for i, m in enumerate(mults):
            use_attn = bool(level_sizes) and level_sizes[i] in attn
            for _ in range(num_res_blocks):
                blocks = [_ResBlock(cur, channels * m, temb_dim, dropout, norm_groups, ss)]
                cur = channels * m
                if use_attn:
                    blocks.append(_Attention(cur, num_heads, norm_groups))
                self.down.append(nn.ModuleList(blocks))
                skips.append(cur)
            if i != len(mults) - 1:
                self.down.append(nn.ModuleList([_Down(cur)]))
                skips.append(cur)

        self.mid = nn.ModuleList([_ResBlock(cur, cur, temb_dim, dropout, norm_groups, ss),
                                  _Attention(cur, num_heads, norm_groups),
                                  _ResBlock(cur, cur, temb_dim, dropout, norm_groups, ss)])

        self.up = nn.ModuleList()
        for i in reversed(range(len(mults))):
            m = mults[i]
            use_attn = bool(level_sizes) and level_sizes[i] in attn
            for _ in range(num_res_blocks + 1):
                blocks = [_ResBlock(cur + skips.pop(), channels * m, temb_dim, dropout, norm_groups, ss)]
                cur = channels * m
                if use_attn:
                    blocks.append(_Attention(cur, num_heads, norm_groups))
                self.up.append(nn.ModuleList(blocks))
            if i != 0:
                self.up.append(nn.ModuleList([_Up(cur)]))
        assert not skips
        self.out = nn.Sequential(nn.GroupNorm(_num_groups(cur, norm_groups), cur), nn.SiLU(),
                                 nn.Conv2d(cur, self.out_channels, 3, padding=1))
        self.class_embed = ClassEmbedding(num_classes, temb_dim) if num_classes else None

    def _check_divisible(self, hw):
        if hw[0] % self.factor or hw[1] % self.factor:
            raise ValueError(
                f"an image of size {hw[0]}x{hw[1]} cannot be halved {len(self.channel_mults) - 1} times "
                f"(channel_mults={self.channel_mults}): H and W must be divisible by {self.factor}; "
                "use fewer channel_mults or pad the images")

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (B, C, H, W), got {got}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the U-Net was built with in_channels={self.in_channels}")
        hw = tuple(x.shape[2:])
        if self.image_size is not None and hw != self.image_size:
            raise ValueError(f"x is {hw[0]}x{hw[1]} but the U-Net was built for image_size={self.image_size}")
        self._check_divisible(hw)
        if not isinstance(t_net, torch.Tensor) or t_net.shape != (x.shape[0],):
            got = tuple(t_net.shape) if isinstance(t_net, torch.Tensor) else type(t_net).__name__
            raise ValueError(f"t_net must be a tensor of shape ({x.shape[0]},) (one time per sample), got {got}")

        temb = self.time_mlp(self.embed(t_net.to(x.dtype)))
        c = class_features(self.class_embed, y, x, "UNet")
        if c is not None:
            temb = temb + c.to(temb.dtype)
        h = self.conv_in(x)
        stack = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, temb)
            stack.append(h)
        for block in self.mid:
            h = block(h, temb)
        for blocks in self.up:
            if not isinstance(blocks[0], _Up):
                h = torch.cat([h, stack.pop()], dim=1)
            for block in blocks:
                h = block(h, temb)
        return self.out(h)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, channels={self.channels}, channel_mults={self.channel_mults}, "
                f"attn_resolutions={self.attn_resolutions}, image_size={self.image_size}"
                + (f", num_classes={self.num_classes}" if self.num_classes else ""))
