"""DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song, Meng & Ermon 2021), each on **one**
schedule per run.

``schedule="continuous"`` (default, any SDE): the chain is the SDE itself, sampled at the times of
the grid, with ``m = m(t_k)`` and ``s = s(t_k)`` in both the data prediction
``x0_hat = (x + s^2 score)/m`` and the step. Between consecutive grid times ``t' < t`` the forward
transition is ``x_t = a x_{t'} + sqrt(v) z`` with ``a = m/m'`` and ``v = s^2 - a^2 s'^2``, and
the posterior is ``q(x_{t'} | x_t, x_0) = N((m' v / s^2) x_0 + (a s'^2 / s^2) x_t, v s'^2 / s^2)``
(Ho et al. 2020, eq. 6-7, on a respaced chain as Nichol & Dhariwal 2021 do). The run ends at
``eps`` and takes the denoising step there like every other sampler. DDIM with ``eta = 0`` is then
exactly the first-order DPM-Solver (tested).

``schedule="discrete"`` (VP only): the SDE's ``N``-step DDPM chain with its own ``alpha_bar``,
respaced to ``steps`` evenly spread indices, for a network trained on that chain: step index ``i``
is evaluated at time ``t_i = (i + 1)/N`` and uses ``m = sqrt(alpha_bar_i)``, ``s = sqrt(1 -
alpha_bar_i)``. The chain's last step lands on the data (``alpha_bar = 1``), so it ends in the
data prediction: ``eps`` and ``denoise=False`` do not apply. This is the schedule of diffusers'
``DDPMScheduler`` / ``DDIMScheduler`` (tested against them).
"""
from __future__ import annotations

import math

import torch

from .._utils import check_choice
from ..sde import VPSDE
from . import _common as C
from .base import Run, Sampler

VARIANCES = ("posterior", "beta")
SCHEDULES = ("continuous", "discrete")


def ddim_timesteps(i_max: int, steps: int) -> list[int]:
    """A decreasing sub-sequence of ``steps`` DDPM step indices from ``i_max`` to 0, evenly spread."""
    steps = min(steps, i_max + 1)
    if steps == 1:
        return [i_max]
    idx = [round(i_max - k * i_max / (steps - 1)) for k in range(steps)]
    return sorted(set(idx), reverse=True)


def _transition(r: Run, k: int) -> tuple[float, float, float]:
    """From grid time ``t' = t_{k+1}`` to ``t = t_k``: ``x_t = a x_t' + sqrt(v) z`` with ``a = m/m'``,
    ``v = s^2 - a^2 s'^2``, and the posterior variance ``v s'^2 / s^2`` of ``q(x_t' | x_t, x_0)``."""
    m, s, m2, s2 = r.m[k], r.s[k], r.m[k + 1], r.s[k + 1]
    a = m / m2
    v = max(s * s - a * a * s2 * s2, 0.0)
    return a, v, v * s2 * s2 / (s * s)


