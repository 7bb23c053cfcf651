"""Classifier-free guidance on a conditional digits model: class accuracy and Fréchet distance
against the guidance weight, for several samplers and NFE budgets.

One class-conditional U-Net is trained on the 8x8 digits with label dropout (``num_classes=10``,
``p_uncond=0.1``, the CPU recipe of ``scoresde demo`` otherwise: v parameterization, likelihood
weighting, importance-sampled t). Then, for every sampler, NFE budget and guidance weight ``w``
(score ``(1 + w) score(x | y) - w score(x)``, Ho & Salimans 2022), ``--n`` samples are drawn with
labels ``0, 1, ..., 9`` repeated, from the same seed in every cell, and scored by

* the class accuracy of the built-in digits classifier (``scoresde.metrics.class_accuracy``; it
  gets 98.3% of the real test images right, the ceiling), overall with its binomial SE and per class;
* the Fréchet distance to the 359 test images in the classifier's features, with its null (train
  images against test images: the distance real data reach at this size).

The unconditional label (``-1``) row at the largest NFE shows what the same network does without
a class. Writes ``guidance.csv``, ``guidance.md`` and ``guidance.png`` into ``--out`` (atomically).

    python studies/guidance.py                               # ~13 min on 2 CPU cores (training ~6 of them)
    python studies/guidance.py --checkpoint runs/guidance/run   # reuse a trained model
    python studies/guidance.py --quick --out DIR             # seconds; what the test suite runs
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from _common import csv_bytes, environment, md_row, md_table, parser, pyplot, write_png
from scoresde import (TrainConfig, atomic_write, class_accuracy, digits_features, frechet_distance, load_dataset,
                      load_model, sample, train)

RECIPE = dict(dataset="digits", net="unet", channels=32, channel_mults=(1, 2), num_res_blocks=1, parameterization="v",
              weighting="likelihood", time_sampler="importance", steps=2400, batch_size=128, lr=1e-3, warmup=100,
              ema_decay=0.995, num_classes=10, p_uncond=0.1, log_every=100, checkpoint_every=800, device="cpu")
QUICK = dict(net="mlp", hidden=64, depth=2, steps=60, warmup=5, ema_decay=0.9, log_every=20, checkpoint_every=60)
#: (label, sampler, options): the deterministic fast solvers and a stochastic baseline
SAMPLERS = [("DDIM", "ddim", {}), ("DPM-Solver++(2M)", "dpmpp_2m", {}), ("UniPC", "unipc", {}),
            ("Euler-Maruyama", "euler_maruyama", {})]
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
NFES = (10, 20, 50)
FIELDS = ["sampler", "name", "nfe", "guidance_weight", "guidance_scale", "n", "accuracy", "accuracy_se",
          "per_class", "fd", "fd_null", "failed", "seconds"]


def trained_model(args, quick: bool):
    """The conditional model: ``--checkpoint`` if given, else trained into ``--workdir``."""
    if args.checkpoint is not None:
        return load_model(args.checkpoint)[0], 0.0
    cfg = TrainConfig(**{**RECIPE, **(QUICK if quick else {}), "out_dir": str(Path(args.workdir) / "run")})
    t0 = time.perf_counter()
    res = train(cfg, progress=not quick)
    return res.ema_model, time.perf_counter() - t0


def score_samples(x: torch.Tensor, y: torch.Tensor, test_feats: torch.Tensor) -> dict:
    ok = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    acc = class_accuracy(x[ok], y[ok])
    fd = frechet_distance(digits_features(x[ok].float()), test_feats)
    return dict(accuracy=acc.accuracy, accuracy_se=acc.stderr, per_class=" ".join(f"{v:.2f}" for v in acc.per_class),
                fd=fd, failed=int((~ok).sum()))


def run(model, n: int, samplers, weights, nfes, test_feats, fd_null: float, seed: int) -> list:
    sde = model.sde
    y = torch.arange(n) % 10
    rows = []
    cells = [(s, k, w) for s in samplers for k in nfes for w in weights]
    for (label, name, opts), nfe, w in cells:
        t0 = time.perf_counter()
        res = sample(model, sde, (n, 1, 8, 8), sampler=name, nfe=nfe, y=y,
                     guidance_weight=w, generator=torch.Generator().manual_seed(seed), **opts)
        row = dict(sampler=label, name=name, nfe=nfe, guidance_weight=w, guidance_scale=res.guidance["guidance_scale"],
                   n=n, fd_null=fd_null, seconds=time.perf_counter() - t0)
        row.update(score_samples(res.x, y, test_feats))
        rows.append(row)
    # the same network without a class (the null label), at the largest budget
    label, name, opts = samplers[1 % len(samplers)]
    res = sample(model, sde, (n, 1, 8, 8), sampler=name, nfe=max(nfes), y=torch.full((n,), -1), guidance_weight=0.0,
                 generator=torch.Generator().manual_seed(seed), **opts)
    ok = torch.isfinite(res.x.reshape(n, -1)).all(1)
    rows.append(dict(sampler=f"{label}, unconditional label", name=name, nfe=max(nfes), guidance_weight=0.0,
                     guidance_scale=1.0, n=n, accuracy=float("nan"), accuracy_se=float("nan"), per_class="",
                     fd=frechet_distance(digits_features(res.x[ok].float()), test_feats), fd_null=fd_null,
                     failed=int((~ok).sum()), seconds=0.0))
    return rows


def table(rows: list, env: dict, ceiling: float, train_s: float, steps: int) -> str:
    lines = ["# Classifier-free guidance on the digits (studies/guidance.py)", "",
             f"{env['device']}, torch {env['torch']}, {env['date']}; a conditional U-Net trained for {steps} steps "
             f"({train_s:.0f} s); {rows[0]['n']} samples per cell, labels 0..9 repeated; the digits classifier gets "
             f"{100 * ceiling:.1f}% of the real test images right; Fréchet distance null (train vs test images) "
             f"{rows[0]['fd_null']:.3f}.", ""]
    lines += md_table(["sampler", "NFE", "w (scale 1 + w)", "class accuracy", "Fréchet distance", "failed",
                       "per-class accuracy 0..9"])
    for r in rows:
        acc = "" if r["accuracy"] != r["accuracy"] else f"{100 * r['accuracy']:.1f}% ± {100 * r['accuracy_se']:.1f}"
        lines.append(md_row([r["sampler"], r["nfe"], f"{r['guidance_weight']:g} ({r['guidance_scale']:g})", acc,
                             f"{r['fd']:.3f}", r["failed"], r["per_class"]]))
    return "\n".join(lines) + "\n"


def figure(rows: list, path: Path, ceiling: float, nfe_mid: int, w_mid: float) -> None:
    """(a) accuracy and (b) FD against w at one NFE; (c) accuracy and (d) FD against NFE at one w."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    guided = [r for r in rows if "unconditional" not in r["sampler"]]
    names = list(dict.fromkeys(r["sampler"] for r in guided))
    for label in names:
        mine = [r for r in guided if r["sampler"] == label]
        at_nfe = sorted((r for r in mine if r["nfe"] == nfe_mid), key=lambda r: r["guidance_weight"])
        at_w = sorted((r for r in mine if r["guidance_weight"] == w_mid), key=lambda r: r["nfe"])
        axes[0].plot([r["guidance_weight"] for r in at_nfe], [100 * r["accuracy"] for r in at_nfe], marker="o", label=label)
        axes[1].plot([r["guidance_weight"] for r in at_nfe], [r["fd"] for r in at_nfe], marker="o", label=label)
        axes[2].plot([r["nfe"] for r in at_w], [100 * r["accuracy"] for r in at_w], marker="o", label=label)
        axes[3].plot([r["nfe"] for r in at_w], [r["fd"] for r in at_w], marker="o", label=label)
    for ax in (axes[0], axes[2]):
        ax.axhline(100 * ceiling, color="k", ls="--", lw=0.8, label="real test images")
        ax.set_ylabel("class accuracy (%)")
    for ax in (axes[1], axes[3]):
        ax.axhline(guided[0]["fd_null"], color="k", ls=":", lw=0.8, label="null (train vs test)")
        ax.set_ylabel("Fréchet distance (classifier features)")
    axes[0].set(xlabel="guidance weight w", title=f"(a) accuracy, NFE {nfe_mid}")
    axes[1].set(xlabel="guidance weight w", title=f"(b) Fréchet distance, NFE {nfe_mid}")
    nfes = sorted({r["nfe"] for r in guided})
    axes[2].set(xlabel="NFE", xscale="log", xticks=nfes, xticklabels=[str(k) for k in nfes],
                title=f"(c) accuracy, w = {w_mid:g}")
    axes[3].set(xlabel="NFE", xscale="log", xticks=nfes, xticklabels=[str(k) for k in nfes],
                title=f"(d) Fréchet distance, w = {w_mid:g}")
    for ax in (axes[2], axes[3]):
        ax.minorticks_off()
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(path, fig, 100)


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "figures")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default="runs/guidance", help="where the training run goes")
    p.add_argument("--checkpoint", type=Path, help="a conditional digits checkpoint (or run folder) instead of training")
    p.add_argument("--n", type=int, default=0, help="samples per cell (default 500; --quick 40)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.quick else min(2, torch.get_num_threads()))
    model, train_s = trained_model(args, args.quick)
    model.eval()
    if int(getattr(model, "num_classes", 0)) != 10:
        p.error("the model must be a conditional digits model (num_classes=10)")
    ds = load_dataset("digits")
    test_feats = digits_features(ds.test)
    fd_null = frechet_distance(digits_features(ds.train[: ds.test.shape[0]]), test_feats)
    ceiling = class_accuracy(ds.test, ds.test_labels).accuracy
    n = args.n or (40 if args.quick else 500)
    samplers, weights, nfes = (SAMPLERS[:2], (0.0, 2.0), (6,)) if args.quick else (SAMPLERS, WEIGHTS, NFES)
    rows = run(model, n, samplers, weights, nfes, test_feats, fd_null, args.seed)
    env = environment(torch.device("cpu"))
    steps = (QUICK if args.quick else RECIPE)["steps"] if args.checkpoint is None else -1
    stem = "guidance_quick" if args.quick else "guidance"
    paths = dict(csv=args.out / f"{stem}.csv", md=args.out / f"{stem}.md", png=args.out / f"{stem}.png")
    atomic_write(paths["csv"], csv_bytes(rows, FIELDS))
    atomic_write(paths["md"], table(rows, env, ceiling, train_s, steps))
    figure(rows, paths["png"], ceiling, nfes[len(nfes) // 2], weights[min(3, len(weights) - 1)])
    print(table(rows, env, ceiling, train_s, steps))
    return dict(rows=rows, ceiling=ceiling, **paths)


if __name__ == "__main__":
    main()
