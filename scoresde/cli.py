"""The ``scoresde`` command: ``train``, ``sample``, ``nll`` and ``demo`` (see ``docs/cli.md``).

Every command has ``--help``. A wrong option or an impossible value (negative steps, a missing
checkpoint file, ``--dataset mnist`` without ``--data-root``, ...) exits with status 2 and a
message that says what to change; a run that fails (e.g. the loss diverges) exits with status 1;
Ctrl-C exits with 130. Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser"]

#: Sampler options the command line exposes (each sampler takes the ones in its ``option_names``;
#: the others are refused with a message). ``steps``, ``nfe`` and ``grid`` apply to every sampler.
_SAMPLER_FLAGS = ("predictor", "corrector", "snr", "n_corrector_steps", "method", "rtol", "atol", "eta",
                  "variance", "order", "S_churn", "schedule")
_SHARED_FLAGS = ("steps", "nfe", "grid")


class _UsageError(Exception):
    """Raised inside a command for a user error: reported through ``parser.error`` (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Argument types.
# ---------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _int_list(text: str) -> List[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,2, got {text!r}") from None


# ---------------------------------------------------------------------------------------------
# The parser.
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .likelihood import TRACES
    from .losses import TIME_SAMPLERS, WEIGHTINGS
    from .sampling import CORRECTORS, GRIDS, PREDICTORS, SAMPLERS
    from .score import PARAMETERIZATIONS
    from .solvers import METHODS
    from .training import NET_KINDS, SDE_KINDS

    p = argparse.ArgumentParser(prog="scoresde", description="Continuous-time score-based generative models: "
                                "train, sample, evaluate bits/dim, or run the end-to-end demo.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # -- train -----------------------------------------------------------------------------------
    t = sub.add_parser("train", help="train a score model (resumes from --out when it holds a checkpoint)",
                       description="Train a score model by denoising score matching. Options not given take "
                       "their value from --config (a JSON TrainConfig) or the TrainConfig defaults. A run folder "
                       "that holds checkpoint_last.pt is resumed automatically. Under torchrun the run is "
                       "distributed (gloo on CPU, NCCL on CUDA).")
    t.add_argument("--config", type=Path, help="JSON file of TrainConfig fields (explicit options override it)")
    t.add_argument("--dataset", choices=DATASETS, help="data set (default digits)")
    t.add_argument("--data-root", help="folder (or archive) with the MNIST / CIFAR-10 files; required for those")
    t.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=None,
                   help="uniform dequantization of quantized training data (default on)")
    t.add_argument("--sde", choices=SDE_KINDS, help="forward SDE (default vp)")
    t.add_argument("--beta-min", type=_positive_float)
    t.add_argument("--beta-max", type=_positive_float)
    t.add_argument("--sigma-min", type=_positive_float)
    t.add_argument("--sigma-max", type=_positive_float)
    t.add_argument("--sde-n", type=_positive_int, dest="sde_N", help="discretization steps N of the SDE (1000)")
    t.add_argument("--net", choices=NET_KINDS, help="score network (default mlp)")
    t.add_argument("--hidden", type=_positive_int, help="MLP width (128)")
    t.add_argument("--depth", type=_positive_int, help="MLP hidden layers (3)")
    t.add_argument("--emb-dim", type=_positive_int, help="MLP time-embedding size (64)")
    t.add_argument("--channels", type=_positive_int, help="U-Net base width (32)")
    t.add_argument("--channel-mults", type=_int_list, help="U-Net width multipliers per level, e.g. 1,2")
    t.add_argument("--num-res-blocks", type=_positive_int, help="U-Net residual blocks per level (1)")
    t.add_argument("--attn-resolutions", type=_int_list, help="U-Net levels (feature-map sizes) with attention")
    t.add_argument("--dropout", type=_nonneg_float, help="U-Net dropout (0)")
    t.add_argument("--parameterization", choices=PARAMETERIZATIONS, help="what the network predicts (eps)")
    t.add_argument("--weighting", choices=WEIGHTINGS, help="loss weighting lambda(t) (sigma2)")
    t.add_argument("--time-sampler", choices=TIME_SAMPLERS, help="how t is drawn (uniform)")
    t.add_argument("--eps", type=_positive_float, help="time truncation of the loss (1e-5)")
    t.add_argument("--steps", type=_positive_int, help="total optimizer steps (2000)")
    t.add_argument("--batch-size", type=_positive_int, help="global batch size (128)")
    t.add_argument("--lr", type=_positive_float, help="AdamW learning rate (2e-4)")
    t.add_argument("--weight-decay", type=_nonneg_float, help="AdamW weight decay (0)")
    t.add_argument("--warmup", type=_nonneg_int, help="linear learning-rate warm-up steps (100)")
    t.add_argument("--grad-clip", type=_nonneg_float, help="max gradient norm, 0 for none (1.0)")
    t.add_argument("--ema-decay", type=_nonneg_float, help="EMA decay in [0, 1) (0.999)")
    t.add_argument("--seed", type=_nonneg_int, help="random seed (0)")
    t.add_argument("--log-every", type=_positive_int, help="steps between metrics lines (25)")
    t.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (500)")
    t.add_argument("--keep-checkpoints", action="store_true", default=None,
                   help="also keep checkpoint_<step>.pt files")
    t.add_argument("--out", required=True, help="run folder (checkpoints, config.json, metrics.jsonl)")
    t.add_argument("--resume", action="store_true",
                   help="require a checkpoint in --out to resume from (default: resume if there is one)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast (CUDA only)")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the objective (CUDA only)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train, parser=t)

    # -- sample ----------------------------------------------------------------------------------
    s = sub.add_parser("sample", help="draw samples from a checkpoint", description="Draw samples from a trained "
                       "model. Writes samples_<sampler>.pt (tensor and metadata) and samples_<sampler>.png "
                       "(an image grid, or a scatter plot for vector data) into --out.")
    s.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (or run folder)")
    s.add_argument("--sampler", choices=tuple(SAMPLERS), default="pc", help="sampler (default pc)")
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples (64)")
    s.add_argument("--out", type=Path, help="output folder (default: <run folder>/samples)")
    s.add_argument("--steps", type=_positive_int, help="sampler steps (default: the SDE's N for euler_maruyama, "
                   "pc, ddpm; ddim 50; the fast solvers 20 evaluations)")
    s.add_argument("--nfe", type=_positive_int, help="budget of score evaluations per sample (instead of --steps)")
    s.add_argument("--grid", choices=GRIDS, help="time grid (default: the sampler's own)")
    s.add_argument("--order", type=_positive_int, help="solver order of dpm_solver_2/3 and unipc")
    s.add_argument("--S-churn", dest="S_churn", type=_nonneg_float, help="heun_edm churn (0: deterministic)")
    s.add_argument("--schedule", choices=("continuous", "discrete"), help="ddpm/ddim schedule (continuous)")
    s.add_argument("--predictor", choices=sorted(PREDICTORS), help="pc predictor (reverse_diffusion)")
    s.add_argument("--corrector", choices=sorted(CORRECTORS), help="pc corrector (langevin)")
    s.add_argument("--snr", type=_positive_float, help="pc Langevin signal-to-noise ratio (0.16)")
    s.add_argument("--n-corrector-steps", type=_positive_int, help="pc corrector steps per predictor step (1)")
    s.add_argument("--method", choices=METHODS, help="ode solver (dopri5)")
    s.add_argument("--rtol", type=_positive_float, help="ode relative tolerance (1e-5)")
    s.add_argument("--atol", type=_positive_float, help="ode absolute tolerance (1e-5)")
    s.add_argument("--eta", type=_nonneg_float, help="ddim stochasticity (0)")
    s.add_argument("--variance", choices=("posterior", "beta"), help="ddpm variance (posterior)")
    s.add_argument("--eps", type=_positive_float, help="smallest time (1e-3 VP/sub-VP, 1e-5 VE)")
    s.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="sample with the EMA weights (default) or the raw weights (--no-use-ema)")
    s.add_argument("--no-ema", dest="use_ema", action="store_false", help="same as --no-use-ema")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the sampler's generator (0)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sample, parser=s)

    # -- nll -------------------------------------------------------------------------------------
    n = sub.add_parser("nll", help="bits/dim of a checkpoint on a data split", description="Negative log-"
                       "likelihood in bits/dim under the probability-flow ODE (evaluate_bpd): prints the mean "
                       "with its standard error and the full convention, and writes them as JSON.")
    n.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (or run folder)")
    n.add_argument("--split", choices=("test", "train"), default="test", help="data split (test)")
    n.add_argument("--data-root", help="override the data folder stored in the checkpoint's config")
    n.add_argument("--trace", choices=TRACES, default="rademacher", help="divergence estimator (rademacher)")
    n.add_argument("--n-probes", type=_positive_int, help="Hutchinson probes per evaluation (1)")
    n.add_argument("--repeats", type=_positive_int, default=1, help="evaluations per sample (1)")
    n.add_argument("--limit", type=_positive_int, help="evaluate only the first N samples of the split")
    n.add_argument("--batch-size", type=_positive_int, default=256, help="samples per ODE solve (256)")
    n.add_argument("--rtol", type=_positive_float, default=1e-5, help="solver relative tolerance (1e-5)")
    n.add_argument("--atol", type=_positive_float, default=1e-5, help="solver absolute tolerance (1e-5)")
    n.add_argument("--eps", type=_positive_float, default=1e-5, help="time the density refers to (1e-5)")
    n.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the EMA weights (default) or the raw weights")
    n.add_argument("--no-ema", dest="use_ema", action="store_false", help="same as --no-use-ema")
    n.add_argument("--seed", type=_nonneg_int, default=0, help="seed of dequantization noise and probes (0)")
    n.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    n.add_argument("--out", type=Path, help="JSON file (default: <run folder>/nll_<split>.json)")
    n.add_argument("--no-progress", action="store_true", help="no progress bar")
    n.set_defaults(func=_cmd_nll, parser=n)

    # -- demo ------------------------------------------------------------------------------------
    d = sub.add_parser("demo", help="train on digits, sample three ways, bits/dim, figure and report",
                       description="The end-to-end job: train a small VP model on scikit-learn's 8x8 digits, "
                       "sample with Euler-Maruyama, predictor-corrector and the probability-flow ODE, compute "
                       "test bits/dim, and write demo.png and report.md into --out.")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (runs/demo)")
    d.add_argument("--steps", type=_positive_int, help="training steps (default 5000; --quick 150)")
    d.add_argument("--quick", action="store_true", help="a small, fast configuration for smoke tests (~20 s)")
    d.add_argument("--n-test", type=_positive_int,
                   help="test images for bits/dim (default all 359; --quick 32)")
    d.add_argument("--n-samples", type=_positive_int, help="samples per sampler (default 64; --quick 16)")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="seed (0)")
    d.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    d.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: the demo's small networks run fastest single-threaded, "
                   "and a shared machine makes multi-threaded small ops much slower)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo, parser=d)
    return p


