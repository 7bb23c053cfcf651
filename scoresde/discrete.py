"""Discrete noise chains: the DDPM Markov chain (linear and cosine betas) and the SMLD sigma ladder.

Index convention (0-based, as in most code): ``betas[i]`` is the variance of step ``i``,
which takes ``x_i`` to ``x_{i+1}`` with ``q(x_{i+1} | x_i) = N(sqrt(1 - beta_i) x_i, beta_i I)``;
``x_0`` is data. In the notation of Ho et al. (2020), our ``i`` is their ``t - 1``. So
``alphas_cumprod[i] = prod_{j <= i} (1 - beta_j)`` is the signal variance of ``x_{i+1}``
and ``q_sample(x0, i, noise)`` draws ``x_{i+1}``.

Tables are kept in float64 on the CPU; the methods that touch data move the rows they need to
the data's device and dtype.

References: Ho, Jain & Abbeel (2020) "Denoising Diffusion Probabilistic Models";
Nichol & Dhariwal (2021) "Improved Denoising Diffusion Probabilistic Models" (cosine schedule);
Song & Ermon (2019) "Generative Modeling by Estimating Gradients of the Data Distribution" (SMLD).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ._utils import append_dims, check_int, check_positive, check_x

IndexLike = Union[int, torch.Tensor]


def _index(i: IndexLike, x: torch.Tensor, n: int) -> torch.Tensor:
    """Broadcast an integer step index to a ``(B,)`` long tensor on ``x``'s device, checked."""
    batch = x.shape[0]
    if isinstance(i, bool):
        raise TypeError("step index must be an int or an integer tensor, got bool")
    if isinstance(i, int):
        if not 0 <= i < n:
            raise ValueError(f"step index {i} is outside [0, {n - 1}]")
        return torch.full((batch,), i, device=x.device, dtype=torch.long)
    if not isinstance(i, torch.Tensor) or i.is_floating_point() or i.is_complex():
        raise TypeError(f"step index must be an int or an integer tensor of shape ({batch},)")
    if i.ndim == 0:
        i = i.expand(batch)
    if i.shape != (batch,):
        raise ValueError(f"step index must have shape ({batch},), got {tuple(i.shape)}")
    if bool(((i < 0) | (i >= n)).any()):
        raise ValueError(f"step indices must lie in [0, {n - 1}]")
    return i.to(device=x.device, dtype=torch.long)


