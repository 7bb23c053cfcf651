"""``scoresde sample``: draw samples from a checkpoint with any sampler of :data:`scoresde.sampling.SAMPLERS`.

The ``--sampler`` choices are the registry's names, and the sampler options are the union of the
samplers' ``option_names``: each becomes one flag, and a sampler accepts only its own (the others
are refused with a message). :func:`option_specs` says how the command line reads each option
(its type or choices, taken from the modules that define them, and a help line); an option a
sampler adds without an entry there still gets a flag that reads a number, a ``true``/``false`` or a
word.

**Chunks and ranks.** The ``--n`` samples are drawn in chunks: sample indices ``0..n-1`` are cut
into consecutive chunks of ``--chunk-size`` (the last one shorter), and chunk ``c`` is one sampler
call with its own generator, seeded with :func:`chunk_seed` ``(seed, c)`` (a SHA-256 derivation,
:func:`scoresde._utils.derive_seed`). Under ``torchrun`` rank ``r`` of ``W`` draws the contiguous
block of whole chunks ``[r K // W, (r + 1) K // W)`` of the ``K`` chunks, the chunks are gathered on
rank 0, which writes the files once, in index order. The samples are thus a function of
``(checkpoint, options, seed, chunk size)``, the same bitwise for any number of processes (on one
machine with the same software and thread count).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import UsageError, add_threads_flag, atomic_figure, atomic_torch, distributed, load_model, say
from .files import check_output
from .flags import flag_name, nonneg_float, nonneg_int, positive_float, positive_int

NAME = "sample"
HELP = "draw samples from a checkpoint"
DESCRIPTION = ("Draw samples from a trained model. Writes samples_<sampler>.pt (tensor and metadata) and "
               "samples_<sampler>.png (an image grid, or a scatter plot for vector data) into --out. Under torchrun "
               "the ranks share out whole chunks of --chunk-size samples (the samples do not depend on the number "
               "of processes); rank 0 writes the files.")

#: The shared arguments of the one sampler signature that the command line offers (every sampler takes them).
SHARED = ("steps", "nfe", "grid")
#: The default ``--chunk-size``: samples per sampler call and per random stream.
CHUNK_SIZE = 256


def _order(text: str):
    """``--order``: a solver order (dpm_solver_2/3, unipc) or the pc step order (a name)."""
    from ..sampling.pc import ORDERS

    if text in ORDERS:
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (pc takes {' or '.join(ORDERS)})") from None


def _literal(text: str):
    """An option without a spec: an int, a float, ``true``/``false``, or the word itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def option_specs() -> Dict[str, Dict[str, Any]]:
    """``{option: argparse keywords}`` of the sampler options (choices from the sampling modules)."""
    from ..sampling import CORRECTORS, PREDICTORS
    from ..sampling.chains import SCHEDULES, VARIANCES
    from ..sampling.pc import STEP_SIZE_NORMS
    from ..solvers import METHODS

    switch = dict(action=argparse.BooleanOptionalAction)
    return dict(
        predictor=dict(choices=sorted(PREDICTORS), help="predictor (reverse_diffusion)"),
        corrector=dict(choices=sorted(CORRECTORS), help="corrector (langevin)"),
        snr=dict(type=positive_float, help="Langevin signal-to-noise ratio (0.16)"),
        n_corrector_steps=dict(type=positive_int, help="corrector steps per predictor step (1)"),
        order=dict(type=_order, help="solver order 1-3 (dpm_solver_2/3: 2/3, unipc: 2); pc: corrector_first "
                   "(default) or predictor_first"),
        step_size_norm=dict(choices=STEP_SIZE_NORMS, help="Langevin step-size rule (pilot)"),
        pilot_size=dict(type=positive_int, help="samples of the pilot run that fixes the step sizes (128)"),
        pilot_seed=dict(type=nonneg_int, help="seed of the pilot run (0)"),
        method=dict(choices=tuple(METHODS), help="ODE solver (dopri5)"),
        rtol=dict(type=positive_float, help="ODE relative tolerance (1e-5)"),
        atol=dict(type=positive_float, help="ODE absolute tolerance (1e-5)"),
        max_steps=dict(type=positive_int, help="ODE solver step cap (the solver's default)"),
        variance=dict(choices=VARIANCES, help="ddpm variance (posterior)"),
        schedule=dict(choices=SCHEDULES, help="the SDE's own times or the DDPM chain (continuous)"),
        eta=dict(type=nonneg_float, help="ddim stochasticity (0)"),
        final_euler=dict(switch, help="a first-order last step (heun_edm: on; the others: off)"),
        lower_order_final=dict(switch, help="lower the order on the last steps (off)"),
        S_churn=dict(type=nonneg_float, help="heun_edm churn (0: deterministic)"),
        S_min=dict(type=nonneg_float, help="heun_edm: churn only where sigma >= S_min (0)"),
        S_max=dict(type=nonneg_float, help="heun_edm: churn only where sigma <= S_max (inf)"),
        S_noise=dict(type=nonneg_float, help="heun_edm churn noise scale (1)"),
    )


