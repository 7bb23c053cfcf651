"""diffusers models as score models: a ``UNet2DModel`` (or any network called the same way) with the
``DDPMScheduler`` / ``DDIMScheduler`` it was trained with, and the VP SDE of that scheduler's chain.

The chain (Ho et al. 2020): betas ``beta_0 .. beta_{N-1}``, ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``,
``x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps``; diffusers' ``timestep`` is the index ``i``.
Our grid time of step ``i`` is ``t_i = (i + 1) / N`` (:meth:`scoresde.sde.VPSDE.ddpm_schedule`), so the
network is told ``i = N t - 1`` (``ScoreModel(time_input="index")``), fractional between grid times.

Outputs (``scheduler.config.prediction_type``): ``"epsilon"`` is our ``"eps"``; ``"sample"`` our
``"x0"``; ``"v_prediction"`` our ``"v"``: diffusers' ``get_velocity`` is
``sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0`` and its ``step`` reads
``x_0 = sqrt(alpha_bar) x - sqrt(1 - alpha_bar) v``, which is Salimans & Ho (2022, Section 4,
Appendix D) ``v = alpha eps - sigma x_0`` with ``alpha = m``, ``sigma = s``, ours for VP (``r = 1``).

diffusers is not imported here: the scheduler is read through its ``config`` (or its ``betas`` /
``alphas_cumprod`` tables) and the network is called, so any object with that interface works.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..discrete import DDPMSchedule
from ..schedules import DiscreteBeta
from ..score import ScoreModel
from ..sde import VPSDE

__all__ = ["from_diffusers", "DiffusersNet", "scheduler_betas", "PREDICTION_TYPES"]

#: diffusers' ``prediction_type`` -> our parameterization (:mod:`scoresde.score`).
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SDE_KINDS = ("discrete", "continuous")
#: ``variance_type`` values for which the network outputs ``2C`` channels (mean part, variance part).
LEARNED_VARIANCES = ("learned", "learned_range")


class DiffusersNet(nn.Module):
    """``net(x, t_net)`` for :class:`~scoresde.score.ScoreModel`: calls ``unet(x, t_net)`` with the
    diffusers timestep ``t_net`` as a ``(B,)`` floating-point tensor and returns its output tensor
    (``.sample`` of a ``UNet2DOutput``, the first element of a tuple, or the tensor itself).

    ``split_channels``: the network also predicts a variance (``variance_type="learned"`` or
    ``"learned_range"``, Nichol & Dhariwal 2021) and outputs ``2C`` channels; the first ``C`` are the
    prediction (the split diffusers' ``step`` makes), the variance part is dropped (our samplers use
    fixed variances).
    """

    num_classes = 0

    def __init__(self, unet: Any, split_channels: bool = False):
        super().__init__()
        self.unet = unet
        self.split_channels = bool(split_channels)

    def forward(self, x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        # Pitfall (diffusers 0.42.1, UNet2DModel.forward): a timestep that is not a tensor becomes
        # torch.tensor([timestep], dtype=torch.long), so a Python float 3.7 is truncated to 3; a 0-d
        # tensor is reshaped to (1,) and a 1-d tensor used as it is, both keeping their float dtype,
        # then broadcast to the batch. The sinusoidal embedding (get_timestep_embedding) casts the
        # timesteps to float32 (`timesteps[:, None].float()`) whatever the model's dtype, so a
        # fractional timestep reaches the network with float32 resolution (an integer i exactly).
        # Hence: always a (B,) floating-point tensor, never a Python number.
        if not t_net.is_floating_point():
            t_net = t_net.to(x.dtype)
        out = self.unet(x, t_net)
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the unet must return a tensor, a tuple or an object with .sample, got {type(out).__name__}")
        if self.split_channels:
            if out.ndim < 2 or out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"variance_type learned/learned_range: the unet must output 2 x {x.shape[1]} "
                                 f"channels (prediction, variance), got shape {tuple(out.shape)}")
            out = out[:, : x.shape[1]]
        return out


# ---------------------------------------------------------------------------------------------
# The scheduler's chain.
# ---------------------------------------------------------------------------------------------
def _config(scheduler: Any) -> dict:
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        return {}
    try:
        return dict(cfg)
    except (TypeError, ValueError):
        return dict(vars(cfg))


def _refuse_non_vp(scheduler: Any, cfg: dict) -> None:
    """Raise for schedulers that are not the VP (DDPM) chain, or whose network input is not the index."""
    name = type(scheduler).__name__
    has_chain = ("num_train_timesteps" in cfg and ("beta_schedule" in cfg or cfg.get("trained_betas") is not None)) \
        or isinstance(getattr(scheduler, "betas", None), torch.Tensor) \
        or isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor)
    if not has_chain:
        hint = (" It looks like a VE / EDM (sigma) scheduler: use scoresde.VESDE with "
                "scoresde.interop.from_score_sde, or ScoreModel with time_input='sigma' / 'log_sigma'."
                if any(k in cfg for k in ("sigma_min", "sigma_max")) else "")
        raise TypeError(f"from_diffusers needs a VP (DDPM-chain) scheduler with betas, such as DDPMScheduler or "
                        f"DDIMScheduler; {name} has no num_train_timesteps/beta_schedule config and no betas or "
                        f"alphas_cumprod table.{hint}")
    if cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        raise ValueError(f"{name} is configured for flow matching (use_flow_sigmas / prediction_type="
                         "'flow_prediction'), which is not a VP diffusion; from_diffusers supports epsilon, "
                         "v_prediction and sample models of a DDPM chain")
    if cfg.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"{name} has timestep_type={cfg['timestep_type']!r}: its network is conditioned on a "
                         "function of sigma, not on the chain index; from_diffusers needs timestep_type='discrete' "
                         "(or build ScoreModel(net, VPSDE(schedule=DiscreteBeta(betas), N=N), time_input=...) yourself)")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{name} has rescale_betas_zero_snr=True: the last alpha_bar is 0 (infinite noise, "
                         "beta = 1), which no VP SDE with a Gaussian prior reaches at finite log-SNR; not supported")


def _betas_from_config(cfg: dict):
    """The betas the config describes, in float64 (``None`` for a schedule we do not recompute)."""
    n = int(cfg["num_train_timesteps"])
    if cfg.get("trained_betas") is not None:
        return torch.as_tensor(cfg["trained_betas"], dtype=torch.float64).flatten()
    kind = cfg.get("beta_schedule", "linear")
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":  # Ho et al. (2020)
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":  # Rombach et al. (2022): linear in sqrt(beta)
        return torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal (2021), eq. 17, beta clipped at 0.999
        return DDPMSchedule.cosine(n, s=0.008, max_beta=0.999).betas
    return None


def scheduler_betas(scheduler: Any) -> torch.Tensor:
    """The betas ``(N,)`` (float64, CPU) of the chain a diffusers VP scheduler describes.

    From ``scheduler.config`` where we know the formula (``trained_betas``; ``beta_schedule``
    ``"linear"``, ``"scaled_linear"``, ``"squaredcos_cap_v2"``), recomputed in float64 (diffusers keeps
    float32 tables); otherwise (``"sigmoid"``, ``"laplace"``, ...) from ``scheduler.betas`` or, lacking
    that, ``scheduler.alphas_cumprod`` (``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}``), at their float32
    precision. Where both exist, the recomputed betas must agree with ``scheduler.betas`` to float32
    rounding (a scheduler whose tables were changed after construction is refused).
    """
    cfg = _config(scheduler)
    _refuse_non_vp(scheduler, cfg)
    table = getattr(scheduler, "betas", None)
    table = table.detach().to("cpu", torch.float64) if isinstance(table, torch.Tensor) else None
    betas = _betas_from_config(cfg) if "num_train_timesteps" in cfg else None
    if betas is None and table is None:
        abar = getattr(scheduler, "alphas_cumprod", None)
        if not isinstance(abar, torch.Tensor):
            raise ValueError(f"cannot recompute the betas of beta_schedule={cfg.get('beta_schedule')!r} and "
                             f"{type(scheduler).__name__} has no betas or alphas_cumprod table")
        abar = abar.detach().to("cpu", torch.float64)
        betas = 1.0 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    elif betas is None:
        betas = table
    elif table is not None:
        tol = 1e-5 * float(betas.abs().max())  # float32 rounding of the table (and of the cosine's formula)
        if table.shape != betas.shape or float((table - betas).abs().max()) > tol:
            raise ValueError(f"{type(scheduler).__name__}.betas differ from what its config describes "
                             f"(beta_schedule={cfg.get('beta_schedule')!r}, num_train_timesteps="
                             f"{cfg.get('num_train_timesteps')}): were the tables changed after construction? "
                             "Build the scheduler from a config that describes its chain")
    if "num_train_timesteps" in cfg and betas.numel() != int(cfg["num_train_timesteps"]):
        raise ValueError(f"the scheduler has {betas.numel()} betas but num_train_timesteps="
                         f"{cfg['num_train_timesteps']}")
    return betas


def _prediction_type(scheduler: Any, cfg: dict) -> str:
    # (read from the config first: diffusers deprecates reading config entries as attributes)
    pred = cfg["prediction_type"] if "prediction_type" in cfg else getattr(scheduler, "prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {pred!r} of {type(scheduler).__name__}; from_diffusers "
                         f"supports {tuple(PREDICTION_TYPES)} (our {tuple(PREDICTION_TYPES.values())})")
    return pred


def _continuous_sde(cfg: dict, betas: torch.Tensor) -> VPSDE:
    if cfg.get("trained_betas") is not None or cfg.get("beta_schedule", "linear") != "linear" \
            or "num_train_timesteps" not in cfg:
        raise ValueError("sde='continuous' is the linear VP SDE and needs beta_schedule='linear' "
                         f"(got beta_schedule={cfg.get('beta_schedule')!r}, trained_betas="
                         f"{'given' if cfg.get('trained_betas') is not None else None}); use the default "
                         "sde='discrete', whose marginals are the chain's at the grid times")
    n = int(cfg["num_train_timesteps"])
    return VPSDE(float(betas[0]) * n, float(betas[-1]) * n, n)


# ---------------------------------------------------------------------------------------------
# The adapter.
# ---------------------------------------------------------------------------------------------
def from_diffusers(unet: Any, scheduler: Any, *, sde: str = "discrete") -> tuple[ScoreModel, VPSDE]:
    """A diffusers network and its training scheduler as ``(score_model, sde)``.

    Args:
        unet: a diffusers ``UNet2DModel``, or any module called as ``unet(x, timestep)`` returning
            ``.sample``, a tuple whose first element is the output, or the output tensor, shaped like
            ``x`` (``2C`` channels with ``variance_type="learned"``/``"learned_range"``: the first ``C``
            are used). It is trained on the scheduler's chain; class-conditional networks are refused.
        scheduler: the ``DDPMScheduler`` / ``DDIMScheduler`` it was trained with (any diffusers
            scheduler of the same VP chain: ``config`` with ``num_train_timesteps``, ``beta_schedule``,
            ``beta_start``, ``beta_end``, ``trained_betas``, ``prediction_type``; or an object with just
            ``betas`` or ``alphas_cumprod``, read as ``prediction_type="epsilon"``). Only the training
            chain matters: the inference settings (``timestep_spacing``, ``steps_offset``,
            ``set_alpha_to_one``, ``variance_type``, ``clip_sample``, ``thresholding``) are the sampler's
            business, not the model's (see ``docs/interop.md`` for the ones that match our samplers).
        sde: ``"discrete"`` (default): ``VPSDE(schedule=DiscreteBeta(betas), N=N)``, whose
            marginals equal the chain's at the grid times ``t_i = (i + 1)/N`` (``log alpha_bar``
            piecewise linear in between, DPM-Solver's discrete schedule, Lu et al. 2022), so
            ``sample(..., sampler="ddpm"/"ddim", schedule="discrete")`` runs the scheduler's own chain.
            ``"continuous"``: for ``beta_schedule="linear"`` only, ``VPSDE(N beta_start, N beta_end, N)``
            (``VPSDE(0.1, 20)`` for 1e-4..0.02, ``N = 1000``: Song et al. 2021, Appendix B), whose
            ``ddpm_schedule().betas`` are the scheduler's; its continuous marginals differ from the
            chain's by ``O(1/N)``: for 1e-4..0.02, N = 1000, ``s(t_0)^2 = 1.0994e-4`` against
            ``1 - alpha_bar_0 = 1e-4`` (``s`` 4.9% high), falling to 2.6% at ``i = 9``, 0.36% at
            ``i = 99`` and 0.026% at ``i = 499`` (the log-SNR gap 0.095 at ``t_0``); ``m(1)`` is 3.4%
            above ``sqrt(alpha_bar_999)``; the score ``-eps / s(t)`` inherits that gap near the data.

    Returns:
        ``(score_model, sde)``: a :class:`~scoresde.score.ScoreModel` around :class:`DiffusersNet`
        with ``time_input="index"`` (the network is told ``N t - 1`` as a float tensor) and
        parameterization ``"eps"``, ``"v"`` or ``"x0"`` from ``prediction_type``; its train/eval
        mode is the unet's (the unet's own mode is left as it is: call ``.eval()`` before use).
        The score at ``t_i`` is ``-eps_theta(x, i) / sqrt(1 - alpha_bar_i)`` (``"discrete"``).

    Raises:
        TypeError: ``unet`` not callable, or a scheduler that is not a VP chain (VE / EDM sigmas).
        ValueError: ``sde`` not one of ``"discrete"``, ``"continuous"``; ``"continuous"`` for a
            non-linear schedule; unknown ``prediction_type``; flow matching, ``timestep_type`` other than
            ``"discrete"``, ``rescale_betas_zero_snr``; a class-conditional unet.
    """
    if sde not in SDE_KINDS:
        raise ValueError(f"sde must be one of {SDE_KINDS}, got {sde!r}")
    if not callable(unet):
        raise TypeError(f"unet must be a module called as unet(x, timestep), got {type(unet).__name__}")
    if getattr(unet, "class_embedding", None) is not None:
        raise ValueError("this unet is class-conditional (class_embedding is set); from_diffusers adapts "
                         "unconditional networks: wrap it in a module net(x, t_net, y=...) with num_classes "
                         "and pass it to ScoreModel(..., time_input='index') yourself")
    cfg = _config(scheduler)
    betas = scheduler_betas(scheduler)
    pred = _prediction_type(scheduler, cfg)
    split = cfg.get("variance_type") in LEARNED_VARIANCES
    if sde == "discrete":
        the_sde = VPSDE(schedule=DiscreteBeta(betas), N=int(betas.numel()))
    else:
        the_sde = _continuous_sde(cfg, betas)
    model = ScoreModel(DiffusersNet(unet, split_channels=split), the_sde, PREDICTION_TYPES[pred], time_input="index")
    if isinstance(unet, nn.Module):
        model.train(unet.training)  # the same mode on every submodule: the unet's is unchanged
    return model, the_sde
