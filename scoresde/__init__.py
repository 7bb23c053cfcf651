"""scoresde: continuous-time score-based generative modelling with PyTorch.

The public API is re-exported here by name; nothing else is public.
"""
from .data import DATASETS, Dataset, dequantize, iterate_batches, load_cifar10, load_dataset, load_digits, load_mnist, load_toy
from .discrete import DDPMSchedule, SMLDSchedule
from .guidance import NULL_CLASS, Guidance, GuidedScore, guided_score, resolve_guidance
from .interop import from_diffusers, from_score_sde
from .io import atomic_write, atomic_write_with
from .likelihood import (BoundEvaluation, BoundResult, BPDResult, LikelihoodResult, bits_per_dim, ddpm_bound,
                         evaluate_bounds, evaluate_bpd, log_likelihood, ToleranceChoice, variational_bound)
from .losses import dsm_loss, importance_density, loss_weight, sample_importance_time
from .metrics import (
    ClassAccuracy,
    DigitsClassifier,
    GaussianStats,
    KIDResult,
    MomentErrors,
    PrecisionRecall,
    SampleQuality,
    calibrate_threshold,
    class_accuracy,
    digits_classifier,
    digits_features,
    energy_distance,
    feature_statistics,
    frechet_distance,
    kid,
    mmd,
    moment_errors,
    null_distribution,
    precision_recall,
    sample_quality,
)
from .nets import GaussianFourierEmbedding, MLPScoreNet, SinusoidalEmbedding, UNet
from .sampling import CORRECTORS, GRIDS, PREDICTORS, SAMPLERS, Sampler, SampleResult, sample, time_grid
from .score import PARAMETERIZATIONS, ScoreModel
from .schedules import DiscreteBeta
from .sde import SDE, BetaSchedule, CosineBeta, LinearBeta, ReverseSDE, SubVPSDE, VESDE, VPSDE
from .solvers import METHODS, ButcherTableau, ODEResult, SolverStatus, StepSizeController, available_methods, solve_ode
from .training import (CheckpointError, RunFolderBusy, TrainConfig, TrainingDiverged, TrainResult, UnverifiedCheckpointWarning,
                       build_model, build_sde, load_checkpoint, load_model, train)
from .targets import (
    GaussianMixture,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    mixture_2d,
    mixture_nd,
    swiss_roll,
    two_moons,
)

__version__ = "0.1.0"

__all__ = [
    # SDEs and discrete chains
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "BetaSchedule", "LinearBeta", "CosineBeta",
    "DiscreteBeta",
    "DDPMSchedule", "SMLDSchedule",
    # oracles and toy data
    "GaussianMixture", "mixture_2d", "mixture_nd", "two_moons", "eight_gaussians", "eight_gaussians_mixture",
    "checkerboard", "swiss_roll",
    # conditional models and classifier-free guidance
    "NULL_CLASS", "Guidance", "GuidedScore", "guided_score", "resolve_guidance",
    # sampling
    "sample", "SampleResult", "SAMPLERS", "Sampler", "GRIDS", "time_grid", "PREDICTORS", "CORRECTORS",
    # likelihood
    "log_likelihood", "LikelihoodResult", "bits_per_dim", "evaluate_bpd", "BPDResult",
    "ToleranceChoice", "variational_bound", "ddpm_bound", "evaluate_bounds", "BoundResult", "BoundEvaluation",
    # models trained elsewhere
    "from_diffusers", "from_score_sde",
    # ODE solvers
    "solve_ode", "ODEResult", "SolverStatus", "available_methods", "METHODS", "StepSizeController", "ButcherTableau",
    # score models, networks and training losses
    "ScoreModel", "PARAMETERIZATIONS", "MLPScoreNet", "UNet", "SinusoidalEmbedding", "GaussianFourierEmbedding",
    "dsm_loss", "loss_weight", "importance_density", "sample_importance_time",
    # training
    "TrainConfig", "TrainResult", "TrainingDiverged", "train", "build_sde", "build_model", "load_checkpoint",
    "load_model", "CheckpointError", "UnverifiedCheckpointWarning", "RunFolderBusy",
    # data
    "Dataset", "DATASETS", "load_dataset", "load_digits", "load_mnist", "load_cifar10", "load_toy", "dequantize",
    "iterate_batches",
    # two-sample metrics
    "energy_distance", "mmd", "null_distribution", "calibrate_threshold", "moment_errors", "MomentErrors",
    "sample_quality", "SampleQuality", "frechet_distance", "feature_statistics", "GaussianStats", "kid", "KIDResult",
    "precision_recall", "PrecisionRecall", "digits_classifier", "digits_features", "DigitsClassifier",
    "class_accuracy", "ClassAccuracy",
    # files
    "atomic_write", "atomic_write_with",
]
