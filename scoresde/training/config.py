"""The training configuration: :class:`TrainConfig`, every field a JSON value, validated on construction."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ..data import DATASETS
from ..io import atomic_write
from ..losses import TIME_SAMPLERS, WEIGHTINGS
from ..score import PARAMETERIZATIONS

__all__ = ["TrainConfig", "SDE_KINDS", "NET_KINDS", "RESUMABLE"]

SDE_KINDS = ("vp", "subvp", "ve")
NET_KINDS = ("mlp", "unet")

#: Fields that may differ between a run and its resumption (they do not change the trajectory).
RESUMABLE = ("steps", "out_dir", "device", "data_root", "eval_every", "checkpoint_every", "log_every",
              "keep_checkpoints", "bf16", "compile")


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def _num(name: str, v: Any, lo: float, *, lo_open: bool = False, hi: Optional[float] = None,
         hi_open: bool = False) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}' + (')' if hi_open else ']')}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {v!r}")
    return float(v)


def _choice(name: str, v: Any, options: Sequence[str]) -> str:
    if v not in options:
        raise ValueError(f"unknown {name} {v!r}; choose one of {', '.join(options)}")
    return v


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder and in
    every checkpoint. All fields are JSON values (:meth:`to_dict`, :meth:`from_dict`).

    Data: ``dataset`` (a name of :data:`scoresde.data.DATASETS`), ``data_root`` (folder of MNIST /
    CIFAR-10 files), ``dequantize`` (add ``U(0, w)`` noise to quantized training data, the
    density that bits/dim evaluates; ignored for continuous data).

    SDE: ``sde`` in ``"vp" | "subvp" | "ve"``; ``beta_min``, ``beta_max`` (VP, sub-VP; defaults
    0.1, 20 of Song et al. 2021), ``sigma_min``, ``sigma_max`` (VE; 0.01, 50 -- choose ``sigma_max``
    about the largest distance between two training points, Song & Ermon 2020), ``sde_N`` (the
    discretization used by DDPM/PC samplers).

    Network: ``net`` in ``"mlp" | "unet"``; MLP ``hidden``, ``depth``, ``emb_dim``; U-Net
    ``channels``, ``channel_mults``, ``num_res_blocks``, ``attn_resolutions``; ``dropout`` (U-Net).

    Objective: ``parameterization`` (``eps | score | x0 | v``, :mod:`scoresde.score`),
    ``weighting`` (``sigma2 | likelihood``), ``time_sampler`` (``uniform | importance``),
    ``eps`` (time truncation, 1e-5).

    Optimisation: ``steps`` (total optimizer steps), ``batch_size`` (global, over all ranks),
    ``lr``, ``weight_decay`` (AdamW), ``warmup`` (linear warm-up steps; 0: none), ``grad_clip``
    (max global gradient norm; 0: no clipping), ``ema_decay`` in ``[0, 1)``.

    Run: ``seed``, ``eval_every`` (hook period; 0: only at step 0 and the end), ``checkpoint_every``,
    ``keep_checkpoints`` (also keep ``checkpoint_<step>.pt``), ``log_every``, ``out_dir``,
    ``device`` (``"auto"``: CUDA when available), ``bf16`` (bfloat16 autocast, CUDA only),
    ``compile`` (``torch.compile`` of the objective, CUDA only).
    """

    dataset: str = "digits"
    data_root: Optional[str] = None
    dequantize: bool = True
    sde: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    sde_N: int = 1000
    net: str = "mlp"
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64
    channels: int = 32
    channel_mults: Tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: Tuple[int, ...] = ()
    dropout: float = 0.0
    parameterization: str = "eps"
    weighting: str = "sigma2"
    time_sampler: str = "uniform"
    eps: float = 1e-5
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: bool = False
    log_every: int = 25
    out_dir: str = "runs/train"
    device: str = "auto"
    bf16: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a data set name ({', '.join(DATASETS)}), got {self.dataset!r}")
        if self.data_root is not None:
            self.data_root = str(self.data_root)
        _choice("sde", self.sde, SDE_KINDS)
        _choice("net", self.net, NET_KINDS)
        _choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("time_sampler", self.time_sampler, TIME_SAMPLERS)
        for name in ("beta_min", "beta_max", "sigma_min", "sigma_max", "lr"):
            _num(name, getattr(self, name), 0.0, lo_open=True)
        if self.beta_min >= self.beta_max:
            raise ValueError(f"need beta_min < beta_max, got {self.beta_min} and {self.beta_max}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        _num("eps", self.eps, 0.0, lo_open=True, hi=1.0, hi_open=True)
        _num("weight_decay", self.weight_decay, 0.0)
        _num("grad_clip", self.grad_clip, 0.0)
        _num("ema_decay", self.ema_decay, 0.0, hi=1.0, hi_open=True)
        _num("dropout", self.dropout, 0.0, hi=1.0, hi_open=True)
        for name, lo in (("sde_N", 2), ("hidden", 1), ("depth", 1), ("emb_dim", 2), ("channels", 2),
                         ("num_res_blocks", 1), ("steps", 1), ("batch_size", 1), ("warmup", 0), ("seed", 0),
                         ("eval_every", 0), ("checkpoint_every", 1), ("log_every", 1)):
            _int(name, getattr(self, name), lo)
        if self.emb_dim % 2 or self.channels % 2:
            raise ValueError(f"emb_dim and channels must be even (half sines, half cosines), "
                             f"got emb_dim={self.emb_dim}, channels={self.channels}")
        if not self.channel_mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                         for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty list of positive ints, got {self.channel_mults!r}")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.attn_resolutions):
            raise ValueError(f"attn_resolutions must be positive ints, got {self.attn_resolutions!r}")
        for name in ("dequantize", "keep_checkpoints", "bf16", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.out_dir, (str, os.PathLike)) or not str(self.out_dir):
            raise ValueError(f"out_dir must be a folder path, got {self.out_dir!r}")
        self.out_dir = str(self.out_dir)
        if not isinstance(self.device, str):
            self.device = str(self.device)

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise TypeError(f"a TrainConfig is read from a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    def save(self, path: Union[str, Path]) -> Path:
        """Write the configuration as JSON (atomically)."""
        return atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TrainConfig":
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
