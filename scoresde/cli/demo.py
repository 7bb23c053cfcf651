"""``scoresde demo``: train on digits, sample three ways, test bits/dim, figure and report (``docs/cli.md``)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import (UsageError, add_threads_flag, atomic_bytes, atomic_json, atomic_torch, load_data, parse_device,
                     say)
from .files import check_output, file_error, os_error_in
from .flags import positive_int

#: Training steps of the default recipe.
STEPS = 1600

NAME = "demo"
HELP = "train on digits, sample three ways, bits/dim, figure and report"
DESCRIPTION = ("The end-to-end job: train a small VP U-Net on scikit-learn's 8x8 digits, sample with "
               "Euler-Maruyama, predictor-corrector and the probability-flow ODE, compare the samples with the "
               "test images (Frechet distance, KID, precision/recall on the digits classifier's features), "
               "compute test bits/dim next to the classical baselines, and write demo.png and report.md "
               "into --out.")

#: The demo's model and schedule (default / --quick). The default is the CPU recipe of docs/results.md
#: ("Digits on a laptop"): a small U-Net with the v parameterization (eps_hat = x_t at high noise
#: without the network, so probability-flow ODE samples do not expand), likelihood weighting and
#: importance-sampled times; samples as many as there are test images, for the sample-quality metrics.
PLANS = dict(
    default=dict(steps=STEPS, net="unet", channels=32, channel_mults=(1, 2), num_res_blocks=1, hidden=128, depth=3,
                 weighting="likelihood", time_sampler="importance", batch_size=128, lr=1e-3, warmup=100,
                 ema_decay=0.995, log_every=25, checkpoint_every=400, n_samples=None, n_test=None, em_steps=200,
                 pc_steps=100, ode_tol=1e-4, bpd_tol=None, gmm_k=10),
    quick=dict(steps=150, net="mlp", channels=32, channel_mults=(1, 2), num_res_blocks=1, hidden=64, depth=2,
               weighting="sigma2", time_sampler="uniform", batch_size=64, lr=2e-3, warmup=20, ema_decay=0.95,
               log_every=10, checkpoint_every=50, n_samples=16, n_test=32, em_steps=100, pc_steps=50,
               ode_tol=1e-3, bpd_tol=None, gmm_k=2),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .train import add_config_flags

    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (runs/demo)")
    p.add_argument("--quick", action="store_true", help="a small, fast configuration for smoke tests (~20 s)")
    p.add_argument("--n-test", type=positive_int, help="test images for bits/dim (default all 359; --quick 32)")
    p.add_argument("--n-samples", type=positive_int,
                   help="samples per sampler (default: as many as test images, 359; --quick 16)")
    # the training settings the demo lets one change are TrainConfig's flags, with the demo's defaults
    add_config_flags(p, only=("steps", "seed", "device"), defaults=dict(seed=0, device="cpu"),
                     helps=dict(steps=f"training steps (default {STEPS}; --quick 150)", seed="seed (0)",
                                device="cpu or cuda (default cpu)"))
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train(cfg, ds, out: Path, progress: bool):
    from ..training import CHECKPOINT_NAME, train

    say(f"[1/5] training a VP {cfg.net.upper()} on digits for {cfg.steps} steps -> {out / 'run'}")
    from .train import intact

    try:
        return train(cfg, dataset=ds, progress=progress)
    except OSError as e:
        if e.errno is None:
            raise
        raise file_error(e, path=out / "run", note=intact(out / "run" / CHECKPOINT_NAME)) from None
    except RuntimeError as e:
        if os_error_in(e) is None:
            raise
        raise file_error(e, path=out / "run", note=intact(out / "run" / CHECKPOINT_NAME)) from None
    except ValueError as e:
        raise UsageError(f"{e} (a different demo configuration already lives in {out / 'run'}: use another "
                         "--out or delete it)") from None


def _sample_three_ways(model, shape, plan: dict, n_samples: int, seed: int, device, out: Path, progress: bool):
    """Euler-Maruyama, predictor-corrector and the probability-flow ODE from the same prior draw."""
    import torch

    from .sample import draw

    sde = model.sde
    say(f"[2/5] sampling {n_samples} images three ways (same x_T for all)")
    x_T = sde.prior_sampling((n_samples, *shape), generator=torch.Generator(device=device).manual_seed(seed),
                             device=device)
    runs = [("Euler-Maruyama", "euler_maruyama", dict(steps=plan["em_steps"])),
            ("predictor-corrector", "pc", dict(steps=plan["pc_steps"], predictor="reverse_diffusion",
                                               corrector="langevin", snr=0.16)),
            ("probability-flow ODE", "ode", dict(method="dopri5", rtol=plan["ode_tol"], atol=plan["ode_tol"]))]
    results = []
    for label, name, opts in runs:
        r, secs = draw(model, sde, shape, name, n_samples, seed + 1, device, x_T=x_T, progress=progress, **opts)
        results.append(dict(label=label, sampler=name, options=opts, result=r, seconds=secs))
        atomic_torch(out / f"samples_{name}.pt", dict(x=r.x.cpu(), nfe=r.nfe, status=r.status, info=r.info))
    return results


def _quality(results, reference, seed: int) -> list:
    """Fréchet distance, KID and precision/recall of each sampler's images against ``reference``, on
    the built-in digits classifier's features, each with its null (two halves of the reference)."""
    import torch

    from ..metrics import sample_quality

    return [sample_quality(rr["result"].x.detach().cpu().float(), reference, features="digits",
                           generator=torch.Generator().manual_seed(seed + 11)) for rr in results]


