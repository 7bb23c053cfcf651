"""scoresde: continuous-time score-based generative modelling with PyTorch.

The public API is re-exported here by name; nothing else is public.
"""
from .discrete import DDPMSchedule, SMLDSchedule
from .sde import SDE, BetaSchedule, CosineBeta, LinearBeta, ReverseSDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "BetaSchedule",
    "LinearBeta",
    "CosineBeta",
    "DDPMSchedule",
    "SMLDSchedule",
]
