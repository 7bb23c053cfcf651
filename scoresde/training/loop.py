"""The training loop for score models: denoising score matching with AdamW, warm-up, gradient
clipping, EMA, atomic checkpoints, exact resume and ``torch.distributed``.

The objective is :func:`scoresde.losses.dsm_loss` (Song et al. 2021, eq. 7; Vincent 2011), averaged
over a mini-batch. One optimizer step ``s = 1, 2, ...`` does, in this order:

1. **batch**: the indices ``perm_e[j B : (j + 1) B]`` with ``e, j = divmod(s - 1, N // B)`` and
   ``perm_e = torch.randperm(N)`` drawn from ``Generator().manual_seed(h(seed, "data", e))`` (``h``
   a SHA-256 seed derivation). The order is a pure function of ``(seed, step)``: nothing about it
   has to be saved, and a resumed run sees exactly the batches of an uninterrupted one. The last
   ``N mod B`` samples of each epoch's permutation are skipped (``drop_last``).
2. **randomness of the global batch**, from one training generator (seeded with ``h(seed, "noise")``,
   its state saved in every checkpoint), drawn for all ``B`` samples on every rank in this order:
   uniform dequantization noise (quantized data with ``dequantize=True``), the times (``float64``
   uniforms; ``U[eps, T]`` or the importance density of :mod:`scoresde.losses`), the Gaussian noise,
   and (``num_classes > 0`` only) the label dropout of ``train_labels[indices]``, one ``float64``
   uniform per label (:func:`scoresde.losses.drop_labels`; Ho & Salimans 2022).
3. **loss** on this rank's contiguous block ``[r B / W, (r + 1) B / W)`` of the global batch:
   ``dsm_loss(model, sde, x0, t=t, noise=z, y=c) * w`` averaged (``w`` the importance weight,
   ``1 / ((T - eps) q(t))``, or 1), under ``torch.autocast(bfloat16)`` when ``bf16``.
4. **update**: backward (DDP averages the gradients over ranks, so the update equals the
   single-process update on the global batch), ``clip_grad_norm_(grad_clip)``, AdamW
   (Loshchilov & Hutter 2019), the learning-rate schedule ``lr_s = lr min(1, s / warmup)``
   (``LambdaLR``), and the EMA update ``e_s = d e_{s-1} + (1 - d) p_s``, ``e_0 = p_0``
   (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``; Polyak averaging as in
   Song & Ermon 2020 and Ho et al. 2020).

**Checkpoints** are written by :mod:`scoresde.training.checkpoint` (atomically, with every random state).
A run started on an ``out_dir`` that holds a checkpoint resumes from it; the weights at the end
are bitwise those of an uninterrupted run (same machine, same software).

**Divergence**: the first step whose loss is non-finite is recorded on the device (no host
synchronisation per step) and checked before every log line, checkpoint and hook call; then the
run stops with :class:`TrainingDiverged`, naming the step, and the last good checkpoint is kept.

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-based generative
modeling through stochastic differential equations", ICLR (training setup, Appendix H);
Song & Ermon (2020), "Improved techniques for training score-based generative models" (EMA);
Loshchilov & Hutter (2019), "Decoupled weight decay regularization" (AdamW).
"""
from __future__ import annotations

import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .._utils import NULL_CLASS, derive_seed
from ..data import Dataset, load_dataset
from ..io import atomic_write
from ..losses import draw_times, drop_labels, dsm_loss
from ..quantize import dequantize
from ..score import ScoreModel
from .builders import build_model, build_sde
from .checkpoint import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, check_resumable, data_fingerprint,
                         load_checkpoint, rng_state, set_rng_state, write_checkpoint)
from .config import TrainConfig
from .distributed import Dist, setup_distributed
from .lock import hold_run_folder, resume_decision
from .result import Hook, TrainingDiverged, TrainResult

__all__ = ["train"]


# ---------------------------------------------------------------------------------------------
# Small pieces.
# ---------------------------------------------------------------------------------------------
class _LinearWarmup:
    """``LambdaLR`` factor ``min(1, (e + 1) / warmup)`` for scheduler epoch ``e`` (0 for the first
    update), i.e. update ``s = e + 1`` uses ``lr min(1, s / warmup)``. A class, so that
    ``LambdaLR.state_dict`` stores it (``{"warmup": ...}``)."""

    def __init__(self, warmup: int):
        self.warmup = int(warmup)

    def __call__(self, epoch: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (epoch + 1) / self.warmup)


