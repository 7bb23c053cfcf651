"""Compare every sampler across a range of NFE: on Gaussian-mixture oracles and on a trained model.

For each target and each sampler configuration, draw samples and record NFE, wall time and quality:

* the oracles (the 2-D mixture and a 16-D one, sampled with their exact score): the energy
  distance to fresh samples of the mixture, next to the mixture-vs-mixture null quantile at the
  same n (a distance below that line is indistinguishable from the truth at this n), and the
  log-density error of the samples, ``mean log p(x_gen) - mean log p(x_true)`` under the exact
  density (negative: samples sit in less likely regions, e.g. too spread; positive: too
  concentrated on the modes);
* ``digits``: a VP score model trained by :func:`scoresde.train` on the 8x8 digits (or loaded with
  ``--digits-checkpoint``), sampled with its EMA weights: the energy distance to the held-out test
  images, next to the train-vs-test distance at the same n (the best a sampler can do with a
  model that had learned the training set perfectly).

Every configuration is repeated over seeds; the table shows the mean and [min, max], the figures
quality vs NFE and quality vs wall time. Writes a CSV, a Markdown table and a figure.

    python studies/compare_solvers.py                # full run (CPU: ~20 minutes, incl. training)
    python studies/compare_solvers.py --quick        # seconds; what the test suite runs
    python studies/compare_solvers.py --device cuda  # on a GPU
    python studies/compare_solvers.py --replot docs/figures/compare_solvers_cuda.csv --tag cuda
"""
from __future__ import annotations

import argparse
import csv
import io
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from tqdm.auto import tqdm

from scoresde import VPSDE
from scoresde.io import atomic_write
from scoresde.metrics import calibrate_threshold, energy_distance
from scoresde.sampling import sample
from scoresde.targets import mixture_2d, mixture_nd

def distance(x, y) -> float:
    """Energy distance, V-statistic form (always >= 0, so it can be drawn on a log axis; its
    truth-vs-truth floor at the same n is the null quantile drawn beside it)."""
    return energy_distance(x, y, unbiased=False)


FIELDS = ["oracle", "family", "config", "seed", "nfe", "wall_s", "energy_distance", "null_q99", "logp_error",
          "ok_fraction", "device"]

DIGITS = "digits (trained VP model)"


class DigitsTarget:
    """A trained digits model as a sampling target: ``score_fn``, its SDE, the held-out test images
    as the reference, and the train-vs-test distance at the same n as the floor."""

    def __init__(self, args, device):
        from scoresde import TrainConfig, load_digits, load_model, train

        ds = load_digits()
        if args.digits_checkpoint is not None:
            model, cfg, _ = load_model(args.digits_checkpoint, device=device)
        else:
            cfg = TrainConfig(dataset="digits", sde="vp", net="mlp", hidden=args.digits_hidden, depth=3,
                              steps=args.digits_steps,
                              batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, seed=0,
                              out_dir=str(args.out / "compare_solvers_digits_run"), device="cpu",
                              checkpoint_every=max(args.digits_steps, 1))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a small MLP trains several times faster on one thread
            try:
                res = train(cfg, dataset=ds, progress=True)
            finally:
                torch.set_num_threads(threads)
            model = res.ema_model.to(device).eval()
        self.model = model
        self.sde = model.sde
        self.dim = ds.num_dims
        self.shape = tuple(ds.test.shape[1:])
        self.test = ds.test.reshape(ds.test.shape[0], -1)
        self.train = ds.train.reshape(ds.train.shape[0], -1)
        self.description = f"{cfg.net} VP model, {cfg.steps} DSM steps (EMA weights)"

    def floor(self, n: int) -> float:
        """Energy distance between n training and n test images (the reference line)."""
        g = torch.Generator().manual_seed(999)
        idx = torch.randperm(self.train.shape[0], generator=g)[:n]
        return distance(self.train[idx], self.test[: min(n, self.test.shape[0])])


