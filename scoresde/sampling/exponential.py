"""Exponential integrators of the probability-flow ODE (and of the reverse SDE), written once for
every linear SDE in terms of ``m(t)``, ``s(t)`` and ``lambda(t) = log(m/s)``.

With the data prediction ``x0_hat = (x + s^2 score)/m`` and the noise prediction
``eps_hat = -s score``, the probability-flow ODE of any SDE with Gaussian transitions has the exact
solution from ``s`` to ``t`` (``h = lambda_t - lambda_s > 0``; Lu et al. 2022, eq. 3.4; 2022b, eq. 9)

    x_t = (m_t / m_s) x_s - m_t  int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat dlambda      (noise form)
    x_t = (s_t / s_s) x_s + s_t  int_{lambda_s}^{lambda_t} e^{lambda} x0_hat dlambda        (data form)

so VP, sub-VP and VE (``m = 1``) share one code path. Expanding ``x0_hat`` in ``lambda`` about
``lambda_s`` gives ``x_t = (s_t/s_s) x_s + m_t sum_j I_j(h) x0_hat^{(j)}(lambda_s)`` with

    I_j(h) = int_0^h e^{-(h - u)} u^j / j! du = sum_{n >= 0} (-1)^n h^{n+j+1} / (n+j+1)!,

(``I_0 = 1 - e^{-h}``, ``I_j = h^j/j! - I_{j-1}``): the multistep methods below approximate the
derivatives by divided differences of earlier data predictions and keep the ``I_j`` exact.

- :class:`DPMSolver` (``dpm_solver_2``, ``dpm_solver_3``): singlestep DPM-Solver with noise
  prediction (Lu et al. 2022, Algorithms 1 and 2), orders 1-3.
- :class:`DPMSolverPPMultistep` (``dpmpp_2m``, ``dpmpp_3m``): multistep DPM-Solver++ with data
  prediction (Lu et al. 2022b, Algorithm 2 and its third-order extension).
- :class:`DPMSolverPP2MSDE` (``dpmpp_2m_sde``): SDE-DPM-Solver++(2M) for the reverse diffusion SDE
  (Lu et al. 2022b, Appendix; the "midpoint" form).
- :class:`UniPC` (``unipc``): UniPC with the ``B(h) = e^h - 1`` corrector ("bh2"), data prediction
  (Zhao et al. 2023).

References: Lu, Zhou, Bao, Chen, Li & Zhu (2022), "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps", NeurIPS; Lu et al. (2022b), "DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models", arXiv:2211.01095; Zhao, Bai, Rao,
Zhou & Lu (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", NeurIPS.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .base import Run, Sampler


def phi_integrals(h: float, n: int) -> list[float]:
    """``[I_0(h), ..., I_n(h)]`` with ``I_j(h) = int_0^h e^{-(h-u)} u^j / j! du`` (host floats).

    The series ``sum_k (-1)^k h^{k+j+1} / (k+j+1)!`` for ``h < 1`` (no cancellation however small the
    step), the recurrence ``I_j = h^j / j! - I_{j-1}`` from ``I_0 = 1 - e^{-h}`` above."""
    if h < 1.0:
        out = []
        for j in range(n + 1):
            term, total, k = h ** (j + 1) / math.factorial(j + 1), 0.0, 0
            while True:
                total += term
                k += 1
                term *= -h / (k + j + 1)
                if abs(term) < 1e-17 * abs(total):
                    break
            out.append(total)
        return out
    out = [-math.expm1(-h)]
    for j in range(1, n + 1):
        out.append(h ** j / math.factorial(j) - out[-1])
    return out


def _orders(order: int, steps: int, lower_order_final: bool, final_euler: bool, below: float) -> list[int]:
    """Per-step orders of a multistep method: warm up from order 1 (only ``k`` earlier points exist at
    step ``k``); with ``lower_order_final`` and fewer than ``below`` steps also descend at the end
    (Lu et al. 2022b, Sec. 5: the last steps are the stiffest); ``final_euler`` makes the last step
    first order."""
    out = []
    for k in range(steps):
        p = min(order, k + 1)
        if lower_order_final and steps < below:
            p = min(p, steps - k)
        if final_euler and k == steps - 1:
            p = 1
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# Singlestep DPM-Solver (noise prediction).
# ---------------------------------------------------------------------------------------------
class DPMSolver(Sampler):
    """Singlestep DPM-Solver (Lu et al. 2022, Algorithms 1-2) with noise prediction.

    From ``t_k`` to ``t_{k+1}`` with ``h = lambda_{k+1} - lambda_k`` and ``eps_s = eps_hat(x, t_k)``:

    - order 1 (= DDIM): ``x' = (m'/m) x - s' (e^h - 1) eps_s``;
    - order 2 (``r1 = 1/2``): ``u = (m_1/m) x - s_1 (e^{r1 h} - 1) eps_s`` at ``lambda_k + r1 h``,
      ``x' = (m'/m) x - s' (e^h - 1) eps_s - s'/(2 r1) (e^h - 1) (eps(u) - eps_s)``;
    - order 3 (``r1 = 1/3, r2 = 2/3``): Algorithm 2 of the paper.

    NFE per step = order. With ``nfe=N`` the steps follow the paper's "fast" variant
    (:meth:`fast_orders`), so exactly ``N`` evaluations are used (``N - 1`` plus the denoising step
    when ``denoise``). ``info["orders"]`` lists them.
    """

    default_grid = "logsnr"
    option_names = ("order",)

    def __init__(self, name: str, order: int):
        self.name, self.order, self.nfe_per_step = name, order, order

    def _order(self, options) -> int:
        order = options.get("order", self.order)
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        return order

    def cost(self, steps, denoise, **options):
        return steps * self._order(options) + int(denoise)

    @staticmethod
    def fast_orders(n: int, order: int) -> list[int]:
        """Per-step orders that spend exactly ``n`` evaluations, the strategy of DPM-Solver-fast
        (Lu et al. 2022, Sec. 3.4 and App. D.1): order-3 steps, and at the end one step of order 2
        and one of order 1 when ``n`` is a multiple of 3 (one more, smaller step), else one step of
        the remainder's order; for order 2 a final first-order step when ``n`` is odd."""
        if order == 1 or n == 1:
            return [1] * n
        if n < order:
            return DPMSolver.fast_orders(n, n)
        if order == 2:
            return [2] * (n // 2) + ([1] if n % 2 else [])
        k = n // 3
        return [3] * (k - 1) + [2, 1] if n % 3 == 0 else [3] * k + [n % 3]

    def steps_for_nfe(self, nfe, denoise, **options):
        n = nfe - int(denoise)
        if n < 1:
            raise ValueError(f"nfe={nfe} leaves no evaluation for a {self.name} step after the denoising step; "
                             "raise nfe or pass denoise=False")
        return len(self.fast_orders(n, self._order(options)))

    def run(self, r: Run, order: Optional[int] = None, **_):
        order = self._order({} if order is None else {"order": order})
        K = r.steps
        orders = [order] * K
        if r.nfe_budget is not None:
            orders = self.fast_orders(r.nfe_budget - int(r.denoise), order)
        x = r.x
        with r.bar() as bar:
            for k, p in enumerate(orders):
                x, x0 = self.step(r, x, k, p)
                r.emit(k, x, x0)
                bar.update(1)
        return r.finish(x, dict(order=order, orders=orders), nfe=sum(orders) + int(r.denoise))

    @staticmethod
    def step(r: Run, x: torch.Tensor, k: int, p: int):
        lam_s, lam_t = r.lam[k], r.lam[k + 1]
        h = lam_t - lam_s
        m_s, m_t, s_t = r.m[k], r.m[k + 1], r.s[k + 1]
        x0_s, e_s = r.predict_at(x, k)
        base = (m_t / m_s) * x - (s_t * math.expm1(h)) * e_s
        if p == 1:
            return base, x0_s

        def stage(rk: float):
            t_k = r.time_of_lambda(lam_s + rk * h)
            m_k, s_k = r.coeffs_at(t_k)
            return t_k, m_k, s_k

        if p == 2:
            r1 = 0.5
            t1, m1, s1 = stage(r1)
            u = (m1 / m_s) * x - (s1 * math.expm1(r1 * h)) * e_s
            _, e1 = r.predict(u, t1, m1, s1)
            return base - (s_t / (2.0 * r1) * math.expm1(h)) * (e1 - e_s), x0_s
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        t1, m1, s1 = stage(r1)
        t2, m2, s2 = stage(r2)
        u1 = (m1 / m_s) * x - (s1 * math.expm1(r1 * h)) * e_s
        d1 = r.predict(u1, t1, m1, s1)[1] - e_s
        u2 = ((m2 / m_s) * x - (s2 * math.expm1(r2 * h)) * e_s
              - (s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)) * d1)
        d2 = r.predict(u2, t2, m2, s2)[1] - e_s
        return base - (s_t / r2 * (math.expm1(h) / h - 1.0)) * d2, x0_s