class _Objective(nn.Module):
    """The mean DSM loss of a shard with given times, noise and importance weights: the module
    that DDP wraps (its only parameters are the score model's)."""

    def __init__(self, model: ScoreModel, weighting: str, eps: float):
        super().__init__()
        self.model = model
        self.weighting = weighting
        self.eps = eps

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, w: torch.Tensor,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        losses = dsm_loss(self.model, self.model.sde, x0, weighting=self.weighting, eps=self.eps, t=t, noise=noise,
                          y=y)
        return (losses.float() * w).mean()



# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, cfg: TrainConfig, dataset: Optional[Dataset], hooks: Sequence[Hook], progress: bool,
                 resume: Optional[bool], d: Dist, device: torch.device):
        self.cfg, self.hooks, self.progress, self.d, self.device = cfg, tuple(hooks), progress, d, device
        for h in self.hooks:
            if not callable(h):
                raise TypeError(f"hooks must be callables hook(step, model, ema_model, cfg), got {type(h).__name__}")
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / CHECKPOINT_NAME
        self.metrics_path = self.out / METRICS_NAME
        self.config_path = self.out / CONFIG_NAME
        self.history: list = []
        self._check_ranks_agree()

        if dataset is None:
            dataset = load_dataset(cfg.dataset, cfg.data_root)
        elif not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a scoresde.data.Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        n = dataset.train.shape[0]
        B, W = cfg.batch_size, d.world
        if B % W:
            raise ValueError(f"batch_size={B} must be divisible by the number of processes ({W}): each rank "
                             f"takes an equal block of the global batch; use batch_size={B - B % W or W}")
        if n < B:
            raise ValueError(f"batch_size={B} exceeds the {n} training samples of {dataset.name!r}; "
                             f"use batch_size <= {n}")
        _check_finite_data(dataset)
        self.train_y = _train_labels(cfg, dataset, device)
        self.fingerprint = data_fingerprint(dataset.train, None if self.train_y is None else dataset.train_labels)
        self.n, self.per_epoch = n, n // B
        self.lo, self.hi = (B * d.rank) // W, (B * (d.rank + 1)) // W
        self.train_x = dataset.train.to(device=device, dtype=torch.get_default_dtype())
        self.quantized = dataset.quantized and cfg.dequantize
        self._perm_cache: Tuple[int, Optional[torch.Tensor]] = (-1, None)

        start = resume_decision(self.ckpt_path, self.out, resume, d)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.sde = build_sde(cfg)
        self.model = build_model(cfg, dataset, self.sde).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _LinearWarmup(cfg.warmup))
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(derive_seed(cfg.seed, "noise"))
        self.step, self.wall_before, self.resumed_from, self.ckpt_loss = 0, 0.0, None, math.nan
        self.window = (torch.zeros((), device=device, dtype=torch.float32), 0)
        ckpt = None
        if start:
            ckpt = load_checkpoint(self.ckpt_path, map_location="cpu")
            check_resumable(ckpt, self.ckpt_path, cfg, dataset, self.fingerprint)
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.step = self.resumed_from = int(ckpt["step"])
            self.wall_before = float(ckpt.get("wall_time", 0.0))
            self.ckpt_loss = float(ckpt.get("loss", math.nan))
        self.objective = _Objective(self.model, cfg.weighting, cfg.eps)
        self.runner: nn.Module = self.objective
        if d.on:
            from torch.nn.parallel import DistributedDataParallel
            self.runner = DistributedDataParallel(self.objective, device_ids=[device.index] if device.type == "cuda"
                                                  else None, broadcast_buffers=False)
        if cfg.compile:
            self.runner = torch.compile(self.runner)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if ckpt is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(int(ckpt["ema_n_averaged"]))
            self.gen.set_state(ckpt["rng"]["generator"].to("cpu"))
            states = ckpt["rng"]["per_rank"]
            if len(states) != d.world:
                warnings.warn(f"the checkpoint was written by {len(states)} process(es), this run has {d.world}: "
                              "global RNG states are taken from rank 0's (only dropout depends on them)",
                              stacklevel=3)
            set_rng_state(states[d.rank] if len(states) == d.world else states[0])
            self._restore_window(ckpt.get("log_window"))
        else:
            self.ema.update_parameters(self.model)  # e_0 = p_0
            seed = derive_seed(cfg.seed, "global", d.rank)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)

    # -- set-up checks ---------------------------------------------------------------------------
    def _check_ranks_agree(self) -> None:
        if not self.d.on:
            return
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ("out_dir", "device", "data_root")}
        every = [None] * self.d.world
        dist.all_gather_object(every, mine)
        diff = sorted({k for other in every for k in mine if other[k] != mine[k]})
        if diff:
            raise ValueError(f"the processes were given different training configurations (fields {diff}); "
                             "pass the same TrainConfig on every rank")

    def _restore_window(self, lw: Optional[Dict[str, Any]]) -> None:
        """The running loss sums of the logging window at the checkpoint (none in an old checkpoint),
        so that the resumed run logs what the uninterrupted one does. With another number of ranks,
        rank 0 takes the whole sum, rescaled to the new count of per-rank means per step."""
        if not lw:
            return
        sums, n = lw["sums"], int(lw["n"])
        if len(sums) == self.d.world:
            mine = sums[self.d.rank].float()
        else:
            mine = sum(x.float() for x in sums) * (self.d.world / len(sums)) * (self.d.rank == 0)
        self.window = (mine.to(self.device).clone(), n)

    # -- one step --------------------------------------------------------------------------------
    def _indices(self, s: int) -> torch.Tensor:
        """Global batch indices of update ``s + 1`` (``s`` 0-based): a pure function of (seed, s)."""
        epoch, j = divmod(s, self.per_epoch)
        if self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "data", epoch))
            self._perm_cache = (epoch, torch.randperm(self.n, generator=g))
        B = self.cfg.batch_size
        return self._perm_cache[1][j * B:(j + 1) * B]

    def _draw(self, x0: torch.Tensor, y: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        cfg, sde, g = self.cfg, self.sde, self.gen
        B = x0.shape[0]
        if self.quantized:
            x0 = dequantize(x0, self.dataset.n_levels, self.dataset.data_range, g)
        t64, w64 = draw_times(sde, B, cfg.time_sampler, cfg.eps, generator=g, device=x0.device)
        t, w = t64.to(x0.dtype), w64.float()
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        if y is not None:
            y = drop_labels(y, cfg.p_uncond, g)  # after t and z: the same stream position on every rank
        return x0, t, noise, w, y

    def _train_step(self, s: int) -> Tuple[torch.Tensor, torch.Tensor, float]:
        idx = self._indices(s).to(self.device)
        x0, t, noise, w, y = self._draw(self.train_x[idx], None if self.train_y is None else self.train_y[idx])
        sl = slice(self.lo, self.hi)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            loss = self.runner(x0[sl], t[sl], noise[sl], w[sl], None if y is None else y[sl])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.ema.update_parameters(self.model)
        return loss.detach(), gnorm.detach(), lr

    # -- bookkeeping -----------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.d.rank == 0:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def _trim_metrics(self, upto: int) -> None:
        """Drop records after step ``upto`` (all for a fresh run: ``upto = -1``) and a torn last line,
        so that the log matches the weights."""
        if self.d.rank != 0 or not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", math.inf) <= upto:
                keep.append(line)
        atomic_write(self.metrics_path, "".join(x + "\n" for x in keep))

    def _save(self, step: int, loss: float, wall: float, win_sum: torch.Tensor, win_n: int) -> None:
        mine = (rng_state(), win_sum.detach().to("cpu").clone())
        every = [mine]
        if self.d.on:
            every = [None] * self.d.world
            dist.all_gather_object(every, mine)
            self.d.barrier()
        if self.d.rank == 0:
            keep = self.out / f"checkpoint_{step:08d}.pt" if self.cfg.keep_checkpoints else None
            write_checkpoint(self.ckpt_path, step=step, cfg=self.cfg, dataset=self.dataset, model=self.model,
                             ema=self.ema, optimizer=self.opt, scheduler=self.sched, generator=self.gen,
                             per_rank_rng=[r for r, _ in every], loss=loss, wall_time=wall,
                             world_size=self.d.world, log_window=dict(n=win_n, sums=[w for _, w in every]),
                             data_fingerprint=self.fingerprint, keep_as=keep)
        self.d.barrier()

    def _check_finite(self, bad: torch.Tensor, bad_val: torch.Tensor, last_ckpt: Optional[int]) -> None:
        first = bad.clone()
        if self.d.on:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        k = int(first)
        if k < _NO_BAD:
            val = float(bad_val) if int(bad) == k else float("nan")
            kept = (f"the last good checkpoint {str(self.ckpt_path)!r} (step {last_ckpt}) was kept"
                    if last_ckpt is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"the training loss became non-finite ({val}) at step {k}; {kept}. Lower the learning rate "
                f"(lr={self.cfg.lr:g}), use gradient clipping (grad_clip={self.cfg.grad_clip:g}) or a longer "
                f"warm-up (warmup={self.cfg.warmup}), then resume or start again")

    def _run_hooks(self, step: int) -> None:
        if not self.hooks:
            return
        model, ema = self.model, self.ema.module
        model.eval()
        ema.eval()
        try:
            for h in self.hooks:
                out = h(step, model, ema, self.cfg)
                if isinstance(out, dict) and out:
                    try:
                        json.dumps(out)
                    except (TypeError, ValueError):
                        out = {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) and
                                   getattr(v, "numel", lambda: 1)() == 1 else repr(v)) for k, v in out.items()}
                    self._log(dict(kind="eval", step=step, hook=getattr(h, "__name__", type(h).__name__), **out))
        finally:
            model.train()

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        t0 = time.perf_counter()
        if d.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.config_path)
            self._trim_metrics(-1 if self.resumed_from is None else self.step)
        d.barrier()
        last_ckpt = self.resumed_from
        (win_sum, win_n), last_loss = self.window, self.ckpt_loss
        bad = torch.full((), _NO_BAD, device=self.device, dtype=torch.long)
        bad_val = torch.zeros((), device=self.device, dtype=torch.float32)
        gnorm = torch.zeros((), device=self.device)
        lr = self.opt.param_groups[0]["lr"]
        if self.resumed_from is None:
            self._run_hooks(0)
        self.model.train()
        with tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress or d.rank != 0,
                  dynamic_ncols=True) as bar:
            while self.step < cfg.steps:
                loss, gnorm, lr = self._train_step(self.step)
                self.step += 1
                s = self.step
                newly_bad = (~torch.isfinite(loss)) & (bad == _NO_BAD)
                bad = torch.where(newly_bad, torch.full_like(bad, s), bad)
                bad_val = torch.where(newly_bad, loss.float(), bad_val)
                win_sum += loss.float()
                win_n += 1
                bar.update(1)
                final = s == cfg.steps
                do_log = s % cfg.log_every == 0 or final
                do_ckpt = s % cfg.checkpoint_every == 0 or final
                do_eval = (cfg.eval_every > 0 and s % cfg.eval_every == 0) or final
                if not (do_log or do_ckpt or do_eval):
                    continue
                self._check_finite(bad, bad_val, last_ckpt)
                wall = self.wall_before + time.perf_counter() - t0
                if do_log:
                    total = win_sum.clone()
                    if d.on:
                        dist.all_reduce(total)
                    last_loss = float(total) / (win_n * d.world)
                    self._log(dict(kind="train", step=s, loss=last_loss, lr=lr, grad_norm=float(gnorm),
                                   time=round(wall, 4)))
                    bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.2g}")
                    win_sum.zero_()
                    win_n = 0
                if do_ckpt:
                    self._save(s, last_loss, wall, win_sum, win_n)
                    last_ckpt = s
                if do_eval:
                    self._run_hooks(s)
        self.model.eval()
        self.ema.module.eval()
        return TrainResult(config=cfg, out_dir=self.out, checkpoint=self.ckpt_path, config_path=self.config_path,
                           metrics_path=self.metrics_path, step=self.step, loss=last_loss, model=self.model,
                           ema_model=self.ema.module, resumed_from=self.resumed_from,
                           wall_time=time.perf_counter() - t0, history=tuple(self.history), rank=d.rank,
                           world_size=d.world)