def _baselines(ds, test, k: int, seed: int) -> list:
    """Test bits/dim of the full-covariance Gaussian and a ``k``-component GMM fitted to the
    dequantized training split (one dequantization; see :mod:`scoresde.likelihood.baselines`)."""
    import math

    import torch

    from ..likelihood import baseline_bpds

    out = []
    for label, kk in (("full-covariance Gaussian", None), (f"Gaussian mixture, K = {k}", k)):
        b = baseline_bpds(ds, test, kk, 1, torch.Generator().manual_seed(seed + 3), seed)[0]
        out.append(dict(model=label, mean=float(b.mean()), stderr=float(b.std() / math.sqrt(b.numel()))))
    return out


def _diverged(per_image) -> int:
    """Test images whose bits/dim is non-finite or above twice the median."""
    import torch

    return int((~torch.isfinite(per_image) | (per_image > 2 * per_image.nanmedian())).sum())


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training import TrainConfig
    from .nll import evaluate
    from .report import demo_figure, demo_report

    from .train import check_run_folder

    device = parse_device(args.device)
    plan = dict(PLANS["quick" if args.quick else "default"])
    steps = args.steps or plan["steps"]
    progress = not args.no_progress
    out: Path = args.out
    check_output(out, kind="folder")  # before the work: the demo's files and its run folder can be written
    check_run_folder(out / "run", flag="--out")
    ds = load_data("digits", None)
    n_test = min(args.n_test or plan["n_test"] or ds.test.shape[0], ds.test.shape[0])
    n_samples = args.n_samples or plan["n_samples"] or ds.test.shape[0]
    cfg = TrainConfig(dataset="digits", sde="vp", net=plan["net"], hidden=plan["hidden"], depth=plan["depth"],
                      channels=plan["channels"], channel_mults=plan["channel_mults"],
                      num_res_blocks=plan["num_res_blocks"], weighting=plan["weighting"],
                      time_sampler=plan["time_sampler"],
                      steps=steps, batch_size=plan["batch_size"], lr=plan["lr"], warmup=min(plan["warmup"], steps),
                      ema_decay=plan["ema_decay"], log_every=plan["log_every"],
                      checkpoint_every=plan["checkpoint_every"], seed=args.seed, out_dir=str(out / "run"),
                      device=str(device))
    t0 = time.perf_counter()
    res = _train(cfg, ds, out, progress)
    t_train = time.perf_counter() - t0
    model, shape = res.ema_model, tuple(ds.shape)
    results = _sample_three_ways(model, shape, plan, n_samples, args.seed, device, out, progress)

    say(f"[3/5] sample quality against the {ds.test.shape[0]} test images (digits classifier features)")
    quality = _quality(results, ds.test, args.seed)
    say(f"[4/5] bits/dim on {n_test} of {ds.test.shape[0]} test images (probability-flow ODE, dopri5), "
        "and the classical baselines")
    t1 = time.perf_counter()
    bpd, note = evaluate(model, model.sde, ds, ds.test[:n_test], trace="rademacher", n_probes=None, repeats=1,
                         batch_size=n_test, rtol=plan["bpd_tol"], atol=plan["bpd_tol"], eps=1e-5, seed=args.seed,
                         device=device, progress=progress)
    t_bpd = time.perf_counter() - t1
    baselines = _baselines(ds, ds.test[:n_test], plan["gmm_k"], args.seed)

    say("[5/5] figure and report")
    records = [json.loads(line) for line in res.metrics_path.read_text().splitlines() if line.strip()]
    curve = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    fig_path = demo_figure(out / "demo.png", results, curve, shape, ds.data_range, cfg)
    summary = dict(
        samplers=[dict(sampler=rr["sampler"], label=rr["label"], options=rr["options"],
                       mean_nfe=rr["result"].mean_nfe, seconds=rr["seconds"],
                       failed=int((rr["result"].status != 0).sum()), quality=q.to_dict())
                  for rr, q in zip(results, quality)],
        baselines=baselines,
        bpd=bpd.to_dict(per_sample=False), bpd_median=float(bpd.per_sample_bpd.nanmedian()), bpd_note=note,
        bpd_seconds=t_bpd, n_test=n_test, n_test_total=int(ds.test.shape[0]), n_samples=n_samples,
        bpd_diverged=_diverged(bpd.per_sample_bpd),
        train_seconds=t_train, final_loss=res.loss, total_seconds=time.perf_counter() - t0, config=cfg.to_dict(), torch=str(torch.__version__),
        device=str(device), threads=torch.get_num_threads())
    atomic_json(out / "results.json", summary)
    rpath = atomic_bytes(out / "report.md", demo_report(summary, bpd, cfg, fig_path.name, args.quick))
    say(f"bits/dim: {bpd.summary()}\nreport: {rpath}\nfigure: {fig_path}\ntotal {time.perf_counter() - t0:.1f} s")
    return 0