def sampler_options() -> List[Tuple[str, List[str]]]:
    """``[(option, [samplers that take it])]`` in registry order."""
    from ..sampling import SAMPLERS

    takers: Dict[str, List[str]] = {}
    for name, sampler in SAMPLERS.items():
        for opt in sampler.option_names:
            takers.setdefault(opt, []).append(name)
    return list(takers.items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..sampling import GRIDS, SAMPLERS

    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (or run folder)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="pc", help="sampler (default pc)")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples (64)")
    p.add_argument("--out", type=Path, help="output folder (default: <run folder>/samples)")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default: the SDE's N for euler_maruyama, "
                   "pc, ddpm; ddim 50; the fast solvers 20 evaluations)")
    p.add_argument("--nfe", type=positive_int, help="budget of score evaluations per sample (instead of --steps)")
    p.add_argument("--grid", choices=GRIDS, help="time grid (default: the sampler's own)")
    p.add_argument("--eps", type=positive_float, help="smallest time (1e-3 VP/sub-VP, 1e-5 VE)")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="sample with the EMA weights (default) or the raw weights (--no-use-ema)")
    p.add_argument("--no-ema", dest="use_ema", action="store_false", help="same as --no-use-ema")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the samples: chunk c is drawn with a "
                   "generator seeded from (seed, c) (0)")
    p.add_argument("--chunk-size", type=positive_int, default=CHUNK_SIZE,
                   help=f"samples per sampler call and per random stream ({CHUNK_SIZE}); under torchrun the "
                   "ranks share out whole chunks, so the samples depend on the chunk size and the seed, not on "
                   "the number of processes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; cuda:LOCAL_RANK under torchrun)")
    c = p.add_argument_group("conditional models", "models trained with --num-classes; the guided score is "
                             "(1 + w) score(x | y) - w score(x) (docs/sampling.md, 'Classifier-free guidance')")
    c.add_argument("--class", dest="label", type=_classes, metavar="K",
                   help="the class of every sample (3), a comma list cycled over the samples (0,3,7), or all "
                   "(0, 1, ..., C-1 cycled); default: unconditional samples")
    gw = c.add_mutually_exclusive_group()
    gw.add_argument("--guidance-weight", type=float, metavar="W",
                    help="classifier-free guidance weight w (0: the plain conditional model; needs --class)")
    gw.add_argument("--guidance-scale", type=float, metavar="S",
                    help="the same strength as a scale S = 1 + w (1: the plain conditional model), the "
                    "convention of diffusers' guidance_scale; give this or --guidance-weight")
    p.add_argument("--quality", action="store_true",
                   help="digits models: also report the Frechet distance, KID and precision/recall of the samples "
                   "against the test images, with their null (scoresde.metrics.sample_quality), in "
                   "quality_<sampler>.json")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("sampler options", "each applies to the samplers named after it; the others refuse it")
    specs = option_specs()
    for opt, takers in sampler_options():
        spec = dict(specs.get(opt, dict(type=_literal, help="an option of the sampler (see its docstring)")))
        spec["help"] = f"{spec['help']} [{', '.join(takers)}]"
        g.add_argument(flag_name(opt), dest=opt, default=None, **spec)