class _Chain(Sampler):
    """Shared by DDPM and DDIM: the schedule choice and the discrete chain's grid."""

    order = 1

    def __call__(self, score_fn, sde, shape, *, schedule: str = "continuous", **kw):
        check_choice("schedule", schedule, SCHEDULES)
        if schedule == "continuous":
            return super().__call__(score_fn, sde, shape, **kw)
        return self._discrete(score_fn, sde, shape, **kw)

    def _discrete(self, score_fn, sde, shape, *, steps=None, nfe=None, grid=None, eps=None, x_T=None,
                  denoise=None, generator=None, device=None, dtype=None, callback=None, progress=False, y=None,
                  guidance_weight=None, guidance_scale=None, **options):
        name = self.name
        if not isinstance(sde, VPSDE):
            raise ValueError(f"schedule='discrete' runs the DDPM chain and needs a VPSDE, got {type(sde).__name__}; "
                             "use the default schedule='continuous' for other SDEs")
        if eps is not None:
            raise ValueError(f"with schedule='discrete' {name} walks the DDPM chain t_i = (i+1)/N down to 1/N = "
                             f"{1 / sde.N:g}; leave eps=None, or use schedule='continuous' to end at eps")
        if denoise is False:
            raise ValueError(f"with schedule='discrete' {name} ends in the chain's prediction of x_0; "
                             "denoise=False does not apply (use schedule='continuous')")
        if grid not in (None, "uniform"):
            raise ValueError("schedule='discrete' respaces the chain evenly in its index; grid does not apply "
                             "(use schedule='continuous' for other grids)")
        if steps is not None and nfe is not None:
            raise ValueError("give steps=K or nfe=N, not both")
        self.check_options(options)
        i_max = int(math.floor(sde.T * sde.N + 1e-9)) - 1
        if i_max < 0:
            raise ValueError(f"T={sde.T} is shorter than one DDPM step 1/N={1 / sde.N:g}")
        n = nfe if nfe is not None else steps
        n = C.check_steps(n, "nfe" if nfe is not None else "steps") if n is not None else self.default_steps(sde)
        idx = ddim_timesteps(i_max, n)  # at most the i_max + 1 steps of the chain
        abar = sde.ddpm_schedule().alphas_cumprod
        m = [math.sqrt(float(abar[i])) for i in idx] + [1.0]
        s = [math.sqrt(float(-torch.expm1(torch.log(abar[i])))) for i in idx] + [0.0]
        times = [(i + 1) / sde.N for i in idx]
        st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
        score, guidance = C.condition(score_fn, st, y, guidance_weight, guidance_scale)
        r = Run(self, score, sde, st, times + [0.0], 1.0 / sde.N, True, callback, progress, coeffs=(m, s),
                nfe_budget=nfe, guidance=guidance)
        with torch.no_grad():
            x = r.x
            with r.bar() as bar:
                for k in range(len(idx)):
                    x0, e = r.predict(x, times[k], m[k], s[k])
                    x = x0 if k + 1 == len(idx) else self.move(r, x, x0, e, k, **options)
                    r.emit(k, x, x0)
                    bar.update(1)
        info = dict(options, schedule="discrete", steps=len(idx), indices=idx, denoise=True, grid="uniform")
        return C.finish(name, x, len(idx), r.score.calls, 1.0 / sde.N, info, guidance=guidance)

    def run(self, r: Run, **options):
        x = r.x
        with r.bar() as bar:
            for k in range(r.steps):
                x0, e = r.predict_at(x, k)
                x = self.move(r, x, x0, e, k, **options)
                r.emit(k, x, x0)
                bar.update(1)
        return r.finish(x, dict(options, schedule="continuous"))


class DDPM(_Chain):
    """DDPM ancestral sampling: ``x' ~ q(x_{t'} | x_t, x0_hat)`` with the posterior of the chain in
    use (module docstring). ``variance="posterior"`` (default) is ``v s'^2 / s^2`` (``beta_tilde``,
    "fixed small"), ``"beta"`` is ``v`` (the respaced ``beta``, "fixed large"). Default steps:
    ``sde.N`` (the full chain). NFE: one per step (+1 for the denoising step in the continuous schedule)."""

    name = "ddpm"
    stochastic = True
    default_nfe = None
    option_names = ("variance", "schedule")

    def default_steps(self, sde):
        return sde.N

    def move(self, r, x, x0, e, k, variance: str = "posterior"):
        check_choice("variance", variance, VARIANCES)
        a, v, post = _transition(r, k)
        s, s2 = r.s[k], r.s[k + 1]
        mean = (r.m[k + 1] * v / (s * s)) * x0 + (a * s2 * s2 / (s * s)) * x
        var = post if variance == "posterior" else v
        return mean + math.sqrt(var) * r.noise(x) if var > 0 else mean


class DDIM(_Chain):
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16): ``x' = m' x0_hat + sqrt(s'^2 - sigma^2) eps_hat
    + sigma z`` with ``sigma^2 = eta^2 v s'^2 / s^2`` (``eta`` times the posterior std; for VP this is
    the paper's ``eta sqrt(s'^2/s^2) sqrt(1 - m^2/m'^2)``). ``eta = 0`` (default) is deterministic and
    is the first-order DPM-Solver; ``eta = 1`` is ancestral sampling. Default 50 steps. NFE: one
    per step (+1 for the denoising step in the continuous schedule)."""

    name = "ddim"
    default_nfe = None
    option_names = ("eta", "schedule")

    def default_steps(self, sde):
        return 50

    def move(self, r, x, x0, e, k, eta: float = 0.0):
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite non-negative number, got {eta}")
        sigma = eta * math.sqrt(_transition(r, k)[2])
        s2 = r.s[k + 1]
        x = r.m[k + 1] * x0 + math.sqrt(max(s2 * s2 - sigma * sigma, 0.0)) * e
        return x + sigma * r.noise(x) if sigma > 0 else x
