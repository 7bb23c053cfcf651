"""Analytic oracles: Gaussian mixtures whose score and density are exact at every diffusion time.

Every SDE of :mod:`scoresde.sde` is linear with Gaussian transition
``x(t) | x(0) ~ N(m(t) x(0), s(t)^2 I)`` (Song et al. 2021, Section 3.4 and Appendix B). If the data
are a Gaussian mixture ``p_0 = sum_k w_k N(mu_k, Sigma_k)``, then convolving each component with
the transition kernel gives again a Gaussian mixture,

    p_t(x) = sum_k w_k N(x; m(t) mu_k, m(t)^2 Sigma_k + s(t)^2 I),

with the same weights, so ``log p_t`` and the score ``grad_x log p_t`` are known in closed form:

    grad_x log p_t(x) = sum_k r_k(x, t) (m(t) mu_k - x) / (m(t)^2 Sigma_k + s(t)^2),
    r_k(x, t) = softmax_k(log w_k + log N(x; m(t) mu_k, m(t)^2 Sigma_k + s(t)^2 I)).

``Sigma_k`` is diagonal here (isotropic ``sigma_k^2 I`` or ``diag(sigma_k1^2, ..., sigma_kD^2)``),
so every operation is elementwise over the ``D`` coordinates. Samplers are tested on the
distribution they produce and likelihoods on the exact log-density; see ``docs/`` and the tests.

This module also holds the classic 2-D toy data sets (two moons, eight Gaussians, checkerboard,
swiss roll) as reproducible torch generators, and two ready-made oracles (:func:`mixture_2d`,
:func:`mixture_nd`).

Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR.
"""
from __future__ import annotations

from .mixture import GaussianMixture
from .toy import checkerboard, eight_gaussians, eight_gaussians_mixture, mixture_2d, mixture_nd, swiss_roll, two_moons

__all__ = [
    "GaussianMixture",
    "two_moons",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "checkerboard",
    "swiss_roll",
    "mixture_2d",
    "mixture_nd",
]
