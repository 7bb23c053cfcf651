"""The one place configuration names meet the core: the SDE and the score model of a :class:`TrainConfig`."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from torch import nn

from ..data import Dataset
from ..nets import MLPScoreNet, UNet
from ..score import ScoreModel
from ..sde import SDE, SubVPSDE, VESDE, VPSDE
from .config import TrainConfig

__all__ = ["build_sde", "build_model"]


def build_sde(cfg: TrainConfig) -> SDE:
    """The forward SDE of ``cfg``: ``VPSDE``/``SubVPSDE(beta_min, beta_max, sde_N)`` or
    ``VESDE(sigma_min, sigma_max, sde_N)``."""
    if cfg.sde == "ve":
        return VESDE(cfg.sigma_min, cfg.sigma_max, cfg.sde_N)
    cls = VPSDE if cfg.sde == "vp" else SubVPSDE
    return cls(cfg.beta_min, cfg.beta_max, cfg.sde_N)


def build_model(cfg: TrainConfig, dataset: Union[Dataset, Sequence[int]], sde: Optional[SDE] = None) -> ScoreModel:
    """The :class:`~scoresde.score.ScoreModel` of ``cfg`` for ``dataset`` (or a per-sample shape).

    The network time follows :meth:`ScoreModel.net_time` (``"auto"``): ``999 t`` with a sinusoidal
    embedding for VP/sub-VP (Ho et al. 2020; Song et al. 2021), ``log sigma(t)`` with Gaussian
    Fourier features for VE (NCSN++). The MLP flattens any sample shape; the U-Net needs images
    ``(C, H, W)``. ``cfg.num_classes > 0`` builds a class-conditional network (a learned class
    embedding with a null class, :class:`~scoresde.nets.ClassEmbedding`). Parameters are drawn from
    torch's global RNG (:func:`train` seeds it first).
    """
    shape = tuple(dataset.shape) if isinstance(dataset, Dataset) else tuple(int(s) for s in dataset)
    sde = build_sde(cfg) if sde is None else sde
    embedding = "fourier" if isinstance(sde, VESDE) else "sinusoidal"
    if cfg.net == "mlp":
        net: nn.Module = MLPScoreNet(math.prod(shape), cfg.hidden, cfg.depth, embedding, cfg.emb_dim,
                                      num_classes=cfg.num_classes)
    else:
        if len(shape) != 3:
            raise ValueError(f"net='unet' needs images of shape (C, H, W), but the data have shape {shape}; "
                             "use net='mlp' for vector data")
        net = UNet(shape[0], cfg.channels, cfg.channel_mults, cfg.num_res_blocks, cfg.attn_resolutions,
                   cfg.dropout, embedding, image_size=(shape[1], shape[2]), num_classes=cfg.num_classes,
                   conditioning=cfg.unet_conditioning)
    return ScoreModel(net, sde, cfg.parameterization)
