"""ScoreModel: a network, an SDE and a parameterization, turned into a score function.

All SDEs of :mod:`scoresde.sde` have Gaussian transitions ``x_t = m(t) x_0 + s(t) z``,
``z ~ N(0, I)`` (Song et al. 2021, eq. 29 ff.). The network output ``out = net(x_t, net_time(t))``
is read as one of four quantities, each an affine function of the score
``grad log p_t(x) = -E[z | x_t = x] / s`` (Tweedie's formula, Efron 2011; Vincent 2011):

=========  ================================  ===================================  =====================
name       the network predicts              score(x, t)                          regression target
=========  ================================  ===================================  =====================
``eps``    ``z``                             ``-out / s``                         ``z``
``score``  the score itself                  ``out``                              ``-z / s``
``x0``     ``x_0``                           ``-(x - m out) / s^2``               ``x_0``
``v``      ``v = (m z - s x_0) / r``         ``-(s x / r + m out) / (r s)``       ``(m z - s x_0) / r``
=========  ================================  ===================================  =====================

with ``r = sqrt(m^2 + s^2)``.

* ``eps``: Ho et al. (2020), "Denoising diffusion probabilistic models".
* ``score``: the raw score, no ``1/s`` output scaling (NCSN++'s ``scale_by_sigma``,
  ``score = out / s``, is ``eps`` with the sign flipped: use ``"eps"`` for it).
* ``x0``: the denoiser ``D(x, t) = E[x_0 | x_t]`` (Karras et al. 2022 call it ``D``).
* ``v``: Salimans & Ho (2022), "Progressive distillation for fast sampling of diffusion models",
  Section 4 and Appendix D: ``v = alpha eps - sigma x_0`` for ``alpha^2 + sigma^2 = 1``. For a
  VP SDE ``r = 1`` and ours is exactly theirs, with ``alpha = m``, ``sigma = s``. For sub-VP
  (``r < 1``) and VE (``r > 1``) we apply their definition to the variance-preserving rescaling
  ``x_t / r = (m/r) x_0 + (s/r) z``, i.e. ``alpha = m/r``, ``sigma = s/r``; then
  ``x_0 = alpha (x/r) - sigma v`` and ``z = sigma (x/r) + alpha v`` hold exactly, and ``v`` keeps
  unit scale (the raw ``m z - s x_0`` grows like ``sigma_max`` for VE).

Every prediction is affine in the network output: ``eps_hat - z = eps_scale(t) (out - target)``
with ``eps_scale = 1, -s, -m/s, m/r`` for ``eps, score, x0, v``. :mod:`scoresde.losses` uses this to
compute the score-matching residual in the network's own units, free of cancellation.

The network time (what the network is told about ``t``) is chosen in one place, :meth:`ScoreModel.net_time`.

Class-conditional models (Ho & Salimans 2022, "Classifier-free diffusion guidance"): every method
takes ``y=None`` (a ``(B,)`` integer tensor of labels, ``-1`` = ``NULL_CLASS`` = no label) and
passes it to the network, ``net(x, t_net, y=y)``; the table above then holds for the conditional
distribution, ``score(x, t, y) = grad_x log p_t(x | y)``, with ``y = None`` (or all ``-1``) the
unconditional ``grad_x log p_t(x)`` of the same network.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from ._utils import TimeLike, append_dims, check_x
from .sde import SDE, VESDE

__all__ = ["ScoreModel", "PARAMETERIZATIONS", "TIME_INPUTS"]

PARAMETERIZATIONS = ("eps", "score", "x0", "v")
TIME_INPUTS = ("auto", "t", "scaled_t", "index", "dpm_solver", "reversed_index", "sigma", "log_sigma", "log_snr")


class ScoreModel(nn.Module):
    """A network with an SDE and a parameterization: ``score_fn(x, t)`` for samplers and likelihoods.

    Args:
        net: a module called as ``net(x, t_net)`` with ``x`` of shape ``(B, *dims)`` and ``t_net``
            of shape ``(B,)``, returning a tensor shaped like ``x`` (e.g. :class:`scoresde.nets.MLPScoreNet`,
            :class:`scoresde.nets.UNet`); a conditional one (attribute ``num_classes > 0``) is also
            called as ``net(x, t_net, y=y)``.
        sde: the forward SDE, which gives ``m(t), s(t)`` through ``sde.coeffs_unchecked``.
        parameterization: ``"eps"``, ``"score"``, ``"x0"`` or ``"v"`` (module docstring).
        time_input: what the network sees as time (:meth:`net_time`):

            * ``"t"``: ``t`` itself, in ``[0, T]``;
            * ``"scaled_t"``: ``time_scale * t / T`` (``[0, 999]`` by default), the range the DDPM
              U-Net's sinusoidal embedding was made for; the continuous-time VP and sub-VP models
              of Song et al. (2021) are conditioned on ``999 t`` (score_sde_pytorch
              ``models/utils.py``, ``get_score_fn``: ``labels = t * 999``; its discrete VP models
              take ``t (N - 1)``, the same for ``N = 1000``);
            * ``"index"``: ``N t - 1``, the step index ``i`` of the SDE's DDPM chain, whose step
              ``i`` sits at ``t_i = (i + 1) / N`` (:meth:`~scoresde.sde.VPSDE.ddpm_schedule`);
              fractional between the grid times. This is the ``timestep`` a diffusers
              ``UNet2DModel`` trained with ``DDPMScheduler`` expects (its timesteps are
              ``0 .. N-1``, step ``i`` having ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``);
            * ``"dpm_solver"``: ``1000 (t - 1/N)``, DPM-Solver's input for discrete-time models
              (Lu et al. 2022, the ``model_wrapper`` of their code: a network trained on
              ``N`` steps sees ``1000 i / N``); equal to ``"index"`` for ``N = 1000``;
            * ``"reversed_index"``: ``round((T - t)(N - 1))`` as a long tensor, the label of the
              original code's discrete VE (NCSN) models, whose noise table is descending (index 0
              is ``sigma_max``; score_sde_pytorch ``get_score_fn``);
            * ``"sigma"``: ``s(t)``, the marginal std, the label of the original code's continuous VE
              models (NCSN++ takes the log itself; ``get_score_fn``: ``labels = std``);
            * ``"log_sigma"``: ``log s(t)``, as NCSN++ conditions VE models on ``log sigma``
              (Song et al. 2021, with Gaussian-Fourier features); ``-inf`` at ``t = 0`` for VP;
              EDM's ``c_noise = log(sigma) / 4`` is this over 4 (Karras et al. 2022, Table 1);
            * ``"log_snr"``: ``log(m^2 / s^2)`` (Kingma et al. 2021), the same for every SDE with the
              same SNR schedule; ``+inf`` at ``t = 0`` for VP;
            * ``"auto"`` (default): ``"log_sigma"`` for :class:`~scoresde.sde.VESDE`, otherwise ``"scaled_t"``;
            * or a callable ``t (B,) -> (B,)``.

            The resolved choice is stored in :attr:`time_input`.
        time_scale: the factor of ``"scaled_t"`` (default 999).
        net_kwargs: fixed keyword arguments passed to every network call, ``net(x, t_net, **net_kwargs)``
            (e.g. ``return_dict=False`` or an option of a network trained elsewhere). They are the same
            for every call, so they must not depend on the batch: per-sample inputs other than the
            class labels ``y`` (which the guided 2B batch and the per-sample solver select row by
            row) belong in a wrapper module.

    Calling the model, ``model(x, t, y=None)``, returns the score (as :meth:`score` and its alias
    :meth:`score_fn` do), so the model itself can be passed wherever a ``score_fn`` is expected;
    :meth:`net_output` is the raw network output, which :meth:`eps` and :meth:`denoise` convert. ``t`` is a ``(B,)`` tensor or a number; these
    methods do no host synchronisation and do not check the range of ``t`` (solvers may probe
    slightly outside ``[0, T]``), so they can run inside sampling loops. The network must not be
    evaluated at ``t = 0`` for VP-type SDEs (``s(0) = 0``): samplers and losses use ``t >= eps > 0``.

    Class labels: every method takes ``y=None``; ``y`` is a ``(B,)`` integer tensor on ``x``'s
    device, labels ``0 .. num_classes - 1`` or ``-1`` (:data:`~scoresde._utils.NULL_CLASS`, that row
    unconditional); ``y=None`` is the unconditional score (the network is called as ``net(x, t_net)``,
    which a conditional network reads as all rows ``-1``). The shape, dtype and device of ``y`` are
    checked by the network without host synchronisation; its values are not (check them once with
    :func:`scoresde._utils.check_labels`). ``y`` given to an unconditional model
    (:attr:`num_classes` ``== 0``) is a ``ValueError``.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps",
                 time_input: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "auto", *,
                 time_scale: float = 999.0, net_kwargs: Optional[dict] = None):
        super().__init__()
        if net_kwargs is not None and not isinstance(net_kwargs, dict):
            raise TypeError(f"net_kwargs must be a dict of keyword arguments, got {type(net_kwargs).__name__}")
        if net_kwargs and "y" in net_kwargs:
            raise ValueError("net_kwargs may not hold 'y': class labels are passed per call (model(x, t, y=...))")
        if not callable(net):
            raise TypeError(f"net must be a module called as net(x, t_net), got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if callable(time_input):
            resolved = time_input
        elif time_input == "auto":
            resolved = "log_sigma" if isinstance(sde, VESDE) else "scaled_t"
        elif time_input in TIME_INPUTS:
            resolved = time_input
        else:
            raise ValueError(f"unknown time_input {time_input!r}; choose one of {TIME_INPUTS} or pass a callable")
        if not (isinstance(time_scale, (int, float)) and time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = resolved
        self.time_scale = float(time_scale)
        self.net_kwargs = dict(net_kwargs or {})

    # -- time ------------------------------------------------------------------------------------
    @staticmethod
    def _time(t: TimeLike, x: torch.Tensor) -> torch.Tensor:
        """Broadcast ``t`` (number, 0-d or ``(B,)`` tensor) to ``(B,)`` in ``x``'s dtype; no value check."""
        batch = x.shape[0]
        if isinstance(t, bool):
            raise TypeError("t must be a number or a tensor, got bool")
        if isinstance(t, (int, float)):
            return torch.full((batch,), float(t), device=x.device, dtype=x.dtype)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a number or a tensor of shape ({batch},), got {type(t).__name__}")
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},) (one time per sample), got {tuple(t.shape)}")
        return t.to(device=x.device, dtype=x.dtype)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input for times ``t`` ``(B,)``: the one place this choice is made
        (see ``time_input`` in the class docstring). Returns ``(B,)`` in ``t``'s dtype (long for
        ``"reversed_index"``)."""
        ti = self.time_input
        if callable(ti):
            return ti(t)
        if ti == "t":
            return t
        if ti == "scaled_t":
            return t * (self.time_scale / self.sde.T)
        if ti == "index":
            return t * self.sde.N - 1.0
        if ti == "dpm_solver":
            return (t - 1.0 / self.sde.N) * 1000.0
        if ti == "reversed_index":
            return torch.round((self.sde.T - t) * (self.sde.N - 1)).long()
        if ti == "sigma":
            return self.sde.coeffs_unchecked(t)[1]
        if ti == "log_sigma":
            return torch.log(self.sde.coeffs_unchecked(t)[1])
        return self.sde.log_snr_unchecked(t)  # "log_snr"

    # -- network ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """The number of classes of a conditional network (``net.num_classes``); 0: unconditional."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    def net_output(self, x: torch.Tensor, t: TimeLike, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw network output ``net(x, net_time(t))`` (``net(x, net_time(t), y=y)`` with labels; the
        parameterization's quantity), shaped like ``x``."""
        check_x(x)
        self._check_like_net(x)
        t = self._time(t, x)
        kw = self.net_kwargs
        if y is None:
            out = self.net(x, self.net_time(t), **kw)
        elif self.num_classes == 0:
            raise ValueError("this ScoreModel is unconditional (its network has num_classes=0) but was given class "
                             "labels y: pass y=None, or train a conditional model (a network built with "
                             "num_classes=K; TrainConfig(num_classes=K))")
        else:
            out = self.net(x, self.net_time(t), y=y, **kw)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the network must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        return out

    def _check_like_net(self, x: torch.Tensor) -> None:
        """``x`` must have the dtype and device of the network's parameters (outside autocast): say so
        here rather than let a matrix product deep inside the network fail."""
        p = next((q for q in self.net.parameters() if q.is_floating_point()), None)
        if p is None or torch.is_autocast_enabled():
            return
        if x.dtype != p.dtype:
            raise TypeError(f"x is {x.dtype} but the network's parameters are {p.dtype}: pass x.to({p.dtype}) "
                            f"(for sampling: dtype={p.dtype}), or convert the model with model.to({x.dtype})")
        if x.device != p.device:
            raise ValueError(f"x is on {x.device} but the network is on {p.device}: pass x.to('{p.device}') "
                             f"(for sampling: device='{p.device}'), or move the model with model.to('{x.device}')")

    def forward(self, x: torch.Tensor, t: TimeLike, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The score ``grad_x log p_t(x)`` (``grad_x log p_t(x | y)`` with labels; same as :meth:`score`),
        so the model itself is a ``score_fn``."""
        return self.score(x, t, y)

    def _broadcast_coeffs(self, t: torch.Tensor, ndim: int):
        m, s = self.sde.coeffs_unchecked(t)
        return append_dims(m, ndim), append_dims(s, ndim)

    def _eps_from(self, out, x, m, s):
        p = self.parameterization
        if p == "eps":
            return out
        if p == "score":
            return -s * out
        if p == "x0":
            return (x - m * out) / s
        r = torch.sqrt(m * m + s * s)
        return (s * x / r + m * out) / r  # v

    def _x0_from(self, out, x, m, s):
        p = self.parameterization
        if p == "eps":
            return (x - s * out) / m
        if p == "score":
            return (x + s * s * out) / m
        if p == "x0":
            return out
        r = torch.sqrt(m * m + s * s)
        return (m * x / r - s * out) / r  # v

    def _score_from(self, out, x, m, s):
        p = self.parameterization
        if p == "score":
            return out
        if p == "x0":
            return -(x - m * out) / (s * s)
        return -self._eps_from(out, x, m, s) / s

    # -- conversions -----------------------------------------------------------------------------
    def score(self, x: torch.Tensor, t: TimeLike, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``grad_x log p_t(x)`` (``grad_x log p_t(x | y)`` given labels ``y``) as the model estimates
        it; shaped like ``x``."""
        out = self.net_output(x, t, y)
        m, s = self._broadcast_coeffs(self._time(t, x), x.ndim)
        return self._score_from(out, x, m, s)

    def score_fn(self, x: torch.Tensor, t: TimeLike, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Same as :meth:`score`: pass ``model.score_fn`` wherever a ``score_fn(x, t)`` (or a
        conditional ``score_fn(x, t, y=labels)``) is expected."""
        return self.score(x, t, y)

    def eps(self, x: torch.Tensor, t: TimeLike, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Noise estimate ``eps_hat = E[z | x_t = x (, y)] = -s(t) score``; shaped like ``x``."""
        out = self.net_output(x, t, y)
        m, s = self._broadcast_coeffs(self._time(t, x), x.ndim)
        return self._eps_from(out, x, m, s)

    def denoise(self, x: torch.Tensor, t: TimeLike, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Data estimate ``x0_hat = E[x_0 | x_t = x (, y)] = (x + s^2 score) / m`` (Tweedie); shaped like ``x``."""
        out = self.net_output(x, t, y)
        m, s = self._broadcast_coeffs(self._time(t, x), x.ndim)
        return self._x0_from(out, x, m, s)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """What the network should output at ``x_t = m(t) x0 + s(t) noise``: ``noise`` (eps),
        ``-noise / s`` (score), ``x0`` (x0) or ``(m noise - s x0) / r`` (v); shaped like ``x0``."""
        check_x(x0, "x0")
        if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}")
        m, s = self._broadcast_coeffs(self._time(t, x0), x0.ndim)
        p = self.parameterization
        if p == "eps":
            return noise
        if p == "score":
            return -noise / s
        if p == "x0":
            return x0
        r = torch.sqrt(m * m + s * s)
        return (m * noise - s * x0) / r

    def eps_scale(self, t: torch.Tensor) -> torch.Tensor:
        """``k(t)`` with ``eps_hat - noise = k(t) (out - target)``, shape ``(B,)``:
        ``1`` (eps), ``-s`` (score), ``-m/s`` (x0), ``m/r`` (v). Equivalently
        ``s (score + noise / s) = -k(t) (out - target)``."""
        m, s = self.sde.coeffs_unchecked(t)
        p = self.parameterization
        if p == "eps":
            return torch.ones_like(s)
        if p == "score":
            return -s
        if p == "x0":
            return -m / s
        return m / torch.sqrt(m * m + s * s)

    def extra_repr(self) -> str:
        ti = self.time_input if isinstance(self.time_input, str) else getattr(self.time_input, "__name__", "callable")
        cond = f", num_classes={self.num_classes}" if self.num_classes else ""
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, time_input={ti!r}{cond}"