def configs(budgets: list[int], tolerances: list[float]):
    """(family, label, sampler, options, sde_N) tuples; the SDE's N only matters for DDPM."""
    out = []
    for b in budgets:
        out.append(("euler_maruyama", f"steps={b}", "euler_maruyama", dict(steps=b), 1000))
        out.append(("pc (RD + Langevin)", f"steps={max(b // 2, 1)}", "pc",
                    dict(steps=max(b // 2, 1), predictor="reverse_diffusion", corrector="langevin",
                         step_size_norm="batch"), 1000))
        out.append(("pc (RD, no corrector)", f"steps={b}", "pc",
                    dict(steps=b, predictor="reverse_diffusion", corrector="none"), 1000))
        out.append(("ode euler", f"steps={b}", "ode", dict(method="euler", steps=b), 1000))
        out.append(("ode heun", f"steps={max(b // 2, 1)}", "ode", dict(method="heun", steps=max(b // 2, 1)), 1000))
        if b > 20:  # the linear VP chain needs N > beta_max = 20 steps (betas beta_max/N below 1)
            out.append(("ddpm", f"N={b}", "ddpm", {}, b))
        out.append(("ddim", f"steps={b}", "ddim", dict(steps=b), 1000))
        out.append(("ddim eta=1", f"steps={b}", "ddim", dict(steps=b, eta=1.0), 1000))
    for tol in tolerances:
        out.append(("ode dopri5 (per-sample)", f"tol={tol:g}", "ode", dict(method="dopri5", rtol=tol, atol=tol), 1000))
        out.append(("ode torchdiffeq dopri5", f"tol={tol:g}", "ode",
                    dict(method="torchdiffeq_dopri5", rtol=tol, atol=tol), 1000))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    targets = {"mixture 2-D": mixture_2d(), "mixture 16-D": mixture_nd(D=16, K=4)}
    nulls = {}
    for name, mix in targets.items():
        nulls[name] = calibrate_threshold(lambda n, generator=None, m=mix: m.sample(n, generator=generator),
                                          args.n, statistic=distance, repeats=args.null_repeats, quantile=0.99,
                                          generator=torch.Generator().manual_seed(999))
    if args.digits:
        digits = DigitsTarget(args, device)
        targets[DIGITS] = digits
        n_digits = min(args.digits_n, digits.test.shape[0])
        nulls[DIGITS] = digits.floor(n_digits)
    rows = []
    todo = [(o, c, s) for o in targets for c in configs(args.budgets, args.tolerances) for s in range(args.seeds)]
    for target, (family, label, sampler, opts, N), seed in tqdm(todo, desc="compare_solvers"):
        tgt = targets[target]
        is_digits = target == DIGITS
        if is_digits:
            if N != tgt.sde.N:  # the DDPM chain with N steps: the trained model's SDE with that N
                sde = VPSDE(beta_min=tgt.sde.beta_min, beta_max=tgt.sde.beta_max, N=N)
            else:
                sde = tgt.sde
            score, n, shape = tgt.model.score_fn, n_digits, (n_digits,) + tgt.shape
        else:
            sde = VPSDE(N=N)
            score, n, shape = tgt.score_fn(sde), args.n, (args.n, tgt.dim)
        g = torch.Generator(device=device).manual_seed(seed)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():  # no sampler needs a graph of the score
            res = sample(score, sde, shape, sampler=sampler, generator=g, device=device, **opts)
        _sync(device)
        wall = time.perf_counter() - t0
        x = res.x[res.ok].cpu().reshape(-1, tgt.dim).float()
        if is_digits:
            ref = tgt.test[:n]
            logp_err = float("nan")
        else:
            ref = tgt.sample(n, generator=torch.Generator().manual_seed(10_000 + seed))
            logp_err = float(tgt.log_prob(x).mean() - tgt.log_prob(ref).mean()) if x.shape[0] else float("nan")
        dist = distance(x, ref) if x.shape[0] >= 2 else float("nan")
        rows.append(dict(oracle=target, family=family, config=label, seed=seed, nfe=round(res.mean_nfe, 1),
                         wall_s=round(wall, 4), energy_distance=dist, null_q99=nulls[target], logp_error=logp_err,
                         ok_fraction=float(res.ok.float().mean()), device=device_name(device)))
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def summarize(rows):
    """Mean and spread (min, max) over seeds per (oracle, family, config)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["oracle"], r["family"], r["config"]), []).append(r)
    out = []
    for (oracle, family, config), rs in groups.items():
        d = [r["energy_distance"] for r in rs]
        e = [float(r.get("logp_error", float("nan"))) for r in rs]
        out.append(dict(oracle=oracle, family=family, config=config, nfe=sum(r["nfe"] for r in rs) / len(rs),
                        wall_s=sum(r["wall_s"] for r in rs) / len(rs), dist=sum(d) / len(d), dist_min=min(d),
                        dist_max=max(d), null_q99=rs[0]["null_q99"], logp_err=sum(e) / len(e),
                        logp_err_min=min(e), logp_err_max=max(e)))
    return out


def write_outputs(rows, out: Path, tag: str) -> dict[str, Path]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    paths = {"csv": out / f"compare_solvers_{tag}.csv", "md": out / f"compare_solvers_{tag}.md",
             "png": out / f"compare_solvers_{tag}.png"}
    atomic_write(paths["csv"], buf.getvalue().encode())

    summary = summarize(rows)
    lines = [f"Energy distance (V-statistic) to the reference (mean over seeds, [min, max]); NFE per sample; "
             f"log-density error = mean log p(samples) - mean log p(true samples) under the exact mixture density "
             f"(nats; oracles only); device: {rows[0]['device']}; {date.today().isoformat()}.", ""]
    for oracle in dict.fromkeys(s["oracle"] for s in summary):
        ref = next(s["null_q99"] for s in summary if s["oracle"] == oracle)
        if oracle == DIGITS:
            lines += [f"### {oracle} (reference: held-out test images; train-vs-test distance {ref:.3g})", "",
                      "| sampler | config | NFE | wall s | energy distance |", "|---|---|---|---|---|"]
        else:
            lines += [f"### {oracle} (null 99% quantile {ref:.3g})", "",
                      "| sampler | config | NFE | wall s | energy distance | log-density error |",
                      "|---|---|---|---|---|---|"]
        for s in summary:
            if s["oracle"] == oracle:
                line = (f"| {s['family']} | {s['config']} | {s['nfe']:.0f} | {s['wall_s']:.3f} | "
                        f"{s['dist']:.3g} [{s['dist_min']:.3g}, {s['dist_max']:.3g}] |")
                if oracle != DIGITS:
                    line += f" {s['logp_err']:+.3g} [{s['logp_err_min']:+.3g}, {s['logp_err_max']:+.3g}] |"
                lines.append(line)
        lines.append("")
    atomic_write(paths["md"], "\n".join(lines).encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oracles = list(dict.fromkeys(s["oracle"] for s in summary))
    fig, axes = plt.subplots(2, len(oracles), figsize=(6 * len(oracles), 9), squeeze=False)
    families = list(dict.fromkeys(s["family"] for s in summary))
    cmap = plt.get_cmap("tab10")
    for j, oracle in enumerate(oracles):
        for row, key, xlabel in ((0, "nfe", "NFE per sample"), (1, "wall_s", "wall time [s]")):
            ax = axes[row][j]
            for k, fam in enumerate(families):
                # Connect the points in order of NFE (wall time need not grow monotonically with it).
                pts = [(s[key], s["dist"], s["dist_min"], s["dist_max"]) for s in sorted(
                    (s for s in summary if s["oracle"] == oracle and s["family"] == fam), key=lambda s: s["nfe"])]
                if not pts:
                    continue
                xs, ys, lo, hi = zip(*pts)
                ax.plot(xs, ys, "o-", color=cmap(k % 10), label=fam, ms=4)
                ax.fill_between(xs, lo, hi, color=cmap(k % 10), alpha=0.15)
            null = next(s["null_q99"] for s in summary if s["oracle"] == oracle)
            ax.axhline(null, color="k", ls="--", lw=1,
                       label="train vs test images" if oracle == DIGITS else "truth vs truth, 99% quantile")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("energy distance to test images" if oracle == DIGITS else "energy distance to the mixture")
            ax.set_title(f"{oracle} ({rows[0]['device']})")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(paths["png"], buf.getvalue())
    return paths


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few configurations on small n (seconds)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--n", type=int, default=None, help="samples per run (default 2000; 200 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="repeats with different seeds (default 3; 1 with --quick)")
    p.add_argument("--out", type=Path, default=Path("docs/figures"), help="output directory")
    p.add_argument("--tag", default=None, help="file name tag (default: cpu or cuda)")
    p.add_argument("--replot", type=Path, default=None, metavar="CSV",
                   help="rewrite the table and figure from a CSV of an earlier run (no sampling)")
    p.add_argument("--no-digits", dest="digits", action="store_false",
                   help="skip the trained digits model (oracles only)")
    p.add_argument("--digits-checkpoint", type=Path, default=None,
                   help="a VP checkpoint from `scoresde train --dataset digits` (default: train one here)")
    p.add_argument("--digits-steps", type=int, default=None,
                   help="training steps of the digits model when no checkpoint is given (default 5000; 30 quick)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")
    if args.quick:
        args.budgets, args.tolerances = [10, 40], [1e-3]
        args.n = args.n or 200
        args.seeds = args.seeds or 1
        args.null_repeats = 20
    else:
        args.budgets, args.tolerances = [10, 20, 50, 100, 200, 500, 1000], [1e-2, 1e-3, 1e-4, 1e-5]
        args.n = args.n or 2000
        args.seeds = args.seeds or 3
        args.null_repeats = 100
    if args.n < 2 or args.seeds < 1:
        p.error("--n must be >= 2 and --seeds >= 1")
    args.digits_steps = args.digits_steps if args.digits_steps is not None else (30 if args.quick else 5000)
    args.digits_hidden = 32 if args.quick else 512  # width of the digits MLP trained here
    args.digits_n = 64 if args.quick else 359  # samples per digits run (the test set has 359 images)
    if args.digits_steps < 1:
        p.error("--digits-steps must be >= 1")
    if args.digits_checkpoint is not None and not args.digits_checkpoint.exists():
        p.error(f"--digits-checkpoint {args.digits_checkpoint} does not exist")
    args.tag = args.tag or torch.device(args.device).type
    return args


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV this study wrote, with numbers parsed (for ``--replot``)."""
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        for k in ("nfe", "wall_s", "energy_distance", "null_q99", "ok_fraction"):
            r[k] = float(r[k])
        r["logp_error"] = float(r.get("logp_error") or "nan")  # CSVs of older runs lack the column
        r["seed"] = int(r["seed"])
    return rows


def warm_up(device: torch.device) -> None:
    """One small untimed run per sampler, so that one-off start-up costs (CUDA context, kernel
    caches) are not charged to the first timed configuration."""
    mix = mixture_2d()
    sde = VPSDE()
    for sampler, opts in (("euler_maruyama", dict(steps=5)), ("pc", dict(steps=5)), ("ode", {}),
                          ("ode", dict(method="torchdiffeq_dopri5")), ("ode", dict(method="heun", steps=5)),
                          ("ddim", dict(steps=5)), ("ddpm", {})):
        sample(mix.score_fn(sde), sde, (16, 2), sampler=sampler, device=device,
               generator=torch.Generator(device=device).manual_seed(0), **opts)
    _sync(device)


def main(argv=None) -> dict[str, Path]:
    args = parse(argv)
    if args.replot is not None:
        rows = read_rows(args.replot)
        paths = write_outputs(rows, args.out, args.tag)
        for k, v in paths.items():
            print(f"wrote {k}: {v}")
        return paths
    warm_up(torch.device(args.device))
    rows = run(args)
    paths = write_outputs(rows, args.out, args.tag)
    for k, v in paths.items():
        print(f"wrote {k}: {v}")
    return paths


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