_NO_BAD = 2**62


def _check_finite_data(dataset: Dataset) -> None:
    """The training data, checked once before the first step: a NaN or infinite value is named by its row."""
    x = dataset.train
    ok = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(ok.all()):
        rows = (~ok).nonzero().flatten()
        first = int(rows[0])
        raise ValueError(f"the training data of {dataset.name!r} hold a non-finite value (NaN or inf) in row {first} "
                         f"of the train split (0-based; {rows.numel()} of {x.shape[0]} rows are affected, e.g. "
                         f"{x[first].flatten()[:4].tolist()}); drop or repair those rows before training")


def _train_labels(cfg: TrainConfig, dataset: Dataset, device: torch.device) -> Optional[torch.Tensor]:
    """The training labels of a class-conditional run (``num_classes > 0``) on ``device``, checked
    once: they exist and lie in ``0 .. num_classes - 1`` (or are ``NULL_CLASS``, always unconditional)."""
    K, y = cfg.num_classes, dataset.train_labels
    if K == 0:
        return None
    if y is None or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"num_classes={K} trains a class-conditional model, but the data set {dataset.name!r} has no "
                         "integer labels (train_labels); use a labelled data set (digits, mnist, cifar10) or "
                         "num_classes=0")
    lo, hi = int(y.min()), int(y.max())
    if lo < NULL_CLASS or hi >= K:
        fix = f"set num_classes={hi + 1}" if lo >= NULL_CLASS else "relabel the data set"
        raise ValueError(f"the training labels of {dataset.name!r} lie in [{lo}, {hi}], but num_classes={K} knows "
                         f"the classes 0..{K - 1} (and {NULL_CLASS}, no label); {fix}")
    return y.to(device=device, dtype=torch.long)


