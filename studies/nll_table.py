"""Test bits/dim of VP, sub-VP and VE score models on the digits, three divergence estimators,
classical baselines, and an oracle check of the likelihood pipeline.

Workflow (2) of the package: the negative log-likelihood in bits/dim on a test set.

* **Score models.** A VP, a sub-VP and a VE score model are trained on the 8x8 digits with the
  same network and the same budget (:func:`scoresde.train`, :data:`PLANS`), or loaded from
  ``--checkpoints``. Each is evaluated with :func:`scoresde.evaluate_bpd` (probability-flow ODE,
  Song et al. 2021, Section 4.3; per-sample dopri5; eps = 1e-5; uniform dequantization on the data
  grid) with three divergence estimators: Hutchinson–Skilling with one Rademacher probe, with
  several probes (their mean per evaluation), and the exact trace (``D = 64`` vector-Jacobian
  products per evaluation; on the first ``N`` test images only, for time). For each: the mean over
  images ± its standard error (each image first averaged over ``repeats`` fresh dequantizations
  and probes), the median image, the number of images above ``2 log2(n_levels)`` bits/dim
  (``outliers``: a learned field can send a few images' ODE far off, and a mean over images then
  explodes while the median does not), the mean NFE per image and evaluation, and the wall time.
  Every estimator is also summarised on the exact-trace subset (the same images), so the
  estimators can be compared image for image.
* **Variational bounds** beside the ODE likelihood, on the same test images
  (:func:`scoresde.evaluate_bounds`): the continuous-time bound of the SDE model (Song, Durkan,
  Murray & Ermon 2021, Theorem 3; the DSM form with the kernel from ``eps``, importance-sampled
  times, antithetic noise and a Gaussian control variate) on the same uniform dequantization with the
  same offset, so it reads directly against the ODE's bits/dim; and, for the VP model, the DDPM bound
  ``L_VB`` of Ho et al. (2020, eq. 5) over the VP SDE's ``N = 1000`` DDPM steps (all terms) with the
  discretized Gaussian decoder on the digits' own 17-level grid: a bound on the discrete NLL itself,
  no dequantization, no offset. Each with the mean ± SE over images and, paired image by image, its
  difference to the ODE's Hutchinson row with several probes. The continuous bound bounds the SDE
  model's NLL, which is the ODE model's only when the learned score is a true score, so "bound >=
  ODE" is an expectation for a good model, not a theorem. The DDPM bound starts the chain at the cell
  centre, about ``log2(w / sqrt(2 pi e beta_0)) = 1.5`` bits/dim above the cell's mass for the digits'
  wide cells (w = 2/17 against a decoder std of 0.01).
* **Baselines**, fitted to the dequantized training images and evaluated on the same test images
  with the same dequantization and offset: a full-covariance Gaussian and a Gaussian mixture
  (EM), the ones of ``studies/baselines.py`` (both from ``studies/_common.py``).
* **Oracle check.** For samples of a known 64-D Gaussian mixture (:func:`scoresde.mixture_nd`) the
  pipeline (:func:`scoresde.log_likelihood`, exact score, exact trace) is compared with the
  analytic ``log p_eps`` (:meth:`GaussianMixture.marginal_log_prob`) under each of the three SDEs,
  after removing the known prior mismatch ``log N(z; prior) - log p_T(z)`` (the ODE starts from the
  prior, the mixture's ``p_T`` is not exactly the prior; see tests/test_likelihood.py). The
  difference is compared with an error budget derived from the solver tolerance: dopri5 keeps
  the weighted RMS of each accepted step's local error estimate over the ``D + 1`` state entries
  below 1, so one step moves the log-density integral by at most
  ``sqrt(D + 1) (atol + rtol |delta logp|)`` nats beyond the true step; over ``n_accepted`` steps
  and in bits/dim, ``budget = n_accepted sqrt(D + 1) (atol + rtol |delta logp|) / (D ln 2)``
  (a heuristic bound: it ignores how errors in ``x`` feed the divergence; the 5th-order solution
  that is propagated is more accurate than the estimate that is controlled). The oracle rows also
  carry the continuous bound of the exact score on the same samples: it must equal the analytic
  ``-log p_eps`` plus its own expected prior mismatch ``E[log p_T(x_T) - log pi(x_T) | x]`` (the
  gap of Theorem 3 for a true score), within its Monte Carlo standard error.

bits/dim = ``-log p / (D ln 2) + log2(n_levels / (hi - lo))`` (:func:`scoresde.bits_per_dim`), an
upper bound on the discrete NLL (uniform dequantization, Theis et al. 2016); the oracle rows are a
continuous density and have no offset: ``-log p / (D ln 2)``.

Outputs (atomic): ``nll_table_<tag>.csv`` (one row per model x estimator, per baseline, per
oracle SDE), ``nll_table_<tag>.md`` and ``nll_table_<tag>.png``.

    python studies/nll_table.py --out docs/figures          # full: ~15 minutes on 2 shared CPU cores
    python studies/nll_table.py --quick --out /tmp/nll       # a minute at most; what the test runs
    python studies/nll_table.py --checkpoints vp=runs/a,subvp=runs/b,ve=runs/c --device cuda
    python studies/nll_table.py --replot docs/figures/nll_table_cpu.csv --out docs/figures

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-based generative
modeling through stochastic differential equations", ICLR; Song, Durkan, Murray & Ermon (2021),
"Maximum likelihood training of score-based diffusion models", NeurIPS; Ho, Jain & Abbeel (2020),
"Denoising diffusion probabilistic models", NeurIPS; Hutchinson (1989); Skilling (1989);
Grathwohl et al. (2019), "FFJORD"; Theis, van den Oord & Bethge (2016), "A note on the evaluation
of generative models".
"""
from __future__ import annotations