# ---------------------------------------------------------------------------------------------
# Multistep DPM-Solver++ (data prediction).
# ---------------------------------------------------------------------------------------------
def _multistep_correction(hist: list, h: float, p: int, I: list[float]) -> Optional[torch.Tensor]:
    """``sum_{j=1}^{p-1} I_j(h) d^j x0 / dlambda^j`` at the newest point of ``hist`` (a list of
    ``(lambda, x0_hat)``, oldest first), from divided differences of the last ``p`` entries."""
    if p == 1:
        return None
    (l0, m0), (l1, m1) = hist[-1], hist[-2]
    r0 = (l0 - l1) / h
    d1_0 = (m0 - m1) / r0  # ~ h x0' - h h0 / 2 x0''
    if p == 2:
        # Lu et al. (2022b), Algorithm 2: (1 - e^{-h}) / 2 in place of I_1 / h (both h/2 + O(h^2), so the
        # same order); measured more accurate than the Taylor coefficient on the oracles.
        return (0.5 * I[0]) * d1_0
    l2, m2 = hist[-3]
    r1 = (l1 - l2) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)  # h x0' + O(h^3)
    d2 = (d1_0 - d1_1) / (r0 + r1)                # h^2 x0'' / 2 + O(h^3)
    # I_1 x0' + I_2 x0'' = (I_1 / h) d1 + (2 I_2 / h^2) d2: note the factor 2 (docs/sampling.md).
    return (I[1] / h) * d1 + (2.0 * I[2] / (h * h)) * d2


