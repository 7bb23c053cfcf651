"""Denoising score matching: weightings, time samplers and per-sample losses.

The continuous-time objective of Song et al. (2021), eq. 7, with ``x_t = m(t) x_0 + s(t) z``:

    J(theta) = E_t E_{x_0} E_z [ lambda(t) || score_theta(x_t, t) + z / s(t) ||^2 ],   t ~ U[eps, T],

whose minimiser is the true score (Vincent 2011). Two weightings:

* ``"sigma2"``: ``lambda(t) = s(t)^2``, so the integrand is ``|| s score + z ||^2`` -- the
  eps-prediction loss of Ho et al. (2020);
* ``"likelihood"``: ``lambda(t) = g(t)^2``, for which ``J`` bounds the negative log-likelihood
  (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of score-based diffusion
  models", Theorem 1).

Two time samplers estimating the *same* expectation ``E_{t ~ U[eps, T]}[lambda(t) l(t)]``:

* ``"uniform"``: ``t ~ U[eps, T]``, estimator ``lambda(t) l(t)``;
* ``"importance"``: ``t ~ q`` with ``q(t) = (g^2 / s^2) / Z`` on ``[eps, T]``, estimator
  ``lambda(t) l(t) / ((T - eps) q(t))``. Song, Durkan et al. (2021), Section 5, sample ``t``
  proportionally to ``g^2 / s^2`` to reduce the variance of the likelihood weighting: there
  ``lambda / ((T - eps) q) = Z / (T - eps)`` is constant and the summand ``|| s score + z ||^2``
  is ``O(1)`` at every ``t``.

The density ``q`` has a closed-form CDF for every SDE here. For a linear SDE, the log-SNR
``lambda_snr(t) = log(m^2 / s^2)`` satisfies ``d lambda_snr / dt = 2 f - (d s^2/dt) / s^2 = -g^2 / s^2``
because ``d s^2 / dt = 2 f s^2 + g^2`` (the variance equation of ``dx = f x dt + g dW``; it holds for
VP, sub-VP and for the VE convention ``s = sigma(t)``). Hence

    Q(t) = (lambda_snr(eps) - lambda_snr(t)) / Z,   Z = lambda_snr(eps) - lambda_snr(T),

i.e. ``q`` is uniform in log-SNR (Kingma, Salimans, Poole & Ho 2021, "Variational diffusion
models", eq. 17, write the same objective as an integral over the SNR). Sampling inverts ``Q``
with the SDE's own numerically careful :meth:`~scoresde.sde.SDE.log_snr_inverse`:

* VP: ``g^2/s^2 = beta / (1 - e^{-B})``, ``-lambda_snr = log(expm1(B))``, inverse ``B = softplus(-lambda)``
  followed by the schedule's ``inverse_integral`` (``LinearBeta``: a cancellation-free quadratic root);
* sub-VP: ``g^2/s^2 = beta (1 + e^{-B}) / (1 - e^{-B}) = beta coth(B/2)``,
  ``-lambda_snr = B + 2 log(1 - e^{-B}) = 2 log(2 sinh(B/2))``, inverted in closed form
  (``SubVPSDE.log_snr_inverse_unchecked``, with ``log1p``); no table;
* VE (``s = sigma(t) = sigma_min (sigma_max/sigma_min)^{t/T}``): ``g^2/s^2 = d log sigma^2 / dt =
  2 log(sigma_max/sigma_min) / T`` is constant, so ``q`` is uniform on ``[eps, T]`` (uniform in ``log sigma``).

The uniform draws and the inversion are done in float64 and the times are then cast to the data's dtype.

Class-conditional models are trained on ``E || score(x_t, t, c) + z / s ||^2`` with ``c = y`` and,
with probability ``p_uncond``, ``c = NULL_CLASS`` (label dropout, :func:`drop_labels`): one network
then learns the conditional score ``grad log p_t(x | y)`` and the unconditional ``grad log p_t(x)``
that classifier-free guidance combines (Ho & Salimans 2022, "Classifier-free diffusion
guidance", Algorithm 1; they use ``p_uncond`` 0.1 or 0.2).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ._utils import (NULL_CLASS, append_dims, as_time, check_choice, check_eps, check_finite, check_int, check_labels,
                     check_probability, check_x)
from .score import ScoreModel
from .scorefn import ScoreFn
from .sde import SDE

__all__ = ["dsm_loss", "draw_times", "drop_labels", "importance_density", "sample_importance_time", "loss_weight",
           "WEIGHTINGS", "TIME_SAMPLERS", "REDUCTIONS"]

WEIGHTINGS = ("sigma2", "likelihood")
TIME_SAMPLERS = ("uniform", "importance")
REDUCTIONS = ("mean", "sum")


# ---------------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------------
def _check_sde(sde) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")


def _g2_over_s2(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``g(t)^2 / s(t)^2``, shape ``(B,)``."""
    g = sde.sde_unchecked(torch.zeros_like(t), t)[1]
    s = sde.coeffs_unchecked(t)[1]
    return (g / s) ** 2