import argparse
import csv
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from _common import (csv_bytes, environment, md_row, md_table, parser, png_bytes, pyplot, require_device,
                     timed)
from scoresde import (VPSDE, TrainConfig, atomic_write, build_sde, evaluate_bounds, evaluate_bpd, load_digits,
                      load_model, log_likelihood, mixture_nd, train, variational_bound)
from scoresde.likelihood import baseline_bpds

MODELS = ("vp", "subvp", "ve")
MODEL_LABEL = {"vp": "VP", "subvp": "sub-VP", "ve": "VE"}

#: The training budget and evaluation settings. Same network and budget for the three SDEs.
#: sigma_max = 10 for VE: about the largest distance between two training images in [-1, 1]^64
#: (9.06; Song & Ermon 2020, technique 1). The MLP with sigma^2 weighting is what trains to a sane
#: field in CPU minutes (likelihood weighting sends some test images' ODE off, see docs/results.md).
PLANS = {
    "full": dict(
        train=dict(net="mlp", hidden=256, depth=3, emb_dim=64, steps=12000, batch_size=128, lr=2e-3, warmup=200,
                   ema_decay=0.999, weighting="sigma2", time_sampler="uniform", parameterization="eps",
                   sigma_max=10.0, log_every=100, checkpoint_every=2000),
        n_test=None, repeats=3, n_probes=4, n_exact=128, exact_repeats=1, rtol=1e-5,
        oracle_n=64, oracle_rtol=1e-6, gmm_k=10, baseline_repeats=3,
        bound_times=32, bound_repeats=3, ddpm_terms=None, oracle_bound_times=256),
    "quick": dict(
        train=dict(net="mlp", hidden=64, depth=2, emb_dim=16, steps=40, batch_size=64, lr=2e-3, warmup=10,
                   ema_decay=0.9, weighting="sigma2", time_sampler="uniform", parameterization="eps",
                   sigma_max=10.0, log_every=10, checkpoint_every=40),
        n_test=8, repeats=2, n_probes=4, n_exact=4, exact_repeats=1, rtol=1e-3,
        oracle_n=4, oracle_rtol=1e-6, gmm_k=2, baseline_repeats=1,
        bound_times=32, bound_repeats=2, ddpm_terms=None, oracle_bound_times=256),
}

ORACLE_D, ORACLE_K = 64, 4
EPS = 1e-5
PARTS = ("models", "baselines", "oracle")
#: The variational bounds per model (the DDPM bound for the VP model only) and their row labels.
BOUND_LABEL = {"continuous": "continuous bound", "ddpm": "DDPM bound L_VB"}

FIELDS = ["kind", "model", "estimator", "trace", "n_probes", "n", "repeats", "mean", "stderr", "median",
          "n_outliers", "outlier_threshold", "n_failed", "nfe_mean", "wall_s", "subset_n", "subset_mean",
          "subset_stderr", "vs_ode", "vs_ode_stderr", "analytic", "difference", "tol_bound", "prior_mismatch", "bound",
          "bound_stderr", "bound_mismatch", "rtol", "atol", "eps",
          "train_steps", "train_s", "train_loss", "info", "device", "torch", "date", "command"]
INT_FIELDS = ("n_probes", "n", "repeats", "n_outliers", "n_failed", "subset_n", "train_steps")
STR_FIELDS = ("kind", "model", "estimator", "trace", "info", "device", "torch", "date", "command")


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------
def estimators(n_probes: int) -> list[tuple[str, str, int]]:
    """``(label, trace, n_probes)`` of the three estimators."""
    return [("rademacher x1", "rademacher", 1), (f"rademacher x{n_probes}", "rademacher", n_probes),
            ("exact trace", "exact", 1)]