class DPMSolverPPMultistep(Sampler):
    """Multistep DPM-Solver++ (Lu et al. 2022b, Algorithm 2) with data prediction.

    From ``t_k`` to ``t_{k+1}``, ``h = lambda_{k+1} - lambda_k``, with the data predictions
    ``D_k, D_{k-1}, ...`` at the earlier grid points:
    ``x' = (s'/s) x + m' [I_0 D_k + I_1 D' + I_2 D'']`` where ``I_0 = 1 - e^{-h}`` and the derivatives
    in ``lambda`` are divided differences. 2M is the paper's
    ``x' = (s'/s) x + m' (1 - e^{-h}) [(1 + 1/(2r)) D_k - D_{k-1}/(2r)]`` (its ``I_1 D'`` term is
    ``(1 - e^{-h})/2 (D_k - D_{k-1})/r``, equal to the Taylor ``(I_1/h)(D_k - D_{k-1})/r`` up to O(h^3));
    3M adds the second difference with the exact ``I_1``, ``I_2``.

    Options: ``final_euler`` (last step first order; diffusers PR 5541), ``lower_order_final``
    (below 15 steps the last steps descend in order, as Lu et al. recommend for trained image
    models; default off: on the oracles it costs accuracy, docs/sampling.md).
    One evaluation per step; the first steps warm up from order 1.
    """

    default_grid = "logsnr"
    option_names = ("final_euler", "lower_order_final")

    def __init__(self, name: str, order: int):
        self.name, self.order = name, order

    def run(self, r: Run, final_euler: bool = False, lower_order_final: bool = False):
        orders = _orders(self.order, r.steps, lower_order_final, final_euler, 15)
        x, hist = r.x, []
        with r.bar() as bar:
            for k, p in enumerate(orders):
                x0, _ = r.predict_at(x, k)
                hist = (hist + [(r.lam[k], x0)])[-3:]
                h = r.lam[k + 1] - r.lam[k]
                I = phi_integrals(h, 2)
                x = (r.s[k + 1] / r.s[k]) * x + (r.m[k + 1] * I[0]) * x0
                corr = _multistep_correction(hist, h, p, I)
                if corr is not None:
                    x = x + r.m[k + 1] * corr
                r.emit(k, x, x0)
                bar.update(1)
        return r.finish(x, dict(order=self.order, orders=orders, final_euler=final_euler,
                                lower_order_final=lower_order_final))


