"""Variational upper bounds on the negative log-likelihood, beside the probability-flow ODE's exact one.

* :func:`variational_bound`: the continuous-time bound of the SDE model at ``eps`` (Song, Durkan,
  Murray & Ermon 2021, Theorem 3, in its denoising-score-matching form), per sample, in nats;
* :func:`~scoresde.likelihood.ddpm_bound.ddpm_bound` (its own module): the discrete DDPM bound
  ``L_VB`` of Ho et al. (2020) on quantized data;
* :func:`evaluate_bounds`: either or both on a whole test set, in bits/dim with a standard error
  and the convention (:class:`BoundEvaluation`), the sibling of
  :func:`~scoresde.likelihood.evaluate_bpd`.

**The continuous bound.** Every SDE here is linear, ``dx = f(t) x dt + g(t) dW``, and its transition
from time ``u`` to ``t > u`` is ``x_t | x_u ~ N(a x_u, sigma^2 I)`` with ``a = m(t)/m(u)`` and
``sigma^2 = s(t)^2 - a^2 s(u)^2 = s(t)^2 (1 - exp(lambda(t) - lambda(u)))``, ``lambda = log(m^2/s^2)``
(the second form has no cancellation as ``t -> u``). The model is the reverse SDE
``dx = [f - g^2 s_theta] dt + g dW_bar`` run from ``x_T ~ pi`` (the prior) down to ``eps``; ``p_eps``
is the density of its state at ``eps``. Theorem 3 of Song et al. (2021) bounds the density of the
point where the reverse process stops, with the forward process started *there*. Applied on
``[eps, T]`` with ``x_eps = x``:

    -log p_eps(x) <= L(x) = -E[log pi(x_T)] + 1/2 int_eps^T E[ g^2 ||s_theta(x_t, t) - grad log p(x_t | x)||^2
                                               - g^2 ||grad log p(x_t | x)||^2 - 2 div f(x_t, t) ] dt,

expectations over ``x_t ~ p_{eps t}(. | x)``, the kernel from ``eps`` (not from 0). Using the kernel
from 0 on ``[eps, T]`` bounds nothing exactly: for ``N(0, I)`` data under VP it gives
``E[-log p_eps(x_eps) | x_0 = x] = -log p_eps(x) - (1 - e^{-B(eps)}) (|x|^2 - D) / 2``, below the truth
where ``|x|^2 > D`` -- by ``5e-7 (|x|^2 - D)`` nats at the default ``eps`` (``B(eps) = 1e-6``), so
the difference is tiny in value, but only the kernel from ``eps`` is a bound on ``p_eps``.

With ``x_t = a x + sigma z``, ``grad log p(x_t | x) = -z / sigma`` and the two score terms combine
exactly into ``g^2 (||s_theta||^2 + 2 s_theta . z / sigma)`` (the ``||z||^2 / sigma^2`` parts cancel
algebraically). The other two terms are closed forms: ``div f = D f(t) = D d log m / dt``, so the
drift term is ``-D (log m(T) - log m(eps))`` (VP and sub-VP: ``D (B(T) - B(eps)) / 2``; VE: 0), and
``x_T ~ N(a_T x, sigma_T^2 I)`` gives ``-E log pi(x_T) = D/2 log(2 pi v_pi) + (a_T^2 |x|^2 + D sigma_T^2) / (2 v_pi)``.
Only the score integral is estimated by Monte Carlo, with three devices:

1. *Times* from :func:`scoresde.losses.draw_times` (the package's one time sampler): ``"importance"``,
   ``q(t) ~ g^2 / s^2`` (uniform in log-SNR; Song et al. 2021, Section 5; Kingma et al. 2021, eq. 17),
   or ``"uniform"``; ``int F dt = E_q[F / q]``.
2. *Antithetic noise*: the summand ``2 s . z / sigma`` has variance ``~ |s|^2 / sigma^2``, and
   ``sigma^2 ~ g^2 (t - eps)`` vanishes at ``t = eps``, so the plain estimator has infinite variance
   (logarithmically). The average over ``z`` and ``-z`` replaces it by
   ``(s(a x + sigma z) - s(a x - sigma z)) . z / sigma -> 2 z^T (ds/dx) z``, bounded.
3. *A Gaussian control variate*: at high noise every data distribution looks Gaussian and the
   summand carries a chi-square noise of size ``~ g^2 sqrt(2 D)`` per draw. The same summand of the
   reference score ``s_ref(y, t) = -y / (m^2 + s^2)`` (the exact score of the process started from
   ``N(0, I)`` at time 0) is subtracted on the same draws and its exact integral added back. For the
   reference the identity below holds, so its integral is
   ``-log N(x; 0, V(eps)) + E log N(x_T; 0, V(T)) - drift term``, ``V = m^2 + s^2``: no quadrature.

**The gap for a true score.** If ``s_theta`` is the score of a marginal family ``p_t`` of the forward
SDE on ``[eps, T]`` (e.g. the data's), the reverse SDE started from ``p_T`` reproduces the forward
path law, and started from ``pi`` it differs only by the density ratio at ``T``; the bound's gap is
then the KL of the path laws given ``x``:

    L(x) = -log p_eps(x) + E[log p_T(x_T) - log pi(x_T) | x_eps = x],

whose average over ``p_eps`` is ``KL(p_T || pi)`` (the prior-mismatch term of Song et al.'s
Theorem 1). The tests check this identity for a Gaussian and for Gaussian mixtures.

**Units and conventions.** Nats per sample. On a test set :func:`evaluate_bounds` reports bits/dim
with the convention of :func:`~scoresde.likelihood.bits_per_dim`: the continuous bound on uniformly
dequantized data with the offset ``log2(n_levels / (hi - lo))``, so it reads directly against
``evaluate_bpd`` (it is an upper bound on the SDE model's NLL, which for a learned score is close to,
but not the same model as, the ODE's); the DDPM bound on the discrete data, without an offset.

References: Song, Durkan, Murray & Ermon (2021), "Maximum likelihood training of score-based
diffusion models", NeurIPS (Theorems 1 and 3); Kingma, Salimans, Poole & Ho (2021), "Variational
diffusion models", NeurIPS; Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from .._utils import check_choice, check_eps, check_int
from .. import quantize as Q
from ..losses import TIME_SAMPLERS, draw_times
from ..scorefn import ScoreFn
from ..sde import SDE, VPSDE
from .batches import Source, resolve_device
from .bpd import bits_per_dim
from .ddpm_bound import DDPM_TIMES, DDPM_VARIANCES, BoundResult, check_inputs, ddpm_bound
from .flow import warns_in_train_mode

__all__ = ["variational_bound", "evaluate_bounds", "BoundResult", "BoundEvaluation", "BOUNDS"]

#: The bounds :func:`evaluate_bounds` computes.
BOUNDS = ("continuous", "ddpm")

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------
# The continuous-time bound of one batch.
# ---------------------------------------------------------------------------------------------
def variational_bound(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, eps: float = 1e-5, n_times: int = 32,
                      time_sampler: str = "importance", antithetic: bool = True, control_variate: bool = True,
                      generator: Optional[torch.Generator] = None) -> BoundResult:
    """The continuous-time variational bound ``L(x) >= -log p_eps(x)`` of the SDE model, per sample, in nats.

    Song, Durkan, Murray & Ermon (2021), Theorem 3, in the denoising form, on ``[eps, T]`` with the
    transition kernel from ``eps`` (module docstring). The prior and drift terms are exact; the
    score integral is a Monte Carlo average over ``n_times`` draws of ``(t, z)`` per sample.

    Args:
        score_fn: ``score_fn(x, t)``; called under ``torch.no_grad()`` on batches of ``2 B`` rows
            (``B`` with ``antithetic=False``), ``t`` a ``(2 B,)`` tensor in ``x``'s dtype.
        sde: a :class:`~scoresde.sde.VPSDE`, :class:`~scoresde.sde.SubVPSDE` or :class:`~scoresde.sde.VESDE`.
        x: ``(B, *dims)`` points at time ``eps`` (dequantized data, or continuous data).
        eps: the time the density refers to (default 1e-5, as the likelihood).
        n_times: draws of ``(t, z)`` per sample (``>= 2`` for a standard error).
        time_sampler: ``"importance"`` (``q ~ g^2 / s^2``, default) or ``"uniform"`` on ``[eps, T]``.
        antithetic: average each draw over ``z`` and ``-z`` (default; without it the estimator has
            infinite variance, module docstring).
        control_variate: subtract the reference Gaussian's summand and add its exact integral
            (default; unbiased either way).
        generator: a ``torch.Generator`` on ``x``'s device; per draw the times (:func:`draw_times`)
            then ``z`` (``torch.randn`` shaped like ``x``) are drawn from it.

    Returns:
        :class:`BoundResult`: ``nll`` ``(B,)`` float64 nats, its Monte Carlo ``stderr`` over the
        draws, and the terms ``prior`` (``-E log pi(x_T)``), ``drift`` (``-int div f``) and
        ``score`` (the DSM integral), which sum to ``nll``.
    """
    check_inputs(score_fn, sde, x, generator)
    eps = check_eps(eps, sde.T)
    check_int("n_times", n_times)
    check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
    B, D = x.shape[0], x[0].numel()
    x64 = x.detach().to(torch.float64).reshape(B, D)
    sq = (x64 * x64).sum(1)
    ends = torch.tensor([eps, sde.T], dtype=torch.float64, device=x.device)
    lm = sde.log_mean_coeff_unchecked(ends)
    lam = sde.log_snr_unchecked(ends)
    m, s = sde.coeffs_unchecked(ends)
    a_T2 = torch.exp(2.0 * (lm[1] - lm[0]))
    var_T = s[1] ** 2 * -torch.expm1(lam[1] - lam[0])  # the kernel eps -> T
    v_pi = sde.prior_std ** 2
    mean_sq_T = a_T2 * sq + D * var_T  # E |x_T|^2
    prior = 0.5 * D * math.log(2.0 * math.pi * v_pi) + mean_sq_T / (2.0 * v_pi)
    drift = torch.full_like(sq, float(-D * (lm[1] - lm[0])))
    if control_variate:
        V = m * m + s * s  # the reference Gaussian's variance at eps and T
        ref = (0.5 * D * (_LOG_2PI + torch.log(V[0])) + sq / (2.0 * V[0])
               - 0.5 * D * (_LOG_2PI + torch.log(V[1])) - mean_sq_T / (2.0 * V[1]) - drift)
    else:
        ref = torch.zeros_like(sq)
    draws = torch.empty((n_times, B), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for k in range(n_times):
            draws[k] = _score_draw(score_fn, sde, x, x64, eps, lm[0], lam[0], time_sampler, antithetic,
                                   control_variate, generator)
    score = ref + draws.mean(0)
    stderr = draws.std(0) / math.sqrt(n_times) if n_times >= 2 else torch.full_like(sq, math.nan)
    convention = dict(bound="continuous", eps=eps, n_times=n_times, time_sampler=time_sampler, antithetic=antithetic,
                      control_variate=control_variate, sde=repr(sde))
    return BoundResult(nll=prior + drift + score, stderr=stderr, terms=dict(prior=prior, drift=drift, score=score),
                       nfe=n_times * (2 if antithetic else 1), convention=convention)


def _score_draw(score_fn, sde: SDE, x: torch.Tensor, x64: torch.Tensor, eps: float, lm_e, lam_e, time_sampler: str,
                antithetic: bool, control_variate: bool, generator) -> torch.Tensor:
    """One draw of ``(T - eps) w(t) F(t)`` per sample, ``(B,)`` float64, where ``F`` is the DSM summand
    ``g^2 (||s||^2 + 2 s . z / sigma) / 2`` (antithetic, minus the reference's when asked)."""
    B = x.shape[0]
    t, w = draw_times(sde, B, time_sampler, eps, generator=generator, device=x.device)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).to(torch.float64).reshape(B, -1)
    m, s = sde.coeffs_unchecked(t)
    g2 = sde.sde_unchecked(torch.zeros_like(t), t)[1] ** 2
    a = torch.exp(sde.log_mean_coeff_unchecked(t) - lm_e)[:, None]
    sigma = s * torch.sqrt(-torch.expm1(sde.log_snr_unchecked(t) - lam_e))  # the kernel eps -> t
    signs = (1.0, -1.0) if antithetic else (1.0,)
    ys = [a * x64 + sg * sigma[:, None] * z for sg in signs]
    xt = torch.cat(ys).to(x.dtype).reshape((len(ys) * B,) + tuple(x.shape[1:]))
    out = score_fn(xt, torch.cat([t] * len(ys)).to(x.dtype))
    if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(xt.shape)}, got {got}")
    scores = out.detach().to(torch.float64).reshape(len(ys), B, -1)
    inv_v = (1.0 / (m * m + s * s))[:, None] if control_variate else torch.zeros_like(s)[:, None]
    quad = torch.zeros_like(s)
    cross = torch.zeros_like(s)
    for sg, y, sc in zip(signs, ys, scores):
        ref = -y * inv_v  # the reference score (zero without the control variate)
        r = sc - ref
        quad = quad + ((r * r).sum(1) + 2.0 * (r * ref).sum(1)) / len(ys)
        cross = cross + sg * (r * z).sum(1) * (2.0 / len(ys))
    # cross / sigma: at t = eps exactly (a draw of u = 0) sigma = 0 and the antithetic cross term is 0/0
    cross = torch.where(sigma > 0, cross / torch.where(sigma > 0, sigma, torch.ones_like(sigma)),
                        torch.zeros_like(sigma))
    return (sde.T - eps) * w * 0.5 * g2 * (quad + cross)