def train(cfg: TrainConfig, *, dataset: Optional[Dataset] = None, hooks: Sequence[Hook] = (),
          progress: bool = True, resume: Optional[bool] = None) -> TrainResult:
    """Train a score model by denoising score matching (module docstring for the exact procedure).

    Args:
        cfg: the :class:`TrainConfig`.
        dataset: a :class:`~scoresde.data.Dataset` to train on (default: ``load_dataset(cfg.dataset,
            cfg.data_root)``); its ``train`` split is moved to the training device once.
        hooks: callables ``hook(step, model, ema_model, cfg)`` run at step 0 of a fresh run, every
            ``eval_every`` steps and at the last step, with both models in ``eval()`` mode (the
            unwrapped :class:`ScoreModel` s, never the DDP wrapper). Under ``torch.distributed`` they
            run on every rank (so ``evaluate_bpd`` can shard); they must behave the same on every
            rank. A returned dict of JSON numbers is appended to the metrics log (``kind="eval"``).
        progress: a tqdm bar with the loss (rank 0 only).
        resume: ``None`` (default): resume from ``out_dir/checkpoint_last.pt`` when it exists, else
            start fresh; ``True``: the checkpoint must exist; ``False``: ``out_dir`` must not hold one.

    A fresh run seeds torch's global RNG (and Python's and NumPy's) from ``cfg.seed``; a resumed run
    restores them from the checkpoint. Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is
    initialised here (NCCL on CUDA, gloo on CPU) and destroyed at the end; a group initialised by
    the caller is used as it is. Only rank 0 writes files.

    The run holds an exclusive lock on ``out_dir`` (:mod:`scoresde.training.lock`) from start to end,
    and removes the temporary files a killed run left there. The training data are checked once,
    up front: a non-finite value is an error naming its row.

    Returns a :class:`TrainResult`. Raises :class:`TrainingDiverged` when the loss becomes
    non-finite, ``ValueError`` for an impossible configuration (``num_classes > 0`` on data without
    labels or with labels ``>= num_classes`` included), a non-finite training value, or a
    resume with another configuration or other training data (the checkpoint stores their
    fingerprint), :class:`~scoresde.training.checkpoint.CheckpointError` (a ``ValueError``) for a
    damaged or foreign ``checkpoint_last.pt`` (or one that is a folder), which is left as it is,
    :class:`~scoresde.training.lock.RunFolderBusy` (a ``FileExistsError``) when another run holds
    ``out_dir``, ``FileExistsError`` / ``FileNotFoundError`` for a ``resume`` that does not match ``out_dir``.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if resume not in (None, True, False):
        raise ValueError(f"resume must be None (automatic), True or False, got {resume!r}")
    d, device = setup_distributed(cfg)
    try:
        with hold_run_folder(Path(cfg.out_dir), d):
            return _Trainer(cfg, dataset, hooks, progress, resume, d, device).run()
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()
