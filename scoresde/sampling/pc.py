"""Reverse-time SDE samplers: Euler-Maruyama and predictor-corrector (Song et al. 2021, Alg. 1-5).

A predictor moves the state from ``t`` to the next, smaller time; a corrector runs Langevin MCMC
at a fixed time with the score of ``p_t`` as its target. Predictors and correctors are small
classes registered by name, so a study sweeps them in a loop.

Time grid: ``steps + 1`` host floats from ``T`` down to ``eps`` (uniform in t by default; any grid
of :mod:`scoresde.sampling.grids`). Step
``k`` runs the predictor from ``t_k`` to ``t_{k+1}``. With ``order="corrector_first"`` (the
original code's order) the corrector runs at ``t_k`` before the predictor; with
``"predictor_first"`` it runs at ``t_{k+1}`` after it.
"""
from __future__ import annotations


import math

import torch

from .._utils import append_dims, batch_sum, check_choice
from ..sde import SDE, VESDE, VPSDE
from . import _common as C
from .base import Sampler


# ---------------------------------------------------------------------------------------------
# Predictors: update(x, k) moves x from grid time t_k to t_{k+1} and returns (x, x_mean).
# ---------------------------------------------------------------------------------------------
class Grid:
    """The sampler's time grid ``t_0 = T > t_1 > ... > t_steps = eps`` with ``m(t_k)``, ``s(t_k)``
    and the exact forward transition from ``t_{k+1}`` to ``t_k``,
    ``x_{t_k} = a_k x_{t_{k+1}} + sqrt(v_k) z`` with ``a_k = m_k / m_{k+1}`` and
    ``v_k = s_k^2 - a_k^2 s_{k+1}^2`` (valid for every linear SDE), all host floats."""

    def __init__(self, times: list, m: list, s: list):
        self.times, self.m, self.s = times, m, s
        steps = len(times) - 1
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
        drift, diffusion = self.rsde.sde_unchecked(x, C.time_vec(t, x))
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
STEP_SIZE_NORMS = ("pilot", "batch", "per_sample")


class Corrector:
    name = "base"

    def __init__(self, sde, score, st, snr: float, n_steps: int, step_size_norm: str):
        if not snr > 0:
            raise ValueError(f"snr must be positive, got {snr}")
        if step_size_norm not in STEP_SIZE_NORMS:
            raise ValueError(f"step_size_norm must be one of {', '.join(STEP_SIZE_NORMS)}, got {step_size_norm!r}")
        self.sde, self.score, self.st = sde, score, st
        self.snr, self.n_steps, self.step_size_norm = float(snr), int(n_steps), step_size_norm
        self.frozen = None    # pilot rule: E||score||^2 per (grid index, corrector step), host floats
        self.record = None    # a pilot run stores its batch means of ||score||^2 here (device tensors)

    @property
    def nfe(self) -> int:
        return self.n_steps

    def step_size(self, grad, noise, t_vec, alpha, key):
        raise NotImplementedError

    def update(self, x, t, k: int = 0):
        tv = C.time_vec(t, x)
        alpha = C.discrete_alpha(self.sde, tv, x)
        x_mean = x
        for j in range(self.n_steps):
            grad = self.score(x, tv)
            noise = self.st.noise(x)
            step = append_dims(self.step_size(grad, noise, tv, alpha, (k, j)), x.ndim)
            x_mean = x + step * grad
            x = x_mean + torch.sqrt(2.0 * step) * noise
        return x, x_mean


