"""The distributed context of a training run: rank, world size, the device, and the process group."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.distributed as dist

from .config import TrainConfig

__all__ = ["Dist", "setup_distributed"]


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world``; ``owns_group`` if :func:`setup_distributed` made the group."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            dist.barrier()


def setup_distributed(cfg: TrainConfig) -> Tuple[Dist, torch.device]:
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    owns = False
    if dist.is_available() and not dist.is_initialized() and env_world > 1:
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if want_cuda else "gloo")
        owns = True
    if dist.is_available() and dist.is_initialized():
        d = Dist(dist.get_rank(), dist.get_world_size(), owns)
    else:
        d = Dist()
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if d.on else "cuda") if torch.cuda.is_available() \
            else torch.device("cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None and d.on:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r} but no CUDA device is available; use device='cpu'")
        if device.index is None:  # plain "cuda": the current device, made explicit for set_device/DDP
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    for flag in ("bf16", "compile"):
        if getattr(cfg, flag) and device.type != "cuda":
            raise ValueError(f"{flag}=True is for CUDA devices only (the run uses {device}); set {flag}=False")
    return d, device
