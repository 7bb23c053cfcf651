"""Samplers behind one signature, so a study sweeps them in a loop.

``sample(score_fn, sde, shape, *, sampler=..., steps=None, nfe=None, grid=None, eps=None,
x_T=None, denoise=None, generator=None, device=None, dtype=None, callback=None, progress=False,
**options) -> SampleResult``

Samplers (``SAMPLERS``; each entry carries ``order``, ``nfe_per_step``, ``stochastic`` and
``default_grid``): ``"euler_maruyama"``, ``"pc"`` (predictor-corrector), ``"ode"`` (probability
flow, adaptive), ``"ddpm"``, ``"ddim"``, ``"dpm_solver_2"``, ``"dpm_solver_3"``, ``"dpmpp_2m"``,
``"dpmpp_3m"``, ``"dpmpp_2m_sde"``, ``"unipc"``, ``"heun_edm"``. Time grids: ``GRIDS``
(:mod:`scoresde.sampling.grids`). See ``docs/sampling.md``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._utils import check_choice
from ..scorefn import ScoreFn
from ..sde import SDE
from .base import Sampler
from .chains import DDIM, DDPM
from .edm import HeunEDM
from .exponential import DPMSolver, DPMSolverPP2MSDE, DPMSolverPPMultistep, UniPC
from .grids import GRIDS, time_grid
from .ode import ode_sampler
from .pc import CORRECTORS, PREDICTORS, euler_maruyama_sampler, pc_sampler
from .result import SampleResult

ddpm_sampler, ddim_sampler = DDPM(), DDIM()

SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    euler_maruyama_sampler, pc_sampler, ode_sampler, ddpm_sampler, ddim_sampler,
    DPMSolver("dpm_solver_2", 2), DPMSolver("dpm_solver_3", 3),
    DPMSolverPPMultistep("dpmpp_2m", 2), DPMSolverPPMultistep("dpmpp_3m", 3),
    DPMSolverPP2MSDE(), UniPC(), HeunEDM(),
)}


def sample(score_fn: ScoreFn, sde: SDE, shape: Sequence[int], *, sampler: str = "pc", steps: Optional[int] = None,
           nfe: Optional[int] = None, grid=None, eps: Optional[float] = None,
           generator: Optional[torch.Generator] = None, device=None, dtype: Optional[torch.dtype] = None,
           x_T: Optional[torch.Tensor] = None, denoise: Optional[bool] = None, callback=None,
           progress: bool = False, y=None, guidance_weight: Optional[float] = None,
           guidance_scale: Optional[float] = None, **options) -> SampleResult:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` with the named sampler.

    Shared arguments (every sampler takes them): ``steps`` (number of steps) or ``nfe`` (a budget of
    score evaluations per sample: the sampler takes as many steps as it pays for, exactly ``nfe``
    where its step cost allows, the denoising step counted as one; a cap for the adaptive ``ode``),
    ``grid`` (``"uniform"``, ``"logsnr"``, ``"karras"``, ``"quadratic"`` or a decreasing sequence of
    times; default: the sampler's ``default_grid``), ``eps`` (smallest time; default 1e-3 for
    VP/sub-VP, 1e-5 for VE; in ``(0, T)``), ``generator`` (a ``torch.Generator`` on the sampling
    device), ``device``/``dtype`` (default: the generator's device / torch's default dtype), ``x_T``
    (a given starting state instead of a prior draw), ``denoise`` (a final Tweedie step at ``eps``;
    default on), ``callback`` (called with ``dict(i, t, x, x0_hat)`` after every step),
    ``progress`` (a tqdm bar). ``options`` go to the sampler (see each class's docstring); an option
    the sampler does not take is an error.

    Conditional sampling (every sampler): ``y`` (a ``(B,)`` tensor of class labels, or an int for
    every sample; ``-1`` for an unconditional row) with a conditional score function
    (``score_fn(x, t, y=...)``), and classifier-free guidance by ``guidance_weight=w`` (score
    ``(1 + w) score(x | y) - w score(x)``) or ``guidance_scale=1 + w``, not both
    (:mod:`scoresde.guidance`; ``SampleResult.guidance`` records which). ``nfe`` counts guided
    evaluations, each one score call on ``2B`` rows when ``w != 0``.
    """
    check_choice("sampler", sampler, SAMPLERS)
    return SAMPLERS[sampler](score_fn, sde, shape, steps=steps, nfe=nfe, grid=grid, eps=eps, generator=generator,
                             device=device, dtype=dtype, x_T=x_T, denoise=denoise, callback=callback,
                             progress=progress, y=y, guidance_weight=guidance_weight,
                             guidance_scale=guidance_scale, **options)


__all__ = ["sample", "SampleResult", "SAMPLERS", "PREDICTORS", "CORRECTORS", "GRIDS", "Sampler", "time_grid",
           "euler_maruyama_sampler", "pc_sampler", "ode_sampler", "ddpm_sampler", "ddim_sampler"]