class LangevinCorrector(Corrector):
    """Langevin MCMC with the step size set by a signal-to-noise ratio (Song et al. 2021, Alg. 4):
    ``step = 2 alpha (snr ||z|| / ||score||)^2``, with the norms taken by ``step_size_norm``:

    - ``"pilot"`` (default): ``step = 2 alpha snr^2 D / E||score(x_t, t)||^2``, the paper's rule with
      ``E||z||^2 = D`` and ``E||score||^2`` estimated at every grid time from a seeded pilot run
      (``pilot_size`` samples, the batch rule) and then frozen, so the step depends on ``t`` only:
      a valid Langevin kernel, and a sample does not depend on its batch mates;
    - ``"batch"``: the norms averaged over the batch, as the paper's code does (couples the batch);
    - ``"per_sample"``: each sample's own norms. The step then depends on the state, which is not a
      valid MCMC kernel; biased in low dimensions (docs/sampling.md)."""

    name = "langevin"

    def step_size(self, grad, noise, t_vec, alpha, key):
        if self.step_size_norm == "pilot" and self.frozen is not None:
            d = grad[0].numel()
            return 2.0 * alpha * (self.snr * self.snr * d / self.frozen[key])
        g = batch_sum(grad * grad).sqrt()
        n = batch_sum(noise * noise).sqrt()
        if self.record is not None:
            self.record[key] = batch_sum(grad * grad).double().mean()  # read back once, after the pilot
        if self.step_size_norm in ("batch", "pilot"):
            g, n = g.mean().expand_as(g), n.mean().expand_as(n)
        return 2.0 * alpha * (self.snr * n / g.clamp_min(torch.finfo(g.dtype).tiny)) ** 2


class AnnealedLangevinCorrector(Corrector):
    """Annealed Langevin dynamics (Song & Ermon 2019; Song et al. 2021, Alg. 5 form):
    ``step = 2 alpha (snr s(t))^2`` with ``s(t)`` the marginal std."""

    name = "annealed_langevin"

    def step_size(self, grad, noise, t_vec, alpha, key):
        std = self.sde.coeffs_unchecked(t_vec)[1]
        return 2.0 * alpha * (self.snr * std) ** 2


class NoneCorrector(Corrector):
    name = "none"

    @property
    def nfe(self):
        return 0

    def update(self, x, t, k: int = 0):
        return x, x


CORRECTORS = {c.name: c for c in (LangevinCorrector, AnnealedLangevinCorrector, NoneCorrector)}
ORDERS = ("corrector_first", "predictor_first")


def _lookup(table: dict, name: str, what: str):
    check_choice(what, name, sorted(table))
    return table[name]


def _pc_loop(grid: Grid, x, pred: Predictor, corr: Corrector, order: str, emit=None, bar=None):
    times = grid.times
    for k in range(len(times) - 1):
        if order == "corrector_first":
            x, _ = corr.update(x, times[k], k)
            x, x_mean = pred.update(x, k)
        else:
            x, x_mean = pred.update(x, k)
            x, x_mean = corr.update(x, times[k + 1], k + 1)
        if emit is not None:
            emit(k, x, None)
        if bar is not None:
            bar.update(1)
    return x


