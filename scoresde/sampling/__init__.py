"""Samplers behind one signature, so a study sweeps them in a loop.

``sample(score_fn, sde, shape, *, sampler=..., eps=None, generator=None, device=None, dtype=None,
x_T=None, denoise=None, callback=None, progress=False, **options) -> SampleResult``

Samplers: ``"euler_maruyama"``, ``"pc"`` (predictor-corrector), ``"ode"`` (probability flow),
``"ddpm"`` and ``"ddim"`` (VP only). See ``docs/sampling.md``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..sde import SDE, ScoreFn
from .chains import ddim_sampler, ddpm_sampler
from .ode import ode_sampler
from .pc import CORRECTORS, PREDICTORS, euler_maruyama_sampler, pc_sampler
from .result import SampleResult

SAMPLERS = {
    "euler_maruyama": euler_maruyama_sampler,
    "pc": pc_sampler,
    "ode": ode_sampler,
    "ddpm": ddpm_sampler,
    "ddim": ddim_sampler,
}


def sample(score_fn: ScoreFn, sde: SDE, shape: Sequence[int], *, sampler: str = "pc", eps: Optional[float] = None,
           generator: Optional[torch.Generator] = None, device=None, dtype: Optional[torch.dtype] = None,
           x_T: Optional[torch.Tensor] = None, denoise: Optional[bool] = None, callback=None,
           progress: bool = False, **options) -> SampleResult:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` with the named sampler.

    Shared arguments: ``eps`` (smallest time; default 1e-3 for VP/sub-VP, 1e-5 for VE; must lie in
    ``(0, T)``), ``generator`` (a ``torch.Generator`` on the sampling device, for reproducible
    samples), ``device``/``dtype`` (default: the generator's device / torch's default dtype),
    ``x_T`` (a given starting state instead of a prior draw), ``denoise`` (a final Tweedie step at
    ``eps``; default on), ``callback`` (called with a dict per step), ``progress`` (a tqdm bar).
    ``options`` go to the sampler (see each function's docstring).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](score_fn, sde, shape, eps=eps, generator=generator, device=device, dtype=dtype,
                             x_T=x_T, denoise=denoise, callback=callback, progress=progress, **options)


__all__ = ["sample", "SampleResult", "SAMPLERS", "PREDICTORS", "CORRECTORS", "euler_maruyama_sampler",
           "pc_sampler", "ode_sampler", "ddpm_sampler", "ddim_sampler"]
