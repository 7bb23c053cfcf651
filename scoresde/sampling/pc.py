"""Reverse-time SDE samplers: Euler-Maruyama and predictor-corrector (Song et al. 2021, Alg. 1-5).

A predictor moves the state from ``t`` to the next, smaller time; a corrector runs Langevin MCMC
at a fixed time with the score of ``p_t`` as its target. Predictors and correctors are small
classes registered by name, so a study sweeps them in a loop.

Time grid: ``steps + 1`` equally spaced points from ``T`` down to ``eps``, as host floats. Step
``k`` runs the predictor from ``t_k`` to ``t_{k+1}``. With ``order="corrector_first"`` (the
original code's order) the corrector runs at ``t_k`` before the predictor; with
``"predictor_first"`` it runs at ``t_{k+1}`` after it.
"""
from __future__ import annotations

from typing import Optional

import math

import torch

from .._utils import append_dims, batch_sum
from ..sde import SDE, VESDE, VPSDE
from . import _common as C


# ---------------------------------------------------------------------------------------------
# Predictors: update(x, k) moves x from grid time t_k to t_{k+1} and returns (x, x_mean).
# ---------------------------------------------------------------------------------------------
class Grid:
    """The sampler's time grid ``t_0 = T > t_1 > ... > t_steps = eps`` with ``m(t_k)``, ``s(t_k)``
    and the exact forward transition from ``t_{k+1}`` to ``t_k``,
    ``x_{t_k} = a_k x_{t_{k+1}} + sqrt(v_k) z`` with ``a_k = m_k / m_{k+1}`` and
    ``v_k = s_k^2 - a_k^2 s_{k+1}^2`` (valid for every linear SDE), all host floats."""

    def __init__(self, sde: SDE, eps: float, steps: int):
        self.times = [sde.T - k * (sde.T - eps) / steps for k in range(steps + 1)]
        m, s = sde._coeffs(torch.tensor(self.times, dtype=torch.float64))
        self.m, self.s = m.tolist(), s.tolist()
        self.a = [self.m[k] / self.m[k + 1] for k in range(steps)]
        self.v = [max(self.s[k] ** 2 - self.a[k] ** 2 * self.s[k + 1] ** 2, 0.0) for k in range(steps)]


class Predictor:
    name = "base"
    nfe = 1

    def __init__(self, sde: SDE, score: C.CheckedScore, st: C.Setup, grid: Grid):
        self.sde, self.score, self.st, self.grid = sde, score, st, grid
        self.rsde = sde.reverse(score)

    def update(self, x, k: int):
        """Move ``x`` from ``t_k`` to ``t_{k+1}``; return ``(x, x_mean)``."""
        raise NotImplementedError


class EulerMaruyamaPredictor(Predictor):
    """``x' = x + [f - g^2 score] dt + g sqrt(|dt|) z`` with ``dt = t_{k+1} - t_k < 0``."""

    name = "euler_maruyama"

    def update(self, x, k):
        t, dt = self.grid.times[k], self.grid.times[k + 1] - self.grid.times[k]
        drift, diffusion = self.rsde._sde(x, C.time_vec(t, x))
        x_mean = x + drift * dt
        return x_mean + append_dims(diffusion, x.ndim) * (abs(dt) ** 0.5) * self.st.noise(x), x_mean


class ReverseDiffusionPredictor(Predictor):
    """Reverse diffusion (Song et al. 2021, eq. 46): with the forward step ``x_k = x_{k+1} + f + G z``,
    ``x' = x - f + G^2 score + G z``. The forward step is the exact transition between consecutive
    grid times, ``f = (a_k - 1) x``, ``G^2 = v_k``, which for ``steps = N`` is the DDPM (VP) or
    SMLD (VE) step up to O(1/N^2), and stays consistent on any coarser grid."""

    name = "reverse_diffusion"

    def update(self, x, k):
        a, v = self.grid.a[k], self.grid.v[k]
        score = self.score(x, C.time_vec(self.grid.times[k], x))
        x_mean = (2.0 - a) * x + v * score
        return x_mean + math.sqrt(v) * self.st.noise(x), x_mean


