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
independent of its batch mates, and evaluates only the samples still integrating: the field takes
the solver's ``rows`` and selects those samples' probes.

The divergence is taken by autograd through the score, so the score must be differentiable in
``x``: one run under ``torch.no_grad()`` or ``torch.inference_mode()``, or one that detaches its
output, would silently lose the score's part of the divergence (the VP drift ``f(t) x`` still
depends on ``x``). :func:`log_likelihood` refuses such a score, and refuses to run inside
``torch.inference_mode()``, with an error that says what to change.
"""
from __future__ import annotations

import contextvars
import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._utils import check_choice, check_eps, check_finite, check_int, check_x
from ..guidance import guided_score, resolve_guidance
from ..scorefn import CheckedScore, ScoreFn
from ..sde import SDE
from ..solvers import METHODS, solve_ode
from .divergence import TRACES, divergence, draw_probes

__all__ = ["LikelihoodResult", "log_likelihood", "warn_if_training", "warns_in_train_mode"]

_TRAIN_MODE = ("score_fn is a module in training mode (dropout, batch-norm statistics); call .eval() "
               "before evaluating the likelihood")
#: True inside a function that has already warned (:func:`warns_in_train_mode`): no second warning.
_WARNED: contextvars.ContextVar = contextvars.ContextVar("scoresde_train_mode_warned", default=False)


def warn_if_training(score_fn, stacklevel: int = 2) -> None:
    """Warn when ``score_fn`` is a module (or a method of one, or one wrapped in DDP) in training mode,
    unless an enclosing :func:`warns_in_train_mode` function has warned already."""
    if _WARNED.get():
        return
    module = getattr(score_fn, "__self__", score_fn)  # model.score_fn: its module
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    if isinstance(module, torch.nn.Module) and module.training:
        warnings.warn(_TRAIN_MODE, stacklevel=stacklevel + 1)


def warns_in_train_mode(fn: Callable) -> Callable:
    """Decorate a function whose first argument is ``score_fn`` and which calls :func:`log_likelihood`
    (possibly many times): it warns once about a module in training mode, its inner calls do not."""

    @functools.wraps(fn)
    def wrapper(score_fn, *args, **kwargs):
        warn_if_training(score_fn, stacklevel=2)
        token = _WARNED.set(True)
        try:
            return fn(score_fn, *args, **kwargs)
        finally:
            _WARNED.reset(token)

    return wrapper


_NOT_DIFFERENTIABLE = (
    "score_fn returned a tensor that does not depend on x through autograd (requires_grad is False, "
    "or its graph does not reach x), so the divergence of the probability-flow drift would silently "
    "miss the score's part. The likelihood differentiates the score: do not wrap score_fn in "
    "torch.no_grad() or torch.inference_mode(), and do not detach its input or output. A score that "
    "truly does not depend on x can return 0 * x (plus its x-independent part).")


class _DifferentiableScore:
    """The score as the likelihood calls it: refuses an output that does not depend on ``x`` through autograd.

    Every evaluation checks ``out.requires_grad`` (a Python attribute: no sync); the first one
    also asks autograd whether the graph of ``out`` reaches ``x`` (one extra vector-Jacobian product
    per :func:`log_likelihood` call), which catches a score computed from ``x.detach()`` by a network
    whose parameters require grad.
    """

    def __init__(self, score):
        self.score = score
        self.reached = False

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.score(x, t)
        if x.requires_grad and torch.is_grad_enabled():
            if not out.requires_grad:
                raise ValueError(_NOT_DIFFERENTIABLE)
            if not self.reached:
                (g,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), retain_graph=True,
                                           allow_unused=True)
                if g is None:
                    raise ValueError(_NOT_DIFFERENTIABLE)
                self.reached = True
        return out


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-sample result of :func:`log_likelihood` (all ``(B,)`` tensors on the CPU but ``z``).

    ``logp`` is ``log p_eps(x)`` in nats (float64 by default; NaN where the solver failed),
    ``logp = prior_logp + delta_logp`` with ``prior_logp = log p_T(z)`` and ``delta_logp`` the
    integral of the divergence; ``z`` is the latent at ``T`` (data's device and shape); ``nfe`` counts
    vector-field evaluations per sample (each one forward and ``n_probes`` VJPs, or ``D`` for the
    exact trace); ``status`` holds :class:`scoresde.solvers.SolverStatus` codes; ``total_nfe`` is the
    number of batched calls. The convention (``eps``, ``trace``, ``n_probes``, ``backend``,
    ``rtol``, ``atol``) travels with the numbers; ``conditional`` says whether ``logp`` is
    ``log p_eps(x | y)`` (labels given) or ``log p_eps(x)``.
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
    conditional: bool = False

    @property
    def ok(self) -> torch.Tensor:
        return self.status == 0


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, trace: str = "rademacher", n_probes: int = 1,
                   eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5, backend: str = "dopri5",
                   steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   accumulator_dtype: torch.dtype = torch.float64, max_steps: int = 10_000,
                   progress: bool = False, running_only: bool = True, y=None,
                   guidance_weight: Optional[float] = None, guidance_scale: Optional[float] = None) -> LikelihoodResult:
    """``log p_eps(x)`` in nats for a batch ``x`` of shape ``(B, *dims)`` under the probability-flow ODE.

    Args:
        score_fn: ``score_fn(x, t)``, differentiable in ``x`` by autograd (not run under
            ``torch.no_grad()``, not detached; a score that does not depend on ``x`` returns ``0 * x``).
            Put a network in ``eval()`` mode first (a module in training mode gets a warning).
        trace: ``"rademacher"`` (default), ``"gaussian"`` (Hutchinson–Skilling), or ``"exact"``.
        n_probes: probes per sample averaged in each evaluation (Hutchinson only).
        eps: the time the density refers to, in ``(0, T)``; 1e-5 is the literature default.
        rtol, atol: solver tolerances (on the joint state ``(x, delta_logp)``).
        backend: an ODE method of :mod:`scoresde.solvers` (``"dopri5"``: per-sample adaptive;
            ``"torchdiffeq_dopri5"``, ``"scipy_rk45"``: one step size per batch; ``"euler"``,
            ``"heun"`` need ``steps``).
        generator: draws the probes (on ``x``'s device); reproducible with a seed.
        accumulator_dtype: dtype of the log-density integral (float64 by default).
        running_only: the per-sample backends evaluate the network on the samples still integrating
            only (the field selects their probes); ``False`` evaluates the whole batch every time,
            the old behaviour: the same per-sample results (bitwise for a row-wise score, such as an
            oracle), more work. See :func:`~scoresde.solvers.solve_ode`.
        y: class labels ``(B,)`` (or an int for every sample; ``-1`` rows unconditional) for a
            conditional score function ``score_fn(x, t, y=...)``: then ``logp`` is ``log p_eps(x | y)``,
            the density of the unguided conditional probability-flow ODE.
        guidance_weight, guidance_scale: accepted so a sampling configuration can be passed on, but
            only ``w = 0`` (scale 1): a guided field ``(1 + w) score(x | y) - w score(x)`` is not the
            score of any density (Ho & Salimans 2022), so its "likelihood" would mean nothing.

    Returns a :class:`LikelihoodResult`; a sample the solver could not finish gets its status and a
    NaN ``logp`` instead of failing the batch.

    Raises:
        RuntimeError: called inside ``torch.inference_mode()`` (no autograd graph can be built there;
            call it outside: it runs its solver under ``torch.no_grad()`` itself).
        ValueError: ``score_fn``'s output does not depend on ``x`` through autograd (see above),
            besides the argument checks.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "log_likelihood (and evaluate_bpd) cannot run inside torch.inference_mode(): the divergence "
            "differentiates the score with autograd, which inference mode turns off. Call it outside "
            "inference_mode (it runs the solver under torch.no_grad() itself; torch.no_grad() around the "
            "call is fine).")
    check_x(x)
    check_finite(x)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    warn_if_training(score_fn, stacklevel=2)
    check_choice("trace estimator", trace, TRACES)
    check_int("n_probes", n_probes)
    if trace == "exact" and n_probes != 1:
        raise ValueError("n_probes applies to the Hutchinson estimators; the exact trace takes none")
    eps = check_eps(eps, sde.T)
    check_choice("backend", backend, METHODS)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"the generator is on {generator.device} but x is on {x.device}")

    if resolve_guidance(guidance_weight, guidance_scale).active:
        raise ValueError("the likelihood takes no guidance: a guided field (1 + w) score(x | y) - w score(x) with "
                         "w != 0 is not the score of a density, so it has no log-likelihood. Drop guidance_weight/"
                         "guidance_scale (or pass 0 / 1) to get log p(x | y) with y=, or log p(x) without it")
    guided, _ = guided_score(score_fn, y, batch=x.shape[0], device=x.device)
    running = [None]  # the solver's running rows: their labels go with them
    score = CheckedScore(guided if y is None else lambda xs, t: guided.take(running[0])(xs, t))
    rsde = sde.reverse(_DifferentiableScore(score), probability_flow=True)
    probes = None if trace == "exact" else draw_probes(trace, n_probes, x, generator)

    def field(t, state, rows=None):
        """The augmented field; ``rows``: the solver's running samples (their probes and labels), None for all."""
        xs = state[0]
        running[0] = rows
        v = probes if probes is None or rows is None else probes[:, rows]
        with torch.enable_grad():
            xg = xs.detach().requires_grad_(True)
            drift = rsde.sde_unchecked(xg, t)[0]
            div = divergence(drift, xg, v)
        return drift.detach(), div.detach().to(accumulator_dtype)

    y0 = (x.detach(), torch.zeros(x.shape[0], device=x.device, dtype=accumulator_dtype))
    with torch.no_grad():
        res = solve_ode(field, y0, eps, sde.T, method=backend, rtol=rtol, atol=atol, steps=steps,
                        max_steps=max_steps, progress=progress, running_only=running_only)
        z, delta = res.y
        prior = sde.prior_logp_unchecked(z.to(accumulator_dtype))
    status = res.status.detach().cpu().long()
    ok = (status == 0).to(delta.device)
    logp = torch.where(ok, prior + delta, torch.full_like(delta, float("nan")))
    return LikelihoodResult(
        logp=logp.cpu(), prior_logp=prior.cpu(), delta_logp=delta.cpu(), z=z, nfe=res.nfe.cpu().long(),
        status=status, n_accepted=res.n_accepted.cpu(), n_rejected=res.n_rejected.cpu(),
        total_nfe=int(res.total_nfe) if res.total_nfe is not None else score.calls, eps=eps, trace=trace,
        n_probes=n_probes if trace != "exact" else 0, backend=backend, rtol=float(rtol), atol=float(atol),
        conditional=y is not None)
