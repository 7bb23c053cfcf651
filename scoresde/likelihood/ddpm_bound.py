"""The discrete DDPM variational bound ``L_VB`` of a VP score model on quantized data, and the result
type the variational bounds share (:class:`BoundResult`).

**The bound** (Ho, Jain & Abbeel 2020, eq. 5). For the DDPM chain ``q`` of the VP SDE's ``N`` discrete
betas (:meth:`scoresde.sde.VPSDE.ddpm_schedule`; in the package's 0-based index, step ``i`` takes
``x_i`` to ``x_{i+1}``, ``abar_i = prod_{j <= i} (1 - beta_j)``, Ho et al.'s ``t`` is ``i + 1``):

    -log P(k) <= L_VB = KL(q(x_N | x_0) || N(0, I))                                   (L_T)
                      + sum_{i=1}^{N-1} E_q KL(q(x_i | x_{i+1}, x_0) || p(x_i | x_{i+1}))   (L_{t-1}, t > 1)
                      - E_q log p(x_0 = k | x_1)                                          (L_0)

* ``L_T = 1/2 sum_d (abar x_0d^2 - abar - log(1 - abar))`` with ``abar = abar_{N-1}``, exact.
* The reverse steps are Gaussian, ``p(x_i | x_{i+1}) = N(mu_theta, sigma_i^2 I)`` with Ho et al.'s
  eq. 11 mean ``mu_theta = (x_{i+1} - beta_i / sqrt(1 - abar_i) eps_theta) / sqrt(alpha_i)``; the
  posterior ``q(x_i | x_{i+1}, x_0)`` (eq. 6-7) has mean ``mu~`` and variance ``beta~_i``. With
  ``x_{i+1} = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps``, ``mu~ - mu_theta = beta_i (eps_theta - eps) /
  (sqrt(alpha_i) sqrt(1 - abar_i))`` (eq. 10-12), so each KL is, without cancellation,
  ``beta_i^2 / (2 sigma_i^2 alpha_i (1 - abar_i)) ||eps - eps_theta||^2 + D/2 (r - 1 - log r)``,
  ``r = beta~_i / sigma_i^2``.
* The decoder (eq. 13) is the discretized Gaussian ``N(mu_theta(x_1), sigma_0^2)`` integrated over the
  datum's cell, per coordinate, with the edges of the extreme cells at ``-inf`` and ``+inf``;
  computed from ``log_ndtr`` on the side of the mean where it is accurate.

**The grid.** Ho et al. use 256 values on ``[-1, 1]`` with the value at the centre of its cell. Here
the grid is that of :mod:`scoresde.quantize`: ``n_levels`` cells of width ``w = (hi - lo) / n_levels``,
level ``k`` owns ``[lo + k w, lo + (k + 1) w)`` and is given as its left edge ``lo + k w`` (checked).
The chain starts from the cell's centre ``x_0 = lo + (k + 1/2) w`` (where Ho et al. put the value,
and the mean of the dequantized data a continuous-time model was trained on), and the decoder
integrates over the cell itself. Any start gives a valid bound; this is the natural one. The result
bounds the discrete log-likelihood itself: no dequantization, no offset.

**The model's noise prediction.** ``eps_theta(x, t) = -s(t) score(x, t)`` at the step's time,
``chain_times="snr"`` (default): the time where the SDE's log-SNR equals the chain's,
``log(abar_i / (1 - abar_i))``; for a VP SDE ``m^2 + s^2 = 1``, so there ``m(t)^2 = abar_i`` exactly and
the chain's marginal ``q(x_{i+1} | x_0)`` *is* the SDE's ``p_{0t}``: the score of the right marginal
(clamped to ``T`` where the chain's last SNR falls below the SDE's; a few last steps). ``"grid"``:
``t_i = (i + 1) / N`` (:meth:`scoresde.discrete.DDPMSchedule.times`, clamped to ``T``), where the
marginals differ by ``O(1/N)``. Either gives a valid bound.

**The reverse variance.** ``variance="beta"`` (default): ``sigma_i^2 = beta_i`` at every step, the
decoder's ``beta_0`` (Ho et al.'s upper choice, optimal for smooth data, ``x_0 ~ N(0, I)``). The score
models here are trained on dequantized data, a density that is smooth on the scale of the first
steps' noise, so their reverse steps are close to the ``beta_t`` choice; on the tests' mixtures it
gives the tighter bound. ``"beta_tilde"``: ``sigma_i^2 = beta~_i`` (the lower choice, optimal for a
deterministic ``x_0``; the KL's variance term vanishes), with the decoder's ``sigma_0^2 = beta~_1``
(``beta~_0 = 0``; the clipped log-variance of Ho et al.'s code,
:attr:`~scoresde.discrete.DDPMSchedule.posterior_log_variance_clipped`).

**Estimating the sum.** ``n_terms=None`` (default): every one of the ``N - 1`` middle terms, each with
one draw of ``eps`` (one score evaluation per step: ``N`` in all). ``n_terms=k``: ``k`` indices drawn
uniformly from ``{1, ..., N - 1}`` per sample, the sum estimated as ``(N - 1)`` times their mean, with a
Monte Carlo standard error. ``L_T`` is exact and ``L_0`` always evaluated.

Reference: Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models", NeurIPS (eqs. 5-13).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from .._utils import check_choice, check_finite, check_int, check_x
from ..quantize import check_on_grid, grid_cell, to_levels
from ..scorefn import ScoreFn
from ..sde import SDE, VPSDE

__all__ = ["ddpm_bound", "BoundResult", "DDPM_VARIANCES", "DDPM_TIMES"]

#: The reverse-process variances of :func:`ddpm_bound` (``variance=``).
DDPM_VARIANCES = ("beta", "beta_tilde")
#: Where the score is evaluated for each chain step (``chain_times=``).
DDPM_TIMES = ("snr", "grid")


@dataclass(frozen=True)
class BoundResult:
    """A variational bound on ``-log p`` of a batch, per sample, in nats.

    Attributes:
        nll: ``(B,)`` float64, the bound (an upper bound on the negative log-likelihood).
        stderr: ``(B,)`` float64, its Monte Carlo standard error over the draws of each sample
            (NaN where it cannot be estimated: one draw, or every DDPM term once).
        terms: the terms, each ``(B,)`` float64 nats, summing to ``nll``: ``prior``, ``drift``,
            ``score`` (continuous bound); ``prior`` (``L_T``), ``diffusion`` (the middle terms),
            ``decoder`` (``L_0``) (DDPM bound).
        nfe: score evaluations per sample.
        convention: the bound and its options.
    """

    nll: torch.Tensor
    stderr: torch.Tensor
    terms: Dict[str, torch.Tensor]
    nfe: int
    convention: dict


def check_inputs(score_fn, sde, x, generator) -> None:
    """The checks both bounds share: a callable score, a scoresde SDE, finite ``(B, *dims)`` data and a
    generator on the data's device."""
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t) -> tensor shaped like x")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    check_x(x)
    check_finite(x)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}; "
                         "create the generator on the data's device")


