"""EDM's Heun sampler with its stochastic churn (Karras, Aittala, Aila & Laine 2022, Algorithm 2),
in the scaled variable ``y = x / m(t)`` and ``sigma_bar = s(t) / m(t)``, so it runs on every SDE.

For any SDE with Gaussian transitions, ``y_t = x_t / m_t`` has the marginals of data plus noise of
std ``sigma_bar_t``, and the probability-flow ODE becomes ``dy / dsigma_bar = (y - D(y; sigma_bar)) /
sigma_bar`` with the denoiser ``D(y; sigma_bar) = x0_hat(m y, t)`` (Karras et al. 2022, eq. 4 and
Table 1, which derive the same with ``s(t) = m``). VE has ``m = 1``, so ``y = x``.
"""
from __future__ import annotations

import math

from .base import Run, Sampler


class HeunEDM(Sampler):
    """Algorithm 2 of Karras et al. (2022): at each grid level ``sigma_i`` (``sigma_bar`` of ``t_i``),

    1. churn: ``gamma_i = min(S_churn / K, sqrt(2) - 1)`` if ``S_min <= sigma_i <= S_max`` else 0,
       ``sigma_hat = sigma_i (1 + gamma_i)`` and ``y_hat = y + sqrt(sigma_hat^2 - sigma_i^2) S_noise z``
       (``sigma_hat`` is capped at ``sigma_bar(T)``: the SDE is not defined beyond ``T``);
    2. Euler: ``d = (y_hat - D(y_hat; sigma_hat)) / sigma_hat``, ``y' = y_hat + (sigma_{i+1} - sigma_hat) d``;
    3. Heun's correction ``y' = y_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2`` with ``d'`` at ``y'``,
       except on the last step with ``final_euler=True`` (default), as in the paper.

    ``S_churn = 0`` (default) is the deterministic second-order Heun method. The grid ends at
    ``eps`` like every other sampler; the paper's step to ``sigma = 0`` is an Euler step,
    ``y - sigma d = D(y; sigma)``, which is exactly the denoising (Tweedie) step that ``denoise``
    takes. NFE: ``2 K`` (``- 1`` with ``final_euler``, ``+ 1`` with ``denoise``). Paper defaults for
    stochastic sampling (ImageNet-64): ``S_churn=80, S_min=0.05, S_max=50, S_noise=1.003``.
    """

    name = "heun_edm"
    order = 2
    nfe_per_step = 2
    default_grid = "karras"
    option_names = ("S_churn", "S_min", "S_max", "S_noise", "final_euler")

    def cost(self, steps, denoise, final_euler: bool = True, **_):
        return 2 * steps - int(bool(final_euler)) + int(denoise)

    stochastic = False  # deterministic at the default S_churn = 0; a run with S_churn > 0 is stochastic

    def run(self, r: Run, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf,
            S_noise: float = 1.0, final_euler: bool = True):
        for name, v in (("S_churn", S_churn), ("S_min", S_min), ("S_noise", S_noise)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {v}")
        if not S_max >= S_min:
            raise ValueError(f"S_max={S_max} must be at least S_min={S_min}")
        K = r.steps
        sig = [s / m for m, s in zip(r.m, r.s)]
        gamma_max = min(S_churn / K, math.sqrt(2.0) - 1.0)
        y = r.x / r.m[0]
        nfe = 0
        with r.bar() as bar:
            for k in range(K):
                t_hat, m_hat, s_hat, sb_hat = r.times[k], r.m[k], r.s[k], sig[k]
                gamma = gamma_max if S_min <= sig[k] <= S_max else 0.0
                if gamma > 0:
                    sb_hat = min(sig[k] * (1.0 + gamma), sig[0])
                    if sb_hat > sig[k]:
                        t_hat = r.time_of_lambda(-math.log(sb_hat)) if sb_hat < sig[0] else r.times[0]
                        m_hat, s_hat = r.coeffs_at(t_hat)
                        sb_hat = s_hat / m_hat
                        y = y + (math.sqrt(max(sb_hat * sb_hat - sig[k] * sig[k], 0.0)) * S_noise) * r.noise(y)
                D = r.predict(m_hat * y, t_hat, m_hat, s_hat)[0]
                d = (y - D) / sb_hat
                dsig = sig[k + 1] - sb_hat
                y_next = y + dsig * d
                nfe += 1
                if not (final_euler and k == K - 1):
                    D2 = r.predict(r.m[k + 1] * y_next, r.times[k + 1], r.m[k + 1], r.s[k + 1])[0]
                    y_next = y + (0.5 * dsig) * (d + (y_next - D2) / sig[k + 1])
                    nfe += 1
                y = y_next
                if r.callback is not None:
                    r.emit(k, r.m[k + 1] * y, D)
                bar.update(1)
        info = dict(S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, final_euler=final_euler)
        return r.finish(r.m[K] * y, info, nfe=nfe + int(r.denoise))