# ---------------------------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, flush=True)


def _device(text: str):
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise _UsageError(f"--device {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _UsageError(f"--device {text} but no CUDA device is available; use --device cpu")
    return dev


def _load_model(path: Path, use_ema: bool, device):
    from .training import CHECKPOINT_NAME, load_model

    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise _UsageError(f"no checkpoint at {str(path)!r}; pass the checkpoint_last.pt (or the run folder) "
                          "written by `scoresde train`")
    try:
        model, cfg, ckpt = load_model(path, use_ema=use_ema, device=device)
    except (ValueError, RuntimeError, OSError) as e:
        raise _UsageError(f"cannot read {str(path)!r}: {e}") from None
    return path, model, cfg, ckpt


def _load_data(name: str, root: Optional[str]):
    from .data import load_dataset

    if name in ("mnist", "cifar10") and root is None:
        raise _UsageError(f"--dataset {name} needs --data-root: the folder with the {name.upper()} files "
                          "(nothing is downloaded)")
    if name not in ("mnist", "cifar10") and root is not None:
        raise _UsageError(f"--dataset {name} reads no files; drop --data-root")
    try:
        return load_dataset(name, root)
    except (FileNotFoundError, ValueError, ImportError, TypeError) as e:
        raise _UsageError(f"cannot load data set {name!r}: {e}") from None


def _atomic_json(path: Path, obj: Any) -> Path:
    from .io import atomic_write

    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _atomic_torch(path: Path, obj: Any) -> Path:
    import torch

    from .io import atomic_write

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, buf.getvalue())


