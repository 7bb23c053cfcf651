"""Probability-flow ODE sampler: solve ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` from ``T`` to
``eps`` (Song et al. 2021, eq. 13) with one of the back ends of :mod:`scoresde.solvers`."""
from __future__ import annotations

from typing import Optional

import torch

from ..solvers import METHODS, solve_ode
from . import _common as C
from .base import Sampler

#: Dormand-Prince's evaluations: 2 at the start (the first slope and Hairer's initial-step
#: estimate), then 6 per attempted step (FSAL)
_DOPRI_START, _DOPRI_PER_STEP = 2, 6


class ODESampler(Sampler):
    """Probability-flow ODE sampler.

    ``method``: ``"dopri5"`` (default; adaptive Dormand-Prince 5(4) with a step size per sample),
    ``"bosh3"``, ``"torchdiffeq_dopri5"`` (one step size for the batch), ``"scipy_rk45"`` (the
    original code's solver: host round-trip per evaluation), or the fixed-step ``"euler"``,
    ``"heun"``, ``"midpoint"``, ``"rk4"`` (``steps`` or ``nfe`` required; uniform steps in t).
    ``rtol``/``atol`` default 1e-5 as in Song et al. (2021).

    For the adaptive methods ``nfe`` is a cap: a sample that would need more evaluations stops with
    the max-steps status (``max_steps`` is set to the number of whole steps the budget pays for).
    Randomness enters only through ``x_T``. NFE is per sample for the per-sample solver. The
    callback is called once per batched evaluation with ``t`` a ``(B,)`` tensor (each sample of the
    per-sample solver has its own time; a finished sample, no longer evaluated, keeps its last
    ``t`` and ``x``) and ``x0_hat`` None.
    """

    name = "ode"
    order = 5
    nfe_per_step = 6
    default_nfe = None
    option_names = ("method", "rtol", "atol", "max_steps")

    def __call__(self, score_fn, sde, shape, *, steps=None, nfe=None, grid=None, eps=None, x_T=None, denoise=None,
                 generator=None, device=None, dtype=None, callback=None, progress=False, method: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, max_steps: Optional[int] = None, y=None,
                 guidance_weight: Optional[float] = None, guidance_scale: Optional[float] = None, **options):
        self.check_sde(sde)
        self.check_options(options)
        if method not in METHODS:
            raise ValueError(f"unknown ODE method {method!r}; valid methods are: {', '.join(METHODS)}")
        if grid not in (None, "uniform"):
            raise ValueError("the ode sampler's fixed-step methods step uniformly in t and its adaptive ones choose "
                             "their own steps: grid does not apply; use heun_edm, dpmpp_2m, unipc, ... for other grids")
        if steps is not None and nfe is not None:
            raise ValueError("give steps=K or nfe=N (a budget of score evaluations per sample), not both")
        eps = C.resolve_eps(sde, eps)
        denoise = True if denoise is None else bool(denoise)
        adaptive = METHODS[method].adaptive
        if nfe is not None:
            n = C.check_steps(nfe, "nfe") - int(denoise)
            if adaptive:
                if method not in ("dopri5",):
                    raise ValueError(f"nfe= caps the evaluations of method='dopri5' only; for {method!r} "
                                     "set max_steps or the tolerances")
                cap = (n - _DOPRI_START) // _DOPRI_PER_STEP
                if cap < 1:
                    raise ValueError(f"nfe={nfe} does not pay for one adaptive step (8 evaluations + denoising)")
                max_steps = cap if max_steps is None else min(max_steps, cap)
            else:
                steps = n // METHODS[method].tableau.stages
                if steps < 1:
                    raise ValueError(f"nfe={nfe} does not pay for one {method} step")
        elif steps is not None:
            C.check_steps(steps)
        max_steps = 10_000 if max_steps is None else max_steps
        st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
        guided, guidance = C.condition(score_fn, st, y, guidance_weight, guidance_scale)
        running = [None]  # the rows the per-sample solver evaluates now (their labels go with them)
        score = C.CheckedScore(guided if guidance is None else lambda x, t: guided.take(running[0])(x, t))
        rsde = sde.reverse(score, probability_flow=True)
        evals = [0]

        last = {}  # the whole batch as the callback sees it: finished samples keep their last state

        def field(t, x, rows=None):
            running[0] = rows
            drift = rsde.sde_unchecked(x, t)[0]
            if callback is not None:  # the solver reuses its stage buffers: hand out copies
                if rows is None:
                    last["t"], last["x"] = t.clone(), x.clone()
                else:  # the per-sample solver evaluates only the samples still running
                    last["t"][rows], last["x"][rows] = t, x
                callback(dict(i=evals[0], t=last["t"].clone(), x=last["x"].clone(), x0_hat=None))
            evals[0] += 1
            return drift

        with torch.no_grad():
            res = solve_ode(field, st.x, sde.T, eps, method=method, rtol=rtol, atol=atol, steps=steps,
                            max_steps=max_steps, progress=progress)
            x = res.y
            running[0] = None
            if denoise:
                x = C.tweedie_denoise(score, sde, x, eps)
        info = dict(method=method, rtol=rtol, atol=atol, steps=steps, max_steps=max_steps, denoise=denoise)
        out_nfe = res.nfe.cpu().long() + int(denoise)
        return C.finish("ode", x, 0, score.calls, eps, info, status=res.status, nfe=out_nfe,
                        n_accepted=res.n_accepted.cpu(), n_rejected=res.n_rejected.cpu(), guidance=guidance)


ode_sampler = ODESampler()
