"""Adapters for models trained elsewhere: diffusers and score_sde_pytorch networks as score models.

* :func:`from_diffusers` (``diffusers_adapter.py``): a ``UNet2DModel`` with its ``DDPMScheduler`` or
  ``DDIMScheduler``, and the VP SDE whose marginals are the scheduler's chain at the grid times;
* :func:`from_score_sde` (``score_sde_adapter.py``): a module called as the original score-SDE
  code calls its models, ``model(x, labels)``, with that code's time and output conventions.

Each returns ``(score_model, sde)``. Neither imports diffusers: the adapter reads the unet and
the scheduler it is given (install them with the extra: ``pip install -e ".[diffusers]"``).
The conventions, the recipes and what differs from the original numbers are in ``docs/interop.md``.
"""
from __future__ import annotations

from .diffusers_adapter import from_diffusers
from .score_sde_adapter import SDE_NAMES, ChainVPScoreModel, from_score_sde

__all__ = ["from_diffusers", "from_score_sde", "ChainVPScoreModel", "SDE_NAMES"]