def _atomic_figure(fig, path: Path, dpi: int = 120) -> Path:
    from .io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


def _image_grid(x, data_range, ncols: Optional[int] = None):
    """``(B, C, H, W)`` data values -> an ``(rows (H+1) + 1, cols (W+1) + 1, C)`` array in ``[0, 1]``
    (``lo`` black, ``hi`` white, one-pixel separators)."""
    import numpy as np

    lo, hi = data_range
    a = ((x.detach().float().cpu().numpy() - lo) / (hi - lo)).clip(0.0, 1.0)
    B, C, H, W = a.shape
    ncols = ncols or math.ceil(math.sqrt(B))
    nrows = math.ceil(B / ncols)
    grid = np.full((nrows * (H + 1) + 1, ncols * (W + 1) + 1, C), 0.5, dtype=np.float32)
    for i in range(B):
        r, c = divmod(i, ncols)
        grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = a[i].transpose(1, 2, 0)
    return grid


def _show_samples(ax, x, shape, data_range, title: str) -> None:
    """Image grid for ``(C, H, W)`` data with 1 or 3 channels, else a scatter of the first two coordinates."""
    if len(shape) == 3 and shape[0] in (1, 3):
        rng = data_range if data_range is not None else (float(x.min()), float(x.max()))
        g = _image_grid(x, rng)
        ax.imshow(g[..., 0] if g.shape[2] == 1 else g, cmap="gray" if g.shape[2] == 1 else None,
                  vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        f = x.detach().float().cpu().reshape(x.shape[0], -1)
        if f.shape[1] < 2:
            ax.hist(f[:, 0].numpy(), bins=50)
        else:
            ax.scatter(f[:, 0].numpy(), f[:, 1].numpy(), s=4, alpha=0.6)
            ax.set_aspect("equal", adjustable="datalim")
            if f.shape[1] > 2:
                title += f" (coordinates 1-2 of {f.shape[1]})"
    ax.set_title(title, fontsize=9)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sampler_options(args) -> Dict[str, Any]:
    from .sampling import SAMPLERS

    given = {k: getattr(args, k) for k in _SHARED_FLAGS + _SAMPLER_FLAGS if getattr(args, k, None) is not None}
    if "steps" in given and "nfe" in given:
        raise _UsageError("give --steps or --nfe, not both")
    sampler = SAMPLERS[args.sampler]
    allowed = _SHARED_FLAGS + tuple(k for k in _SAMPLER_FLAGS if k in sampler.option_names or
                                    (k == "schedule" and args.sampler in ("ddpm", "ddim")))
    bad = [k for k in given if k not in allowed]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        ok = ", ".join("--" + k.replace("_", "-") for k in allowed)
        raise _UsageError(f"{flags} do(es) not apply to --sampler {args.sampler}; it takes {ok}")
    return given


def _draw(model, sde, shape, sampler: str, n: int, seed: int, device, eps=None, x_T=None, progress=False,
          **options):
    """Run one sampler; returns ``(SampleResult, seconds)``."""
    import torch

    from .sampling import sample

    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    res = sample(model.score_fn, sde, (n, *shape), sampler=sampler, eps=eps, generator=gen, device=device,
                 x_T=x_T, progress=progress, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return res, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    from .training import TrainConfig, TrainingDiverged, train

    base: Dict[str, Any] = {}
    if args.config is not None:
        if not args.config.is_file():
            raise _UsageError(f"--config {str(args.config)!r} does not exist")
        try:
            base = TrainConfig.load(args.config).to_dict()
        except (ValueError, TypeError) as e:
            raise _UsageError(f"--config {str(args.config)!r}: {e}") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in fields - {"out_dir"}:
        v = getattr(args, name, None)
        if v is not None:
            base[name] = v
    base["out_dir"] = args.out
    try:
        cfg = TrainConfig.from_dict(base)
    except (ValueError, TypeError) as e:
        raise _UsageError(str(e)) from None
    ds = _load_data(cfg.dataset, cfg.data_root)
    try:
        res = train(cfg, dataset=ds, progress=not args.no_progress, resume=True if args.resume else None)
    except TrainingDiverged as e:
        print(f"scoresde train: error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise _UsageError(str(e)) from None
    if res.rank == 0:
        start = "fresh run" if res.resumed_from is None else f"resumed from step {res.resumed_from}"
        _say(f"trained to step {res.step} ({start}); last logged loss {res.loss:.5g}; "
             f"{res.wall_time:.1f} s\ncheckpoint: {res.checkpoint}\nmetrics:    {res.metrics_path}\n"
             f"config:     {res.config_path}")
    return 0


def _cmd_sample(args) -> int:
    from .sde import VPSDE

    device = _device(args.device)
    options = _sampler_options(args)
    path, model, cfg, ckpt = _load_model(args.checkpoint, args.use_ema, device)
    sde = model.sde
    if options.get("schedule") == "discrete" and not isinstance(sde, VPSDE):
        raise _UsageError(f"--schedule discrete samples the DDPM chain and needs a VP model; this checkpoint "
                          f"has sde={cfg.sde!r}: use the default continuous schedule")
    if args.eps is not None and not args.eps < sde.T:
        raise _UsageError(f"--eps {args.eps} must be below T={sde.T}")
    shape = tuple(ckpt["data_shape"])
    try:
        res, secs = _draw(model, sde, shape, args.sampler, args.n, args.seed, device, eps=args.eps,
                          progress=not args.no_progress, **options)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    out = args.out if args.out is not None else path.parent / "samples"
    out.mkdir(parents=True, exist_ok=True)
    data_range = _data_range(cfg, ckpt)
    meta = dict(x=res.x.cpu(), nfe=res.nfe, status=res.status, sampler=res.sampler, eps=res.eps, info=res.info,
                seconds=secs, checkpoint=str(path), step=int(ckpt["step"]), use_ema=args.use_ema, seed=args.seed,
                dataset=cfg.dataset, data_range=data_range)
    tpath = _atomic_torch(out / f"samples_{args.sampler}.pt", meta)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    _show_samples(ax, res.x, shape, data_range, f"{args.sampler}, NFE {res.mean_nfe:g}, step {ckpt['step']}"
                  + (" (EMA)" if args.use_ema else ""))
    ipath = _atomic_figure(fig, out / f"samples_{args.sampler}.png")
    plt.close(fig)
    failed = int((res.status != 0).sum())
    _say(f"{args.n} samples with {args.sampler}: mean NFE {res.mean_nfe:g}, {secs:.2f} s"
         + (f", {failed} failed (see status)" if failed else "") + f"\ntensor: {tpath}\nfigure: {ipath}")
    return 0


def _data_range(cfg, ckpt) -> Optional[tuple]:
    """The data range of the checkpoint's data (``None`` for continuous data): the image grid is
    shown from ``lo`` (black) to ``hi`` (white)."""
    if "data_range" in ckpt:
        return None if ckpt["data_range"] is None else tuple(ckpt["data_range"])
    return (-1.0, 1.0) if cfg.dataset in ("digits", "mnist", "cifar10") else None


def _evaluate(model, sde, ds, data, *, trace, n_probes, repeats, batch_size, rtol, atol, eps, seed, device,
              progress):
    """``(BPDResult, convention note)`` for quantized data (uniform dequantization on the data set's grid)
    or continuous data (the density itself; the offset is made zero and said so)."""
    import torch

    from .evaluate import evaluate_bpd

    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(trace=trace, repeats=repeats, batch_size=batch_size, rtol=rtol, atol=atol, eps=eps,
              generator=gen, device=device, progress=progress)
    if n_probes is not None:
        kw["n_probes"] = n_probes
    if ds.quantized:
        res = evaluate_bpd(model.score_fn, sde, data.to(device), **ds.bpd_kwargs(), **kw)
        note = (f"uniform dequantization on the data set's grid ({ds.n_levels} levels on "
                f"[{ds.data_range[0]:g}, {ds.data_range[1]:g}]); bits/dim = -log p / (D ln 2) + "
                f"log2(n_levels / (hi - lo)), an upper bound on the discrete NLL")
    else:
        # continuous data: n_levels / (hi - lo) = 1 makes the offset log2(1) = 0, i.e. the density itself
        res = evaluate_bpd(model.score_fn, sde, data.to(device), dequantize=None, n_levels=2,
                           data_range=(0.0, 2.0), **kw)
        note = ("continuous data: no dequantization and no offset; bits/dim = -log p / (D ln 2) of the density "
                "itself (the convention's n_levels=2 on [0, 2] only makes log2(n_levels / (hi - lo)) = 0)")
    return res, note


def _cmd_nll(args) -> int:
    device = _device(args.device)
    if args.trace == "exact" and args.n_probes is not None:
        raise _UsageError("--n-probes applies to the Hutchinson estimators (rademacher, gaussian); "
                          "--trace exact takes none")
    path, model, cfg, ckpt = _load_model(args.checkpoint, args.use_ema, device)
    root = args.data_root if args.data_root is not None else cfg.data_root
    ds = _load_data(cfg.dataset, root)
    if tuple(ds.shape) != tuple(ckpt["data_shape"]):
        raise _UsageError(f"the data have shape {tuple(ds.shape)} but the model was trained on "
                          f"{tuple(ckpt['data_shape'])}")
    data = getattr(ds, args.split)
    n_split = data.shape[0]
    if args.limit is not None:
        data = data[:args.limit]
    try:
        res, note = _evaluate(model, model.sde, ds, data, trace=args.trace, n_probes=args.n_probes,
                              repeats=args.repeats, batch_size=args.batch_size, rtol=args.rtol, atol=args.atol,
                              eps=args.eps, seed=args.seed, device=device, progress=not args.no_progress)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    out = args.out if args.out is not None else path.parent / f"nll_{args.split}.json"
    report = res.to_dict(per_sample=False)
    report.update(checkpoint=str(path), step=int(ckpt["step"]), use_ema=args.use_ema, dataset=cfg.dataset,
                  split=args.split, n_evaluated=res.n_samples, n_in_split=n_split,
                  subset=(f"the first {res.n_samples} of {n_split} {args.split} samples"
                          if res.n_samples < n_split else f"all {n_split} {args.split} samples"),
                  seed=args.seed, note=note)
    _atomic_json(out, report)
    _say(f"{cfg.dataset} {args.split} ({report['subset']}), step {ckpt['step']}"
         f"{' EMA' if args.use_ema else ''}:\n{res.summary()}\n{note}\nwritten: {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# Demo.
# ---------------------------------------------------------------------------------------------
#: The demo's model and schedule (default / --quick).
_DEMO = dict(
    default=dict(steps=5000, net="mlp", hidden=512, depth=3, batch_size=128, lr=1e-3, warmup=200, ema_decay=0.999,
                 log_every=25, checkpoint_every=500, n_samples=64, n_test=None, em_steps=1000, pc_steps=500,
                 ode_tol=1e-5, bpd_tol=1e-5),
    quick=dict(steps=150, net="mlp", hidden=64, depth=2, batch_size=64, lr=2e-3, warmup=20, ema_decay=0.95,
               log_every=10, checkpoint_every=50, n_samples=16, n_test=32, em_steps=100, pc_steps=50,
               ode_tol=1e-3, bpd_tol=1e-3),
)


def _cmd_demo(args) -> int:
    import torch

    from .training import TrainConfig, train

    device = _device(args.device)
    torch.set_num_threads(args.threads)
    plan = dict(_DEMO["quick" if args.quick else "default"])
    steps = args.steps or plan["steps"]
    n_samples = args.n_samples or plan["n_samples"]
    progress = not args.no_progress
    out: Path = args.out
    ds = _load_data("digits", None)
    n_test = min(args.n_test or plan["n_test"] or ds.test.shape[0], ds.test.shape[0])
    cfg = TrainConfig(dataset="digits", sde="vp", net=plan["net"], hidden=plan["hidden"], depth=plan["depth"],
                      steps=steps, batch_size=plan["batch_size"], lr=plan["lr"], warmup=min(plan["warmup"], steps),
                      ema_decay=plan["ema_decay"], log_every=plan["log_every"],
                      checkpoint_every=plan["checkpoint_every"], seed=args.seed, out_dir=str(out / "run"),
                      device=str(device))
    t0 = time.perf_counter()
    _say(f"[1/4] training a VP {cfg.net.upper()} on digits for {steps} steps -> {out / 'run'}")
    try:
        res = train(cfg, dataset=ds, progress=progress)
    except ValueError as e:
        raise _UsageError(f"{e} (a different demo configuration already lives in {out / 'run'}: use another "
                          "--out or delete it)") from None
    t_train = time.perf_counter() - t0
    model, sde, shape = res.ema_model, res.ema_model.sde, tuple(ds.shape)

    _say(f"[2/4] sampling {n_samples} images three ways (same x_T for all)")
    x_T = sde.prior_sampling((n_samples, *shape), generator=torch.Generator(device=device).manual_seed(args.seed),
                             device=device)
    runs = [("Euler-Maruyama", "euler_maruyama", dict(steps=plan["em_steps"])),
            ("predictor-corrector", "pc", dict(steps=plan["pc_steps"], predictor="reverse_diffusion",
                                               corrector="langevin", snr=0.16)),
            ("probability-flow ODE", "ode", dict(method="dopri5", rtol=plan["ode_tol"], atol=plan["ode_tol"]))]
    results = []
    for label, name, opts in runs:
        r, secs = _draw(model, sde, shape, name, n_samples, args.seed + 1, device, x_T=x_T, progress=progress,
                        **opts)
        results.append(dict(label=label, sampler=name, options=opts, result=r, seconds=secs))
        _atomic_torch(out / f"samples_{name}.pt", dict(x=r.x.cpu(), nfe=r.nfe, status=r.status, info=r.info))

    _say(f"[3/4] bits/dim on {n_test} of {ds.test.shape[0]} test images (probability-flow ODE, dopri5)")
    t1 = time.perf_counter()
    bpd, note = _evaluate(model, sde, ds, ds.test[:n_test], trace="rademacher", n_probes=None, repeats=1,
                          batch_size=n_test, rtol=plan["bpd_tol"], atol=plan["bpd_tol"], eps=1e-5, seed=args.seed,
                          device=device, progress=progress)
    t_bpd = time.perf_counter() - t1

    _say("[4/4] figure and report")
    records = [json.loads(line) for line in res.metrics_path.read_text().splitlines() if line.strip()]
    curve = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for ax, rr in zip(axes[:3], results):
        r = rr["result"]
        _show_samples(ax, r.x, shape, ds.data_range, f"{rr['label']}\nNFE {r.mean_nfe:.0f}, {rr['seconds']:.1f} s")
    ax = axes[3]
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=1)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(f"training DSM loss (mean of {cfg.log_every} steps)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.suptitle(f"scoresde demo: VP SDE on 8x8 digits, {cfg.net.upper()} score network, {steps} steps, EMA weights",
                 fontsize=10)
    fig_path = _atomic_figure(fig, out / "demo.png")
    plt.close(fig)

    summary = dict(
        samplers=[dict(sampler=rr["sampler"], label=rr["label"], options=rr["options"],
                       mean_nfe=rr["result"].mean_nfe, seconds=rr["seconds"],
                       failed=int((rr["result"].status != 0).sum())) for rr in results],
        bpd=bpd.to_dict(per_sample=False), bpd_median=float(bpd.per_sample_bpd.nanmedian()), bpd_note=note, bpd_seconds=t_bpd, n_test=n_test,
        n_test_total=int(ds.test.shape[0]), n_samples=n_samples, train_seconds=t_train, final_loss=res.loss, config=cfg.to_dict(),
        torch=str(torch.__version__), device=str(device), threads=torch.get_num_threads())
    _atomic_json(out / "results.json", summary)
    report = _demo_report(summary, bpd, cfg, fig_path.name, args.quick)
    from .io import atomic_write

    rpath = atomic_write(out / "report.md", report)
    _say(f"bits/dim: {bpd.summary()}\nreport: {rpath}\nfigure: {fig_path}\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


def _demo_report(s: dict, bpd, cfg, fig_name: str, quick: bool) -> str:
    subset = (f"all {s['n_test']} test images" if s["n_test"] == s["n_test_total"]
              else f"the first {s['n_test']} of the {s['n_test_total']} test images")
    rows = "\n".join(f"| {r['label']} (`{r['sampler']}`) | {r['mean_nfe']:.1f} | {r['seconds']:.2f} | {r['failed']} | "
                     f"{', '.join(f'{k}={v}' for k, v in r['options'].items())} |" for r in s["samplers"])
    c = bpd.convention
    lines = [
        "# scoresde demo: a VP score model on 8x8 digits",
        "",
        ("**Quick mode** (a smoke test: tiny model, few steps; the numbers are not meaningful)."
         if quick else "Default mode."),
        f"Trained for {cfg.steps} steps in {s['train_seconds']:.1f} s on {s['device']} "
        f"({s['threads']} thread{'s' if s['threads'] != 1 else ''}, torch {s['torch']}); last logged training loss {s['final_loss']:.4g}. "
        "Samples and bits/dim use the EMA weights.",
        "",
        f"![samples and loss curve]({fig_name})",
        "",
        f"## Sampling ({s['n_samples']} samples per sampler from the same prior draw x_T)",
        "",
        "| sampler | NFE per sample | wall time (s) | failed samples | options |",
        "|---|---|---|---|---|",
        rows,
        "",
        "NFE counts score-network evaluations per sample, including the final denoising (Tweedie) step; "
        "for the adaptive ODE solver it is the mean over samples. Wall time covers the whole batch.",
        "",
        "## Test bits/dim",
        "",
        f"**{bpd.mean:.4f} ± {bpd.stderr:.4f} bits/dim** (mean ± standard error over images) on {subset} "
        f"(split of `load_digits`, seed 0), {s['bpd_seconds']:.1f} s; median over images "
        f"{s['bpd_median']:.4f} bits/dim (the mean is sensitive to a few badly modelled images).",
        "",
        f"Convention: {bpd.summary()}.",
        "",
        f"- probability-flow ODE likelihood at eps = {c['eps']:g}, solver {c['backend']} with rtol = {c['rtol']:g}, "
        f"atol = {c['atol']:g}; divergence by the {c['trace']} Hutchinson estimator with {c['n_probes']} "
        f"probe(s), {c['repeats']} repeat(s) per image",
        f"- {s['bpd_note']}; offset log2({c['n_levels']} / 2) = {c['offset_bits']:.4f} bits",
        "- the standard error is std(per-image bits/dim) / sqrt(N); it covers the images, the dequantization "
        "noise and the probes, not the training run",
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(s["config"], indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``scoresde`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2, "scoresde: error: choose a command: train, sample, nll or demo\n")
    try:
        return int(args.func(args) or 0)
    except _UsageError as e:
        args.parser.error(str(e))
    except KeyboardInterrupt:
        print(f"\nscoresde {args.command}: interrupted" + (" (run the same command again to resume from the last "
              "checkpoint)" if args.command in ("train", "demo") else ""), file=sys.stderr)
        return 130
    return 0  # pragma: no cover - parser.error exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