class AncestralPredictor(Predictor):
    """Ancestral sampling (Song et al. 2021, Appendix F) on the grid's transitions:
    VP (DDPM-like): ``x' = (x + v score)/a + sqrt(v) z``;
    VE (SMLD): ``x' = x + v score + sqrt(v s_{k+1}^2 / s_k^2) z``, where with ``steps = N`` ``v`` is
    ``beta_i`` (VP) or ``sigma_i^2 - sigma_{i-1}^2`` (VE) up to O(1/N^2)."""

    name = "ancestral"

    def __init__(self, sde, score, st, grid):
        if not isinstance(sde, (VPSDE, VESDE)):
            raise ValueError(f"the ancestral predictor needs a VPSDE or VESDE (it samples the DDPM/SMLD chain); "
                             f"for {type(sde).__name__} use predictor='reverse_diffusion' or 'euler_maruyama'")
        super().__init__(sde, score, st, grid)

    def update(self, x, k):
        g = self.grid
        a, v = g.a[k], g.v[k]
        score = self.score(x, C.time_vec(g.times[k], x))
        x_mean = (x + v * score) / a
        std = math.sqrt(v) if isinstance(self.sde, VPSDE) else math.sqrt(v * g.s[k + 1] ** 2 / g.s[k] ** 2)
        return x_mean + std * self.st.noise(x), x_mean


class NonePredictor(Predictor):
    name = "none"
    nfe = 0

    def update(self, x, k):
        return x, x


PREDICTORS = {p.name: p for p in (EulerMaruyamaPredictor, ReverseDiffusionPredictor, AncestralPredictor, NonePredictor)}


# ---------------------------------------------------------------------------------------------
# Correctors: update(x, t) -> (x, x_mean) at the host float time t.
# ---------------------------------------------------------------------------------------------
class Corrector:
    name = "base"

    def __init__(self, sde, score, st, snr: float, n_steps: int, step_size_norm: str):
        if not snr > 0:
            raise ValueError(f"snr must be positive, got {snr}")
        if step_size_norm not in ("per_sample", "batch"):
            raise ValueError(f"step_size_norm must be 'per_sample' or 'batch', got {step_size_norm!r}")
        self.sde, self.score, self.st = sde, score, st
        self.snr, self.n_steps, self.step_size_norm = float(snr), int(n_steps), step_size_norm

    @property
    def nfe(self) -> int:
        return self.n_steps

    def step_size(self, grad, noise, t_vec, alpha):
        raise NotImplementedError

    def update(self, x, t):
        tv = C.time_vec(t, x)
        alpha = C.discrete_alpha(self.sde, tv, x)
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score(x, tv)
            noise = self.st.noise(x)
            step = append_dims(self.step_size(grad, noise, tv, alpha), x.ndim)
            x_mean = x + step * grad
            x = x_mean + torch.sqrt(2.0 * step) * noise
        return x, x_mean


class LangevinCorrector(Corrector):
    """Langevin MCMC with the step size set by a signal-to-noise ratio (Song et al. 2021, Alg. 4):
    ``step = 2 alpha (snr ||z|| / ||score||)^2``. ``step_size_norm="per_sample"`` (default) uses
    each sample's own norms; ``"batch"`` averages the norms over the batch as the paper's code does
    (which couples the samples of a batch)."""

    name = "langevin"

    def step_size(self, grad, noise, t_vec, alpha):
        g = batch_sum(grad * grad).sqrt()
        n = batch_sum(noise * noise).sqrt()
        if self.step_size_norm == "batch":
            g, n = g.mean().expand_as(g), n.mean().expand_as(n)
        return 2.0 * alpha * (self.snr * n / g.clamp_min(torch.finfo(g.dtype).tiny)) ** 2


