"""Forward SDEs with closed-form marginals: VP, sub-VP and VE (Song et al. 2021).

Every SDE here is linear in ``x``: ``dx = f(t) x dt + g(t) dW`` and its transition from data is
Gaussian, ``x(t) | x(0) ~ N(m(t) x(0), s(t)^2 I)``. Each class knows ``m``, ``s``, ``f``, ``g`` in
closed form, its prior at ``T``, its log-SNR ``lambda(t) = log(m^2 / s^2)`` and the inverse,
and the discrete chain it turns into (DDPM for VP, SMLD for VE).

Public methods validate their input (shape, device, finite, ``t`` in ``[0, T]``) and raise a
``ValueError`` that says what to change. Each has an ``*_unchecked`` twin (``sde_unchecked``,
``marginal_prob_unchecked``, ``coeffs_unchecked``, ``discretize_unchecked``, ``prior_logp_unchecked``,
``log_mean_coeff_unchecked``, ``log_snr_unchecked``, ``log_snr_inverse_unchecked``) that skips the
checks: samplers, solvers and the likelihood call them in their inner loops, where a check would
cost a host synchronisation, and where adaptive solvers may legally probe a time slightly outside
``[0, T]``. The twins take a ``(B,)`` time tensor on the data's device and trust it. (Their old
underscored names, ``_coeffs``, ``_sde``, ..., work for one release with a ``DeprecationWarning``.)

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR (Sections 3.4, Appendix B).
"""
from __future__ import annotations

import abc
import math
from typing import Optional, Sequence

import torch

from ._deprecated import deprecated_method
from ._utils import TimeLike, append_dims, as_time, batch_sum, check_finite, check_positive, check_x, log_expm1
from .discrete import DDPMSchedule, SMLDSchedule, _check_n
from .schedules import BetaSchedule, CosineBeta, LinearBeta
from .scorefn import ScoreFn