# ---------------------------------------------------------------------------------------------
# A test set, in bits/dim.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundEvaluation:
    """One variational bound on a whole test set, in bits/dim, per sample and summarised.

    Attributes:
        name: ``"continuous"`` or ``"ddpm"``.
        bpd: ``(repeats, N)`` float64 bits/dim of every sample in every repeat (data order);
            continuous: ``nll / (D ln 2) + log2(n_levels / (hi - lo))`` on dequantized data;
            ddpm: ``nll / (D ln 2)`` on the discrete data.
        nll: ``(repeats, N)`` float64, the bound in nats.
        terms: the bound's terms, ``(repeats, N)`` float64 nats each (they sum to ``nll``).
        mean: each sample averaged over its repeats, then over samples.
        stderr: ``std(per-sample means, ddof=1) / sqrt(N)``: over images, including the Monte Carlo
            noise of the draws and the dequantization (NaN for ``N < 2``).
        n_samples: ``N``.
        nfe: score evaluations per sample and repeat.
        convention: everything the number depends on.
    """

    name: str
    bpd: torch.Tensor
    nll: torch.Tensor
    terms: Dict[str, torch.Tensor]
    mean: float
    stderr: float
    n_samples: int
    nfe: int
    convention: dict

    @property
    def repeats(self) -> int:
        return self.bpd.shape[0]

    @property
    def per_sample_bpd(self) -> torch.Tensor:
        """``(N,)`` float64: each sample's bits/dim averaged over its repeats."""
        return self.bpd.mean(0)

    def summary(self) -> str:
        """One line, e.g. ``1.234 ± 0.010 bits/dim (continuous bound, N=359, repeats=2; ...)``."""
        c, se = self.convention, self.stderr
        digits = 3 if not (math.isfinite(se) and 0 < se < 1e-3) else min(10, 1 - math.floor(math.log10(se)))
        lo, hi = c["data_range"]
        grid = f"{c['n_levels']} levels on [{lo:g}, {hi:g}]"
        if self.name == "continuous":
            how = (f"continuous bound, eps={c['eps']:g}, {c['n_times']} {c['time_sampler']} times"
                   + (", antithetic" if c["antithetic"] else "") + (", Gaussian control variate" if c["control_variate"]
                                                                     else ""))
            deq = ("uniform dequantization, " if c["dequantize"] == "uniform" else "no dequantization, offset of ") + grid
        else:
            terms = "all terms" if c["n_terms"] is None else f"{c['n_terms']} terms drawn"
            how = f"DDPM bound L_VB, N={c['N']} steps, {terms}, sigma^2 = {c['variance']}, {c['chain_times']} times"
            deq = "discrete data on " + grid
        return (f"{self.mean:.{digits}f} ± {se:.{digits}f} bits/dim ({how}; N={self.n_samples}, "
                f"repeats={self.repeats}; {deq})")

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"BoundEvaluation({self.summary()})"

    def to_dict(self, per_sample: bool = True) -> dict:
        """A JSON-serialisable dict (non-finite numbers become ``None``)."""
        fix = (lambda v: v if math.isfinite(v) else None)
        c = dict(self.convention, data_range=list(self.convention["data_range"]))
        out = dict(name=self.name, mean=fix(self.mean), stderr=fix(self.stderr), n_samples=self.n_samples,
                   repeats=self.repeats, nfe=self.nfe, convention=c, summary=self.summary(),
                   terms={k: fix(float(v.mean())) for k, v in self.terms.items()})
        if per_sample:
            out["bpd"] = [[fix(v) for v in row] for row in self.bpd.tolist()]
        return out


