"""Discrete samplers of the DDPM chain for VP models: DDPM ancestral sampling (Ho et al. 2020)
and DDIM (Song, Meng & Ermon 2021).

Both walk the DDPM grid of the SDE's ``N``-step chain: step ``i`` ends at ``t_i = (i + 1)/N``
(:meth:`scoresde.DDPMSchedule.times`). The continuous score model gives the data prediction by
Tweedie's formula, ``x0_hat = (x + s(t)^2 score(x, t)) / m(t)``, with ``eps_hat = -s(t) score``.
The chain ends in a prediction of ``x_0``, so no separate denoising step is taken, and ``eps``
does not apply: the smallest time reached is ``1/N``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._utils import append_dims
from ..sde import SDE, VPSDE
from . import _common as C

VARIANCES = ("posterior", "beta")


def _check(sde: SDE, eps, denoise, name: str) -> int:
    if not isinstance(sde, VPSDE):
        raise ValueError(f"the {name} sampler runs the DDPM chain and needs a VPSDE, got {type(sde).__name__}; "
                         "use sampler='pc', 'euler_maruyama' or 'ode' for other SDEs")
    if eps is not None:
        raise ValueError(f"{name} walks the DDPM grid t_i = (i+1)/N; its smallest time is 1/N = {1 / sde.N:g}. "
                         "Leave eps=None (set the SDE's N instead)")
    if denoise is False:
        raise ValueError(f"{name} ends in a prediction of x_0 by construction; denoise=False does not apply")
    i_max = int(math.floor(sde.T * sde.N + 1e-9)) - 1
    if i_max < 0:
        raise ValueError(f"T={sde.T} is shorter than one DDPM step 1/N={1 / sde.N:g}")
    return i_max


def _x0_and_eps(score, sde, x, t: float):
    tv = C.time_vec(t, x)
    m, s = sde._coeffs(tv)
    sc = score(x, tv)
    s_, m_ = append_dims(s, x.ndim), append_dims(m, x.ndim)
    return (x + s_ * s_ * sc) / m_, -s_ * sc


def ddpm_sampler(score_fn, sde: VPSDE, shape, *, eps: Optional[float] = None, generator=None, device=None,
                 dtype=None, x_T=None, denoise: Optional[bool] = None, callback: C.Callback = None,
                 progress: bool = False, variance: str = "posterior") -> C.SampleResult:
    """DDPM ancestral sampling: ``x_i ~ q(x_i | x_{i+1}, x0_hat)`` for ``i`` from the last step whose
    time is ``<= T`` down to 0, the posterior of Ho et al. (2020, eq. 6-7) with ``x_0`` replaced by
    the model's prediction. ``variance="posterior"`` uses ``beta_tilde_i`` (their "fixed small"),
    ``"beta"`` uses ``beta_i`` ("fixed large"). No noise is added at the last step. NFE = number of steps.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")
    i_max = _check(sde, eps, denoise, "ddpm")
    sched = sde.ddpm_schedule()
    coef1, coef2 = sched.posterior_mean_coef1.tolist(), sched.posterior_mean_coef2.tolist()
    var = (sched.posterior_variance if variance == "posterior" else sched.betas).tolist()
    st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
    score = C.CheckedScore(score_fn)
    x = st.x
    with torch.no_grad(), C.progress_bar(i_max + 1, progress, "ddpm") as bar:
        for i in range(i_max, -1, -1):
            x0, _ = _x0_and_eps(score, sde, x, (i + 1) / sde.N)
            x_mean = coef1[i] * x0 + coef2[i] * x
            x = x_mean + math.sqrt(var[i]) * st.noise(x) if i > 0 else x_mean
            C.emit(callback, step=i_max - i, t=i / sde.N, x=x, x_mean=x_mean)
            bar.update(1)
    info = dict(variance=variance, steps=i_max + 1)
    return C.finish("ddpm", x, i_max + 1, score.calls, 1.0 / sde.N, info)


def ddim_timesteps(i_max: int, steps: int) -> list[int]:
    """A decreasing sub-sequence of ``steps`` DDPM step indices from ``i_max`` to 0, evenly spread."""
    steps = min(steps, i_max + 1)
    if steps == 1:
        return [i_max]
    idx = [round(i_max - k * i_max / (steps - 1)) for k in range(steps)]
    return sorted(set(idx), reverse=True)


def ddim_sampler(score_fn, sde: VPSDE, shape, *, eps: Optional[float] = None, generator=None, device=None,
                 dtype=None, x_T=None, denoise: Optional[bool] = None, callback: C.Callback = None,
                 progress: bool = False, steps: int = 50, eta: float = 0.0) -> C.SampleResult:
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16) on a sub-sequence of ``steps`` DDPM steps.

    From time ``t`` to the next ``t'`` (with ``m = m(t)``, ``s = s(t)``, ``s^2 = 1 - m^2``):
    ``x' = m' x0_hat + sqrt(s'^2 - sigma^2) eps_hat + sigma z`` with
    ``sigma = eta sqrt(s'^2 / s^2) sqrt(1 - m^2 / m'^2)``; the last step returns ``x0_hat``.
    ``eta = 0`` is deterministic and is the first-order exponential integrator of the
    probability-flow ODE (Lu et al. 2022, DPM-Solver-1), so it converges to the ODE solution as
    the steps grow; ``eta = 1`` is ancestral sampling on the sub-sequence. NFE = number of steps.
    """
    C.check_steps(steps)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite non-negative number, got {eta}")
    i_max = _check(sde, eps, denoise, "ddim")
    seq = ddim_timesteps(i_max, steps)
    times = [(i + 1) / sde.N for i in seq]
    coeffs = [tuple(float(v) for v in sde._coeffs(torch.tensor([t], dtype=torch.float64))) for t in times]
    st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
    score = C.CheckedScore(score_fn)
    x = st.x
    with torch.no_grad(), C.progress_bar(len(seq), progress, "ddim") as bar:
        for k, t in enumerate(times):
            x0, eps_hat = _x0_and_eps(score, sde, x, t)
            if k + 1 == len(times):
                x = x0
            else:
                (m, s), (m2, s2) = coeffs[k], coeffs[k + 1]
                sigma = eta * math.sqrt(max(s2 * s2 / (s * s) * (1.0 - m * m / (m2 * m2)), 0.0))
                x = m2 * x0 + math.sqrt(max(s2 * s2 - sigma * sigma, 0.0)) * eps_hat
                if sigma > 0:
                    x = x + sigma * st.noise(x)
            C.emit(callback, step=k, t=t, x=x, x_mean=x0)
            bar.update(1)
    info = dict(steps=len(seq), eta=eta)
    return C.finish("ddim", x, len(seq), score.calls, times[-1], info)