def summarise(per_sample: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` of per-image values (NaN-free part)."""
    v = per_sample[torch.isfinite(per_sample)].double()
    n = v.numel()
    mean = float(v.mean()) if n else math.nan
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n >= 2 else math.nan
    return mean, se


def distribution_stats(per_sample: torch.Tensor, threshold: float) -> dict:
    v = per_sample[torch.isfinite(per_sample)].double()
    return dict(median=float(v.median()) if v.numel() else math.nan, n_outliers=int((v > threshold).sum()))


def _seed(seed: int, *parts: int) -> int:
    """A seed per (model, estimator), independent of which other models are run."""
    out = seed
    for p in parts:
        out = out * 1_000_003 + p + 1
    return out % 2**62


def train_config(plan: dict, sde: str, runs_dir: Path, seed: int, device: torch.device) -> TrainConfig:
    return TrainConfig(dataset="digits", sde=sde, seed=seed, out_dir=str(runs_dir / sde), device=str(device),
                       **plan["train"])


def describe(cfg: TrainConfig) -> str:
    sde = (f"sigma in [{cfg.sigma_min:g}, {cfg.sigma_max:g}]" if cfg.sde == "ve"
           else f"beta in [{cfg.beta_min:g}, {cfg.beta_max:g}]")
    net = (f"MLP {cfg.hidden}x{cfg.depth}" if cfg.net == "mlp"
           else f"U-Net ch {cfg.channels} x {list(cfg.channel_mults)}")
    return (f"{net}, {cfg.parameterization}-prediction, {cfg.weighting} weighting, {cfg.time_sampler} t, "
            f"{cfg.steps} steps x batch {cfg.batch_size}, lr {cfg.lr:g}, EMA {cfg.ema_decay:g}; {sde}")


def checkpoint_path(path) -> Path:
    """A checkpoint file, or ``checkpoint_last.pt`` of a run folder."""
    path = Path(path)
    return path / "checkpoint_last.pt" if path.is_dir() else path


def get_model(name: str, args, ds, plan: dict, device: torch.device):
    """``(ScoreModel (EMA, eval), TrainConfig, dict(train_steps, train_s, train_loss))``."""
    if name in args.checkpoints:
        model, cfg, ckpt = load_model(checkpoint_path(args.checkpoints[name]), device=device)
        if cfg.sde != name:
            raise SystemExit(f"--checkpoints {name}={args.checkpoints[name]} holds a {cfg.sde!r} model, not {name!r}")
        if tuple(ckpt["data_shape"]) != tuple(ds.shape):
            raise SystemExit(f"--checkpoints {name}=...: the model was trained on data of shape "
                             f"{tuple(ckpt['data_shape'])}, the digits are {tuple(ds.shape)}")
        return model, cfg, dict(train_steps=int(ckpt["step"]), train_s=float(ckpt.get("wall_time", math.nan)),
                                train_loss=float(ckpt.get("loss", math.nan)))
    cfg = train_config(plan, name, args.runs_dir, args.seed, device)
    res = train(cfg, dataset=ds, progress=args.progress)
    model = res.ema_model.eval()
    return model, cfg, dict(train_steps=res.step, train_s=res.wall_time, train_loss=res.loss)


def evaluate_model(name: str, model, cfg: TrainConfig, meta: dict, ds, args, plan, device, bar) -> list[dict]:
    rows = []
    n_test = ds.test.shape[0] if plan["n_test"] is None else min(plan["n_test"], ds.test.shape[0])
    n_exact = min(plan["n_exact"], n_test)
    threshold = 2 * math.log2(ds.n_levels)
    sde = model.sde
    for k, (label, trace, n_probes) in enumerate(estimators(plan["n_probes"])):
        n = n_exact if trace == "exact" else n_test
        repeats = plan["exact_repeats"] if trace == "exact" else plan["repeats"]
        data = ds.test[:n].to(device)
        gen = torch.Generator(device=device).manual_seed(_seed(args.seed, MODELS.index(name), k))
        res, wall = timed(lambda: evaluate_bpd(
            model.score_fn, sde, data, repeats=repeats, trace=trace, n_probes=n_probes, eps=EPS, rtol=plan["rtol"],
            atol=plan["rtol"], batch_size=args.batch_size, generator=gen, device=device, progress=args.progress,
            **ds.bpd_kwargs()), device)
        per = res.per_sample_bpd
        sub_mean, sub_se = summarise(per[:n_exact])
        rows.append(dict(kind="model", model=name, estimator=label, trace=trace, n_probes=n_probes if trace != "exact"
                         else 0, n=n, repeats=repeats, mean=res.mean, stderr=res.stderr,
                         **distribution_stats(per, threshold), outlier_threshold=threshold, n_failed=res.n_failed,
                         nfe_mean=res.mean_nfe, wall_s=wall, subset_n=n_exact, subset_mean=sub_mean,
                         subset_stderr=sub_se, rtol=plan["rtol"], atol=plan["rtol"], eps=EPS, info=describe(cfg),
                         **meta))
        bar.update(1)
        if k == 1:  # the ODE reference of the bounds: several probes, every test image
            ode = (label, per)
    return rows + bound_rows(name, model, meta, ds, args, plan, device, bar, ode)


def bound_rows(name: str, model, meta: dict, ds, args, plan, device, bar, ode: tuple) -> list[dict]:
    """The continuous bound (and, for VP, the DDPM bound) on the same test images as the ODE rows, each
    with its paired difference to the ODE row ``ode = (label, per-image bits/dim)``."""
    n_test = ds.test.shape[0] if plan["n_test"] is None else min(plan["n_test"], ds.test.shape[0])
    n_exact = min(plan["n_exact"], n_test)
    threshold = 2 * math.log2(ds.n_levels)
    sde = model.sde
    data = ds.test[:n_test].to(device)
    rows = []
    for k, bound in enumerate(b for b in BOUND_LABEL if b == "continuous" or isinstance(sde, VPSDE)):
        gen = torch.Generator(device=device).manual_seed(_seed(args.seed, MODELS.index(name), 10 + k))
        out, wall = timed(lambda: evaluate_bounds(
            model.score_fn, sde, data, bounds=(bound,), repeats=plan["bound_repeats"], eps=EPS,
            n_times=plan["bound_times"], ddpm_terms=plan["ddpm_terms"], batch_size=args.batch_size, generator=gen,
            device=device, progress=args.progress, **ds.bpd_kwargs()), device)
        res = out[bound]
        per = res.per_sample_bpd
        sub_mean, sub_se = summarise(per[:n_exact])
        vs_ode, vs_ode_se = summarise(per - ode[1])
        rows.append(dict(kind="bound", model=name, estimator=BOUND_LABEL[bound], trace="", n_probes=0, n=n_test,
                         repeats=res.repeats, mean=res.mean, stderr=res.stderr, **distribution_stats(per, threshold),
                         outlier_threshold=threshold, n_failed=int((~torch.isfinite(res.bpd)).sum()),
                         nfe_mean=float(res.nfe), wall_s=wall, subset_n=n_exact, subset_mean=sub_mean,
                         subset_stderr=sub_se, vs_ode=vs_ode, vs_ode_stderr=vs_ode_se,
                         eps=EPS if bound == "continuous" else None,
                         info=f"{_bound_options(res.convention)}; paired with the ODE row '{ode[0]}'", **meta))
        bar.update(1)
    return rows


def baseline_rows(ds, args, plan, bar) -> list[dict]:
    """Gaussian and GMM (studies/baselines.py) on the same test images, with per-image values."""
    n_test = ds.test.shape[0] if plan["n_test"] is None else min(plan["n_test"], ds.test.shape[0])
    n_exact = min(plan["n_exact"], n_test)
    test = ds.test[:n_test]
    threshold = 2 * math.log2(ds.n_levels)
    rows = []
    for model, k in (("gaussian", None), (f"gmm (K={plan['gmm_k']})", plan["gmm_k"])):
        g = torch.Generator().manual_seed(_seed(args.seed, 100 + (k or 0)))
        bpd, wall = timed(lambda: baseline_bpds(ds, test, k, plan["baseline_repeats"], g, args.seed),
                          torch.device("cpu"))
        per = bpd.mean(0)
        mean, se = summarise(per)
        sub_mean, sub_se = summarise(per[:n_exact])
        info = ("maximum-likelihood full-covariance Gaussian of the dequantized training images" if k is None else
                f"{k}-component full-covariance GMM (EM, scikit-learn) of the dequantized training images")
        rows.append(dict(kind="baseline", model=model, estimator="exact density", trace="", n_probes=0, n=n_test,
                         repeats=plan["baseline_repeats"], mean=mean, stderr=se, **distribution_stats(per, threshold),
                         outlier_threshold=threshold, n_failed=int((~torch.isfinite(per)).sum()), nfe_mean=math.nan,
                         wall_s=wall, subset_n=n_exact, subset_mean=sub_mean, subset_stderr=sub_se, info=info))
        bar.update(1)
    return rows


def _bound_options(c: dict) -> str:
    if c["bound"] == "continuous":
        return (f"{c['n_times']} {c['time_sampler']} times per image" + (", antithetic" if c["antithetic"] else "")
                + (", Gaussian control variate" if c["control_variate"] else ""))
    terms = "all terms" if c["n_terms"] is None else f"{c['n_terms']} terms drawn"
    return f"N = {c['N']} steps, {terms}, sigma^2 = {c['variance']}, {c['chain_times']} times, x_0 = {c['x0']}"


def oracle_rows(sdes: dict, args, plan, device, bar) -> list[dict]:
    """The pipeline against the analytic log-density of a 64-D Gaussian mixture, per SDE."""
    mix = mixture_nd(D=ORACLE_D, K=ORACLE_K)
    D = mix.dim
    x = mix.sample(plan["oracle_n"], generator=torch.Generator().manual_seed(_seed(args.seed, 200)),
                   dtype=torch.float64, shape=(1, 8, 8)).to(device)
    tol = plan["oracle_rtol"]
    rows = []
    to_bpd = 1.0 / (D * math.log(2.0))
    for name, sde in sdes.items():
        res, wall = timed(lambda: log_likelihood(mix.score_fn(sde), sde, x, trace="exact", eps=EPS, rtol=tol, atol=tol),
                          device)
        z = res.z.detach().double().cpu()
        xc = x.cpu()
        mismatch = res.prior_logp - mix.marginal_log_prob(z, sde.T, sde)
        truth = mix.marginal_log_prob(xc, res.eps, sde)
        computed = res.logp - mismatch
        err = ((computed - truth) * to_bpd).abs()
        budget = res.n_accepted.double() * math.sqrt(D + 1) * (tol + tol * res.delta_logp.abs()) * to_bpd
        n_failed = int((~res.ok).sum())
        rows.append(dict(kind="oracle", model=name, estimator="exact trace, exact score", trace="exact", n_probes=0,
                         n=x.shape[0], repeats=1, mean=float((-computed * to_bpd).mean()),
                         stderr=float((-computed * to_bpd).std() / math.sqrt(x.shape[0])),
                         analytic=float((-truth * to_bpd).mean()), difference=float(err.max()),
                         tol_bound=float(budget.min()), prior_mismatch=float((mismatch * to_bpd).abs().max()),
                         n_failed=n_failed, nfe_mean=float(res.nfe.double().mean()), wall_s=wall, rtol=tol, atol=tol,
                         eps=EPS, info=f"mixture_nd(D={D}, K={ORACLE_K}) samples, float64; {sde!r}",
                         **oracle_bound(mix, sde, x.cpu(), plan, _seed(args.seed, 300 + MODELS.index(name)))))
        bar.update(1)
    return rows


def oracle_bound(mix, sde, x: torch.Tensor, plan: dict, seed: int) -> dict:
    """The continuous bound of the exact score on the oracle samples, in bits/dim (no offset): its mean,
    the Monte Carlo SE of that mean (the samples are fixed: only the draws are random), and the mean of
    its expected prior mismatch ``E[log p_T(x_T) - log pi(x_T) | x_eps = x]`` (1024 draws of ``x_T`` each)."""
    D, n = mix.dim, x.shape[0]
    to_bpd = 1.0 / (D * math.log(2.0))
    g = torch.Generator().manual_seed(seed)
    res = variational_bound(mix.score_fn(sde), sde, x, eps=EPS, n_times=plan["oracle_bound_times"], generator=g)
    m, s = sde.coeffs(torch.tensor([EPS, sde.T], dtype=torch.float64))
    a = float(m[1] / m[0])
    sigma = math.sqrt(float(s[1]) ** 2 - a * a * float(s[0]) ** 2)  # the kernel eps -> T
    reps = 1024
    xT = a * x.repeat(reps, 1, 1, 1) + sigma * torch.randn((reps * n,) + tuple(x.shape[1:]), generator=g,
                                                           dtype=torch.float64)
    mis = (mix.marginal_log_prob(xT, sde.T, sde) - sde.prior_logp(xT)).reshape(reps, n).mean(0)
    return dict(bound=float(res.nll.mean()) * to_bpd, bound_stderr=float(res.stderr.pow(2).sum().sqrt()) / n * to_bpd,
                bound_mismatch=float(mis.mean()) * to_bpd)


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
def run(args) -> list[dict]:
    device = torch.device(args.device)
    plan = PLANS["quick" if args.quick else "full"]
    plan = dict(plan, **{k: v for k, v in args.overrides.items() if v is not None})
    ds = load_digits()
    stamp = dict(environment(device, cores=True), command=args.command)
    n_work = (len(args.models) * 5 + ("vp" in args.models) if "models" in args.parts else 0) \
        + 2 * ("baselines" in args.parts) + len(args.models) * ("oracle" in args.parts)
    rows = []
    sdes = {}
    with tqdm(total=n_work, desc="nll_table", disable=not args.progress) as bar:
        for name in args.models:
            if "models" in args.parts:
                model, cfg, meta = get_model(name, args, ds, plan, device)
                bar.update(1)
                rows += evaluate_model(name, model, cfg, meta, ds, args, plan, device, bar)
                sdes[name] = model.sde
            elif name in args.checkpoints:  # the oracle alone: the SDE of the named run
                sdes[name] = build_sde(load_model(checkpoint_path(args.checkpoints[name]))[1])
            else:
                sdes[name] = build_sde(train_config(plan, name, args.runs_dir, args.seed, device))
        if "baselines" in args.parts:
            rows += baseline_rows(ds, args, plan, bar)
        if "oracle" in args.parts:
            rows += oracle_rows(sdes, args, plan, device, bar)
    for r in rows:
        r.update(stamp)
    return rows


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def _f(v, spec: str = ".4f") -> str:
    if v is None or v == "" or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if spec.endswith("f") and abs(v) >= 1e4:
        return f"{v:.3e}"
    return format(v, spec)


def markdown(rows: list[dict]) -> str:
    r0 = rows[0]
    models = [r for r in rows if r["kind"] == "model"]
    bounds = [r for r in rows if r["kind"] == "bound"]
    base = [r for r in rows if r["kind"] == "baseline"]
    oracle = [r for r in rows if r["kind"] == "oracle"]
    lines = [f"NLL on the digits test set — machine: {r0['device']}; torch {r0['torch']}; {r0['date']}; "
             f"command: `{r0['command']}`", ""]
    if models or base:
        lines += _models_section(models, base)
    if bounds:
        lines += _bounds_section(models, bounds)
    if models:
        lines += ["Training (same network and budget for the three SDEs):", "",
                  *md_table(["model", "steps", "train [s]", "last loss", "configuration"])]
        for name in dict.fromkeys(r["model"] for r in models):
            r = next(m for m in models if m["model"] == name)
            lines.append(md_row([MODEL_LABEL.get(name, name), r["train_steps"], _f(r["train_s"], ".0f"),
                                 _f(r["train_loss"], ".4g"), r["info"]]))
        lines.append("")
    if oracle:
        lines += _oracle_section(oracle)
    return "\n".join(lines)


def _models_section(models: list[dict], base: list[dict]) -> list[str]:
    ref = (models or base)[0]
    thr = ref["outlier_threshold"]
    lines = [
        f"Test bits/dim = -log p / (64 ln 2) + log2(17 / 2) (uniform dequantization, 17 levels on [-1, 1]; an "
        f"upper bound on the discrete NLL); mean ± standard error over images (each image first averaged over "
        f"its repeats of fresh dequantization noise and probes); median over images; outliers: images above "
        f"{thr:.2f} = 2 log2(17) bits/dim. Score models: probability-flow ODE at eps = {_f(ref['eps'], 'g')}, "
        f"per-sample dopri5, rtol = atol = {_f(ref['rtol'], 'g')}, EMA weights. NFE: mean score evaluations "
        f"per image and evaluation (each one forward and one VJP per probe, 64 for the exact trace). The last "
        f"column is every row on the same first {ref['subset_n']} test images as the exact trace.", "",
        *md_table(["model", "estimator", "N", "repeats", "bits/dim", "median", "outliers", "NFE", "wall [s]",
                   f"bits/dim on the exact subset (N={ref['subset_n']})"])]
    for r in models + base:
        name = MODEL_LABEL.get(r["model"], r["model"]) + (" score model" if r["kind"] == "model" else "")
        fail = f" ({r['n_failed']} failed)" if r["n_failed"] else ""
        lines.append(md_row([name, r["estimator"], r["n"], r["repeats"],
                             f"{_f(r['mean'])} ± {_f(r['stderr'])}{fail}", _f(r["median"]), r["n_outliers"],
                             _f(r["nfe_mean"], ".0f"), _f(r["wall_s"], ".1f"),
                             f"{_f(r['subset_mean'])} ± {_f(r['subset_stderr'])}"]))
    return lines + [""]


def _bounds_section(models: list[dict], bounds: list[dict]) -> list[str]:
    """The ODE likelihood and the variational bounds side by side, per model."""
    cont = next(r for r in bounds if r["estimator"] == BOUND_LABEL["continuous"])
    ddpm = next((r for r in bounds if r["estimator"] == BOUND_LABEL["ddpm"]), None)
    ode_label = cont["info"].rsplit("'", 2)[-2]
    options = (lambda r: r["info"].split("; paired with")[0])
    lines = [f"Variational bounds beside the ODE likelihood, on the same {cont['n']} test images, mean ± SE over "
             f"images. Continuous bound: Song, Durkan, Murray & Ermon (2021), Theorem 3 (DSM form, kernel from "
             f"eps = {_f(cont['eps'], 'g')}, {options(cont)}), on the same uniform dequantization with the same "
             f"offset as the ODE rows, {cont['repeats']} repeats. DDPM bound: Ho et al. (2020), eq. 5, over the VP "
             f"SDE's DDPM chain ({'—' if ddpm is None else options(ddpm)}) with the discretized Gaussian decoder on "
             f"the 17-level grid, on the discrete data (no offset). bound − ODE: paired image by image against the "
             f"ODE row "
             f"'{ode_label}'. NFE: score evaluations per image and repeat.", "",
             *md_table(["model", f"ODE ({ode_label})", "continuous bound", "bound − ODE", "DDPM bound L_VB",
                        "DDPM − ODE", "NFE (bound / DDPM)", "wall [s] (bound / DDPM)"])]
    for name in dict.fromkeys(r["model"] for r in bounds):
        ode = next((m for m in models if m["model"] == name and m["estimator"] == ode_label), None)
        c = next(r for r in bounds if r["model"] == name and r["estimator"] == BOUND_LABEL["continuous"])
        d = next((r for r in bounds if r["model"] == name and r["estimator"] == BOUND_LABEL["ddpm"]), None)
        pm = (lambda r, k="mean", e="stderr": "—" if r is None else f"{_f(r[k])} ± {_f(r[e])}")
        lines.append(md_row([MODEL_LABEL.get(name, name), pm(ode), pm(c), pm(c, "vs_ode", "vs_ode_stderr"), pm(d),
                             pm(d, "vs_ode", "vs_ode_stderr"),
                             f"{_f(c['nfe_mean'], '.0f')} / {'—' if d is None else _f(d['nfe_mean'], '.0f')}",
                             f"{_f(c['wall_s'], '.1f')} / {'—' if d is None else _f(d['wall_s'], '.1f')}"]))
    return lines + [""]


def _oracle_section(oracle: list[dict]) -> list[str]:
    o = oracle[0]
    lines = [f"Oracle check: {o['n']} samples of `mixture_nd(D=64, K={ORACLE_K})` (float64), exact score, exact "
             f"trace, dopri5 rtol = atol = {_f(o['rtol'], 'g')}, eps = {_f(o['eps'], 'g')}. Bits/dim of the "
             f"continuous density (-log p / (64 ln 2), no offset), mean over samples. computed: "
             f"`log_likelihood` minus the known prior mismatch log N(z; prior) - log p_T(z); analytic: "
             f"`marginal_log_prob` at eps; difference: max over samples of |computed - analytic|; "
             f"budget: n_accepted sqrt(D + 1) (atol + rtol |delta logp|) / (D ln 2), the smallest over samples; "
             f"prior mismatch: its largest size over samples (what the difference would be without the "
             f"correction). Continuous bound: `variational_bound` of the exact score on the same samples, ± its "
             f"Monte Carlo SE; for a true score it is the analytic value plus its own expected prior mismatch "
             f"E[log p_T(x_T) - log pi(x_T) | x] (last column).", "",
             *md_table(["SDE", "computed", "analytic", "max abs difference", "error budget", "prior mismatch",
                        "NFE", "continuous bound", "bound − analytic", "expected prior mismatch of the bound"])]
    for r in oracle:
        gap = None if r["bound"] is None else r["bound"] - r["analytic"]
        lines.append(md_row([MODEL_LABEL.get(r["model"], r["model"]), _f(r["mean"], ".6f"),
                             _f(r["analytic"], ".6f"), _f(r["difference"], ".1e"), _f(r["tol_bound"], ".1e"),
                             _f(r["prior_mismatch"], ".1e"), _f(r["nfe_mean"], ".0f"),
                             f"{_f(r['bound'], '.4f')} ± {_f(r['bound_stderr'], '.4f')}", _f(gap, ".4f"),
                             _f(r["bound_mismatch"], ".1e")]))
    return lines + [""]


def _bpd_panel(ax, models: list[dict], base: list[dict], names: list[str], ests: list[str], cmap, width) -> None:
    """Test bits/dim per model and estimator (mean ± SE, median bar) and the baselines as lines."""
    # The axis shows the bulk: medians, and means within 0.5 bits/dim of their row's median; a mean
    # pulled up by a few outlier images is drawn as an arrow at the top with its value.
    core = [v for r in models + base for v in (r["median"], r["mean"])
            if v is not None and math.isfinite(v) and math.isfinite(r["median"]) and v - r["median"] < 0.5]
    lo = min(core) - 0.25 if core else 0.0
    hi = max(core) + 0.35 if core else 1.0
    for j, est in enumerate(ests):
        for i, name in enumerate(names):
            r = next((m for m in models if m["model"] == name and m["estimator"] == est), None)
            if r is None:
                continue
            xpos = i + (j - (len(ests) - 1) / 2) * width
            lab = f"{est} (N={r['n']})" if i == 0 else None
            if math.isfinite(r["mean"]) and r["mean"] <= hi:
                ax.errorbar(xpos, r["mean"], yerr=r["stderr"], fmt="o", color=cmap(j), capsize=4, label=lab)
            else:  # an exploded mean: an arrow at the top, the value written beside it
                ax.plot(xpos, hi - 0.05, marker="^", color=cmap(j), ls="", label=lab)
                ax.annotate(f"mean {_f(r['mean'], '.3g')} ± {_f(r['stderr'], '.2g')}", (xpos, hi - 0.05),
                            fontsize=7, rotation=90,
                            ha="center", va="top", xytext=(0, -8), textcoords="offset points")
            ax.plot(xpos, r["median"], marker="_", ms=12, mew=2, color=cmap(j), ls="")
    for k, b in enumerate(base):
        ax.axhline(b["mean"], color="k", ls=["--", ":"][k % 2], lw=1,
                   label=f"{b['model']}: {b['mean']:.3f} ± {b['stderr']:.3f}")
    ax.set_xticks(range(len(names)), [MODEL_LABEL.get(n, n) for n in names])
    ax.set_ylim(lo, hi)
    ax.set_ylabel("test bits/dim (mean ± SE; bar: median)")
    ax.set_title("digits test bits/dim: ODE estimators and variational bounds")
    ax.grid(alpha=0.3, axis="y")
    if models or base:
        ax.legend(fontsize=7, loc="best")


def _cost_panel(ax, models: list[dict], names: list[str], ests: list[str], cmap, width, device: str) -> None:
    """Wall time per image and repeat of each model and estimator, labelled with the NFE."""
    for j, est in enumerate(ests):
        for i, name in enumerate(names):
            r = next((m for m in models if m["model"] == name and m["estimator"] == est), None)
            if r is None:
                continue
            xpos = i + (j - (len(ests) - 1) / 2) * width
            per = r["wall_s"] / (r["n"] * r["repeats"])
            ax.bar(xpos, per, width=width * 0.9, color=cmap(j), label=est if i == 0 else None)
            ax.annotate(f"{r['nfe_mean']:.0f}", (xpos, per), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [MODEL_LABEL.get(n, n) for n in names])
    ax.set_ylabel("wall time per image and repeat [s] (label: NFE)")
    ax.set_title(f"cost ({device})", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    if ests:
        ax.legend(fontsize=7)


def _oracle_panel(ax, oracle: list[dict]) -> None:
    """The oracle check per SDE: the difference to the analytic density against its error budget."""
    if not oracle:
        ax.axis("off")
        return
    xs = range(len(oracle))
    ax.bar([x - 0.2 for x in xs], [max(r["difference"], 1e-16) for r in oracle], width=0.4,
           label="max |computed - analytic|")
    ax.bar([x + 0.2 for x in xs], [r["tol_bound"] for r in oracle], width=0.4, label="error budget")
    ax.plot(list(xs), [r["prior_mismatch"] for r in oracle], "kx", label="prior mismatch (corrected)")
    if all(r.get("bound") is not None for r in oracle):
        ax.plot(list(xs), [max(abs(r["bound"] - r["analytic"] - r["bound_mismatch"]), 1e-16) for r in oracle], "rv",
                label="|bound - analytic - its mismatch|")
        ax.plot(list(xs), [3 * r["bound_stderr"] for r in oracle], "r_", ms=14, mew=2, label="3 SE of the bound")
    ax.set_xticks(list(xs), [MODEL_LABEL.get(r["model"], r["model"]) for r in oracle])
    ax.set_yscale("log")
    ax.set_ylabel("bits/dim")
    ax.set_title(f"oracle: 64-D mixture, exact score, rtol {oracle[0]['rtol']:g}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")


def figure(rows: list[dict]) -> bytes:
    """Three panels, as PNG: bits/dim per model and estimator (the ODE's and the bounds, side by side),
    their cost, the oracle check."""
    plt = pyplot()
    models = [r for r in rows if r["kind"] in ("model", "bound")]
    base = [r for r in rows if r["kind"] == "baseline"]
    oracle = [r for r in rows if r["kind"] == "oracle"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw=dict(width_ratios=[1.4, 1.2, 0.9]))
    names = list(dict.fromkeys(r["model"] for r in models))
    ests = list(dict.fromkeys(r["estimator"] for r in models))
    cmap = plt.get_cmap("tab10")
    width = 0.8 / max(len(ests), 1)
    _bpd_panel(axes[0], models, base, names, ests, cmap, width)
    _cost_panel(axes[1], models, names, ests, cmap, width, rows[0]["device"])
    _oracle_panel(axes[2], oracle)
    fig.suptitle(f"{rows[0]['date']}, torch {rows[0]['torch']}", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def write_outputs(rows: list[dict], out: Path, tag: str) -> dict[str, Path]:
    paths = {k: out / f"nll_table_{tag}.{k}" for k in ("csv", "md", "png")}
    atomic_write(paths["csv"], csv_bytes(rows, FIELDS))
    atomic_write(paths["md"], markdown(rows))
    atomic_write(paths["png"], figure(rows))
    return paths


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV this study wrote, numbers parsed (``--replot``)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(FIELDS) - set(rows[0]):
        raise SystemExit(f"{path} is not a CSV written by studies/nll_table.py (columns {FIELDS})")
    for r in rows:
        for k in FIELDS:
            if k in STR_FIELDS:
                continue
            v = r[k]
            r[k] = None if v == "" else (int(v) if k in INT_FIELDS else float(v))
    return rows


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _checkpoints(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, path = part.partition("=")
        if not sep or key not in MODELS or not path:
            raise argparse.ArgumentTypeError(f"--checkpoints takes model=PATH pairs with model in "
                                             f"{', '.join(MODELS)}, e.g. vp=runs/vp,ve=runs/ve; got {part!r}")
        if not checkpoint_path(path).is_file():
            raise argparse.ArgumentTypeError(f"--checkpoints {key}={path}: no checkpoint file there (a .pt file or "
                                             f"a run folder with checkpoint_last.pt)")
        out[key] = path
    return out


def parse(argv=None):
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="tiny models, a handful of test images (seconds)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on the CPU (default 1: faster for these small networks on a shared "
                        "2-core machine)")
    p.add_argument("--checkpoints", type=_checkpoints, default={}, metavar="vp=PATH,subvp=PATH,ve=PATH",
                   help="evaluate these runs (checkpoint files or run folders) instead of training; only the named "
                        "models are evaluated unless --models says otherwise")
    p.add_argument("--models", default=None, help="comma-separated subset of vp,subvp,ve (default: all, or the "
                                                   "--checkpoints keys)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of models,baselines,oracle")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/nll_table"),
                   help="where trained runs go (one folder per SDE; a run there is resumed)")
    p.add_argument("--steps", type=int, default=None, help="override the training steps of the plan")
    p.add_argument("--n-test", type=int, default=None, help="test images (default: all 359; 8 with --quick)")
    p.add_argument("--n-exact", type=int, default=None, help="test images for the exact trace (default 128)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per image for the Hutchinson rows (default 3)")
    p.add_argument("--batch-size", type=int, default=512, help="images per log_likelihood call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/figures"), help="output folder")
    p.add_argument("--tag", default=None, help="file name tag (default: cpu or cuda, with _quick for --quick)")
    p.add_argument("--replot", type=Path, default=None, metavar="CSV",
                   help="rewrite the table and figure from a CSV of an earlier run (no training or evaluation)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.command = "python studies/nll_table.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    require_device(p, args.device)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    default_models = ",".join(args.checkpoints) if args.checkpoints else ",".join(MODELS)
    args.models = [m.strip() for m in (args.models or default_models).split(",") if m.strip()]
    if not args.models or any(m not in MODELS for m in args.models):
        p.error(f"--models takes a comma-separated subset of {', '.join(MODELS)}")
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if not args.parts or any(s not in PARTS for s in args.parts):
        p.error(f"--parts takes a comma-separated subset of {', '.join(PARTS)}")
    for name in ("steps", "n_test", "n_exact", "repeats"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    args.overrides = dict(n_test=args.n_test, n_exact=args.n_exact, repeats=args.repeats)
    if args.steps is not None:
        plan = PLANS["quick" if args.quick else "full"]
        args.overrides["train"] = dict(plan["train"], steps=args.steps,
                                       checkpoint_every=min(plan["train"]["checkpoint_every"], args.steps))
    args.tag = args.tag or (torch.device(args.device).type + ("_quick" if args.quick else ""))
    return args


def main(argv=None) -> dict[str, Path]:
    args = parse(argv)
    if args.replot is not None:
        rows = read_rows(args.replot)
    else:
        threads = torch.get_num_threads()
        if torch.device(args.device).type == "cpu":
            torch.set_num_threads(args.threads)
        try:
            rows = run(args)
        finally:
            torch.set_num_threads(threads)
    if not rows:
        raise SystemExit("nothing to write: no rows")
    paths = write_outputs(rows, args.out, args.tag)
    for k, v in paths.items():
        print(f"wrote {k}: {v}")
    return paths


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