def _classes(text: str):
    """``--class``: ``all``, an int, or a comma list of ints (each >= 0)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class number, a comma list of them or 'all', got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"class numbers are >= 0, got {text!r}")
    return values


def labels_from_args(args: argparse.Namespace, n: int, num_classes: int):
    """The ``(n,)`` labels of ``--class`` (sample ``i`` gets entry ``i mod len``), or ``None``; checked
    against the model's ``num_classes`` and the guidance flags."""
    import torch

    label = getattr(args, "label", None)
    guided = args.guidance_weight is not None or args.guidance_scale is not None
    if label is None:
        if guided:
            raise UsageError("--guidance-weight/--guidance-scale guide towards a class: give --class too")
        return None
    if num_classes == 0:
        raise UsageError("--class needs a conditional model, and this checkpoint is unconditional (trained without "
                         "--num-classes); train one with scoresde train --num-classes K")
    values = list(range(num_classes)) if label == "all" else label
    bad = [v for v in values if v >= num_classes]
    if bad:
        raise UsageError(f"--class {','.join(map(str, bad))}: the model knows classes 0..{num_classes - 1}")
    return torch.tensor(values, dtype=torch.long)[torch.arange(n) % len(values)]


def options_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The shared and sampler options given on the command line, checked against ``--sampler``."""
    from ..sampling import SAMPLERS

    names = SHARED + tuple(opt for opt, _ in sampler_options())
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if "steps" in given and "nfe" in given:
        raise UsageError("give --steps or --nfe, not both")
    allowed = SHARED + tuple(SAMPLERS[args.sampler].option_names)
    bad = [k for k in given if k not in allowed]
    if bad:
        flags = ", ".join(flag_name(k) for k in bad)
        ok = ", ".join(flag_name(k) for k in allowed)
        raise UsageError(f"{flags} do(es) not apply to --sampler {args.sampler}; it takes {ok}")
    return given


def draw(model, sde, shape, sampler: str, n: int, seed: int, device, eps=None, x_T=None, progress=False,
         **options):
    """Run one sampler; returns ``(SampleResult, seconds)``."""
    import torch

    from ..sampling import sample

    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    res = sample(model.score_fn, sde, (n, *shape), sampler=sampler, eps=eps, generator=gen, device=device,
                 x_T=x_T, progress=progress, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return res, time.perf_counter() - t0


def data_range(cfg, ckpt) -> Optional[tuple]:
    """The data range of the checkpoint's data (``None`` for continuous data): the image grid is
    shown from ``lo`` (black) to ``hi`` (white)."""
    if "data_range" in ckpt:
        return None if ckpt["data_range"] is None else tuple(ckpt["data_range"])
    return (-1.0, 1.0) if cfg.dataset in ("digits", "mnist", "cifar10") else None


def chunk_bounds(n: int, chunk_size: int) -> List[Tuple[int, int]]:
    """The chunks ``[(start, stop), ...]`` of the sample indices ``0..n-1``: consecutive, each of
    ``chunk_size`` samples but the last."""
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s generator: ``derive_seed(seed, "sample", chunk)``."""
    from .._utils import derive_seed

    return derive_seed(seed, "sample", chunk)


def merge_results(parts: Sequence[Any]):
    """One :class:`~scoresde.sampling.SampleResult` of consecutive chunks: the per-sample fields
    concatenated, ``total_nfe`` summed, ``info`` (the options as used) that of the first chunk."""
    import torch

    def cat(name):
        return None if getattr(parts[0], name) is None else torch.cat([getattr(r, name) for r in parts])

    return dataclasses.replace(parts[0], x=cat("x"), nfe=cat("nfe"), status=cat("status"),
                               n_accepted=cat("n_accepted"), n_rejected=cat("n_rejected"),
                               total_nfe=sum(int(r.total_nfe) for r in parts))


