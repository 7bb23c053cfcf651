"""Plumbing shared by the samplers: argument checks, the initial state, noise, the score call
with its output check, the final denoising step and the result."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .._utils import append_dims, check_eps, check_finite, check_int
from ..guidance import guided_score
from ..scorefn import CheckedScore
from ..sde import SDE, VESDE
from .result import SampleResult

Callback = Optional[Callable[[dict], None]]


def default_eps(sde: SDE) -> float:
    """Literature defaults: 1e-3 for VP and sub-VP, 1e-5 for VE (Song et al. 2021)."""
    return 1e-5 if isinstance(sde, VESDE) else 1e-3


def resolve_eps(sde: SDE, eps: Optional[float]) -> float:
    if eps is None:
        return default_eps(sde)
    return check_eps(eps, sde.T)


def check_steps(steps: Any, name: str = "steps") -> int:
    return check_int(name, steps)


@dataclass
class Setup:
    """Everything a sampler needs to start: the initial state and how to draw noise."""

    x: torch.Tensor
    generator: Optional[torch.Generator]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like``, drawn on its device."""
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)


def check_shape(shape: Any) -> tuple:
    """``shape`` as a tuple ``(B, *dims)`` of positive ints; a bare int or a non-integer size is refused."""
    if isinstance(shape, (int, torch.Tensor)) or not isinstance(shape, Sequence):
        hint = f" (e.g. ({shape}, 2) for {shape} samples in 2-D)" if isinstance(shape, int) else ""
        raise TypeError(f"shape must be a sequence (B, *dims), got the {type(shape).__name__} {shape!r}; "
                        f"pass a tuple{hint}")
    try:
        if any(isinstance(s, bool) for s in shape):
            raise TypeError
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must hold integer sizes (B, *dims), got {tuple(shape)!r}") from None
    if len(shape) < 1 or any(s <= 0 for s in shape):
        raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape}")
    return shape


def setup(sde: SDE, shape: Sequence[int], *, generator=None, device=None, dtype=None, x_T=None) -> Setup:
    """Check the arguments shared by all samplers and draw (or take) the initial state at ``T``."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    shape = check_shape(shape)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating dtype (torch.float32 or torch.float64), got {dtype!r}: samples "
                        "are continuous; to get integer levels, sample in float and map the result with "
                        "scoresde.quantize.to_levels(x, n_levels, data_range, mode='floor')")
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape) != shape:
            got = tuple(x_T.shape) if isinstance(x_T, torch.Tensor) else type(x_T).__name__
            raise ValueError(f"x_T must be a tensor of shape {shape}, got {got}")
        if device is not None and torch.device(device) != x_T.device:
            raise ValueError(f"x_T is on {x_T.device} but device={device} was asked for")
        if dtype is not None and dtype != x_T.dtype:
            raise ValueError(f"x_T has dtype {x_T.dtype} but dtype={dtype} was asked for")
        check_finite(x_T, "x_T")
        device, dtype = x_T.device, x_T.dtype
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    dtype = dtype or torch.get_default_dtype()
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"the generator is on {generator.device} but sampling runs on {device}; "
            f"make it with torch.Generator(device='{device.type}')"
        )
    if x_T is None:
        x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    return Setup(x_T, generator)


def time_vec(t: float, x: torch.Tensor) -> torch.Tensor:
    """A host scalar as a ``(B,)`` tensor on ``x``'s device (no host read-back)."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)


def tweedie_denoise(score: CheckedScore, sde: SDE, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Tweedie's formula at ``eps``: ``E[x0 | x_eps] = (x + s^2 score) / m`` (Efron 2011; for VE ``m = 1``)."""
    t = time_vec(eps, x)
    m, s = sde.coeffs_unchecked(t)
    return (x + append_dims(s * s, x.ndim) * score(x, t)) / append_dims(m, x.ndim)


def progress_bar(n: int, progress: bool, desc: str):
    return tqdm(total=n, desc=desc, disable=not progress, leave=False)


def condition(score_fn, st: "Setup", y=None, guidance_weight=None, guidance_scale=None):
    """The one place a sampler turns its score function, the labels ``y`` and the guidance into the
    score it evaluates: ``(score, guidance_info)`` from :func:`scoresde.guidance.guided_score`
    (``score_fn`` itself and ``None`` for an unconditional run)."""
    return guided_score(score_fn, y, guidance_weight=guidance_weight, guidance_scale=guidance_scale,
                        batch=st.x.shape[0], device=st.x.device)


def finish(name: str, x: torch.Tensor, nfe_per_sample: int, total_nfe: int, eps: float,
           info: dict, status: Optional[torch.Tensor] = None, **extra) -> SampleResult:
    """Build the result; a sample that went non-finite gets status 1 instead of failing the batch."""
    batch = x.shape[0]
    finite = torch.isfinite(x.reshape(batch, -1)).all(dim=1).cpu()
    status = torch.zeros(batch, dtype=torch.long) if status is None else status.detach().cpu().long()
    status = torch.where(finite | (status != 0), status, torch.ones_like(status))
    nfe = extra.pop("nfe", None)
    if nfe is None:
        nfe = torch.full((batch,), nfe_per_sample, dtype=torch.long)
    return SampleResult(x=x, nfe=nfe, status=status, sampler=name, eps=eps, total_nfe=total_nfe, info=info, **extra)


def discrete_alpha(sde: SDE, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``alpha_i = 1 - beta_i`` of the DDPM step at ``t`` for the VP family, else ones (used by Langevin)."""
    if hasattr(sde, "ddpm_alpha_unchecked"):
        return sde.ddpm_alpha_unchecked(t, x)
    return torch.ones_like(t)