class PCSampler(Sampler):
    """Predictor-corrector sampler (Song et al. 2021, Alg. 1).

    Options: ``predictor`` in ``PREDICTORS``, ``corrector`` in ``CORRECTORS``, ``snr`` (Langevin
    signal-to-noise ratio; 0.16 is the paper's CIFAR-10 VE value), ``n_corrector_steps``, ``order``
    (``"corrector_first"``, the original code's, or ``"predictor_first"``), ``step_size_norm``
    (``"pilot"``, default; ``"batch"``; ``"per_sample"``: see :class:`LangevinCorrector`),
    ``pilot_size`` (128) and ``pilot_seed`` (0) of the pilot run. Default steps: ``sde.N``.
    NFE per sample: ``steps * (predictor nfe + n_corrector_steps)`` plus one for denoising; the pilot
    run's batched calls are counted in ``total_nfe`` and ``info["pilot_total_nfe"]``.
    In a conditional run the pilot uses the same guidance with the labels ``0 .. C-1`` repeated,
    so its step sizes do not depend on the labels of the batch.
    """

    name = "pc"
    order = 1
    nfe_per_step = 2
    stochastic = True
    default_nfe = None
    option_names = ("predictor", "corrector", "snr", "n_corrector_steps", "order", "step_size_norm",
                    "pilot_size", "pilot_seed")

    def default_steps(self, sde):
        return sde.N

    def cost(self, steps, denoise, predictor="reverse_diffusion", corrector="langevin", n_corrector_steps=1, **_):
        per = _lookup(PREDICTORS, predictor, "predictor").nfe
        per += 0 if corrector == "none" else C.check_steps(n_corrector_steps, "n_corrector_steps")
        return steps * per + int(denoise)

    def run(self, r, predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
            n_corrector_steps: int = 1, order: str = "corrector_first", step_size_norm: str = "pilot",
            pilot_size: int = 128, pilot_seed: int = 0):
        P = _lookup(PREDICTORS, predictor, "predictor")
        K = _lookup(CORRECTORS, corrector, "corrector")
        check_choice("order", order, ORDERS)
        C.check_steps(n_corrector_steps, "n_corrector_steps")
        C.check_steps(pilot_size, "pilot_size")
        grid = Grid(r.times, r.m, r.s)
        pred = P(r.sde, r.score, r.st, grid)
        corr = K(r.sde, r.score, r.st, snr, n_corrector_steps, step_size_norm)
        pilot_calls = 0
        if isinstance(corr, LangevinCorrector) and step_size_norm == "pilot":
            # A seeded pilot run with the batch rule records E||score||^2 at every corrector call;
            # the main run then uses a step size that depends on t only.
            x = r.x
            g = torch.Generator(device=x.device).manual_seed(int(pilot_seed))
            pst = C.Setup(r.sde.prior_sampling((pilot_size, *x.shape[1:]), generator=g, device=x.device,
                                               dtype=x.dtype), g)
            pscore = r.aux_score(pilot_size)
            before = pscore.calls
            pcorr = K(r.sde, pscore, pst, snr, n_corrector_steps, "batch")
            pcorr.record = {}
            _pc_loop(grid, pst.x, P(r.sde, pscore, pst, grid), pcorr, order)
            keys = list(pcorr.record)
            values = torch.stack([pcorr.record[k] for k in keys]).tolist()  # the one host read of the pilot
            corr.frozen = dict(zip(keys, values))
            pilot_calls = pscore.calls - before
            if pscore is not r.score:
                r.score.calls += pilot_calls
        with r.bar() as bar:
            x = _pc_loop(grid, r.x, pred, corr, order, r.emit if r.callback is not None else None, bar)
        info = dict(predictor=predictor, corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps,
                    order=order, step_size_norm=step_size_norm)
        if pilot_calls:
            info.update(pilot_size=pilot_size, pilot_seed=pilot_seed, pilot_total_nfe=pilot_calls)
        nfe = r.steps * (pred.nfe + corr.nfe) + int(r.denoise)
        return r.finish(x, info, nfe=nfe)


class EulerMaruyamaSampler(Sampler):
    """Euler-Maruyama on the reverse-time SDE from ``T`` to ``eps`` on the grid (default ``sde.N``
    uniform steps); strong order 1/2, weak order 1 (Kloeden & Platen 1992)."""

    name = "euler_maruyama"
    order = 1
    stochastic = True
    default_nfe = None

    def default_steps(self, sde):
        return sde.N

    def run(self, r):
        grid = Grid(r.times, r.m, r.s)
        pred = EulerMaruyamaPredictor(r.sde, r.score, r.st, grid)
        with r.bar() as bar:
            x = _pc_loop(grid, r.x, pred, NoneCorrector(r.sde, r.score, r.st, 1.0, 1, "batch"), "predictor_first",
                         r.emit if r.callback is not None else None, bar)
        return r.finish(x, {}, nfe=r.steps + int(r.denoise))


pc_sampler = PCSampler()
euler_maruyama_sampler = EulerMaruyamaSampler()