def draw_chunks(model, sde, shape, sampler: str, n: int, seed: int, device, *, chunk_size: int = CHUNK_SIZE,
                rank: int = 0, world: int = 1, eps=None, progress=False, labels=None, **options):
    """This rank's chunks of the ``n`` samples (module docstring): ``(start, SampleResult on the CPU
    or None when the rank has no chunk)``. ``labels`` ``(n,)`` (or None): sample ``i``'s class, so a
    chunk takes the labels of its indices; ``options`` include the guidance."""
    import torch

    from ..likelihood.sharding import shard_bounds
    from ..sampling import sample

    chunks = chunk_bounds(n, chunk_size)
    first, last = shard_bounds(len(chunks), rank, world)
    parts = []
    for c in range(first, last):
        a, b = chunks[c]
        gen = torch.Generator(device=device).manual_seed(chunk_seed(seed, c))
        y = None if labels is None else labels[a:b].to(device)
        r = sample(model.score_fn, sde, (b - a, *shape), sampler=sampler, eps=eps, generator=gen, device=device,
                   progress=progress, y=y, **options)
        parts.append(dataclasses.replace(r, x=r.x.cpu()))
    start = chunks[first][0] if first < last else None
    return start, (merge_results(parts) if parts else None)


def gather_chunks(run_local: Callable[[], Tuple[Optional[int], Any]], rank: int, world: int):
    """Run ``run_local()`` (:func:`draw_chunks` of this rank) and collect every rank's block on rank
    0: rank 0 returns the merged result in index order, the others ``None``. An error on any rank is
    raised on every rank (a ``ValueError`` as a usage error), so no rank waits for a dead one."""
    import torch.distributed as dist

    if world == 1:
        return run_local()[1]
    err: Optional[BaseException] = None
    try:
        local = run_local()
    except Exception as e:  # re-raised below, after every rank has reached the collective
        err, local = e, (None, None)
    errors: List[Any] = [None] * world
    dist.all_gather_object(errors, None if err is None else (type(err).__name__, str(err)))
    if err is not None:
        raise err
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        text = "; ".join(f"rank {r}: {kind}: {msg}" for r, (kind, msg) in bad)
        if all(kind == "ValueError" for _, (kind, _) in bad):
            raise UsageError(f"sampling failed on another rank ({text})")
        raise RuntimeError(f"sampling failed on another rank ({text})")
    blocks: Optional[List[Any]] = [None] * world if rank == 0 else None
    dist.gather_object(local, blocks, dst=0)
    if rank != 0:
        return None
    filled = [b for b in blocks if b[1] is not None]
    expect = 0
    for start, res in filled:
        if start != expect:  # pragma: no cover - the blocks are contiguous by construction
            raise AssertionError(f"gathered chunks are not contiguous: block at {start}, expected {expect}")
        expect += res.x.shape[0]
    return merge_results([res for _, res in filled])


def run(args: argparse.Namespace) -> int:
    import torch

    from ..sde import VPSDE

    options = options_from_args(args)
    with distributed(args.device) as (d, device):
        path, model, cfg, ckpt = load_model(args.checkpoint, args.use_ema, device)
        sde = model.sde
        if options.get("schedule") == "discrete" and not isinstance(sde, VPSDE):
            raise UsageError(f"--schedule discrete samples the DDPM chain and needs a VP model; this checkpoint "
                             f"has sde={cfg.sde!r}: use the default continuous schedule")
        if args.eps is not None and not args.eps < sde.T:
            raise UsageError(f"--eps {args.eps} must be below T={sde.T}")
        shape = tuple(ckpt["data_shape"])
        out = args.out if args.out is not None else path.parent / "samples"
        # before the sampling, on every rank (no rank may wait in a collective for one that stopped): a bad
        # --out is found at once, not after the work
        check_output(out, kind="folder")
        labels = labels_from_args(args, args.n, int(getattr(model, "num_classes", 0)))
        if labels is not None:
            options.update(guidance_weight=args.guidance_weight, guidance_scale=args.guidance_scale)
        t0 = time.perf_counter()
        try:
            res = gather_chunks(lambda: draw_chunks(
                model, sde, shape, args.sampler, args.n, args.seed, device, chunk_size=args.chunk_size,
                rank=d.rank, world=d.world, eps=args.eps, progress=not args.no_progress and d.rank == 0,
                labels=labels, **options), d.rank, d.world)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
        if d.rank == 0:
            _write(args, res, secs, path, out, cfg, ckpt, shape, world=d.world, labels=labels)
    return 0


