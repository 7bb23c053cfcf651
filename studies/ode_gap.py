"""Why probability-flow ODE samples of CPU-trained digits models were bad, and what removes it.

For each configuration (a network and a parameterization, trained on the 8x8 digits with the
likelihood weighting and importance-sampled times), this study measures on the 359 dequantized
test images:

* the learned noise estimate against the truth: images noised to ``x_t = m x0 + s z`` at several
  ``t``, the slope of ``eps_hat`` on ``z`` (``sum(eps_hat z) / sum(z z)``; 1 is right at high noise,
  where ``E[z | x_t] ~ x_t``) and ``|eps_hat| / |z|``;
* the batch std along the reverse probability-flow ODE from the prior (fixed-step Heun, the same
  ``x_T`` for every configuration) against the std of the forward marginal ``p_t`` of the data;
* ODE (dopri5) and Euler-Maruyama samples from the same ``x_T``: their std (the data's is 0.71)
  and the fraction of pixels beyond +-1.2;
* test bits/dim (``evaluate_bpd``), the number of images whose bits/dim is non-finite or above twice
  the median (diverged), and the std of the ODE latents of the test images (the prior's is 1).

Why it matters (docs/results.md): for the VP SDE near ``T`` (``m ~ 0``, ``s ~ 1``) the probability-flow
drift is ``dx/dt = beta(t)/2 (eps_hat / s - x)``. An eps network that predicts ``eps_hat = c x`` with
``c < 1`` turns the reverse ODE into an expansion by ``exp((1 - c)/2 int beta dt)``; the reverse SDE,
whose score term is twice as strong and which adds fresh noise, corrects it. The ``v``
parameterization reads ``eps_hat = s x / r + m out / r`` (``r = 1`` for VP), which is ``x_t`` at high
noise whatever the network says.

Writes ``ode_gap.csv``, ``ode_gap.md`` and ``ode_gap.png`` into ``--out`` (atomically).

    python studies/ode_gap.py --jobs 2 --configs unet_eps,unet_v             # ~25 min on 2 CPU cores
    python studies/ode_gap.py --jobs 2 --configs mlp_eps,mlp_v --steps 20000 # ~30 min; the diverging MLP
    python studies/ode_gap.py --quick --out DIR        # seconds; what the test suite runs
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from _common import csv_bytes, environment, md_row, md_table, parser, pyplot, write_png
from scoresde import TrainConfig, atomic_write, evaluate_bpd, load_dataset, sample, train
from scoresde.quantize import dequantize

#: The configurations: a network and a parameterization; the rest of the recipe is shared.
CONFIGS = {
    "unet_eps": dict(net="unet", parameterization="eps"),
    "unet_v": dict(net="unet", parameterization="v"),
    "mlp_eps": dict(net="mlp", parameterization="eps"),
    "mlp_v": dict(net="mlp", parameterization="v"),
}
RECIPE = dict(dataset="digits", channels=32, channel_mults=(1, 2), num_res_blocks=1, hidden=512, depth=3,
              steps=3000, batch_size=128, lr=1e-3, warmup=100, weighting="likelihood", time_sampler="importance",
              ema_decay=0.999, log_every=100, checkpoint_every=1000, device="cpu")
QUICK = dict(steps=40, channels=8, hidden=32, depth=2, warmup=5, log_every=10, checkpoint_every=40, ema_decay=0.9)
TIMES = (1e-3, 0.03, 0.3, 0.95, 0.999)
FIELDS = (["config", "net", "parameterization", "steps", "train_s"] + [f"slope_{t:g}" for t in TIMES]
          + [f"ratio_{t:g}" for t in TIMES] + ["ode_std", "ode_beyond", "ode_nfe", "em_std", "em_beyond",
          "data_std", "bpd", "bpd_se", "n_failed", "n_diverged", "latent_std", "trajectory"])


def eps_fit(model, sde, x0: torch.Tensor, g: torch.Generator) -> dict:
    """Slope of ``eps_hat`` on the true ``z`` and the norm ratio, at each of :data:`TIMES`."""
    out = {}
    for t in TIMES:
        tt = torch.full((x0.shape[0],), t)
        m, s = sde.coeffs(tt)
        z = torch.randn(x0.shape, generator=g)
        xt = m.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * z
        e = model.eps(xt, tt)
        out[f"slope_{t:g}"] = float((e * z).sum() / (z * z).sum())
        out[f"ratio_{t:g}"] = float(e.norm() / z.norm())
    return out


def trajectory(model, sde, x_T: torch.Tensor, data_var: float, steps: int) -> list:
    """``(t, batch std along the reverse ODE, std of the forward marginal p_t)`` at every Heun step."""
    rec = []
    sample(model, sde, x_T.shape, sampler="ode", method="heun", steps=steps, x_T=x_T, denoise=False,
           callback=lambda r: rec.append((float(r["t"].reshape(-1)[0]), float(r["x"].std()))))
    out = []
    for t, std in rec:
        m, s = sde.coeffs(torch.tensor([t]))
        out.append((t, std, math.sqrt(float(m) ** 2 * data_var + float(s) ** 2)))
    return out


def samples(model, sde, x_T: torch.Tensor, em_steps: int) -> dict:
    """ODE (dopri5) and Euler-Maruyama samples from the same ``x_T``: std and pixels beyond +-1.2."""
    out = {}
    for key, name, kw in (("ode", "ode", dict(rtol=1e-5, atol=1e-5)), ("em", "euler_maruyama", dict(steps=em_steps))):
        r = sample(model, sde, x_T.shape, sampler=name, x_T=x_T, generator=torch.Generator().manual_seed(1), **kw)
        out[f"{key}_std"] = float(r.x.std())
        out[f"{key}_beyond"] = float((r.x.abs() > 1.2).float().mean())
        if key == "ode":
            out["ode_nfe"] = float(r.nfe.float().mean())
    return out


def run_config(name: str, quick: bool, workdir: str, seed: int = 0, steps: int = 0) -> dict:
    """Train one configuration (``steps`` > 0 overrides the recipe's) and measure everything listed
    in the module docstring."""
    torch.set_num_threads(1)
    cfg = TrainConfig(**{**RECIPE, **CONFIGS[name], **(QUICK if quick else {}), **({"steps": steps} if steps else {}),
                         "seed": seed, "out_dir": str(Path(workdir) / name)})
    ds = load_dataset("digits")
    test = ds.test[:32] if quick else ds.test
    t0 = time.perf_counter()
    res = train(cfg, dataset=ds, progress=False)
    row = dict(config=name, net=cfg.net, parameterization=cfg.parameterization, steps=cfg.steps,
               train_s=time.perf_counter() - t0, data_std=float(ds.test.std()))
    model, sde = res.ema_model, res.ema_model.sde
    g = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sampling(tuple(test.shape), generator=torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        row.update(eps_fit(model, sde, dequantize(test, ds.n_levels, ds.data_range, g), g))
        row.update(samples(model, sde, x_T, 50 if quick else 1000))
        row["trajectory"] = json.dumps(trajectory(model, sde, x_T, float(ds.test.var()), 10 if quick else 100))
    b = evaluate_bpd(model, sde, test, **ds.bpd_kwargs(), generator=torch.Generator().manual_seed(seed + 2),
                     progress=False, keep_latents=True, rtol=1e-3 if quick else 1e-5, atol=1e-3 if quick else 1e-5)
    per = b.per_sample_bpd
    row.update(bpd=b.mean, bpd_se=b.stderr, n_failed=b.n_failed, latent_std=float(b.z.std()),
               n_diverged=int((~torch.isfinite(per) | (per > 2 * per.nanmedian())).sum()))
    return row


def table(rows: list, env: dict) -> str:
    cols = ["config", "eps_hat slope at t=0.95 / 0.999", "ODE sample std", "EM sample std", "ODE beyond +-1.2",
            "bits/dim", "diverged", "latent std", "train s"]
    lines = ["# Probability-flow ODE gap on the digits (studies/ode_gap.py)", "",
             f"{env['device']}, torch {env['torch']}, {env['date']}; data std {rows[0]['data_std']:.3f}.", ""]
    lines += md_table(cols)
    for r in rows:
        lines.append(md_row([r["config"], f"{r['slope_0.95']:.3f} / {r['slope_0.999']:.3f}", f"{r['ode_std']:.3f}",
                             f"{r['em_std']:.3f}", f"{r['ode_beyond']:.2%}", f"{r['bpd']:.3f} ± {r['bpd_se']:.3f}",
                             r["n_diverged"], f"{r['latent_std']:.3f}", f"{r['train_s']:.0f}"]))
    return "\n".join(lines) + "\n"


def figure(rows: list, path: Path) -> None:
    """(a) eps_hat slope vs t; (b) batch std along the reverse ODE vs the marginal's."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        a.plot(TIMES, [r[f"slope_{t:g}"] for t in TIMES], marker="o", label=r["config"])
        tr = json.loads(r["trajectory"])
        b.plot([p[0] for p in tr], [p[1] for p in tr], label=f"{r['config']}: reverse ODE")
    tr = json.loads(rows[0]["trajectory"])
    b.plot([p[0] for p in tr], [p[2] for p in tr], "k--", label="marginal p_t of the data")
    a.axhline(1.0, color="k", lw=0.8, ls=":")
    a.set(xscale="log", xlabel="t", ylabel="slope of eps_hat on z", title="(a) the learned noise estimate")
    b.set(xlabel="t (the ODE runs from T = 1 to 0)", ylabel="batch std", title="(b) std along the reverse ODE")
    for ax in (a, b):
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(path, fig, 110)


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "figures")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once (one thread each)")
    p.add_argument("--workdir", default="runs/ode_gap", help="where the training runs go")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: the recipe's 3000)")
    args = p.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; valid: {', '.join(CONFIGS)}")
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            k = len(names)
            rows = list(pool.map(run_config, names, [args.quick] * k, [args.workdir] * k, [0] * k, [args.steps] * k))
    else:
        rows = [run_config(n, args.quick, args.workdir, steps=args.steps) for n in names]
    env = environment(torch.device("cpu"))
    stem = "ode_gap_quick" if args.quick else ("ode_gap" if not args.steps else f"ode_gap_{args.steps}")
    paths = dict(csv=args.out / f"{stem}.csv", md=args.out / f"{stem}.md", png=args.out / f"{stem}.png")
    atomic_write(paths["csv"], csv_bytes(rows, FIELDS))
    atomic_write(paths["md"], table(rows, env))
    figure(rows, paths["png"])
    print(table(rows, env))
    return dict(rows=rows, **paths)


if __name__ == "__main__":
    main()