@warns_in_train_mode
def evaluate_bounds(
    score_fn: ScoreFn,
    sde: SDE,
    data: Union[torch.Tensor, Iterable],
    *,
    bounds: Optional[Sequence[str]] = None,
    repeats: int = 1,
    dequantize: Optional[str] = "uniform",
    n_levels: int = 256,
    data_range: Tuple[float, float] = (-1.0, 1.0),
    batch_size: int = 256,
    eps: float = 1e-5,
    n_times: int = 32,
    time_sampler: str = "importance",
    ddpm_terms: Optional[int] = None,
    ddpm_variance: str = "beta",
    ddpm_times: str = "snr",
    generator: Optional[torch.Generator] = None,
    device=None,
    progress: bool = False,
) -> Dict[str, BoundEvaluation]:
    """Variational bounds of ``score_fn`` on every sample of ``data``, in bits/dim: the sibling of
    :func:`~scoresde.likelihood.evaluate_bpd`, with the same grid, dequantization and offset.

    Args:
        score_fn, sde: the model.
        data: a tensor ``(N, *dims)`` or an iterable of batches (tensors or ``(x, label)`` tuples), in order.
        bounds: a subset of :data:`BOUNDS`; default ``("continuous", "ddpm")`` for a
            :class:`~scoresde.sde.VPSDE` and ``("continuous",)`` otherwise (the DDPM bound needs a VP SDE).
        repeats: evaluations per sample, each with fresh dequantization noise and fresh draws.
        dequantize: for the continuous bound, ``"uniform"`` (grid data, checked, plus ``U(0, w)`` per
            coordinate) or ``None`` (continuous data as given; the offset is still added, as
            ``evaluate_bpd`` does). The DDPM bound always reads the data as grid values (checked).
        n_levels, data_range: the quantization grid (:mod:`scoresde.quantize`).
        batch_size: samples per call.
        eps, n_times, time_sampler: of :func:`variational_bound`.
        ddpm_terms, ddpm_variance, ddpm_times: ``n_terms``, ``variance`` and ``chain_times`` of
            :func:`~scoresde.likelihood.ddpm_bound`.
        generator: a ``torch.Generator`` on the evaluation device, advanced per batch, per repeat:
            the dequantization noise, the continuous bound's draws, the DDPM bound's draws.
        device: where to evaluate (default: the module's parameters, else the generator's, else the data's).
        progress: a tqdm bar over batches.

    Returns:
        ``{name: BoundEvaluation}`` in the order of ``bounds``; per-sample tensors on the CPU.
    """
    check_int("repeats", repeats)
    check_int("batch_size", batch_size)
    lo, hi, _ = Q.grid_cell(n_levels, data_range)
    if dequantize not in ("uniform", None):
        raise ValueError(f"dequantize must be 'uniform' (quantized data) or None (continuous data), got {dequantize!r}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    if isinstance(bounds, str):
        bounds = (bounds,)
    bounds = tuple(bounds) if bounds is not None else (BOUNDS if isinstance(sde, VPSDE) else BOUNDS[:1])
    if not bounds or len(set(bounds)) != len(bounds):
        raise ValueError(f"bounds must be a non-empty subset of {BOUNDS} without repeats, got {bounds!r}")
    for b in bounds:
        check_choice("bound", b, BOUNDS)
    if "ddpm" in bounds and not isinstance(sde, VPSDE):
        raise TypeError(f"the DDPM bound needs a VPSDE (its discretization is the DDPM chain); got {sde!r}: "
                        f"pass bounds=('continuous',)")
    check_eps(eps, sde.T)
    check_int("n_times", n_times)
    check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
    check_choice("ddpm_variance", ddpm_variance, DDPM_VARIANCES)
    check_choice("ddpm_times", ddpm_times, DDPM_TIMES)
    if ddpm_terms is not None:
        check_int("ddpm_terms", ddpm_terms)
    source = Source(data)
    device = resolve_device(device, score_fn, generator, source)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator is on {generator.device} but evaluation runs on {device}; "
                         f"make it with torch.Generator(device='{device.type}')")
    kw = dict(continuous=dict(eps=eps, n_times=n_times, time_sampler=time_sampler),
              ddpm=dict(n_levels=n_levels, data_range=(lo, hi), n_terms=ddpm_terms, variance=ddpm_variance,
                        chain_times=ddpm_times))
    cols = {b: [] for b in bounds}
    count, num_dims, nfe = 0, None, {}
    with tqdm(total=None, desc="bounds", disable=not progress, leave=False) as bar:
        for first, xb in source.rows(0, None, batch_size):
            where = f"data rows {first}..{first + len(xb) - 1}"
            _check_batch(xb, where, bounds, dequantize, n_levels, (lo, hi))
            xb = xb.to(device)
            num_dims = xb[0].numel()
            rows = {b: [] for b in bounds}
            for _ in range(repeats):
                for b in bounds:
                    if b == "continuous":
                        xr = Q.dequantize(xb, n_levels, (lo, hi), generator) if dequantize == "uniform" else xb
                        res = variational_bound(score_fn, sde, xr, generator=generator, **kw[b])
                    else:
                        res = ddpm_bound(score_fn, sde, xb, generator=generator, **kw[b])
                    rows[b].append(res)
                    nfe[b] = res.nfe
            for b in bounds:
                cols[b].append(rows[b])
            count += xb.shape[0]
            bar.update(1)
    if count == 0:
        raise ValueError("data is empty: nothing to evaluate")
    if source.size is not None and count != source.size:
        raise RuntimeError(f"evaluated {count} samples where the data set has {source.size}")
    common = dict(repeats=repeats, n_levels=n_levels, data_range=(lo, hi), sde=repr(sde))
    return {b: _assemble(b, cols[b], num_dims, nfe[b], common, dequantize, kw[b]) for b in bounds}