class AnnealedLangevinCorrector(Corrector):
    """Annealed Langevin dynamics (Song & Ermon 2019; Song et al. 2021, Alg. 5 form):
    ``step = 2 alpha (snr s(t))^2`` with ``s(t)`` the marginal std."""

    name = "annealed_langevin"

    def step_size(self, grad, noise, t_vec, alpha):
        std = self.sde._coeffs(t_vec)[1]
        return 2.0 * alpha * (self.snr * std) ** 2


class NoneCorrector(Corrector):
    name = "none"

    @property
    def nfe(self):
        return 0

    def update(self, x, t):
        return x, x


CORRECTORS = {c.name: c for c in (LangevinCorrector, AnnealedLangevinCorrector, NoneCorrector)}
ORDERS = ("corrector_first", "predictor_first")


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]


def pc_sampler(score_fn, sde: SDE, shape, *, eps: Optional[float] = None, generator=None, device=None,
               dtype=None, x_T=None, denoise: Optional[bool] = None, callback: C.Callback = None,
               progress: bool = False, predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_corrector_steps: int = 1, steps: Optional[int] = None,
               order: str = "corrector_first", step_size_norm: str = "per_sample",
               _name: str = "pc") -> C.SampleResult:
    """Predictor-corrector sampler (Song et al. 2021, Alg. 1).

    Args (beyond the shared ones): ``predictor`` in ``PREDICTORS``, ``corrector`` in
    ``CORRECTORS``, ``snr`` (Langevin signal-to-noise ratio; 0.16 is the paper's CIFAR-10 VE value),
    ``n_corrector_steps``, ``steps`` (predictor steps, default ``sde.N``), ``order``,
    ``step_size_norm`` ("per_sample" or "batch").
    NFE per sample: ``steps * (predictor nfe + n_corrector_steps)`` plus one for denoising.
    """
    P = _lookup(PREDICTORS, predictor, "predictor")
    K = _lookup(CORRECTORS, corrector, "corrector")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
    eps = C.resolve_eps(sde, eps)
    steps = C.check_steps(sde.N if steps is None else steps)
    C.check_steps(n_corrector_steps, "n_corrector_steps")
    denoise = True if denoise is None else bool(denoise)
    st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
    score = C.CheckedScore(score_fn)
    grid = Grid(sde, eps, steps)
    pred = P(sde, score, st, grid)
    corr = K(sde, score, st, snr, n_corrector_steps, step_size_norm)
    times = grid.times
    x = st.x
    with torch.no_grad(), C.progress_bar(steps, progress, _name) as bar:
        for k in range(steps):
            t, t_next = times[k], times[k + 1]
            if order == "corrector_first":
                x, _ = corr.update(x, t)
                x, x_mean = pred.update(x, k)
            else:
                x, x_mean = pred.update(x, k)
                x, x_mean = corr.update(x, t_next)
            C.emit(callback, step=k, t=t_next, x=x, x_mean=x_mean)
            bar.update(1)
        x = C.tweedie_denoise(score, sde, x, eps) if denoise else x
    info = dict(predictor=predictor, corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps,
                steps=steps, order=order, step_size_norm=step_size_norm, denoise=denoise)
    nfe = steps * (pred.nfe + corr.nfe) + int(denoise)
    return C.finish(_name, x, nfe, score.calls, eps, info)


def euler_maruyama_sampler(score_fn, sde: SDE, shape, *, eps: Optional[float] = None, generator=None,
                           device=None, dtype=None, x_T=None, denoise: Optional[bool] = None,
                           callback: C.Callback = None, progress: bool = False,
                           steps: Optional[int] = None) -> C.SampleResult:
    """Euler-Maruyama on the reverse-time SDE from ``T`` to ``eps`` in ``steps`` equal steps
    (default ``sde.N``); strong order 1/2, weak order 1 (Kloeden & Platen 1992)."""
    return pc_sampler(score_fn, sde, shape, eps=eps, generator=generator, device=device, dtype=dtype, x_T=x_T,
                      denoise=denoise, callback=callback, progress=progress, predictor="euler_maruyama",
                      corrector="none", steps=steps, _name="euler_maruyama")