def _take(table: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows ``table[i]`` as ``(B, 1, ..., 1)`` in ``x``'s device and dtype."""
    return append_dims(table.to(device=x.device)[i].to(x.dtype), x.ndim)


class DDPMSchedule:
    """The discrete DDPM forward chain defined by its betas.

    Build one with :meth:`linear` or :meth:`cosine`, or from any betas in (0, 1).

    Attributes (float64, shape ``(N,)``): ``betas``, ``alphas = 1 - betas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev`` (with 1 prepended), ``posterior_variance``
    (``beta_tilde_i = beta_i (1 - abar_{i-1}) / (1 - abar_i)``, Ho et al. eq. 7),
    ``posterior_log_variance_clipped`` (index 0 replaced by index 1, as the variance there is 0),
    ``posterior_mean_coef1`` and ``posterior_mean_coef2`` (the coefficients of ``x_0`` and ``x_t``
    in the posterior mean).
    """

    def __init__(self, betas: torch.Tensor, *, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(torch.isfinite(betas).all()) or bool(((betas <= 0) | (betas >= 1)).any()):
            raise ValueError("every beta must lie in the open interval (0, 1)")
        self.name = name
        self.N = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        self.log_alphas_cumprod = torch.cumsum(torch.log1p(-betas), dim=0)
        self.alphas_cumprod = torch.exp(self.log_alphas_cumprod)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (-torch.expm1(self.log_alphas_cumprod)).sqrt()
        one_minus_prev = 1.0 - self.alphas_cumprod_prev
        one_minus = -torch.expm1(self.log_alphas_cumprod)
        self.posterior_variance = betas * one_minus_prev / one_minus
        pv = self.posterior_variance.clone()
        if self.N > 1:
            pv[0] = pv[1]
        self.posterior_log_variance_clipped = torch.log(pv)
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus
        self.posterior_mean_coef2 = one_minus_prev * self.alphas.sqrt() / one_minus

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, N: int = 1000) -> "DDPMSchedule":
        """Linear betas from ``beta_start`` to ``beta_end`` over ``N`` steps (Ho et al. 2020)."""
        check_positive(beta_start=beta_start, beta_end=beta_end)
        _check_n(N)
        if not beta_start < beta_end < 1:
            raise ValueError(f"need beta_start < beta_end < 1, got {beta_start} and {beta_end}")
        return cls(torch.linspace(beta_start, beta_end, N, dtype=torch.float64), name="linear")

    @classmethod
    def cosine(cls, N: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DDPMSchedule":
        """Cosine schedule of Nichol & Dhariwal (2021): ``abar(t) = f(t)/f(0)``,
        ``f(t) = cos^2(((t + s)/(1 + s)) pi/2)``, ``beta_i = 1 - abar((i+1)/N)/abar(i/N)``,
        clipped at ``max_beta`` (which only bites at the last steps)."""
        _check_n(N)
        check_positive(s=s, max_beta=max_beta)
        t = torch.arange(N + 1, dtype=torch.float64) / N
        log_abar = cosine_log_alpha_bar(t, s)
        betas = -torch.expm1(log_abar[1:] - log_abar[:-1])
        betas = betas.clamp(max=max_beta)
        sched = cls(betas, name="cosine")
        sched.clipped = betas >= max_beta
        sched.s = s
        return sched

    # -- the chain ----------------------------------------------------------------------------
    def times(self) -> torch.Tensor:
        """Continuous time of ``x_{i+1}`` for each step index ``i``: ``t_i = (i + 1) / N``."""
        return torch.arange(1, self.N + 1, dtype=torch.float64) / self.N

    def step_kernel(self, x_prev: torch.Tensor, i: IndexLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``q(x_{i+1} | x_i = x_prev)``: ``(sqrt(1 - beta_i) x_prev, sqrt(beta_i))``."""
        check_x(x_prev, "x_prev")
        i = _index(i, x_prev, self.N)
        return _take(self.alphas.sqrt(), i, x_prev) * x_prev, _take(self.betas.sqrt(), i, x_prev)

    def q_mean_std(self, x0: torch.Tensor, i: IndexLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``q(x_{i+1} | x_0)``: ``(sqrt(abar_i) x0, sqrt(1 - abar_i))``."""
        check_x(x0, "x0")
        i = _index(i, x0, self.N)
        return _take(self.sqrt_alphas_cumprod, i, x0) * x0, _take(self.sqrt_one_minus_alphas_cumprod, i, x0)

    def q_sample(self, x0: torch.Tensor, i: IndexLike, noise: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``x_{i+1} ~ q(. | x_0)``; pass ``noise`` (shaped like ``x0``) to fix the draw."""
        mean, std = self.q_mean_std(x0, i)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return mean + std * noise

    def q_posterior(self, x0: torch.Tensor, x_next: torch.Tensor, i: IndexLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_i | x_{i+1}, x_0)`` (Ho et al. eq. 6-7), variance ``(B, 1, ...)``."""
        check_x(x0, "x0")
        if x_next.shape != x0.shape:
            raise ValueError(f"x_next must have the shape of x0 {tuple(x0.shape)}, got {tuple(x_next.shape)}")
        i = _index(i, x0, self.N)
        mean = _take(self.posterior_mean_coef1, i, x0) * x0 + _take(self.posterior_mean_coef2, i, x0) * x_next
        return mean, _take(self.posterior_variance, i, x0)

    def __repr__(self) -> str:
        return f"DDPMSchedule(name={self.name!r}, N={self.N}, beta[0]={self.betas[0]:.3g}, beta[-1]={self.betas[-1]:.3g})"


class SMLDSchedule:
    """The SMLD / NCSN noise ladder: ``sigmas[i] = exp(linspace(log sigma_min, log sigma_max, N))[i]``,
    increasing, as the VE SDE of Song et al. (2021) discretizes it.

    The forward chain adds ``N(0, (sigma_i^2 - sigma_{i-1}^2) I)`` at step ``i`` (with
    ``sigma_{-1} = 0``), so ``x_i ~ N(x_0, sigma_i^2 I)``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        check_positive(sigma_min=sigma_min, sigma_max=sigma_max)
        _check_n(N)
        if not sigma_min < sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_min, self.sigma_max, self.N = float(sigma_min), float(sigma_max), int(N)
        self.sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64))
        self.sigmas_prev = torch.cat([torch.zeros(1, dtype=torch.float64), self.sigmas[:-1]])

    def times(self) -> torch.Tensor:
        """Continuous time of level ``i``: ``t_i = i / (N - 1)`` (so ``sigma_i = sigma(t_i)``)."""
        return torch.arange(self.N, dtype=torch.float64) / max(self.N - 1, 1)

    def step_kernel(self, x_prev: torch.Tensor, i: IndexLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the SMLD step to level ``i``: ``(x_prev, sqrt(sigma_i^2 - sigma_{i-1}^2))``."""
        check_x(x_prev, "x_prev")
        i = _index(i, x_prev, self.N)
        std = (self.sigmas**2 - self.sigmas_prev**2).sqrt()
        return x_prev, _take(std, i, x_prev)

    def q_mean_std(self, x0: torch.Tensor, i: IndexLike) -> tuple[torch.Tensor, torch.Tensor]:
        check_x(x0, "x0")
        i = _index(i, x0, self.N)
        return x0, _take(self.sigmas, i, x0)

    def q_sample(self, x0: torch.Tensor, i: IndexLike, noise: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        mean, std = self.q_mean_std(x0, i)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return mean + std * noise

    def __repr__(self) -> str:
        return f"SMLDSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"


def cosine_log_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """``log(f(t)/f(0))`` for the cosine schedule, accurate on all of ``[0, 1]``.

    With ``a0 = s/(1+s) pi/2`` and ``d = t/(1+s) pi/2``, ``cos(a0 + d)/cos(a0) = cos d - tan(a0) sin d
    = 1 - 2 sin^2(d/2) - tan(a0) sin d``, so the log is a ``log1p`` of a small number near t = 0.
    Near ``t = 1`` the same ratio is ``sin((1 - t)/(1+s) pi/2) / cos(a0)`` (``1 - t`` is exact there),
    which keeps full relative accuracy and is exactly 0 at ``t = 1`` (``log abar(1) = -inf``);
    the ``log1p`` form would round to a value below -1 there and give NaN.
    """
    a0 = s / (1.0 + s) * math.pi / 2.0
    scale = math.pi / (2.0 * (1.0 + s))
    low = t < 0.5
    # Each branch sees only times where it is accurate (and finite, so autograd stays clean).
    t_lo = torch.where(low, t, torch.zeros_like(t))
    t_hi = torch.where(low, torch.full_like(t, 0.5), t)
    d = t_lo * scale
    near0 = torch.log1p(-2.0 * torch.sin(d / 2.0) ** 2 - math.tan(a0) * torch.sin(d))
    near1 = torch.log(torch.sin((1.0 - t_hi) * scale)) - math.log(math.cos(a0))
    return 2.0 * torch.where(low, near0, near1)


def _check_n(N: int) -> None:
    check_int("N (the number of discrete steps)", N)