class DPMSolverPP2MSDE(Sampler):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Appendix B, "midpoint" form) for the reverse diffusion
    SDE ``dx = [f x - g^2 score] dt + g dW``, whose exact solution in ``lambda`` is

        x_t = (s_t/s_s) e^{-h} x_s + 2 m_t int e^{-2 (lambda_t - lambda)} x0_hat dlambda
              + s_t sqrt(1 - e^{-2h}) z.

    Step: ``x' = (s'/s) e^{-h} x + m' (1 - e^{-2h}) [D_k + (D_k - D_{k-1}) / (2 r)] + s' sqrt(1 - e^{-2h}) z``
    with ``r = h_{k-1}/h_k`` (first step, and the last with ``final_euler``: ``D_k`` alone). This is
    also k-diffusion's ``sample_dpmpp_2m_sde`` at ``eta = 1`` (``solver_type="midpoint"``) and
    diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``. One evaluation
    per step; the sample is drawn from the model's distribution (tested against the oracle).
    """

    name = "dpmpp_2m_sde"
    order = 2
    stochastic = True
    default_grid = "logsnr"
    option_names = ("final_euler",)

    def run(self, r: Run, final_euler: bool = False):
        x, prev = r.x, None
        with r.bar() as bar:
            for k in range(r.steps):
                x0, _ = r.predict_at(x, k)
                h = r.lam[k + 1] - r.lam[k]
                q = -math.expm1(-2.0 * h)
                d = x0
                if prev is not None and not (final_euler and k == r.steps - 1):
                    rr = (r.lam[k] - prev[0]) / h
                    d = x0 + (x0 - prev[1]) / (2.0 * rr)
                x = (r.s[k + 1] / r.s[k] * math.exp(-h)) * x + (r.m[k + 1] * q) * d
                x = x + (r.s[k + 1] * math.sqrt(q)) * r.noise(x)
                prev = (r.lam[k], x0)
                r.emit(k, x, x0)
                bar.update(1)
        return r.finish(x, dict(final_euler=final_euler))


# ---------------------------------------------------------------------------------------------
# UniPC (data prediction, B(h) = e^h - 1).
# ---------------------------------------------------------------------------------------------
def _unipc_rhos(rks: list[float], h: float, I: list[float], B: float) -> list[float]:
    """Coefficients ``rho`` of ``B(h) sum_m rho_m D1_m`` that match ``sum_j I_j(h) x0^{(j)}`` up to the
    ``len(rks)``-th derivative: ``sum_m rho_m r_m^{j-1} = j! I_j(h) / (h^j B(h))``, ``j = 1..n``
    (Zhao et al. 2023, Theorem 3.1). A single term takes ``rho = 1/2``, the limit of its exact root
    as ``h -> 0``, which keeps the order (as the authors' reference implementation does)."""
    n = len(rks)
    if n == 1:
        return [0.5]
    R = torch.tensor([[rk ** (j - 1) for rk in rks] for j in range(1, n + 1)], dtype=torch.float64)
    b = torch.tensor([math.factorial(j) * I[j] / (h ** j * B) for j in range(1, n + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, b).tolist()


class UniPC(Sampler):
    """UniPC (Zhao et al. 2023) with the ``B(h) = e^h - 1`` variant ("bh2"; in the data form
    ``B = 1 - e^{-h} = I_0``) and data prediction, orders 1-3 (option ``order``, default 2).

    Predictor UniP-p from ``t_k`` to ``t_{k+1}``, with ``r_m = (lambda_{k-m} - lambda_k)/h`` and
    ``D1_m = (D_{k-m} - D_k)/r_m`` for ``m = 1..p-1``:
    ``x~ = (s'/s) x + m' I_0 D_k + m' B sum_m rho^p_m D1_m``.
    Corrector UniC-p, with the evaluation ``D~ = x0_hat(x~, t_{k+1})`` that the next step needs anyway:
    the same update with one more term ``r = 1``, ``D1 = D~ - D_k``, raising the order by one at no
    extra evaluation. The last step is not corrected (that would cost an evaluation); the next step
    reuses ``D~``. ``lower_order_final`` lowers the order of the last steps to the number of steps
    left, as the reference code does by default; here it is off by default: it makes the last step
    an uncorrected first-order one, which caps the convergence order at 3 and costs accuracy on the
    oracles (docs/sampling.md). One evaluation per step; ``info["orders"]``.
    """

    name = "unipc"
    order = 2
    default_grid = "logsnr"
    option_names = ("order", "lower_order_final")

    def run(self, r: Run, order: int = 2, lower_order_final: bool = False):
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        K = r.steps
        orders = _orders(order, K, lower_order_final, False, math.inf)
        x = r.x
        x0, _ = r.predict_at(x, 0)
        hist = [(r.lam[0], x0)]
        with r.bar() as bar:
            for k, p in enumerate(orders):
                h = r.lam[k + 1] - r.lam[k]
                I = phi_integrals(h, 3)
                B = I[0]
                l0, m0 = hist[-1]
                rks = [(hist[-1 - j][0] - l0) / h for j in range(1, p)]
                d1s = [(hist[-1 - j][1] - m0) / rk for j, rk in zip(range(1, p), rks)]
                base = (r.s[k + 1] / r.s[k]) * x + (r.m[k + 1] * I[0]) * m0
                x_pred = base
                if d1s:
                    rho = _unipc_rhos(rks, h, I, B)
                    x_pred = base + (r.m[k + 1] * B) * sum(c * d for c, d in zip(rho, d1s))
                if k + 1 < K:
                    x0_new, _ = r.predict_at(x_pred, k + 1)
                    rho_c = _unipc_rhos(rks + [1.0], h, I, B)
                    terms = d1s + [x0_new - m0]
                    x = base + (r.m[k + 1] * B) * sum(c * d for c, d in zip(rho_c, terms))
                    hist = (hist + [(r.lam[k + 1], x0_new)])[-3:]
                else:
                    x = x_pred
                r.emit(k, x, m0)
                bar.update(1)
        return r.finish(x, dict(order=order, orders=orders, lower_order_final=lower_order_final, variant="bh2"))