def _snr_range(sde: SDE, eps: float) -> tuple[float, float]:
    """``(lambda_snr(eps), Z = lambda_snr(eps) - lambda_snr(T))`` in float64 (host scalars)."""
    lam = sde.log_snr_unchecked(torch.tensor([eps, sde.T], dtype=torch.float64))
    lam_eps, lam_T = float(lam[0]), float(lam[1])
    return lam_eps, lam_eps - lam_T


# ---------------------------------------------------------------------------------------------
# Importance sampling of t.
# ---------------------------------------------------------------------------------------------
def importance_density(sde: SDE, t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The density ``q(t) = (g(t)^2 / s(t)^2) / Z`` on ``[eps, T]`` (zero outside), ``Z`` its
    normaliser ``lambda_snr(eps) - lambda_snr(T)`` (module docstring). ``t``: ``(B,)``; returns ``(B,)``."""
    _check_sde(sde)
    eps = check_eps(eps, sde.T)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError("t must be a floating-point tensor")
    _, Z = _snr_range(sde, eps)
    inside = (t >= eps) & (t <= sde.T)
    safe = torch.where(inside, t, torch.full_like(t, sde.T))
    return torch.where(inside, _g2_over_s2(sde, safe) / Z, torch.zeros_like(t))


def sample_importance_time(sde: SDE, n: int, eps: float = 1e-5, generator: Optional[torch.Generator] = None,
                           device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Draw ``n`` times from :func:`importance_density` by inverting its CDF: with ``u ~ U[0, 1)``,
    ``t = lambda_snr^{-1}(lambda_snr(eps) - u Z)``, clamped to ``[eps, T]`` against rounding.

    Random numbers are drawn on ``device`` (default: the generator's device, else the CPU) in
    float64; the result has ``dtype`` (default torch's default dtype), shape ``(n,)``.
    """
    _check_sde(sde)
    eps = check_eps(eps, sde.T)
    check_int("n", n)
    t, _ = draw_times(sde, n, "importance", eps, generator=generator, device=device)
    return t.to(torch.get_default_dtype() if dtype is None else dtype)


def draw_times(sde: SDE, n: int, time_sampler: str = "uniform", eps: float = 1e-5, *,
               generator: Optional[torch.Generator] = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's one time sampler: ``n`` training times on ``[eps, T]`` and their importance
    weights, both ``(n,)`` float64 on ``device`` (default: the generator's device, else the CPU).

    One ``float64`` uniform ``u`` per time is drawn from ``generator``; ``"uniform"`` maps it to
    ``t = eps + (T - eps) u`` with weight 1, ``"importance"`` to the inverse CDF of
    :func:`importance_density` with weight ``1 / ((T - eps) q(t))``, so that both estimate
    ``E_{t ~ U[eps, T]}[...]``. :func:`dsm_loss` and the training loop draw their times here.
    Unchecked beyond ``time_sampler`` (callers validate ``sde`` and ``eps``).
    """
    check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if time_sampler == "uniform":
        return eps + (sde.T - eps) * u, torch.ones_like(u)
    t = _importance_from_uniform(sde, u, eps)
    return t, 1.0 / ((sde.T - eps) * importance_density(sde, t, eps))


def _importance_from_uniform(sde: SDE, u: torch.Tensor, eps: float) -> torch.Tensor:
    lam_eps, Z = _snr_range(sde, eps)
    t = sde.log_snr_inverse_unchecked(lam_eps - u * Z)
    return t.clamp(eps, sde.T)


# ---------------------------------------------------------------------------------------------
# Label dropout.
# ---------------------------------------------------------------------------------------------
def drop_labels(y: torch.Tensor, p_uncond: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Label dropout of classifier-free guidance (Ho & Salimans 2022, Algorithm 1): each label of
    ``y`` ``(B,)`` is replaced by :data:`~scoresde._utils.NULL_CLASS` (``-1``) independently with
    probability ``p_uncond``; returns a new ``(B,)`` tensor. The package's one place for it.

    One ``float64`` uniform ``u_i`` per label is drawn from ``generator`` on ``y``'s device and
    label ``i`` is dropped where ``u_i < p_uncond``; nothing is drawn when ``p_uncond == 0`` (the
    labels are returned unchanged and the generator is not advanced). Unchecked beyond
    ``p_uncond`` (callers validate ``y``); no host synchronisation.
    """
    p = check_probability("p_uncond", p_uncond, hi_open=True)
    if p == 0.0:
        return y
    u = torch.rand(y.shape, generator=generator, device=y.device, dtype=torch.float64)
    return torch.where(u < p, torch.full_like(y, NULL_CLASS), y)


# ---------------------------------------------------------------------------------------------
# The loss.
# ---------------------------------------------------------------------------------------------
def loss_weight(sde: SDE, t: torch.Tensor, weighting: str = "sigma2") -> torch.Tensor:
    """``lambda(t)``: ``s(t)^2`` (``"sigma2"``) or ``g(t)^2`` (``"likelihood"``), shape ``(B,)``."""
    _check_sde(sde)
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "sigma2":
        return sde.coeffs_unchecked(t)[1] ** 2
    return sde.sde_unchecked(torch.zeros_like(t), t)[1] ** 2


def dsm_loss(model: Union[ScoreModel, ScoreFn], sde: SDE, x0: torch.Tensor, *, weighting: str = "sigma2",
             time_sampler: str = "uniform", eps: float = 1e-5, reduce: str = "mean",
             generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
             p_uncond: float = 0.0) -> torch.Tensor:
    """Per-sample denoising score-matching losses, shape ``(B,)`` (module docstring for the maths).

    For each sample: ``t`` from ``time_sampler`` on ``[eps, T]``, ``z ~ N(0, I)``, the label
    ``c`` (``y``, dropped to ``NULL_CLASS`` with probability ``p_uncond``), all drawn with
    ``generator`` on ``x0``'s device in this order -- ``t``, then ``z``, then the dropout uniforms
    (:func:`drop_labels`), so that adding labels leaves the ``t`` and ``z`` of a call unchanged --
    ``x_t = m(t) x0 + s(t) z``, and

        loss = w(t) lambda(t) || score(x_t, t, c) + z / s(t) ||^2
             = w(t) (lambda(t) / s(t)^2) || s(t) score(x_t, t, c) + z ||^2,

    with ``w = 1`` for ``"uniform"`` and ``w = 1 / ((T - eps) q(t))`` for ``"importance"``, so that
    both samplers estimate ``E_{t ~ U[eps, T]} E[lambda ||score + z/s||^2]``. The squared norm is
    reduced over the data dimensions by ``reduce`` (``"mean"`` divides the sum by ``D``).

    Args:
        model: a :class:`~scoresde.score.ScoreModel` (the residual is computed in the network's own
            units, ``s score + z = -eps_scale(t) (out - target)``, without cancellation) or any
            ``score_fn(x, t)`` returning a tensor shaped like ``x`` (called as ``score_fn(x, t, y=c)``
            when labels are given).
        sde: the forward SDE (must be the model's SDE for a ``ScoreModel``).
        x0: data ``(B, *dims)``, finite.
        weighting: ``"sigma2"`` (``lambda = s^2``) or ``"likelihood"`` (``lambda = g^2``).
        time_sampler: ``"uniform"`` or ``"importance"`` (``q ~ g^2 / s^2``).
        eps: time truncation, in ``(0, T)``; default 1e-5 (Song et al. 2021 for training).
        reduce: ``"mean"`` or ``"sum"`` over the dimensions of a sample.
        generator: optional ``torch.Generator`` on ``x0``'s device.
        t: optional fixed times ``(B,)`` (or a number) in ``(0, T]``; then no time is drawn and
            ``w = 1`` (the integrand at those times). Not allowed with ``time_sampler="importance"``.
        noise: optional fixed ``z`` shaped like ``x0``.
        y: optional class labels ``(B,)`` (integers, ``-1`` = no label) of a conditional model;
            for a ``ScoreModel`` their range is checked against its ``num_classes``.
        p_uncond: label-dropout probability in ``[0, 1)`` (Ho & Salimans 2022); needs ``y``.

    Returns: ``(B,)`` losses; average them for the training objective.
    """
    if not (isinstance(model, ScoreModel) or callable(model)):
        raise TypeError(f"model must be a ScoreModel or a callable score_fn(x, t), got {type(model).__name__}")
    _check_sde(sde)
    if isinstance(model, ScoreModel) and model.sde is not sde and repr(model.sde) != repr(sde):
        raise ValueError(f"the ScoreModel was built with {model.sde!r} but the loss got {sde!r}; pass model.sde")
    check_x(x0, "x0")
    check_finite(x0, "x0")
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
    check_choice("reduce", reduce, REDUCTIONS)
    eps = check_eps(eps, sde.T)
    if generator is not None and generator.device.type != x0.device.type:
        raise ValueError(f"generator is on {generator.device} but x0 is on {x0.device}; "
                         "create the generator on the data's device")
    B = x0.shape[0]
    p_uncond = check_probability("p_uncond", p_uncond, hi_open=True)
    if y is not None:
        k = model.num_classes if isinstance(model, ScoreModel) else None
        if k == 0:
            raise ValueError("labels y were given but the ScoreModel is unconditional (num_classes=0): pass y=None, "
                             "or build a conditional network (num_classes=K)")
        y = check_labels(y, B, x0.device, k)
    elif p_uncond > 0:
        raise ValueError(f"p_uncond={p_uncond} drops class labels, but no labels y were given: pass y=labels "
                         "(a conditional model) or p_uncond=0")

    importance = 1.0
    if t is not None:
        if time_sampler != "uniform":
            raise ValueError("fixed times t cannot be combined with time_sampler='importance'; pass one or the other")
        t = as_time(t, x0, sde.T)
        if not bool((t > 0).all()):
            raise ValueError("fixed times t must be > 0 (the perturbation std vanishes at t = 0 for VP-type SDEs)")
    else:
        t64, w64 = draw_times(sde, B, time_sampler, eps, generator=generator, device=x0.device)
        t = t64.to(x0.dtype)
        importance = 1.0 if time_sampler == "uniform" else w64.to(x0.dtype)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}")

    if y is not None:
        y = drop_labels(y, p_uncond, generator)  # drawn after t and z (docstring)

    m, s = sde.coeffs_unchecked(t)
    xt = append_dims(m, x0.ndim) * x0 + append_dims(s, x0.ndim) * noise

    if isinstance(model, ScoreModel):
        out = model.net_output(xt, t, y)
        resid = append_dims(model.eps_scale(t), x0.ndim) * (out - model.target(x0, noise, t))
    else:
        score = model(xt, t) if y is None else model(xt, t, y=y)
        if not isinstance(score, torch.Tensor) or score.shape != x0.shape:
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ValueError(f"the score function must return a tensor shaped like x0 {tuple(x0.shape)}, got {got}")
        resid = append_dims(s, x0.ndim) * score + noise

    sq = resid.reshape(B, -1).pow(2)
    sq = sq.mean(dim=1) if reduce == "mean" else sq.sum(dim=1)
    # lambda / s^2: 1 for sigma2; g^2 / s^2 for the likelihood weighting.
    w = torch.ones_like(s) if weighting == "sigma2" else _g2_over_s2(sde, t)
    return w * importance * sq
