"""The sampler base class: metadata as class attributes and the one shared signature.

Every entry of :data:`scoresde.sampling.SAMPLERS` is an instance of a :class:`Sampler` subclass,
called as ``sampler(score_fn, sde, shape, *, steps=None, nfe=None, grid=None, eps=None, x_T=None,
denoise=None, generator=None, device=None, dtype=None, callback=None, progress=False, **options)``.

What a subclass declares (read by studies, checked by the tests, as torchsde keeps its solver
metadata): ``order`` (convergence order of the deterministic method, or the order of the drift
expansion of a stochastic one), ``nfe_per_step``, ``stochastic``, ``default_grid``,
``default_nfe`` and which SDE families it supports.

A fixed-step sampler implements :meth:`Sampler.run`, which receives a :class:`Run`: the resolved
grid (host floats ``times``, ``m``, ``s``, ``lam = log(m/s)``), the initial state, the checked score
with its data / noise predictions, and the callback; :meth:`Run.finish` takes the optional Tweedie
step at ``eps`` and builds the :class:`SampleResult`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from ..sde import SDE, VESDE, SubVPSDE, VPSDE
from . import _common as C
from . import grids as G
from .result import SampleResult

FAMILIES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def check_nfe(nfe: Any) -> int:
    return C.check_steps(nfe, "nfe")


class Run:
    """One sampling run on a fixed grid: state, schedule (host floats) and the evaluations."""

    def __init__(self, sampler: "Sampler", score_fn, sde: SDE, st: C.Setup, times: list[float], eps: float,
                 denoise: bool, callback: C.Callback, progress: bool, *, coeffs=None, grid_name: str = "uniform",
                 nfe_budget: Optional[int] = None, rho: Optional[float] = None, guidance: Optional[dict] = None):
        self.sampler, self.sde, self.st = sampler, sde, st
        self.score = C.CheckedScore(score_fn)
        self.guidance = guidance
        self.times, self.eps, self.denoise = times, eps, denoise
        if coeffs is None:
            self.m, self.s = G.coeffs(sde, times)
            self.lam = [math.log(m) - math.log(s) for m, s in zip(self.m, self.s)]
        else:  # a discrete chain's own (m, s); its last point may be the data itself (s = 0)
            (self.m, self.s), self.lam = coeffs, None
        self.callback, self.progress = callback, progress
        self.steps = len(times) - 1
        self.grid_name, self.nfe_budget, self.rho = grid_name, nfe_budget, rho

    @property
    def x(self) -> torch.Tensor:
        return self.st.x

    def aux_score(self, n: int) -> C.CheckedScore:
        """The score for an auxiliary batch of ``n`` samples (the PC pilot): :attr:`score` itself for an
        unconditional run, else the same guidance with labels independent of this batch
        (:meth:`scoresde.guidance.GuidedScore.for_batch`). Its calls count in ``total_nfe``."""
        guided = self.score.score_fn
        if self.guidance is None:
            return self.score
        return C.CheckedScore(guided.for_batch(n))

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return self.st.noise(like)

    def predict(self, x: torch.Tensor, t: float, m: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The data and noise predictions at host time ``t`` with ``m = m(t)``, ``s = s(t)``:
        ``x0_hat = (x + s^2 score) / m`` (Tweedie), ``eps_hat = -s score``."""
        sc = self.score(x, C.time_vec(t, x))
        return (x + (s * s) * sc) / m, (-s) * sc

    def predict_at(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict` at grid time ``t_k``."""
        return self.predict(x, self.times[k], self.m[k], self.s[k])

    def coeffs_at(self, t: float) -> tuple[float, float]:
        """``(m(t), s(t))`` at an off-grid host time (an intermediate stage)."""
        m, s = G.coeffs(self.sde, [t])
        return m[0], s[0]

    def time_of_lambda(self, lam: float) -> float:
        return G.time_of_lambda(self.sde, lam)

    def emit(self, i: int, x: torch.Tensor, x0_hat: Optional[torch.Tensor]) -> None:
        """The per-step callback record: ``i`` (step index), ``t`` (host float, the time ``x`` is at),
        ``x``, ``x0_hat`` (the data prediction used by the step, or None)."""
        if self.callback is not None:
            self.callback(dict(i=i, t=self.times[i + 1], x=x, x0_hat=x0_hat))

    def bar(self, total: Optional[int] = None):
        return C.progress_bar(self.steps if total is None else total, self.progress, self.sampler.name)

    def finish(self, x: torch.Tensor, info: dict, *, nfe: Optional[int] = None, **extra) -> SampleResult:
        """The optional Tweedie step at ``eps`` and the result. ``nfe`` (per sample) defaults to the
        number of batched score calls."""
        if self.denoise:
            x = C.tweedie_denoise(self.score, self.sde, x, self.eps)
        info = dict(info, steps=self.steps, denoise=self.denoise, grid=self.grid_name)
        if self.rho is not None:
            info["rho"] = self.rho
        per_sample = self.score.calls if nfe is None else nfe
        return C.finish(self.sampler.name, x, per_sample, self.score.calls, self.eps, info, guidance=self.guidance,
                        **extra)


class Sampler:
    """Base class of the registered samplers (see the module docstring)."""

    name: str = "base"
    #: convergence order of the deterministic method (global error ~ h^order); for a stochastic
    #: sampler, the order of its drift expansion
    order: Optional[int] = None
    #: score evaluations per step (at the default options)
    nfe_per_step: int = 1
    stochastic: bool = False
    default_grid: str = "uniform"
    #: budget used when neither ``steps`` nor ``nfe`` is given
    default_nfe: Optional[int] = 20
    families: tuple = ("vp", "subvp", "ve")

    # -- what a subclass may override ------------------------------------------------------------
    def cost(self, steps: int, denoise: bool, **options) -> int:
        """Score evaluations per sample of ``steps`` steps."""
        return steps * self.nfe_per_step + int(denoise)

    def steps_for_nfe(self, nfe: int, denoise: bool, **options) -> int:
        """The most steps whose cost is at most ``nfe``."""
        per_step = self.cost(2, denoise, **options) - self.cost(1, denoise, **options)
        if per_step <= 0:
            raise ValueError(f"this {self.name} configuration evaluates the score 0 times per step, so an nfe budget "
                             "does not fix its steps; pass steps=K instead")
        steps = 0
        while self.cost(steps + 1, denoise, **options) <= nfe:
            steps += 1
        if steps == 0:
            raise ValueError(f"nfe={nfe} is below the cost of one {self.name} step "
                             f"({self.cost(1, denoise, **options)} evaluations with denoise={denoise}); "
                             "raise nfe or pass denoise=False")
        return steps

    def run(self, r: Run, **options) -> SampleResult:
        raise NotImplementedError

    def check_sde(self, sde: SDE) -> None:
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
        if not any(isinstance(sde, FAMILIES[f]) for f in self.families):
            ok = ", ".join(FAMILIES[f].__name__ for f in self.families)
            raise ValueError(f"the {self.name} sampler needs one of {ok}, got {type(sde).__name__}")

    # -- the one signature ---------------------------------------------------------------------
    def __call__(self, score_fn, sde: SDE, shape: Sequence[int], *, steps: Optional[int] = None,
                 nfe: Optional[int] = None, grid: G.GridLike = None, eps: Optional[float] = None,
                 x_T: Optional[torch.Tensor] = None, denoise: Optional[bool] = None,
                 generator: Optional[torch.Generator] = None, device=None, dtype: Optional[torch.dtype] = None,
                 callback: C.Callback = None, progress: bool = False, y=None, guidance_weight: Optional[float] = None,
                 guidance_scale: Optional[float] = None, **options) -> SampleResult:
        self.check_sde(sde)
        rho = options.pop("rho", None)
        self.check_options(options)
        denoise = True if denoise is None else bool(denoise)
        steps = self.resolve_steps(sde, steps, nfe, grid, denoise, options)
        if eps is not None:
            eps = C.resolve_eps(sde, eps)
        grid_name = grid if isinstance(grid, str) else (self.default_grid if grid is None else "explicit")
        if rho is not None and grid_name != "karras":
            raise TypeError(f"rho={rho} sets the spacing of grid='karras' only; this run's grid is {grid_name!r}")
        times, eps = G.resolve_grid(sde, grid, steps, eps, C.default_eps(sde), default=self.default_grid,
                                    rho=7.0 if rho is None else rho)
        if x_T is None and times[0] < sde.T:
            raise ValueError(f"the grid starts at t={times[0]:g} < T={sde.T:g}, where the prior is no sample of p_t: "
                             "pass x_T (a state at the grid's first time) or start the grid at T")
        st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
        score, guidance = C.condition(score_fn, st, y, guidance_weight, guidance_scale)
        r = Run(self, score, sde, st, times, eps, denoise, callback, progress, grid_name=grid_name, nfe_budget=nfe,
                rho=(7.0 if rho is None else rho) if grid_name == "karras" else None, guidance=guidance)
        with torch.no_grad():
            return self.run(r, **options)

    def default_steps(self, sde: SDE) -> Optional[int]:
        """Steps used when neither ``steps``, ``nfe`` nor an explicit grid is given (None: ``default_nfe``)."""
        return None

    def resolve_steps(self, sde: SDE, steps, nfe, grid, denoise: bool, options: dict) -> Optional[int]:
        if steps is not None and nfe is not None:
            raise ValueError("give steps=K or nfe=N (a budget of score evaluations per sample), not both")
        if steps is not None:
            return C.check_steps(steps)
        if nfe is not None:
            return self.steps_for_nfe(check_nfe(nfe), denoise, **options)
        if grid is not None and not isinstance(grid, str):
            return None  # an explicit grid fixes the steps
        default = self.default_steps(sde)
        if default is not None:
            return default
        return self.steps_for_nfe(self.default_nfe, denoise, **options)

    #: options this sampler takes beyond the shared ones (checked so a typo is an error, not ignored)
    option_names: tuple = ()

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            ok = ", ".join(self.option_names) or "none"
            raise TypeError(f"the {self.name} sampler got unknown option(s) {', '.join(unknown)}; "
                            f"its options are: {ok} (plus the shared steps, nfe, grid, rho (grid='karras'), eps, "
                            "x_T, denoise, generator, device, dtype, callback, progress, y, guidance_weight, "
                            "guidance_scale)")

    def __repr__(self):
        return (f"<sampler {self.name!r}: order {self.order}, {self.nfe_per_step} NFE/step, "
                f"{'stochastic' if self.stochastic else 'deterministic'}, default grid {self.default_grid!r}>")
