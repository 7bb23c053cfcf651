"""``scoresde nll``: bits/dim of a checkpoint on a data split, with its standard error and its convention."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, add_threads_flag, atomic_json, distributed, load_data, load_model, say
from .files import check_output
from .flags import nonneg_int, positive_float, positive_int

NAME = "nll"
HELP = "bits/dim of a checkpoint on a data split"
DESCRIPTION = ("Negative log-likelihood in bits/dim under the probability-flow ODE (evaluate_bpd): prints the mean "
               "with its standard error and the full convention, and writes them as JSON.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..likelihood import TRACES
    from .train import add_config_flags

    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (or run folder)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="data split (test)")
    add_config_flags(p, only=("data_root",), helps=dict(data_root="override the data folder stored in the "
                                                         "checkpoint's config"))
    p.add_argument("--trace", choices=TRACES, default="rademacher", help="divergence estimator (rademacher)")
    p.add_argument("--n-probes", type=positive_int, help="Hutchinson probes per evaluation (1)")
    p.add_argument("--repeats", type=positive_int, default=1, help="evaluations per sample (1)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N samples of the split")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per ODE solve (256)")
    p.add_argument("--rtol", type=positive_float,
                   help="solver relative tolerance (default: chosen with --atol from the error budget)")
    p.add_argument("--atol", type=positive_float,
                   help="solver absolute tolerance (default: chosen with --rtol from the error budget)")
    p.add_argument("--error-budget", type=positive_float, default=0.1,
                   help="without --rtol/--atol: the loosest tolerance whose solver bias of the mean, estimated by "
                        "a paired pilot, stays below this fraction of the standard error (0.1)")
    p.add_argument("--pilot-size", type=positive_int, default=32, help="images in the tolerance pilot (32)")
    p.add_argument("--eps", type=positive_float, default=1e-5, help="time the density refers to (1e-5)")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the EMA weights (default) or the raw weights")
    p.add_argument("--no-ema", dest="use_ema", action="store_false", help="same as --no-use-ema")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of dequantization noise and probes (0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", type=Path, help="JSON file (default: <run folder>/nll_<split>.json)")
    p.add_argument("--conditional", action="store_true",
                   help="conditional models (--num-classes): the NLL of each image given its label, -log p(x | y), "
                   "unguided; default: -log p(x) with the unconditional (null) label")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def evaluate(model, sde, ds, data, *, trace, n_probes, repeats, batch_size, rtol, atol, eps, seed, device,
             progress, error_budget=0.1, pilot_size=32, labels=None):
    """``(BPDResult, convention note)`` for quantized data (uniform dequantization on the data set's grid)
    or continuous data (the density itself; the offset is made zero and said so)."""
    import torch

    from .. import evaluate_bpd

    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(trace=trace, repeats=repeats, batch_size=batch_size, rtol=rtol, atol=atol, eps=eps,
              generator=gen, device=device, progress=progress, error_budget=error_budget, pilot_size=pilot_size,
              labels=labels)
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


def run(args: argparse.Namespace) -> int:
    """Under ``torchrun`` the process group is set up here and ``evaluate_bpd`` shards the split
    across the ranks (each evaluates a contiguous block with its own random stream); rank 0 writes."""
    if (args.rtol is None) != (args.atol is None):
        raise UsageError("give both --rtol and --atol, or neither (then the tolerance comes from --error-budget)")
    if args.pilot_size < 2:
        raise UsageError("--pilot-size must be >= 2 (the pilot estimates a standard error)")
    if args.trace == "exact" and args.n_probes is not None:
        raise UsageError("--n-probes applies to the Hutchinson estimators (rademacher, gaussian); "
                         "--trace exact takes none")
    with distributed(args.device) as (d, device):
        path, model, cfg, ckpt = load_model(args.checkpoint, args.use_ema, device)
        root = args.data_root if args.data_root is not None else cfg.data_root
        ds = load_data(cfg.dataset, root)
        if tuple(ds.shape) != tuple(ckpt["data_shape"]):
            raise UsageError(f"the data have shape {tuple(ds.shape)} but the model was trained on "
                             f"{tuple(ckpt['data_shape'])}")
        out = args.out if args.out is not None else path.parent / f"nll_{args.split}.json"
        # before the evaluation, on every rank (no rank may wait in a collective for one that stopped): a bad
        # --out is found at once, not after the work
        check_output(out, kind="file", example=f"nll_{args.split}.json")
        data = getattr(ds, args.split)
        n_split = data.shape[0]
        labels = _labels(args, model, ds)
        if args.limit is not None:
            data = data[:args.limit]
            labels = None if labels is None else labels[:args.limit]
        try:
            res, note = evaluate(model, model.sde, ds, data, trace=args.trace, n_probes=args.n_probes,
                                 repeats=args.repeats, batch_size=args.batch_size, rtol=args.rtol, atol=args.atol,
                                 eps=args.eps, seed=args.seed, device=device,
                                 progress=not args.no_progress and d.rank == 0, error_budget=args.error_budget,
                                 pilot_size=args.pilot_size, labels=labels)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if d.rank == 0:
            _write(args, res, note, path, out, cfg, ckpt, n_split, d.world)
    return 0


def _labels(args: argparse.Namespace, model, ds):
    """``--conditional``: the split's labels, after checking the model and the data have them."""
    if not args.conditional:
        return None
    if int(getattr(model, "num_classes", 0)) == 0:
        raise UsageError("--conditional needs a conditional model, and this checkpoint is unconditional (trained "
                         "without --num-classes)")
    labels = ds.labels(args.split)
    if labels is None:
        raise UsageError(f"--conditional needs labels, and the {ds.name} {args.split} split has none")
    return labels


def _write(args: argparse.Namespace, res, note: str, path, out, cfg, ckpt, n_split: int, world: int) -> None:
    """``out`` (``nll_<split>.json`` or ``--out``) and the summary line."""
    import torch

    report = res.to_dict(per_sample=False)
    report.update(checkpoint=str(path), step=int(ckpt["step"]), use_ema=args.use_ema, dataset=cfg.dataset,
                  split=args.split, n_evaluated=res.n_samples, n_in_split=n_split,
                  subset=(f"the first {res.n_samples} of {n_split} {args.split} samples"
                          if res.n_samples < n_split else f"all {n_split} {args.split} samples"),
                  seed=args.seed, threads=torch.get_num_threads(), world_size=world, note=note,
                  conditional=bool(args.conditional))
    atomic_json(out, report)
    say(f"{cfg.dataset} {args.split} ({report['subset']}), step {ckpt['step']}"
        f"{' EMA' if args.use_ema else ''}{', -log p(x | y) given the labels' if args.conditional else ''}:\n{res.summary()}\n{note}\nwritten: {out}")
