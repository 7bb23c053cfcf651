"""Classical density baselines in bits/dim, on the same dequantized split as a score model: a
score model's test bits/dim means little alone, and these say how much better it is than simple
models.

* :func:`gaussian_logp`: a full-covariance Gaussian, maximum likelihood (``1e-6 I`` added to the
  covariance for numerical safety only);
* :func:`gmm_logp`: a mixture of ``k`` full-covariance Gaussians fitted by EM (scikit-learn's
  ``GaussianMixture``, ``reg_covar`` 1e-6, ``n_init`` 2), the classical step up from one Gaussian.

Both are exact densities, so their bits/dim is exact; the only randomness is the dequantization
noise, redrawn per repeat (:func:`baseline_bpds`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..quantize import dequantize
from .bpd import bits_per_dim

__all__ = ["gaussian_logp", "gmm_logp", "baseline_bpds"]


def gaussian_logp(train: torch.Tensor, test: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Log-density (nats) of ``test`` under the ML full-covariance Gaussian of ``train`` (float64)."""
    a = train.reshape(train.shape[0], -1).double()
    b = test.reshape(test.shape[0], -1).double()
    mu = a.mean(dim=0)
    cov = torch.cov(a.T, correction=0) + ridge * torch.eye(a.shape[1], dtype=torch.float64)
    return torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(b)


def gmm_logp(train: torch.Tensor, test: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Log-density (nats) of ``test`` under a ``k``-component full-covariance GMM fitted by EM
    (scikit-learn's ``GaussianMixture``, ``reg_covar`` 1e-6, ``n_init`` 2)."""
    from sklearn.mixture import GaussianMixture as SkGMM

    a = train.reshape(train.shape[0], -1).double().numpy()
    b = test.reshape(test.shape[0], -1).double().numpy()
    gmm = SkGMM(n_components=k, covariance_type="full", reg_covar=1e-6, n_init=2, random_state=seed).fit(a)
    return torch.as_tensor(gmm.score_samples(b), dtype=torch.float64)


def baseline_bpds(ds, test: torch.Tensor, k: Optional[int], repeats: int, generator: torch.Generator,
                  seed: int) -> torch.Tensor:
    """``(repeats, N)`` bits/dim of ``test`` (quantized images of ``ds``) under a baseline fitted to
    the dequantized training set of ``ds``: the Gaussian (``k`` None) or a ``k``-component GMM (EM
    seeded ``seed + r`` in repeat ``r``). Each repeat draws a fresh uniform dequantization of the
    training set, then of ``test``, from ``generator``; the fit is redone for each."""
    rows = []
    for r in range(repeats):
        tr = dequantize(ds.train.double(), ds.n_levels, ds.data_range, generator)
        te = dequantize(test.double(), ds.n_levels, ds.data_range, generator)
        logp = gaussian_logp(tr, te) if k is None else gmm_logp(tr, te, k, seed + r)
        rows.append(bits_per_dim(logp, ds.num_dims, n_levels=ds.n_levels, data_range=ds.data_range))
    return torch.stack(rows)