def ddpm_bound(score_fn: ScoreFn, sde: VPSDE, x: torch.Tensor, *, n_levels: int = 256,
               data_range: Sequence[float] = (-1.0, 1.0), n_terms: Optional[int] = None,
               variance: str = "beta", chain_times: str = "snr",
               generator: Optional[torch.Generator] = None) -> BoundResult:
    """The DDPM bound ``L_VB >= -log P(x)`` of quantized data ``x`` under the VP SDE's DDPM chain, in nats.

    Ho et al. (2020), eq. 5, with the discretized Gaussian decoder on the data's own grid (module
    docstring for the grid, the times, the variances and the estimator).

    Args:
        score_fn: ``score_fn(x, t)``, called under ``torch.no_grad()``; its noise prediction is
            ``eps = -s(t) score``.
        sde: a :class:`~scoresde.sde.VPSDE` (its :meth:`~scoresde.sde.VPSDE.ddpm_schedule`, ``N`` steps).
        x: ``(B, *dims)`` grid values ``lo + k w`` (checked; :mod:`scoresde.quantize`).
        n_levels, data_range: the grid.
        n_terms: ``None``: all ``N - 1`` middle terms; an int: that many drawn per sample.
        variance: ``"beta"`` (default) or ``"beta_tilde"``.
        chain_times: ``"snr"`` (default) or ``"grid"``.
        generator: a ``torch.Generator`` on ``x``'s device: the decoder's ``eps``, then per middle term
            (the drawn indices and) its ``eps``.

    Returns:
        :class:`BoundResult` with the terms ``prior``, ``diffusion`` and ``decoder``.
    """
    check_inputs(score_fn, sde, x, generator)
    if not isinstance(sde, VPSDE):
        raise TypeError(f"the DDPM bound needs a VPSDE, whose discretization is the DDPM chain; got {sde!r} "
                        "(sub-VP and VE have no DDPM chain: use variational_bound)")
    check_choice("variance", variance, DDPM_VARIANCES)
    check_choice("chain_times", chain_times, DDPM_TIMES)
    if n_terms is not None:
        check_int("n_terms", n_terms)
    lo, hi, w = grid_cell(n_levels, data_range)
    check_on_grid(x, n_levels, data_range, name="x")
    B, D = x.shape[0], x[0].numel()
    k = to_levels(x, n_levels, (lo, hi)).reshape(B, D).to(torch.float64)
    x0 = lo + (k + 0.5) * w
    inf = torch.full_like(x0, math.inf)
    lower = torch.where(k == 0, -inf, lo + k * w)
    upper = torch.where(k == n_levels - 1, inf, lo + (k + 1) * w)
    tab = _tables(sde, variance, chain_times, x.device)
    N = tab["betas"].numel()
    lab = tab["log_abar"][-1]
    prior = 0.5 * (torch.exp(lab) * (x0 * x0).sum(1) - D * torch.exp(lab) - D * torch.log(-torch.expm1(lab)))
    with torch.no_grad():
        loss0, mu = _step(score_fn, x, x0, torch.zeros(B, dtype=torch.long, device=x.device), tab, generator)
        del loss0
        sd = math.sqrt(tab["decoder_var"])
        decoder = -_log_cell_mass(lower, upper, mu, sd).sum(1)
        if N == 1:
            diffusion, stderr = torch.zeros_like(prior), torch.zeros_like(prior)
        elif n_terms is None:
            diffusion = torch.zeros_like(prior)
            for i in range(1, N):
                idx = torch.full((B,), i, dtype=torch.long, device=x.device)
                diffusion = diffusion + _step(score_fn, x, x0, idx, tab, generator)[0]
            stderr = torch.full_like(prior, math.nan)
        else:
            draws = torch.empty((n_terms, B), dtype=torch.float64, device=x.device)
            for j in range(n_terms):
                idx = torch.randint(1, N, (B,), generator=generator, device=x.device)
                draws[j] = (N - 1) * _step(score_fn, x, x0, idx, tab, generator)[0]
            diffusion = draws.mean(0)
            stderr = draws.std(0) / math.sqrt(n_terms) if n_terms >= 2 else torch.full_like(prior, math.nan)
    convention = dict(bound="ddpm", N=N, n_terms=n_terms, variance=variance, chain_times=chain_times,
                      x0="cell centre", n_levels=n_levels, data_range=(lo, hi), sde=repr(sde))
    nfe = 1 + (N - 1 if n_terms is None else n_terms) * (N > 1)
    return BoundResult(nll=prior + diffusion + decoder, stderr=stderr,
                       terms=dict(prior=prior, diffusion=diffusion, decoder=decoder), nfe=nfe, convention=convention)