def _write(args: argparse.Namespace, res, secs: float, path: Path, out: Path, cfg, ckpt, shape, *,
           world: int, labels=None) -> None:
    """``samples_<sampler>.pt`` and ``.png`` in ``out`` (``--out``, default ``<run folder>/samples``) and the
    summary line."""
    import torch

    from .report import plt, show_samples

    out.mkdir(parents=True, exist_ok=True)
    rng = data_range(cfg, ckpt)
    meta = dict(x=res.x, nfe=res.nfe, status=res.status, sampler=res.sampler, eps=res.eps, info=res.info,
                seconds=secs, checkpoint=str(path), step=int(ckpt["step"]), use_ema=args.use_ema, seed=args.seed,
                dataset=cfg.dataset, data_range=rng, chunk_size=args.chunk_size, world_size=world,
                threads=torch.get_num_threads(), y=labels, guidance=res.guidance)
    tpath = atomic_torch(out / f"samples_{args.sampler}.pt", meta)
    quality = _quality(args, res, cfg, out, labels) if args.quality else ""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5, 5))
    show_samples(ax, res.x, shape, rng, f"{args.sampler}, NFE {res.mean_nfe:g}, step {ckpt['step']}"
                 + (" (EMA)" if args.use_ema else "") + _guidance_text(res.guidance, labels, ", "))
    ipath = atomic_figure(fig, out / f"samples_{args.sampler}.png")
    pyplot.close(fig)
    failed = int((res.status != 0).sum())
    say(f"{args.n} samples with {args.sampler}{_guidance_text(res.guidance, labels, ', ')}: "
        f"mean NFE {res.mean_nfe:g}, {secs:.2f} s"
        + (f" on {world} processes" if world > 1 else "")
        + (f", {failed} failed (see status)" if failed else "") + f"\ntensor: {tpath}\nfigure: {ipath}" + quality)


def _guidance_text(guidance, labels, sep: str) -> str:
    """``class 3, guidance weight 2 (scale 3)`` for the summary line and the figure title."""
    if guidance is None:
        return ""
    values = sorted(set(labels.tolist()))
    cls = f"class {values[0]}" if len(values) == 1 else f"{len(values)} classes"
    return (f"{sep}{cls}, guidance weight {guidance['guidance_weight']:g} "
            f"(scale {guidance['guidance_scale']:g})")


def _quality(args: argparse.Namespace, res, cfg, out: Path, labels=None) -> str:
    """``--quality``: the samples against the digits test images on the digits classifier's features."""
    import torch

    from ..data import load_dataset
    from ..metrics import class_accuracy, sample_quality
    from .common import atomic_json

    if cfg.dataset != "digits":
        raise UsageError(f"--quality needs a digits model (the built-in feature extractor is the digits classifier); "
                         f"this checkpoint was trained on {cfg.dataset!r}")
    q = sample_quality(res.x.detach().cpu().float(), load_dataset("digits").test, features="digits",
                       generator=torch.Generator().manual_seed(args.seed))
    record, text = q.to_dict(), q.summary()
    if labels is not None and bool((labels >= 0).all()):
        acc = class_accuracy(res.x.detach().cpu().float(), labels)
        record["class_accuracy"], text = acc.to_dict(), f"{text}\n{acc.summary()} (the digits classifier)"
    qpath = atomic_json(out / f"quality_{args.sampler}.json", record)
    return f"\n{text}\nquality: {qpath}"