def _assemble(name: str, batches: list, num_dims: int, nfe: int, common: dict, dequantize, kw: dict) -> BoundEvaluation:
    """Stack ``batches`` (a list over batches of lists over repeats of :class:`BoundResult`) into one result."""
    def stack(get):
        return torch.cat([torch.stack([get(r).detach().to("cpu", torch.float64) for r in reps]) for reps in batches],
                         dim=1)

    nll = stack(lambda r: r.nll)
    terms = {k: stack(lambda r, k=k: r.terms[k]) for k in batches[0][0].terms}
    lo, hi = common["data_range"]
    if name == "continuous":
        bpd = bits_per_dim(-nll, num_dims, n_levels=common["n_levels"], data_range=(lo, hi)).to(torch.float64)
        convention = dict(batches[0][0].convention, dequantize=dequantize,
                          offset_bits=math.log2(common["n_levels"] / (hi - lo)), **common)
    else:
        bpd = nll / (num_dims * math.log(2.0))
        convention = dict(batches[0][0].convention, dequantize=None, offset_bits=0.0, **common)
    per = bpd.mean(0)
    n = per.numel()
    stderr = float(per.std(unbiased=True) / math.sqrt(n)) if n >= 2 else math.nan
    return BoundEvaluation(name=name, bpd=bpd, nll=nll, terms=terms, mean=float(per.mean()), stderr=stderr,
                           n_samples=n, nfe=nfe, convention=convention)


def _check_batch(xb: torch.Tensor, where: str, bounds, dequantize, n_levels: int, data_range) -> None:
    if not bool(torch.isfinite(xb).all()):
        raise ValueError(f"{where} contain non-finite values (NaN or inf); clean the data first")
    if "ddpm" in bounds or dequantize == "uniform":
        try:
            Q.check_on_grid(xb, n_levels, data_range, name=where)
        except ValueError as e:
            if "ddpm" in bounds and dequantize is None:
                raise ValueError(f"{e} (The DDPM bound is a bound on discrete data: it needs grid values even "
                                 f"with dequantize=None; pass bounds=('continuous',) for continuous data.)") from None
            raise

