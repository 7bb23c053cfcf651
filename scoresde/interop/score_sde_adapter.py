"""score_sde_pytorch models as score models: the original code's time and output conventions.

The original score-SDE code (Song et al. 2021, github.com/yang-song/score_sde_pytorch) calls every
network as ``model(x, labels)`` and turns its output into a score in ``models/utils.py``,
``get_score_fn(sde, model, train, continuous)``. Its five cases, restated (no code is copied):

=============================  =======================================  ===============================
case                           ``labels`` the network sees              score
=============================  =======================================  ===============================
VP, ``continuous=True``        ``999 t``                                ``-out / s(t)``
sub-VP (always continuous)     ``999 t``                                ``-out / s(t)``
VP, ``continuous=False``       ``t (N - 1)`` (a float)                  ``-out / sqrt(1 - abar_k)``,
                                                                        ``k = floor(t (N - 1))``
VE, ``continuous=True``        ``s(t) = sigma_min (sigma_max /          ``out``
                               sigma_min)^t``
VE, ``continuous=False``       ``round((T - t)(N - 1))`` (long)         ``out``
=============================  =======================================  ===============================

``s(t)`` is the SDE's marginal std (``sde_lib.py``: ``marginal_prob``); ``abar_k`` is the
cumulative product of ``1 - beta_j`` of the chain ``beta_j = linspace(beta_min / N, beta_max / N, N)``
(``sde_lib.VPSDE.sqrt_1m_alphas_cumprod``), which is our ``VPSDE(beta_min, beta_max, N).ddpm_schedule()``.
The VE discrete label indexes the network's own noise table, which is descending (index 0 is
``sigma_max``; ``models/utils.py``, ``get_sigmas``), hence the reversed index.

:func:`from_score_sde` returns a :class:`~scoresde.score.ScoreModel` with the matching time input
(``"scaled_t"``, ``"sigma"``, ``"reversed_index"``) and parameterization (``"eps"`` or ``"score"``),
or, for VP discrete, a :class:`ChainVPScoreModel`, whose std is the chain's step function.
The conventions, the recipe for the original checkpoints and what differs from the original's
bits/dim are in ``docs/interop.md``.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .._utils import append_dims, check_number
from ..score import ScoreModel
from ..sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["from_score_sde", "ChainVPScoreModel", "SDE_NAMES"]

#: The accepted ``sde_name`` values (case-insensitive), with the original configs' spellings
#: (``config.training.sde``) as aliases.
SDE_NAMES = {"vp": "vp", "vpsde": "vp", "subvp": "subvp", "subvpsde": "subvp", "ve": "ve", "vesde": "ve"}

_VP_DEFAULTS = dict(beta_min=0.1, beta_max=20.0)
_VE_DEFAULTS = dict(sigma_min=0.01, sigma_max=50.0)


class ChainVPScoreModel(ScoreModel):
    """The score of an original *discrete* VP (DDPM) model: ``-out / sqrt(1 - abar_k)``, ``k = floor(t (N - 1))``.

    The network sees ``labels = t (N - 1)`` (time input ``"scaled_t"`` with ``time_scale = N - 1``)
    and predicts the noise; the original code divides by the std of the discrete chain at the
    index ``labels.long()`` (score_sde_pytorch ``models/utils.py``, ``get_score_fn`` with
    ``continuous=False``), not by the SDE's ``s(t)``. This class does the same: its coefficients
    ``(m, s)`` are the chain's ``(sqrt(abar_k), sqrt(1 - abar_k))`` at that index, from
    ``sde.ddpm_schedule()`` (float64 tables, cast to ``x``'s dtype), so :meth:`score`,
    :meth:`eps` and :meth:`denoise` all use the chain's marginal.

    How this differs from the continuous ``s(t)``: ``s_chain(t)`` is a step function, constant on
    ``[k / (N - 1), (k + 1) / (N - 1))``, and it is the chain's std after step ``k``, which the chain's
    own SDE ``VPSDE(schedule=DiscreteBeta(betas), N=N)`` has exactly at ``t = (k + 1) / N`` (and the
    linear :class:`~scoresde.sde.VPSDE` to ``O(1/N)``), not at ``k / (N - 1)``. Near
    ``t = 0`` the gap is largest: ``s_chain(0) = sqrt(beta_0) = sqrt(beta_min / N)`` (0.01 for the
    defaults), where ``s(0) = 0``; at ``t = 1e-3`` the chain still says 0.01 while
    ``s(1e-3) = 0.0105``, and at ``t = 1e-5`` ``s = 0.001``. For the defaults the relative gap
    ``|s(t) / s_chain(t) - 1|`` is at most 5 % from ``t = 0.01`` on, 0.5 % from ``t = 0.1``, 0.05 % from
    ``t = 0.5``. Times outside ``[0, T]`` (a solver's probe) use the end entries (the original's
    index would run past the table or, below ``t = -1/(N - 1)``, wrap around to its end).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._chain_cache: dict = {}

    def _chain_tables(self, device, dtype):
        key = (device, dtype)
        cache = self._chain_cache
        if key not in cache:
            chain = self.sde.ddpm_schedule()
            cache[key] = (chain.sqrt_alphas_cumprod.to(device=device, dtype=dtype),
                          chain.sqrt_one_minus_alphas_cumprod.to(device=device, dtype=dtype))
        return cache[key]

    def chain_index(self, t: torch.Tensor) -> torch.Tensor:
        """The chain index ``k = floor(labels)`` of the label ``labels = t (N - 1)`` the network sees,
        clamped to ``0 .. N - 1``; ``(B,)`` long."""
        return torch.floor(self.net_time(t)).clamp(0, self.sde.N - 1).long()

    def _broadcast_coeffs(self, t: torch.Tensor, ndim: int):
        mean, std = self._chain_tables(t.device, t.dtype)
        k = self.chain_index(t)
        return append_dims(mean[k], ndim), append_dims(std[k], ndim)


def _resolve_name(sde_name) -> str:
    key = sde_name.lower() if isinstance(sde_name, str) else sde_name
    if not isinstance(key, str) or key not in SDE_NAMES:
        raise ValueError(f"unknown sde_name {sde_name!r}; choose 'vp', 'subvp' or 've' (the original configs' "
                         "'vpsde', 'subvpsde', 'vesde' are accepted too)")
    return SDE_NAMES[key]


def _check_family(name: str, given: dict) -> None:
    """Refuse parameters of the other SDE family that differ from their defaults: a VP model given
    ``sigma_max`` (or a VE model ``beta_max``) is a mixed-up config, not something to ignore."""
    other = _VE_DEFAULTS if name in ("vp", "subvp") else _VP_DEFAULTS
    wrong = [k for k, v in other.items() if given[k] != v]
    if wrong:
        mine = "beta_min, beta_max" if name in ("vp", "subvp") else "sigma_min, sigma_max"
        raise ValueError(f"{', '.join(wrong)} {'is a parameter' if len(wrong) == 1 else 'are parameters'} of the "
                         f"{'VE' if name != 've' else 'VP'} SDE, but sde_name={name!r}: for this SDE give {mine} "
                         "(config.model.* of the original config) and leave the others at their defaults")


def _make_sde(name: str, beta_min, beta_max, sigma_min, sigma_max, N) -> SDE:
    if name == "ve":
        return VESDE(sigma_min, sigma_max, N)
    return (VPSDE if name == "vp" else SubVPSDE)(beta_min, beta_max, N)


def from_score_sde(model: nn.Module, sde_name: str, *, continuous: bool = True, beta_min: float = 0.1,
                   beta_max: float = 20.0, sigma_min: float = 0.01, sigma_max: float = 50.0,
                   N: int = 1000) -> Tuple[ScoreModel, SDE]:
    """A score_sde_pytorch model as ``(score_model, sde)``, with the original code's conventions.

    Args:
        model: the network, a module called as the original code calls it, ``model(x, labels)``
            with ``x`` ``(B, C, H, W)`` (any ``(B, *dims)``) and ``labels`` ``(B,)``, returning a
            tensor shaped like ``x`` (e.g. an NCSN++ / DDPM++ module with its weights loaded; see
            ``docs/interop.md`` for the checkpoint format). Its train/eval mode is left as it is
            and the returned wrapper starts in the same mode: put the model in ``eval()`` mode
            first, as the original's evaluation does (``score_model.eval()`` switches both).
        sde_name: ``"vp"``, ``"subvp"`` or ``"ve"`` (case-insensitive; ``"vpsde"``, ``"subvpsde"``,
            ``"vesde"``, the original's ``config.training.sde``, also work).
        continuous: ``config.training.continuous``: whether the model was trained in continuous
            time. ``False`` (VP: the DDPM chain, VE: the NCSN noise ladder) changes the labels (and,
            for VP, the std). The original treats every sub-VP model as continuous, so sub-VP with
            ``continuous=False`` is refused.
        beta_min, beta_max: ``config.model.beta_min, beta_max`` of a VP / sub-VP model (0.1, 20).
        sigma_min, sigma_max: ``config.model.sigma_min, sigma_max`` of a VE model (0.01, 50).
        N: ``config.model.num_scales`` (1000): the discrete models' number of steps / noise
            levels, and the returned SDE's ``N``.

    Returns:
        ``(score_model, sde)``: ``sde`` is ``VPSDE(beta_min, beta_max, N)``,
        ``SubVPSDE(beta_min, beta_max, N)`` or ``VESDE(sigma_min, sigma_max, N)``; ``score_model``
        is a :class:`~scoresde.score.ScoreModel` (a :class:`ChainVPScoreModel` for VP discrete)
        whose ``score_model(x, t)`` equals the original ``get_score_fn(sde, model,
        continuous=continuous)(x, t)`` (module docstring): VP / sub-VP continuous: ``"eps"``
        with ``time_input="scaled_t"``, ``time_scale=999``; VP discrete: ``"eps"``, labels
        ``t (N - 1)``, the chain's std; VE continuous: ``"score"`` with ``time_input="sigma"``;
        VE discrete: ``"score"`` with ``time_input="reversed_index"`` (long labels).

    Raises:
        ValueError: an unknown ``sde_name``; sub-VP with ``continuous=False``; VE parameters
            (``sigma_min``, ``sigma_max``) changed for a VP model or VP ones for a VE model;
            invalid SDE parameters (e.g. ``beta_min >= beta_max``); ``N < 2`` for a discrete model.
        TypeError: ``model`` is not an ``nn.Module``, or ``continuous`` is not a bool.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module called as model(x, labels), got {type(model).__name__}")
    name = _resolve_name(sde_name)
    if not isinstance(continuous, bool):
        raise TypeError(f"continuous must be True or False (config.training.continuous), got {continuous!r}")
    given = dict(beta_min=beta_min, beta_max=beta_max, sigma_min=sigma_min, sigma_max=sigma_max)
    for key, value in given.items():
        check_number(key, value, 0.0, lo_open=True)
    _check_family(name, given)
    if name == "subvp" and not continuous:
        raise ValueError("sub-VP models are continuous in the original code (get_score_fn uses labels 999 t and "
                         "s(t) for every subVPSDE, whatever `continuous` says): pass continuous=True")
    sde = _make_sde(name, beta_min, beta_max, sigma_min, sigma_max, N)
    if not continuous and sde.N < 2:
        raise ValueError(f"a discrete model needs N >= 2 steps (its labels scale with N - 1), got N={N}")
    if name == "ve":
        score_model = ScoreModel(model, sde, "score", "sigma" if continuous else "reversed_index")
    elif continuous:
        score_model = ScoreModel(model, sde, "eps", "scaled_t", time_scale=999.0)
    else:
        score_model = ChainVPScoreModel(model, sde, "eps", "scaled_t", time_scale=float(sde.N - 1))
    score_model.training = model.training  # the wrapper starts in the model's mode (only its own flag)
    return score_model, sde

