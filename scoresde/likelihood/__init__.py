"""Exact likelihood through the probability-flow ODE, in nats and bits per dimension, for a batch
or a whole test set; one concept per file:

* :mod:`~scoresde.likelihood.divergence`: the divergence estimators (exact trace, Hutchinson with
  Rademacher or Gaussian probes) and the probes;
* :mod:`~scoresde.likelihood.flow`: :func:`log_likelihood`, ``log p_eps(x)`` of a batch by the
  instantaneous change of variables along the probability-flow ODE;
* :mod:`~scoresde.likelihood.bpd`: :func:`bits_per_dim` and the test-set result :class:`BPDResult`;
* :mod:`~scoresde.likelihood.evaluate`: :func:`evaluate_bpd`, every sample of a data set with
  dequantization, repeats, a standard error and the convention;
* :mod:`~scoresde.likelihood.budget`: the solver tolerance of :func:`evaluate_bpd` from an error
  budget (a paired pilot estimates the solver's bias; :class:`ToleranceChoice` states it);
* :mod:`~scoresde.likelihood.bounds`: variational upper bounds beside the ODE's exact likelihood: the
  continuous-time bound :func:`variational_bound` (Song, Durkan, Murray & Ermon 2021, Theorem 3) and,
  in :mod:`~scoresde.likelihood.ddpm_bound`, the DDPM bound :func:`ddpm_bound` (Ho et al. 2020, eq. 5);
  :func:`evaluate_bounds` runs them over a test set in bits/dim;
* :mod:`~scoresde.likelihood.baselines`: the classical density baselines (Gaussian, GMM) in bits/dim;
* :mod:`~scoresde.likelihood.batches` and :mod:`~scoresde.likelihood.sharding`: reading the test
  set in order and re-batching it; splitting it across ``torch.distributed`` ranks.

The quantization grid and the dequantization are :mod:`scoresde.quantize`.
"""
from .baselines import baseline_bpds, gaussian_logp, gmm_logp
from .bounds import BOUNDS, BoundEvaluation, evaluate_bounds, variational_bound
from .bpd import BPDResult, bits_per_dim
from .budget import ToleranceChoice
from .ddpm_bound import DDPM_TIMES, DDPM_VARIANCES, BoundResult, ddpm_bound
from .divergence import TRACES, divergence, draw_probes
from .evaluate import evaluate_bpd
from .flow import LikelihoodResult, log_likelihood

__all__ = ["log_likelihood", "LikelihoodResult", "bits_per_dim", "evaluate_bpd", "BPDResult", "TRACES",
           "divergence", "draw_probes", "gaussian_logp", "gmm_logp", "baseline_bpds", "variational_bound",
           "ddpm_bound", "evaluate_bounds", "BoundResult", "BoundEvaluation", "BOUNDS", "DDPM_VARIANCES", "DDPM_TIMES",
           "ToleranceChoice"]
