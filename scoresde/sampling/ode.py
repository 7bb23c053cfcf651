"""Probability-flow ODE sampler: solve ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` from ``T`` to
``eps`` (Song et al. 2021, eq. 13) with one of the back ends of :mod:`scoresde.solvers`."""
from __future__ import annotations

from typing import Optional

import torch

from ..sde import SDE
from ..solvers import solve_ode
from . import _common as C


def ode_sampler(score_fn, sde: SDE, shape, *, eps: Optional[float] = None, generator=None, device=None,
                dtype=None, x_T=None, denoise: Optional[bool] = None, callback: C.Callback = None,
                progress: bool = False, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                steps: Optional[int] = None, max_steps: int = 10_000) -> C.SampleResult:
    """Probability-flow ODE sampler.

    ``method``: ``"dopri5"`` (default; adaptive Dormand-Prince 5(4) with a step size per sample),
    ``"torchdiffeq_dopri5"`` (one step size for the batch), ``"scipy_rk45"`` (the original code's
    solver: host round-trip per evaluation), or the fixed-step ``"euler"`` / ``"heun"`` (``steps``
    required). ``rtol``/``atol`` default 1e-5 as in Song et al. (2021).
    Randomness enters only through ``x_T``. NFE is per sample for the adaptive per-sample solver;
    a sample the solver could not finish gets a status instead of failing the batch.
    """
    eps = C.resolve_eps(sde, eps)
    denoise = True if denoise is None else bool(denoise)
    st = C.setup(sde, shape, generator=generator, device=device, dtype=dtype, x_T=x_T)
    score = C.CheckedScore(score_fn)
    rsde = sde.reverse(score, probability_flow=True)
    evals = [0]

    def field(t, x):
        drift = rsde._sde(x, t)[0]
        if callback is not None:  # the solver reuses its stage buffers: hand out copies
            C.emit(callback, step=evals[0], t=t.clone(), x=x.clone())
        evals[0] += 1
        return drift

    with torch.no_grad():
        res = solve_ode(field, st.x, sde.T, eps, method=method, rtol=rtol, atol=atol, steps=steps,
                        max_steps=max_steps, progress=progress)
        x = res.y
        if denoise:
            x = C.tweedie_denoise(score, sde, x, eps)
    info = dict(method=method, rtol=rtol, atol=atol, steps=steps, denoise=denoise)
    nfe = res.nfe.cpu().long() + int(denoise)
    return C.finish("ode", x, 0, score.calls, eps, info, status=res.status, nfe=nfe,
                    n_accepted=res.n_accepted.cpu(), n_rejected=res.n_rejected.cpu())
