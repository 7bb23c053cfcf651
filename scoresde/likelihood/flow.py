"""Exact likelihood through the probability-flow ODE, and bits per dimension.

The probability-flow ODE ``dx/dt = f~(x, t) = f(x, t) - g(t)^2 score(x, t) / 2`` (Song et al.
2021, eq. 13) transports ``p_eps`` to ``p_T``; by the instantaneous change of variables
(Chen et al. 2018, Theorem 1) ``d log p_t(x(t)) / dt = -div f~(x(t), t)``, so

    log p_eps(x) = log p_T(z) + int_eps^T div f~(x(t), t) dt,   z = x(T),

integrated from ``eps`` to ``T`` together with ``x``. The divergence is exact (the Jacobian's trace,
``D`` vector-Jacobian products) or the Hutchinson–Skilling estimate ``E_v[v^T (df~/dx) v]``
(Hutchinson 1989; Skilling 1989; Grathwohl et al. 2019) with Rademacher or Gaussian probes ``v``
drawn once per sample and held fixed along the trajectory, so the ODE stays an ODE.

Each function evaluation costs one forward of the network and one vector-Jacobian product per
probe (all from the same forward). The log-density accumulator runs in float64 by default while
the state and the network stay in the data's dtype; the per-sample solver makes a sample's result
independent of its batch mates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._utils import check_choice, check_eps, check_finite, check_int, check_x
from ..scorefn import CheckedScore, ScoreFn
from ..sde import SDE
from ..solvers import METHODS, solve_ode
from .divergence import TRACES, divergence, draw_probes

__all__ = ["LikelihoodResult", "log_likelihood"]


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-sample result of :func:`log_likelihood` (all ``(B,)`` tensors on the CPU but ``z``).

    ``logp`` is ``log p_eps(x)`` in nats (float64 by default; NaN where the solver failed),
    ``logp = prior_logp + delta_logp`` with ``prior_logp = log p_T(z)`` and ``delta_logp`` the
    integral of the divergence; ``z`` is the latent at ``T`` (data's device and shape); ``nfe`` counts
    vector-field evaluations per sample (each one forward and ``n_probes`` VJPs, or ``D`` for the
    exact trace); ``status`` holds :class:`scoresde.solvers.SolverStatus` codes; ``total_nfe`` is the
    number of batched calls. The convention (``eps``, ``trace``, ``n_probes``, ``backend``,
    ``rtol``, ``atol``) travels with the numbers.
    """

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    z: torch.Tensor
    nfe: torch.Tensor
    status: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    total_nfe: int
    eps: float
    trace: str
    n_probes: int
    backend: str
    rtol: float
    atol: float

    @property
    def ok(self) -> torch.Tensor:
        return self.status == 0


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, trace: str = "rademacher", n_probes: int = 1,
                   eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5, backend: str = "dopri5",
                   steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   accumulator_dtype: torch.dtype = torch.float64, max_steps: int = 10_000,
                   progress: bool = False) -> LikelihoodResult:
    """``log p_eps(x)`` in nats for a batch ``x`` of shape ``(B, *dims)`` under the probability-flow ODE.

    Args:
        score_fn: ``score_fn(x, t)``, differentiable in ``x``.
        trace: ``"rademacher"`` (default), ``"gaussian"`` (Hutchinson–Skilling), or ``"exact"``.
        n_probes: probes per sample averaged in each evaluation (Hutchinson only).
        eps: the time the density refers to, in ``(0, T)``; 1e-5 is the literature default.
        rtol, atol: solver tolerances (on the joint state ``(x, delta_logp)``).
        backend: an ODE method of :mod:`scoresde.solvers` (``"dopri5"``: per-sample adaptive;
            ``"torchdiffeq_dopri5"``, ``"scipy_rk45"``: one step size per batch; ``"euler"``,
            ``"heun"`` need ``steps``).
        generator: draws the probes (on ``x``'s device); reproducible with a seed.
        accumulator_dtype: dtype of the log-density integral (float64 by default).

    Returns a :class:`LikelihoodResult`; a sample the solver could not finish gets its status and a
    NaN ``logp`` instead of failing the batch.
    """
    check_x(x)
    check_finite(x)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    check_choice("trace estimator", trace, TRACES)
    check_int("n_probes", n_probes)
    if trace == "exact" and n_probes != 1:
        raise ValueError("n_probes applies to the Hutchinson estimators; the exact trace takes none")
    eps = check_eps(eps, sde.T)
    check_choice("backend", backend, METHODS)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"the generator is on {generator.device} but x is on {x.device}")

    score = CheckedScore(score_fn)
    rsde = sde.reverse(score, probability_flow=True)
    probes = None if trace == "exact" else draw_probes(trace, n_probes, x, generator)

    def field(t, state):
        xs = state[0]
        with torch.enable_grad():
            xg = xs.detach().requires_grad_(True)
            drift = rsde.sde_unchecked(xg, t)[0]
            div = divergence(drift, xg, probes)
        return drift.detach(), div.detach().to(accumulator_dtype)

    y0 = (x.detach(), torch.zeros(x.shape[0], device=x.device, dtype=accumulator_dtype))
    with torch.no_grad():
        res = solve_ode(field, y0, eps, sde.T, method=backend, rtol=rtol, atol=atol, steps=steps,
                        max_steps=max_steps, progress=progress)
        z, delta = res.y
        prior = sde.prior_logp_unchecked(z.to(accumulator_dtype))
    status = res.status.detach().cpu().long()
    ok = (status == 0).to(delta.device)
    logp = torch.where(ok, prior + delta, torch.full_like(delta, float("nan")))
    return LikelihoodResult(
        logp=logp.cpu(), prior_logp=prior.cpu(), delta_logp=delta.cpu(), z=z, nfe=res.nfe.cpu().long(),
        status=status, n_accepted=res.n_accepted.cpu(), n_rejected=res.n_rejected.cpu(),
        total_nfe=int(res.total_nfe) if res.total_nfe is not None else score.calls, eps=eps, trace=trace,
        n_probes=n_probes if trace != "exact" else 0, backend=backend, rtol=float(rtol), atol=float(atol))
