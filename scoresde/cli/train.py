"""``scoresde train``: its options are generated from the fields of :class:`~scoresde.training.TrainConfig`.

Each field is one flag (:func:`~scoresde.cli.flags.add_dataclass_flags`): the flag is the field
name with dashes except where :data:`RENAMES` says otherwise, the choices of a name field are the
module constants in :func:`field_choices`, and the help is the field's ``metadata["help"]``. A new
``TrainConfig`` field therefore gets its flag without an edit here.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Collection, Dict, Mapping, Optional

from .common import UsageError, add_threads_flag, load_data, parse_device, say
from .files import FileError, check_output, file_error, os_error_in

NAME = "train"
HELP = "train a score model (resumes from --out when it holds a checkpoint)"
DESCRIPTION = ("Train a score model by denoising score matching. Options not given take their value from --config "
               "(a JSON TrainConfig) or the TrainConfig defaults. A run folder that holds checkpoint_last.pt is "
               "resumed automatically. Under torchrun the run is distributed (gloo on CPU, NCCL on CUDA).")

#: TrainConfig fields whose flag is not the field name with dashes
RENAMES = {"out_dir": "--out", "sde_N": "--sde-n"}
#: TrainConfig fields the train command requires
REQUIRED = ("out_dir",)


def field_choices() -> Dict[str, tuple]:
    """The allowed values of TrainConfig's name fields, from the modules that define them."""
    from ..data import DATASETS
    from ..losses import TIME_SAMPLERS, WEIGHTINGS
    from ..score import PARAMETERIZATIONS
    from ..training import NET_KINDS, SDE_KINDS, UNET_CONDITIONINGS

    return dict(dataset=tuple(DATASETS), sde=SDE_KINDS, net=NET_KINDS, parameterization=tuple(PARAMETERIZATIONS),
                weighting=tuple(WEIGHTINGS), time_sampler=tuple(TIME_SAMPLERS), unet_conditioning=UNET_CONDITIONINGS)


def add_config_flags(parser: argparse.ArgumentParser, *, only: Optional[Collection[str]] = None,
                     required: Collection[str] = (), defaults: Optional[Mapping[str, Any]] = None,
                     helps: Optional[Mapping[str, str]] = None) -> Dict[str, argparse.Action]:
    """The TrainConfig flags (all, or those in ``only``) on ``parser``; other commands that take a
    training setting (``demo --steps``, ``nll --data-root``) reuse them with their own defaults/help."""
    from ..training import TrainConfig
    from .flags import add_dataclass_flags

    return add_dataclass_flags(parser, TrainConfig, renames=RENAMES, choices=field_choices(), required=required,
                               only=only, defaults=defaults, helps=helps)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="JSON file of TrainConfig fields (explicit options override it)")
    add_config_flags(p, required=REQUIRED)
    p.add_argument("--resume", action="store_true",
                   help="require a checkpoint in --out to resume from (default: resume if there is one)")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of the command line: the ``--config`` file (or the defaults), with every
    option given on the command line on top."""
    from ..training import TrainConfig

    base: Dict[str, Any] = {}
    if args.config is not None:
        if args.config.is_dir():
            raise UsageError(f"--config {str(args.config)!r} is a folder; give a JSON file (e.g. a run's config.json)")
        if not args.config.is_file():
            raise UsageError(f"--config {str(args.config)!r} does not exist")
        try:
            base = TrainConfig.load(args.config).to_dict()
        except OSError as e:
            raise file_error(e, path=args.config, verb="read") from None
        except (ValueError, TypeError) as e:
            raise UsageError(f"--config {str(args.config)!r}: {e}") from None
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            base[f.name] = v
    try:
        return TrainConfig.from_dict(base)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def check_run_folder(out: Path, flag: str = "--out") -> None:
    """Before training: ``out`` can be a run folder (not a file, below no file, writable) and its
    ``checkpoint_last.pt``, if there is one, is a file."""
    from ..training import CHECKPOINT_NAME

    ckpt = out / CHECKPOINT_NAME
    try:
        check_output(out, kind="folder", flag=flag)
    except FileError as e:
        raise e.with_note(intact(ckpt)) from None
    if ckpt.exists() and not ckpt.is_file():
        raise UsageError(f"cannot resume from {str(ckpt)!r}: it is a folder, not a checkpoint file; move it away "
                         f"or choose another {flag}")


def intact(ckpt: Path) -> str:
    """What a failed write left of the run: its last checkpoint, unchanged (checkpoints are written
    atomically: temporary file, fsync, rename), or no checkpoint yet."""
    if ckpt.is_file():
        return (f"the last checkpoint {str(ckpt)!r} is intact (checkpoints are written atomically); fix that and "
                "run the same command again to resume from it")
    return "no checkpoint was written yet"


def run(args: argparse.Namespace) -> int:
    from .. import training
    from ..training import CHECKPOINT_NAME, TrainingDiverged, train

    cfg = config_from_args(args)
    parse_device(cfg.device, auto=True)
    out = Path(cfg.out_dir)
    check_run_folder(out)
    ds = load_data(cfg.dataset, cfg.data_root)
    damaged = tuple(c for c in (ValueError, getattr(training, "CheckpointError", None)) if isinstance(c, type))
    try:
        res = train(cfg, dataset=ds, progress=not args.no_progress, resume=True if args.resume else None)
    except TrainingDiverged as e:
        print(f"scoresde train: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if isinstance(e, OSError) and e.errno is None:  # the loop's own message: resume asked, no checkpoint
            raise UsageError(str(e)) from None
        if os_error_in(e) is not None:
            raise file_error(e, path=out, note=intact(out / CHECKPOINT_NAME)) from None
        if isinstance(e, damaged):
            raise UsageError(str(e)) from None
        raise
    if res.rank == 0:
        start = "fresh run" if res.resumed_from is None else f"resumed from step {res.resumed_from}"
        say(f"trained to step {res.step} ({start}); last logged loss {res.loss:.5g}; "
            f"{res.wall_time:.1f} s\ncheckpoint: {res.checkpoint}\nmetrics:    {res.metrics_path}\n"
            f"config:     {res.config_path}")
    return 0
