"""The training configuration: :class:`TrainConfig`, every field a JSON value, validated on construction."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .._utils import check_choice, check_int, check_number, is_int
from ..data import DATASETS
from ..io import atomic_write
from ..losses import TIME_SAMPLERS, WEIGHTINGS
from ..score import PARAMETERIZATIONS

__all__ = ["TrainConfig", "SDE_KINDS", "NET_KINDS", "UNET_CONDITIONINGS", "LEGACY", "RESUMABLE"]

SDE_KINDS = ("vp", "subvp", "ve")
NET_KINDS = ("mlp", "unet")
#: The U-Net's conditioning choices (:data:`scoresde.nets.unet.CONDITIONINGS`).
UNET_CONDITIONINGS = ("scale_shift", "add")
#: Fields added after configurations were first stored, with the value a stored U-Net configuration
#: without them had (what its network computed then); :meth:`TrainConfig.from_dict` with ``stored=True``.
LEGACY = {"unet_conditioning": "add"}

#: Fields that may differ between a run and its resumption (they do not change the trajectory).
RESUMABLE = ("steps", "out_dir", "device", "data_root", "eval_every", "checkpoint_every", "log_every",
              "keep_checkpoints", "bf16", "compile")


def _field(default: Any, doc: str) -> Any:
    """A field with its documentation: ``metadata["help"]`` is the one-line description the
    ``scoresde train`` command shows for the flag generated from the field."""
    return dataclasses.field(default=default, metadata={"help": doc})


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
    ``channels``, ``channel_mults``, ``num_res_blocks``, ``attn_resolutions``; ``dropout`` (U-Net);
    ``unet_conditioning`` (``"scale_shift"``, default, or DDPM's ``"add"``: :class:`scoresde.nets.UNet`).
    A U-Net configuration stored before ``unet_conditioning`` existed was ``"add"``, and
    :meth:`from_dict` with ``stored=True`` (checkpoints) reads it so (:data:`LEGACY`).

    Classes: ``num_classes`` (0: unconditional; ``K > 0``: a class-conditional model of ``K``
    classes, trained on the data set's labels with label dropout ``p_uncond``, default 0.1, so that
    one network learns both the conditional and the unconditional score; Ho & Salimans 2022,
    "Classifier-free diffusion guidance"). ``p_uncond`` is used only when ``num_classes > 0``.

    Objective: ``parameterization`` (``eps | score | x0 | v``, :mod:`scoresde.score`; default ``v``:
    an ``eps`` network must output the identity at high noise, and the few percent it falls short
    there make probability-flow ODE samples expand, see docs/results.md),
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

    dataset: str = _field("digits", "data set, one of scoresde.data.DATASETS")
    data_root: Optional[str] = _field(None, "folder (or archive) with the MNIST / CIFAR-10 files; required for those")
    dequantize: bool = _field(True, "uniform dequantization (U(0, w) noise) of quantized training data, the density "
                                    "that bits/dim evaluates; ignored for continuous data")
    sde: str = _field("vp", "forward SDE")
    beta_min: float = _field(0.1, "VP / sub-VP: smallest noise rate beta(0); Song et al. 2021 use 0.1")
    beta_max: float = _field(20.0, "VP / sub-VP: largest noise rate beta(1); Song et al. 2021 use 20")
    sigma_min: float = _field(0.01, "VE: smallest noise level")
    sigma_max: float = _field(50.0, "VE: largest noise level, about the largest distance between two training "
                                    "points as Song & Ermon 2020 advise")
    sde_N: int = _field(1000, "discretization steps N of the SDE, used by the DDPM and PC samplers")
    net: str = _field("mlp", "score network")
    hidden: int = _field(128, "MLP width")
    depth: int = _field(3, "MLP hidden layers")
    emb_dim: int = _field(64, "MLP time-embedding size, even")
    channels: int = _field(32, "U-Net base width, even")
    channel_mults: Tuple[int, ...] = _field((1, 2), "U-Net width multipliers per level, e.g. 1,2")
    num_res_blocks: int = _field(1, "U-Net residual blocks per level")
    attn_resolutions: Tuple[int, ...] = _field((), "U-Net levels (feature-map sizes) with attention")
    dropout: float = _field(0.0, "U-Net dropout, in [0, 1)")
    unet_conditioning: str = _field("scale_shift", "U-Net: how a residual block takes the time and class embedding: "
                                    "scale_shift (a scale and shift after its second norm) or add (DDPM's, before the "
                                    "norm, which loses it at levels of at most 32 channels)")
    num_classes: int = _field(0, "0: unconditional; K > 0: a class-conditional model of K classes, trained with label "
                                 "dropout p_uncond so one network learns both scores (Ho & Salimans 2022); needs a "
                                 "data set with labels")
    p_uncond: float = _field(0.1, "label dropout: probability that a training label is replaced by the null class "
                                  "(the unconditional score), in [0, 1); used only when num_classes > 0")
    parameterization: str = _field("v", "what the network predicts, see scoresde.score (default v: at high noise "
                                   "eps_hat = x_t holds without the network, so the probability-flow ODE does "
                                   "not expand; docs/results.md)")
    weighting: str = _field("sigma2", "loss weighting lambda(t)")
    time_sampler: str = _field("uniform", "how t is drawn")
    eps: float = _field(1e-5, "time truncation of the loss, in (0, 1)")
    steps: int = _field(2000, "total optimizer steps")
    batch_size: int = _field(128, "global batch size, over all ranks")
    lr: float = _field(2e-4, "AdamW learning rate")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    warmup: int = _field(100, "linear learning-rate warm-up steps; 0: none")
    grad_clip: float = _field(1.0, "max global gradient norm; 0: no clipping")
    ema_decay: float = _field(0.999, "EMA decay, in [0, 1)")
    seed: int = _field(0, "random seed")
    eval_every: int = _field(0, "steps between calls of the evaluation hooks; 0: only at step 0 and the end")
    checkpoint_every: int = _field(500, "steps between checkpoints")
    keep_checkpoints: bool = _field(False, "also keep checkpoint_<step>.pt files")
    log_every: int = _field(25, "steps between metrics lines")
    out_dir: str = _field("runs/train", "run folder (checkpoints, config.json, metrics.jsonl)")
    device: str = _field("auto", "cpu, cuda, cuda:1, or auto: CUDA when available")
    bf16: bool = _field(False, "bfloat16 autocast (CUDA only)")
    compile: bool = _field(False, "torch.compile the objective (CUDA only)")

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a data set name ({', '.join(DATASETS)}), got {self.dataset!r}")
        if self.data_root is not None:
            self.data_root = str(self.data_root)
        check_choice("sde", self.sde, SDE_KINDS)
        check_choice("net", self.net, NET_KINDS)
        check_choice("unet_conditioning", self.unet_conditioning, UNET_CONDITIONINGS)
        check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("time_sampler", self.time_sampler, TIME_SAMPLERS)
        for name in ("beta_min", "beta_max", "sigma_min", "sigma_max", "lr"):
            check_number(name, getattr(self, name), 0.0, lo_open=True)
        if self.beta_min >= self.beta_max:
            raise ValueError(f"need beta_min < beta_max, got {self.beta_min} and {self.beta_max}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        check_number("eps", self.eps, 0.0, 1.0, lo_open=True, hi_open=True)
        check_number("weight_decay", self.weight_decay, 0.0)
        check_number("grad_clip", self.grad_clip, 0.0)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        check_number("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_number("p_uncond", self.p_uncond, 0.0, 1.0, hi_open=True)
        for name, lo in (("sde_N", 2), ("hidden", 1), ("depth", 1), ("emb_dim", 2), ("channels", 2),
                         ("num_res_blocks", 1), ("steps", 1), ("batch_size", 1), ("warmup", 0), ("seed", 0), ("num_classes", 0),
                         ("eval_every", 0), ("checkpoint_every", 1), ("log_every", 1)):
            check_int(name, getattr(self, name), lo)
        if self.emb_dim % 2 or self.channels % 2:
            raise ValueError(f"emb_dim and channels must be even (half sines, half cosines), "
                             f"got emb_dim={self.emb_dim}, channels={self.channels}")
        if not self.channel_mults or any(not is_int(m, 1) for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty list of positive ints, got {self.channel_mults!r}")
        if any(not is_int(r, 1) for r in self.attn_resolutions):
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
    def from_dict(cls, d: Dict[str, Any], *, stored: bool = False) -> "TrainConfig":
        """The configuration of a dict; fields it lacks take their defaults, except that with
        ``stored=True`` (a configuration a checkpoint holds) a U-Net configuration without a field of
        :data:`LEGACY` gets its legacy value, so an old checkpoint rebuilds the network it trained."""
        if not isinstance(d, dict):
            raise TypeError(f"a TrainConfig is read from a dict, got {type(d).__name__}")
        if stored and d.get("net") == "unet":
            d = {**{k: v for k, v in LEGACY.items() if k not in d}, **d}
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