def _tables(sde: VPSDE, variance: str, chain_times: str, device) -> dict:
    """The chain's per-step coefficients, float64 ``(N,)`` on ``device``: betas, ``log abar``, the
    evaluation times and stds, the KL's mean coefficient and constant, and the decoder's variance."""
    sched = sde.ddpm_schedule()
    betas, log_abar = sched.betas, sched.log_alphas_cumprod
    one_minus = -torch.expm1(log_abar)
    post = sched.posterior_variance
    var = betas.clone() if variance == "beta" else post.clone()
    if variance == "beta_tilde":
        decoder_var = float(torch.exp(sched.posterior_log_variance_clipped[0])) if sched.N > 1 else float(betas[0])
        var[0] = decoder_var
    else:
        decoder_var = float(betas[0])
    coef = betas * betas / (2.0 * var * (1.0 - betas) * one_minus)
    ratio = post / var
    kl_const = 0.5 * (ratio - 1.0 - torch.log(ratio))
    kl_const[0] = 0.0  # step 0 is the decoder, not a KL
    if chain_times == "snr":
        t = sde.log_snr_inverse_unchecked(log_abar - torch.log(one_minus)).clamp(max=sde.T)
    else:
        t = sched.times().clamp(max=sde.T)
    s = sde.coeffs_unchecked(t)[1]
    out = dict(betas=betas, log_abar=log_abar, one_minus=one_minus, coef=coef, kl_const=kl_const, t=t, s=s)
    out = {k: v.to(device=device, dtype=torch.float64) for k, v in out.items()}
    out["decoder_var"] = decoder_var
    return out


def _step(score_fn, x: torch.Tensor, x0: torch.Tensor, i: torch.Tensor, tab: dict, generator):
    """One chain step per sample at indices ``i`` ``(B,)``: draw ``x_{i+1} ~ q(. | x_0)``, evaluate the
    model; return the KL term ``(B,)`` (meaningless for ``i = 0``) and the reverse mean ``mu_theta`` ``(B, D)``."""
    B, D = x0.shape
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).to(torch.float64).reshape(B, D)
    lab = tab["log_abar"][i][:, None]
    one_minus = tab["one_minus"][i][:, None]
    xt = torch.exp(0.5 * lab) * x0 + torch.sqrt(one_minus) * noise
    out = score_fn(xt.to(x.dtype).reshape(x.shape), tab["t"][i].to(x.dtype))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    eps_hat = -tab["s"][i][:, None] * out.detach().to(torch.float64).reshape(B, D)
    kl = tab["coef"][i] * ((noise - eps_hat) ** 2).sum(1) + D * tab["kl_const"][i]
    beta = tab["betas"][i][:, None]
    mu = (xt - beta / torch.sqrt(one_minus) * eps_hat) / torch.sqrt(1.0 - beta)
    return kl, mu


def _log_cell_mass(lower: torch.Tensor, upper: torch.Tensor, mu: torch.Tensor, sd: float) -> torch.Tensor:
    """``log(Phi((upper - mu)/sd) - Phi((lower - mu)/sd))`` elementwise, accurate in both tails: a cell
    above the mean is reflected to below it, where ``log_ndtr`` keeps its relative accuracy."""
    lo, hi = (lower - mu) / sd, (upper - mu) / sd
    flip = lo > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))