# ---------------------------------------------------------------------------------------------
# The SDE base class.
# ---------------------------------------------------------------------------------------------
class SDE(abc.ABC):
    """A forward SDE ``dx = f(x, t) dt + g(t) dW`` on ``t in [0, T]`` with Gaussian transitions.

    Subclasses implement :meth:`coeffs_unchecked` (``m(t)``, ``s(t)``), :meth:`sde_unchecked`, the prior, and the
    log-SNR pair; everything else follows.
    """

    #: whether :meth:`discretize` is an exact discrete chain (DDPM/SMLD) rather than Euler-Maruyama
    discrete_chain: str = "euler_maruyama"

    def __init__(self, N: int = 1000, T: float = 1.0):
        _check_n(N)
        check_positive(T=T)
        self.N = int(N)
        self.T = float(T)
        self._tables: dict = {}

    # -- hot path, unchecked: for loops that have checked their inputs once -------------------
    @abc.abstractmethod
    def coeffs_unchecked(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``(m(t), s(t))``, each ``(B,)``. Skips every check (see :meth:`coeffs`)."""

    @abc.abstractmethod
    def sde_unchecked(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(drift (B, *dims), diffusion (B,))``. Skips every check (see :meth:`sde`)."""

    def marginal_prob_unchecked(self, x0, t):
        """``(m(t) x0, s(t))``. Skips every check (see :meth:`marginal_prob`)."""
        m, s = self.coeffs_unchecked(t)
        return append_dims(m, x0.ndim) * x0, s

    def discretize_unchecked(self, x, t):
        """Euler-Maruyama step of size ``dt = T / N``: ``f = drift dt``, ``G = g sqrt(dt)``. Skips
        every check (see :meth:`discretize`)."""
        dt = self.T / self.N
        drift, diffusion = self.sde_unchecked(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def _table(self, name: str, device, dtype) -> torch.Tensor:
        key = (name, device, dtype)
        if key not in self._tables:
            self._tables[key] = getattr(self, "_" + name + "_table")().to(device=device, dtype=dtype)
        return self._tables[key]

    # -- public, checked -----------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` shaped like ``x`` and diffusion ``g(t)`` of shape ``(B,)``."""
        check_x(x)
        tt = as_time(t, x, self.T)  # the time (and device) first: a meta tensor has no values to check
        check_finite(x)
        return self.sde_unchecked(x, tt)

    def marginal_prob(self, x0: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``m(t) x0`` (shaped like ``x0``) and std ``s(t)`` (shape ``(B,)``) of ``p_{0t}(x(t) | x0)``."""
        check_x(x0, "x0")
        tt = as_time(t, x0, self.T)
        check_finite(x0, "x0")
        return self.marginal_prob_unchecked(x0, tt)

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the discrete chain at time ``t``: ``x_next = x + f + G z`` with ``G`` of shape ``(B,)``."""
        check_x(x)
        tt = as_time(t, x, self.T)
        check_finite(x)
        return self.discretize_unchecked(x, tt)

    def coeffs(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m(t), s(t))`` of the marginal ``x(t) | x(0) ~ N(m x(0), s^2 I)``, each of shape ``(B,)``."""
        return self.coeffs_unchecked(self._time_vector(t))

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``m(t)``, shape ``(B,)``."""
        return self.coeffs_unchecked(self._time_vector(t))[0]

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """``s(t)``, shape ``(B,)``."""
        return self.coeffs_unchecked(self._time_vector(t))[1]

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log m(t)``, shape ``(B,)``."""
        return self.log_mean_coeff_unchecked(self._time_vector(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log(m(t)^2 / s(t)^2)``, decreasing in ``t``."""
        return self.log_snr_unchecked(self._time_vector(t))

    def log_snr_inverse(self, lam: torch.Tensor) -> torch.Tensor:
        """The time ``t`` with ``lambda(t) = lam`` (for ``lam`` in the range of ``lambda`` on (0, T])."""
        lam = torch.as_tensor(lam, dtype=torch.get_default_dtype()) if not isinstance(lam, torch.Tensor) else lam
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("log-SNR values must be finite")
        return self.log_snr_inverse_unchecked(lam)

    def _time_vector(self, t: TimeLike) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.tensor([float(t)], dtype=torch.get_default_dtype())
        if t.ndim == 0:
            t = t.reshape(1)
        if t.ndim != 1:
            raise ValueError(f"t must be a scalar or a 1-D tensor, got shape {tuple(t.shape)}")
        probe = torch.empty((t.shape[0],), device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float32)
        return as_time(t, probe, self.T)

    @abc.abstractmethod
    def log_mean_coeff_unchecked(self, t):
        """``log m(t)``, ``(B,)``. Skips every check (see :meth:`log_mean_coeff`)."""

    @abc.abstractmethod
    def log_snr_unchecked(self, t):
        """``log(m^2 / s^2)``, ``(B,)``. Skips every check (see :meth:`log_snr`)."""

    @abc.abstractmethod
    def log_snr_inverse_unchecked(self, lam):
        """The time of log-SNR ``lam``. Skips every check (see :meth:`log_snr_inverse`)."""

    # -- prior -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Std of the isotropic Gaussian prior ``p_T``."""

    def prior_sampling(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                       device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Draw from the prior ``N(0, prior_std^2 I)``; random numbers are drawn on ``device``
        (by default the generator's device)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s <= 0 for s in shape):
            raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape}")
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``z`` in nats, per sample: shape ``(B,)``."""
        check_x(z, "z")
        check_finite(z, "z")
        return self.prior_logp_unchecked(z)

    def prior_logp_unchecked(self, z):
        """``log p_T(z)`` in nats, ``(B,)``. Skips every check (see :meth:`prior_logp`)."""
        d = z[0].numel()
        var = self.prior_std**2
        return -0.5 * d * math.log(2.0 * math.pi * var) - batch_sum(z * z) / (2.0 * var)

    # -- reverse ---------------------------------------------------------------------------------
    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or, with ``probability_flow=True``, the probability-flow ODE)."""
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t) -> tensor shaped like x")
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g^2 score] dt + g dW_bar`` (Anderson 1982), run with ``dt < 0``,
    or its probability-flow ODE ``dx = [f - g^2 score / 2] dt`` (Song et al. 2021, eq. 13).

    Same interface as the forward SDE: ``sde(x, t) -> (drift, diffusion)`` and
    ``discretize(x, t) -> (f, G)`` (the reverse-diffusion step of Song et al., eq. 46). In the
    probability-flow case the diffusion is a zero tensor of shape ``(B,)``.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.N, self.T = forward.N, forward.T

    def _combine(self, drift, diffusion, score):
        g2 = append_dims(diffusion * diffusion, drift.ndim)
        half = 0.5 if self.probability_flow else 1.0
        rev_drift = drift - g2 * score * half
        rev_diff = torch.zeros_like(diffusion) if self.probability_flow else diffusion
        return rev_drift, rev_diff

    def _score(self, x, t):
        score = self.score_fn(x, t)
        if not isinstance(score, torch.Tensor) or score.shape != x.shape:
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        return score

    def sde_unchecked(self, x, t):
        drift, diffusion = self.forward.sde_unchecked(x, t)
        return self._combine(drift, diffusion, self._score(x, t))

    def discretize_unchecked(self, x, t):
        f, G = self.forward.discretize_unchecked(x, t)
        return self._combine(f, G, self._score(x, t))

    def sde(self, x: torch.Tensor, t: TimeLike):
        check_x(x)
        tt = as_time(t, x, self.T)
        check_finite(x)
        return self.sde_unchecked(x, tt)

    def discretize(self, x: torch.Tensor, t: TimeLike):
        check_x(x)
        tt = as_time(t, x, self.T)
        check_finite(x)
        return self.discretize_unchecked(x, tt)


# ---------------------------------------------------------------------------------------------
# VP and sub-VP.
# ---------------------------------------------------------------------------------------------
def _make_beta_schedule(schedule, beta_min, beta_max, s) -> BetaSchedule:
    if isinstance(schedule, BetaSchedule):
        return schedule
    if schedule == "linear":
        return LinearBeta(beta_min, beta_max)
    if schedule == "cosine":
        return CosineBeta(s)
    raise ValueError(f"unknown schedule {schedule!r}; choose 'linear' or 'cosine' (or pass a BetaSchedule)")


class _VPFamily(SDE):
    def __init__(self, beta_min=0.1, beta_max=20.0, N=1000, *, schedule="linear", s=0.008, T=None):
        self.schedule = _make_beta_schedule(schedule, beta_min, beta_max, s)
        if T is None:
            T = 1.0 if self.schedule.name != "cosine" else 0.995
        if self.schedule.name == "cosine" and not T <= 1.0:
            raise ValueError(f"the cosine schedule lives on t in [0, 1]; got T={T}")
        super().__init__(N, T)
        chain_n = getattr(self.schedule, "N", None)  # a DiscreteBeta is one chain of its own length
        if self.schedule.name == "discrete" and chain_n is not None and chain_n != self.N:
            raise ValueError(f"the DiscreteBeta schedule has {chain_n} steps but N={self.N}; pass N={chain_n} "
                             "(the SDE's discretization is then the chain itself)")
        if isinstance(self.schedule, LinearBeta) and not self.schedule.beta_max < self.N:
            raise ValueError(f"N={self.N} steps give DDPM betas up to beta_max/N = {self.schedule.beta_max / self.N:g}, "
                             f"which must be below 1: use N > beta_max = {self.schedule.beta_max:g}")

    @property
    def beta_min(self):
        return getattr(self.schedule, "beta_min", None)

    @property
    def beta_max(self):
        return getattr(self.schedule, "beta_max", None)

    def log_mean_coeff_unchecked(self, t):
        return -0.5 * self.schedule.integral(t)

    def beta(self, t: TimeLike) -> torch.Tensor:
        """``beta(t)``, shape ``(B,)``."""
        return self.schedule.beta(self._time_vector(t))

    def ddpm_schedule(self) -> DDPMSchedule:
        """The discrete DDPM chain with ``N`` steps that this SDE discretizes to."""
        return self.schedule.ddpm(self.N)

    def _betas_table(self):
        return self.ddpm_schedule().betas

    def _discrete_index(self, t):
        """DDPM step index of time ``t``: step ``i`` ends at ``t_i = (i + 1) / N`` (nearest, clamped)."""
        return (torch.round(t * self.N) - 1).clamp(0, self.N - 1).long()

    def ddpm_alpha_unchecked(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alpha_i = 1 - beta_i`` of the DDPM step that contains ``t``, ``(B,)`` on ``like``'s device
        in its dtype (the Langevin corrector's step size uses it). Skips every check."""
        return 1.0 - self._table("betas", like.device, like.dtype)[self._discrete_index(t)]

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self):
        return f"{type(self).__name__}(schedule={self.schedule!r}, N={self.N}, T={self.T})"


class VPSDE(_VPFamily):
    """Variance-preserving SDE: ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW``.

    ``m(t) = exp(-B(t)/2)``, ``s(t)^2 = 1 - exp(-B(t))`` (computed with ``expm1``), prior ``N(0, I)``.
    Defaults ``beta_min = 0.1``, ``beta_max = 20``, ``N = 1000`` (Song et al. 2021);
    ``schedule="cosine"`` gives the continuous cosine schedule (default ``T = 0.995``, where
    ``beta`` is still finite). :meth:`discretize` is the DDPM step.
    """

    discrete_chain = "ddpm"

    def coeffs_unchecked(self, t):
        b = self.schedule.integral(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def sde_unchecked(self, x, t):
        beta = self.schedule.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta)

    def discretize_unchecked(self, x, t):
        """DDPM step: ``f = sqrt(1 - beta_i) x - x``, ``G = sqrt(beta_i)``, ``i`` the step ending nearest ``t``."""
        beta = self._table("betas", x.device, x.dtype)[self._discrete_index(t)]
        f = append_dims(torch.sqrt(1.0 - beta), x.ndim) * x - x
        return f, torch.sqrt(beta)

    def log_snr_unchecked(self, t):
        return -log_expm1(self.schedule.integral(t))

    def log_snr_inverse_unchecked(self, lam):
        # lambda = -log(e^B - 1)  =>  B = log(1 + e^{-lambda}) = softplus(-lambda)
        return self.schedule.inverse_integral(torch.nn.functional.softplus(-lam))

    @classmethod
    def from_ddpm(cls, schedule: DDPMSchedule, **kwargs) -> "VPSDE":
        """The VP SDE whose discretization is a given *linear* DDPM schedule:
        ``beta_min = N beta_1``, ``beta_max = N beta_N`` (Song et al. 2021, Appendix B)."""
        if schedule.name != "linear":
            raise ValueError("from_ddpm needs a linear DDPM schedule (DDPMSchedule.linear); "
                             f"got {schedule.name!r}")
        N = schedule.N
        return cls(float(schedule.betas[0]) * N, float(schedule.betas[-1]) * N, N, **kwargs)


class SubVPSDE(_VPFamily):
    """Sub-VP SDE: same drift as VP, diffusion ``sqrt(beta(t) (1 - exp(-2 B(t))))``;
    ``m(t) = exp(-B/2)``, ``s(t) = 1 - exp(-B)`` (so ``s(t)^2`` is below the VP variance);
    prior ``N(0, I)``. Its :meth:`discretize` is Euler-Maruyama with ``dt = T/N``."""

    def coeffs_unchecked(self, t):
        b = self.schedule.integral(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def sde_unchecked(self, x, t):
        beta = self.schedule.beta(t)
        b = self.schedule.integral(t)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta * -torch.expm1(-2.0 * b))

    def log_snr_unchecked(self, t):
        b = self.schedule.integral(t)
        return -b - 2.0 * torch.log(-torch.expm1(-b))

    def log_snr_inverse_unchecked(self, lam):
        # r = e^lambda = u / (1 - u)^2 with u = e^{-B}: the root in (0, 1) is 2r / (2r + 1 + sqrt(4r + 1)),
        # so B = -log u = log1p(w) with w = 1/u - 1 = (1 + sqrt(4r + 1)) / (2r)
        # = e^{-lambda/2} (e^{-lambda/2} / 2 + sqrt(1 + e^{-lambda} / 4)). Taking log1p(w) instead of
        # -log(u) keeps B accurate where u is close to 1 (small t, where -log(u) loses every digit in float32).
        h = torch.exp(-0.5 * lam)
        w = h * (0.5 * h + torch.sqrt(1.0 + 0.25 * h * h))
        return self.schedule.inverse_integral(torch.log1p(w))


# ---------------------------------------------------------------------------------------------
# VE.
# ---------------------------------------------------------------------------------------------
class VESDE(SDE):
    """Variance-exploding SDE: ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dW`` with
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``; ``m(t) = 1``, ``s(t) = sigma(t)``;
    prior ``N(0, sigma_max^2 I)``. Defaults ``sigma_min = 0.01``, ``sigma_max = 50``, ``N = 1000``.

    As in Song et al. (2021), the marginal std is ``sigma(t)`` rather than
    ``sqrt(sigma(t)^2 - sigma_min^2)``: the process is taken to start from data perturbed by
    ``N(0, sigma_min^2 I)``, so the transition of the SDE from time ``s`` to ``t`` adds variance
    ``sigma(t)^2 - sigma(s)^2``. :meth:`discretize` is the SMLD step.
    """

    discrete_chain = "smld"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000, *, T: float = 1.0):
        check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if not sigma_min < sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        super().__init__(N, T)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """``sigma(t)``, shape ``(B,)``."""
        return self._sigma(self._time_vector(t))

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t / self.T * self._log_ratio)

    def coeffs_unchecked(self, t):
        sigma = self._sigma(t)
        return torch.ones_like(sigma), sigma

    def sde_unchecked(self, x, t):
        g = self._sigma(t) * math.sqrt(2.0 * self._log_ratio / self.T)
        return torch.zeros_like(x), g

    def smld_schedule(self) -> SMLDSchedule:
        """The SMLD noise ladder with ``N`` levels that this SDE discretizes to."""
        return SMLDSchedule(self.sigma_min, self.sigma_max, self.N)

    @classmethod
    def from_smld(cls, schedule: SMLDSchedule, **kwargs) -> "VESDE":
        return cls(schedule.sigma_min, schedule.sigma_max, schedule.N, **kwargs)

    def _sigmas_table(self):
        return self.smld_schedule().sigmas

    def _discrete_index(self, t):
        """SMLD level of time ``t``: level ``i`` sits at ``t_i = i T / (N - 1)`` (nearest, clamped)."""
        return torch.round(t / self.T * (self.N - 1)).clamp(0, self.N - 1).long()

    def discretize_unchecked(self, x, t):
        """SMLD step: ``f = 0``, ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)`` (``sigma_{-1} = 0``)."""
        sigmas = self._table("sigmas", x.device, x.dtype)
        i = self._discrete_index(t)
        sigma = sigmas[i]
        prev = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma * sigma - prev * prev)

    def log_mean_coeff_unchecked(self, t):
        return torch.zeros_like(t)

    def log_snr_unchecked(self, t):
        return -2.0 * torch.log(self._sigma(t))

    def log_snr_inverse_unchecked(self, lam):
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio * self.T

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N}, T={self.T})"


# The old underscored names of the unchecked twins (``_coeffs``, ...) work for one more release.
for _cls, _names in ((SDE, ("coeffs", "sde", "marginal_prob", "discretize", "prior_logp", "log_mean_coeff", "log_snr",
                            "log_snr_inverse")), (ReverseSDE, ("sde", "discretize"))):
    for _n in _names:
        setattr(_cls, "_" + _n, deprecated_method("_" + _n, _n + "_unchecked"))
del _cls, _names, _n
