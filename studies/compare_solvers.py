"""Compare every sampler at the same number of score evaluations: on Gaussian-mixture oracles and
on a trained model.

Every registered sampler (``scoresde.sampling.SAMPLERS``) is swept over NFE budgets (``nfe=``: score
evaluations per sample, the final denoising step included; a sampler whose step costs more than
one evaluation takes as many steps as the budget pays for, and the NFE it actually used is
recorded), each at its own default time grid; DPM-Solver++(2M), UniPC and EDM's Heun also on every
grid (``uniform``, ``logsnr``, ``karras``, ``quadratic``). The adaptive probability-flow ODE solvers
are swept over tolerances instead. Targets:

* the oracles, sampled with their exact score under the VP SDE: the 2-D mixture
  (``mixture_2d()``), a 16-D one (``mixture_nd(16, 4)``) and ``narrow mixture 8-D``, a 4-component
  8-D mixture whose smallest component (weight 0.15) has std 0.05, 1.5 away from a broad one
  (:func:`narrow_mixture`). Per run: the energy distance to fresh samples of the mixture, the
  log-density error ``mean log p(x_gen) - mean log p(x_true)`` under the exact density (negative:
  samples sit in less likely regions, e.g. too spread; positive: too concentrated on the modes),
  the per-component mass error ``max_k |w_hat_k - w_k|`` (samples assigned to components by the
  mixture's Bayes classifier, :func:`scoresde.metrics.moment_errors`) and, on the narrow target,
  the signed mass error of the narrow component. The energy distance barely sees a blurred narrow
  component (its samples stay close); the log density and the narrow mass do;
* ``digits``: a VP score model trained by :func:`scoresde.train` on the 8x8 digits (its
  ``TrainConfig`` defaults, v parameterization included, with an MLP; or loaded with
  ``--digits-checkpoint``), sampled with its EMA weights: the Fréchet distance to the held-out test
  images in the feature space of the built-in digits classifier
  (:func:`scoresde.metrics.digits_features`, :func:`scoresde.metrics.frechet_distance`), next to
  the train-vs-test distance at the same n (the best a sampler can do with a model that had
  learned the training set perfectly); the pixel-space energy distance is kept in the CSV and the
  per-run table.

Nulls: per oracle and statistic, the 99% quantile of the statistic between independent draws of
the truth at the same n (:func:`scoresde.metrics.calibrate_threshold`; ``--null-repeats`` draws:
100 by default, 20 with ``--quick``); for the log-density error its absolute value. A sampler
*reaches the null* at the smallest NFE of the sweep from which on its mean over seeds stays below
the null at every larger NFE. The Markdown has that summary per target (by energy distance, and
for the oracles by all three statistics at once), the same for the grid sweep, the per-run tables
(mean over seeds, [min, max]), and a speed benchmark: with the digits network as the score at
batch 512, the wall time per network evaluation of a fixed-step sampler at ``nfe=20`` divided by
the time of one bare ``model.score_fn(x, t)`` call (under ``torch.no_grad``, after a warm-up, timed
in blocks of as many calls interleaved with the sampler's runs; medians of repeats); 1.0 means the
sampler adds nothing around the network (target: within 1.15x). It is a benchmark, asserted
nowhere (``--no-speed`` skips it; ``--speed-batch`` sets the batch).

Outputs (``--out``, tag ``cpu``/``cuda`` or ``--tag``): ``compare_solvers_<tag>.csv`` (one row
per run), ``..._speed.csv``, ``.md``, and the figures ``.png`` (energy distance, Fréchet distance on
the digits, vs NFE, one panel
per target and row per sampler group), ``_errors.png`` (log-density and mass errors vs NFE of six
representative samplers on the oracles), ``_grids.png`` (the grid sweep) and ``_wall.png``
(the same vs wall time).

    # full run: n = 2000, 3 seeds, budgets 5..50 (+100, 200, 500 for the first-order samplers),
    # 100 null draws, a 5000-step digits MLP trained here (CPU, 2 cores: roughly 15-20 minutes)
    OMP_NUM_THREADS=1 python studies/compare_solvers.py --out /tmp/compare_solvers
    # seconds (about 10 s on one thread); what the test suite runs
    OMP_NUM_THREADS=1 python studies/compare_solvers.py --quick --out /tmp/compare_solvers_quick
    # a medium check: one seed, n = 1000, a 2000-step digits model (CPU, one thread: about 3 minutes)
    OMP_NUM_THREADS=1 python studies/compare_solvers.py --seeds 1 --n 1000 --digits-steps 2000 \\
        --null-repeats 20 --long-budgets 100 200 --out /tmp/compare_solvers_medium
    # the same with 3 seeds, reusing that digits model (about 6 minutes)
    OMP_NUM_THREADS=1 python studies/compare_solvers.py --seeds 3 --n 1000 --null-repeats 20 \\
        --long-budgets 100 200 --digits-checkpoint /tmp/compare_solvers_medium/compare_solvers_digits_run \\
        --out /tmp/compare_solvers_medium3
    python studies/compare_solvers.py --device cuda --out docs/figures      # on a GPU
    python studies/compare_solvers.py --replot docs/figures/compare_solvers_cuda.csv --tag cuda
"""
from __future__ import annotations

import csv
import math
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from _common import csv_bytes, device_name, md_row, md_table, parser, pyplot, require_device, sync, timed, write_png
from scoresde import VPSDE, atomic_write
from scoresde.metrics import calibrate_threshold, digits_features, energy_distance, frechet_distance, moment_errors
from scoresde.sampling import GRIDS, SAMPLERS, sample
from scoresde.targets import GaussianMixture, mixture_2d, mixture_nd


def distance(x, y) -> float:
    """Energy distance, V-statistic form (always >= 0, so it can be drawn on a log axis; its
    truth-vs-truth floor at the same n is the null quantile drawn beside it)."""
    return energy_distance(x, y, unbiased=False)


FIELDS = ["oracle", "family", "sampler", "grid", "config", "sweep", "seed", "nfe", "wall_s", "energy_distance",
          "null_q99", "frechet_distance", "null_fd", "logp_error", "null_logp", "mass_error", "null_mass",
          "narrow_mass_error", "ok_fraction", "device"]
SPEED_FIELDS = ["sampler", "grid", "nfe", "batch", "total_nfe", "wall_s", "per_eval_ms", "bare_eval_ms", "ratio",
                "score", "device"]

DIGITS = "digits (trained VP model)"
NARROW = "narrow mixture 8-D"
#: the new fixed-step solvers (exponential integrators and EDM): each on every target at its default grid
NEW = ("dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "heun_edm")
#: swept over every time grid
GRID_SWEEP = ("dpmpp_2m", "unipc", "heun_edm")
#: fixed-step samplers of the speed benchmark
SPEED_SAMPLERS = ("dpmpp_2m", "unipc", "heun_edm", "ddim", "euler_maruyama")
#: first-order samplers that also get the long budgets (they need more than 50 NFE)
SLOW = ("euler_maruyama", "pc (RD + Langevin)", "pc (RD, no corrector)", "ddpm", "ddim eta=1", "ode euler")
#: panel rows of the main figure
GROUPS = {
    "fast ODE solvers": ("dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc", "heun_edm"),
    "classic deterministic": ("ddim", "ode euler", "ode heun", "ode dopri5 (per-sample)", "ode torchdiffeq dopri5"),
    "stochastic": ("euler_maruyama", "pc (RD + Langevin)", "pc (RD, no corrector)", "ddpm", "ddim eta=1",
                   "dpmpp_2m_sde"),
}
#: the representative samplers of the error figure
ERROR_FAMILIES = ("dpmpp_2m", "unipc", "heun_edm", "dpmpp_2m_sde", "ddim", "euler_maruyama")


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def narrow_mixture(D: int = 8) -> GaussianMixture:
    """A ``D``-dimensional mixture (``D >= 3``) with a narrow component: weights 0.35, 0.3, 0.2, 0.15,
    means ``3 e1``, ``-3 e1``, ``3 e2`` and ``3 e2 + 1.5 e3``, isotropic stds 0.6, 0.5, 0.7 and 0.05.
    The narrow component (index 3) sits 1.5 from a broad one: a sampler that blurs it moves its mass
    (the Bayes classifier gives a point more than about 0.34 from its centre to the broad one) and
    lowers the mean log density (the narrow component's density is about 24 nats above the broad
    ones), while the energy distance hardly moves."""
    e = torch.eye(D, dtype=torch.float64)
    means = torch.stack([3 * e[0], -3 * e[0], 3 * e[1], 3 * e[1] + 1.5 * e[2]])
    return GaussianMixture([0.35, 0.3, 0.2, 0.15], means, [0.6, 0.5, 0.7, 0.05])


class Oracle:
    """A Gaussian mixture as a sampling target, with the nulls of the three statistics at n."""

    def __init__(self, name: str, mix: GaussianMixture, narrow: Optional[int] = None):
        self.name, self.mix, self.narrow, self.dim = name, mix, narrow, mix.dim

    def mass_errors(self, x: torch.Tensor) -> tuple[float, float]:
        """``max_k |w_hat_k - w_k|`` and ``w_hat - w`` of the narrow component (nan without one)."""
        me = moment_errors(x, self.mix)
        diff = me.weights - me.true_weights
        narrow = float(diff[self.narrow]) if self.narrow is not None else float("nan")
        return float(diff.abs().max()), narrow

    def nulls(self, n: int, repeats: int) -> dict[str, float]:
        """The 99% quantiles of the energy distance, ``|log-density error|`` and mass error between
        independent truth draws of n (each from its own seeded stream)."""
        draw = self.mix.sample

        def logp_gap(x, y):
            return abs(float(self.mix.log_prob(x).mean() - self.mix.log_prob(y).mean()))

        out = {}
        for key, stat, seed in (("null_q99", distance, 999), ("null_logp", logp_gap, 998),
                                ("null_mass", lambda x, y: self.mass_errors(x)[0], 997)):
            out[key] = calibrate_threshold(lambda m, generator=None: draw(m, generator=generator), n, statistic=stat,
                                           repeats=repeats, quantile=0.99,
                                           generator=torch.Generator().manual_seed(seed))
        return out


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
        self.description = f"{cfg.net} VP model (hidden {getattr(cfg, 'hidden', '?')}), {cfg.steps} DSM steps, EMA"

    def _floor_images(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(999)
        return self.train[torch.randperm(self.train.shape[0], generator=g)[:n]]

    def floor(self, n: int) -> float:
        """Energy distance between n training and n test images (the reference line)."""
        return distance(self._floor_images(n), self.test[: min(n, self.test.shape[0])])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Digits-classifier features of flat images ``(n, 64)``."""
        return digits_features(x.reshape(-1, *self.shape))

    def fd(self, x: torch.Tensor, n: int) -> float:
        """Fréchet distance between images ``x`` and the first n test images, in classifier features."""
        return frechet_distance(self.features(x), self.features(self.test[:n]))

    def floor_fd(self, n: int) -> float:
        """Fréchet distance between n training and n test images (the reference line of the digits)."""
        return self.fd(self._floor_images(n), n)


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------
class Config:
    """One sampler configuration: ``family`` (the label in tables and legends), the registered
    ``sampler``, its ``grid`` (None: the sampler's default), the NFE ``budget`` or the adaptive
    solver's tolerance ``tol``, the sampler ``options``, and whether it belongs to the grid sweep
    only (``sweep``: not the family's default grid)."""

    def __init__(self, family: str, sampler: str, *, budget: Optional[int] = None, tol: Optional[float] = None,
                 grid: Optional[str] = None, options: Optional[dict] = None, sweep: bool = False):
        self.family, self.sampler, self.budget, self.tol = family, sampler, budget, tol
        self.grid, self.options, self.sweep = grid, dict(options or {}), sweep

    def __repr__(self):
        return f"Config({self.family!r}, {self.label}, grid={self.grid_name})"

    @property
    def grid_name(self) -> str:
        if self.sampler == "ode":
            return "adaptive" if self.tol is not None else "uniform"
        return self.grid or SAMPLERS[self.sampler].default_grid

    @property
    def label(self) -> str:
        return f"nfe={self.budget}" if self.budget is not None else f"tol={self.tol:g}"

    def kwargs(self) -> dict:
        kw = dict(self.options)
        if self.budget is not None:
            kw["nfe"] = self.budget
        if self.grid is not None:
            kw["grid"] = self.grid
        if self.tol is not None:
            kw.update(rtol=self.tol, atol=self.tol)
        return kw


#: (family, sampler, options) at the default grid
FAMILIES = (
    ("euler_maruyama", "euler_maruyama", {}),
    ("pc (RD + Langevin)", "pc", dict(predictor="reverse_diffusion", corrector="langevin")),  # pilot step size
    ("pc (RD, no corrector)", "pc", dict(predictor="reverse_diffusion", corrector="none")),
    ("ode euler", "ode", dict(method="euler")),
    ("ode heun", "ode", dict(method="heun")),
    ("ddpm", "ddpm", {}),
    ("ddim", "ddim", {}),
    ("ddim eta=1", "ddim", dict(eta=1.0)),
) + tuple((name, name, {}) for name in NEW)


def configs(budgets: list[int], tolerances: list[float], long_budgets: list[int] = (),
            sweep_budgets: Optional[list[int]] = None) -> list[Config]:
    """Every family at every budget (the first-order ones also at ``long_budgets``), the grid sweep
    of :data:`GRID_SWEEP` at ``sweep_budgets`` (default: ``budgets``), the adaptive ODE solvers at
    every tolerance."""
    out = []
    for family, sampler, opts in FAMILIES:
        for b in list(budgets) + (list(long_budgets) if family in SLOW else []):
            out.append(Config(family, sampler, budget=b, options=opts))
    for sampler in GRID_SWEEP:
        for grid in GRIDS:
            if grid == SAMPLERS[sampler].default_grid:
                continue
            for b in (budgets if sweep_budgets is None else sweep_budgets):
                out.append(Config(sampler, sampler, budget=b, grid=grid, sweep=True))
    for tol in tolerances:
        out.append(Config("ode dopri5 (per-sample)", "ode", tol=tol, options=dict(method="dopri5")))
        out.append(Config("ode torchdiffeq dopri5", "ode", tol=tol, options=dict(method="torchdiffeq_dopri5")))
    return out


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def oracles() -> dict[str, Oracle]:
    return {"mixture 2-D": Oracle("mixture 2-D", mixture_2d()),
            "mixture 16-D": Oracle("mixture 16-D", mixture_nd(D=16, K=4)),
            NARROW: Oracle(NARROW, narrow_mixture(8), narrow=3)}


def run(args, digits: Optional[DigitsTarget] = None) -> list[dict]:
    device = torch.device(args.device)
    targets: dict = oracles()
    nulls = {name: o.nulls(args.n, args.null_repeats) for name, o in targets.items()}
    if digits is not None:
        targets[DIGITS] = digits
        n_digits = min(args.digits_n, digits.test.shape[0])
        nulls[DIGITS] = dict(null_q99=digits.floor(n_digits), null_fd=digits.floor_fd(n_digits),
                             null_logp=float("nan"), null_mass=float("nan"))
    refs = {}  # (target, seed) -> (reference sample, its mean log density)
    rows = []
    cfgs = configs(args.budgets, args.tolerances, args.long_budgets, args.sweep_budgets)
    todo = [(o, c, s) for o in targets for c in cfgs for s in range(args.seeds)]
    nan = float("nan")
    for target, cfg, seed in tqdm(todo, desc="compare_solvers"):
        tgt = targets[target]
        is_digits = target == DIGITS
        if is_digits:
            sde, score, n, shape = tgt.sde, tgt.model.score_fn, n_digits, (n_digits,) + tgt.shape
        else:
            sde = VPSDE()
            score, n, shape = tgt.mix.score_fn(sde), args.n, (args.n, tgt.dim)
        g = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():  # no sampler needs a graph of the score
            res, wall = timed(lambda: sample(score, sde, shape, sampler=cfg.sampler, generator=g, device=device,
                                             **cfg.kwargs()), device)
        x = res.x[res.ok].cpu().reshape(-1, tgt.dim).float()
        logp_err = mass = narrow = fd = nan
        if is_digits:
            ref = tgt.test[:n]
            finite = torch.isfinite(x).all(dim=1)  # a diverged sample has no features
            fd = tgt.fd(x[finite], n) if int(finite.sum()) >= 2 else nan
        else:
            if (target, seed) not in refs:
                r = tgt.mix.sample(n, generator=torch.Generator().manual_seed(10_000 + seed))
                refs[target, seed] = (r, float(tgt.mix.log_prob(r).mean()))
            ref, ref_logp = refs[target, seed]
            if x.shape[0] >= 2:
                logp_err = float(tgt.mix.log_prob(x).mean()) - ref_logp
                mass, narrow = tgt.mass_errors(x)
        dist = distance(x, ref) if x.shape[0] >= 2 else nan
        rows.append(dict(oracle=target, family=cfg.family, sampler=cfg.sampler, grid=cfg.grid_name,
                         config=cfg.label, sweep=int(cfg.sweep), seed=seed, nfe=round(res.mean_nfe, 1),
                         wall_s=round(wall, 5), energy_distance=dist, frechet_distance=fd,
                         logp_error=logp_err, mass_error=mass,
                         narrow_mass_error=narrow, ok_fraction=float(res.ok.float().mean()),
                         device=device_name(device), **{"null_fd": nan, **nulls[target]}))
    return rows


# ---------------------------------------------------------------------------------------------
# Speed: a sampler's wall time per network evaluation vs one bare evaluation
# ---------------------------------------------------------------------------------------------
def speed_benchmark(model, shape: tuple, device: torch.device, *, batch: int = 512, nfe: int = 20,
                    samplers=SPEED_SAMPLERS, repeats: int = 5, description: str = "") -> list[dict]:
    """Per sampler: the median wall time of a ``nfe``-evaluation run at ``batch`` divided by its
    batched score calls, against the median time of one bare ``model.score_fn(x, t)`` on a batch of
    the same size, both under ``no_grad`` after an untimed warm-up. The bare calls are timed in
    blocks of as many calls as the run makes, interleaved with the runs, so that a change of load
    on a shared machine hits both alike."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch,) + tuple(shape), generator=g, device=device)
    t = torch.full((batch,), 0.5, device=device)
    rows = []
    for name in samplers:
        calls = []

        def run_sampler():
            res = sample(model.score_fn, model.sde, (batch,) + tuple(shape), sampler=name, nfe=nfe,
                         generator=torch.Generator(device=device).manual_seed(1), device=device)
            calls.append(res.total_nfe)

        def bare_block():
            for _ in range(calls[-1]):
                model.score_fn(x, t)

        with torch.no_grad():
            run_sampler()
            bare_block()
            walls, bares = [], []
            for _ in range(repeats):
                walls.append(timed(run_sampler, device)[1])
                bares.append(timed(bare_block, device)[1])
        k = calls[-1]
        wall, bare = statistics.median(walls), statistics.median(bares) / k
        rows.append(dict(sampler=name, grid=SAMPLERS[name].default_grid, nfe=nfe, batch=batch, total_nfe=k,
                         wall_s=wall, per_eval_ms=1e3 * wall / k, bare_eval_ms=1e3 * bare, ratio=wall / k / bare,
                         score=description, device=device_name(device)))
    return rows


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------
def _mean(v):
    v = [float(a) for a in v]
    return sum(v) / len(v)


def summarize(rows):
    """Mean and spread (min, max) over seeds per (target, family, grid, config)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["oracle"], r["family"], r["grid"], r["config"]), []).append(r)
    out = []
    for (oracle, family, grid, config), rs in groups.items():
        s = dict(oracle=oracle, family=family, grid=grid, config=config, sweep=bool(int(rs[0]["sweep"])),
                 nfe=_mean(r["nfe"] for r in rs), wall_s=_mean(r["wall_s"] for r in rs))
        for key, name in (("energy_distance", "ed"), ("frechet_distance", "fd"), ("logp_error", "logp_err"),
                          ("mass_error", "mass"), ("narrow_mass_error", "narrow")):
            v = [float(r[key]) for r in rs]
            s[name], s[name + "_min"], s[name + "_max"] = sum(v) / len(v), min(v), max(v)
        s["abs_logp_err"] = _mean(abs(float(r["logp_error"])) for r in rs)
        for key in ("null_q99", "null_fd", "null_logp", "null_mass"):
            s[key] = float(rs[0][key])
        # The statistic a target is judged by (``dist`` against ``null``): the Fréchet distance on
        # the digits, the energy distance on the oracles (and in CSVs of runs before the FD).
        by_fd = oracle == DIGITS and math.isfinite(s["null_fd"])
        s["statistic"] = "Fréchet distance" if by_fd else "energy distance"
        for suffix in ("", "_min", "_max"):
            s["dist" + suffix] = s[("fd" if by_fd else "ed") + suffix]
        s["null"] = s["null_fd"] if by_fd else s["null_q99"]
        out.append(s)
    return out


def passes(s: dict, criterion: str) -> Optional[bool]:
    """Is the mean over seeds below the null: ``"ed"`` the target's distance only (energy distance;
    Fréchet distance on the digits); ``"all"`` also ``|log-density error|`` and the mass error (oracles)."""
    ok = s["dist"] < s["null"]
    if criterion == "all":
        if not (math.isfinite(s["null_logp"]) and math.isfinite(s["null_mass"])):
            return None  # a CSV of an older run, without these nulls
        ok = ok and s["abs_logp_err"] < s["null_logp"] and s["mass"] < s["null_mass"]
    return ok


def reach(summary, criterion: str = "ed") -> dict:
    """``(target, family, grid) -> (nfe, max_nfe)``: the smallest NFE of the sweep from which on
    the family stays below the null (``nfe`` None if it does not at its largest NFE ``max_nfe``;
    both None where the criterion does not apply)."""
    groups = {}
    for s in summary:
        groups.setdefault((s["oracle"], s["family"], s["grid"]), []).append(s)
    out = {}
    for key, ss in groups.items():
        ss = sorted(ss, key=lambda s: s["nfe"])
        ok = [passes(s, criterion) for s in ss]
        if any(v is None for v in ok):
            out[key] = (None, None)
            continue
        first = None
        for i in range(len(ss) - 1, -1, -1):
            if not ok[i]:
                break
            first = ss[i]["nfe"]
        out[key] = (first, ss[-1]["nfe"])
    return out


def _default_grid_of(summary) -> dict:
    """family -> the grid of its non-sweep rows."""
    return {s["family"]: s["grid"] for s in summary if not s["sweep"]}


def _fmt_reach(v) -> str:
    nfe, top = v
    if top is None:
        return "n/a"
    return f"{nfe:.0f}" if nfe is not None else f"> {top:.0f}"


def reach_lines(summary, targets) -> list[str]:
    # the "all" columns where the CSV has the nulls of the log-density and mass errors
    oracle_targets = [t for t in targets if t != DIGITS and any(
        s["oracle"] == t and math.isfinite(s["null_mass"]) for s in summary)]
    ed, full = reach(summary, "ed"), reach(summary, "all")
    default = _default_grid_of(summary)
    fams = list(default)
    lines = ["## Smallest NFE at which each sampler reaches the null", "",
             "NFE per sample from which on the mean over seeds stays below the null (energy distance: "
             "the truth-vs-truth 99% quantile; digits: the Fréchet distance in the digits classifier's features, "
             "against the train-vs-test distance at the same n) at every larger NFE of the "
             "sweep; `> N`: not below it at the largest NFE tried. Each sampler at its default grid. "
             "`all`: energy distance, |log-density error| and mass error below their nulls at once (oracles).", "",
             *md_table(["sampler", "grid", *targets, *(f"{t}: all" for t in oracle_targets)])]
    for fam in fams:
        g = default[fam]
        cells = [_fmt_reach(ed[(t, fam, g)]) if (t, fam, g) in ed else "" for t in targets]
        cells += [_fmt_reach(full[(t, fam, g)]) if (t, fam, g) in full else "" for t in oracle_targets]
        lines.append(md_row([fam, g, *cells]))
    sweep_fams = [f for f in GRID_SWEEP if any(s["family"] == f and s["sweep"] for s in summary)]
    if sweep_fams:
        lines += ["", "### Grid sweep (same rule; cells: energy distance / all three statistics)", "",
                  *md_table(["sampler", "grid", *targets])]
        for fam in sweep_fams:
            for g in GRIDS:
                cells = []
                for t in targets:
                    if (t, fam, g) not in ed:
                        cells.append("")
                    elif t == DIGITS:
                        cells.append(_fmt_reach(ed[(t, fam, g)]))
                    else:
                        cells.append(f"{_fmt_reach(ed[(t, fam, g)])} / {_fmt_reach(full[(t, fam, g)])}")
                mark = " (default)" if g == default.get(fam) else ""
                lines.append(md_row([fam, f"{g}{mark}", *cells]))
    return lines + [""]


def speed_lines(speed) -> list[str]:
    if not speed:
        return ["## Speed", "", "Not measured (no network: `--no-digits` or `--no-speed`).", ""]
    r0 = speed[0]
    lines = ["## Speed: wall time per network evaluation vs one bare evaluation", "",
             f"Score: {r0['score']}; batch {r0['batch']}; device: {r0['device']}. Sampler: median wall time of a "
             f"run at nfe={r0['nfe']} divided by its batched score calls; bare: `model.score_fn(x, t)` alone under "
             "`torch.no_grad`, timed in blocks of as many calls, interleaved with the runs (medians, after a "
             "warm-up). Ratio 1 = the sampler adds nothing around the network; target: within 1.15x.", "",
             *md_table(["sampler", "grid", "NFE", "batched calls", "wall ms", "ms per evaluation",
                        "bare ms per evaluation", "ratio to bare"])]
    for r in speed:
        lines.append(md_row([r["sampler"], r["grid"], int(r["nfe"]), int(r["total_nfe"]),
                             f"{1e3 * float(r['wall_s']):.2f}", f"{float(r['per_eval_ms']):.3f}",
                             f"{float(r['bare_eval_ms']):.3f}", f"{float(r['ratio']):.3f}"]))
    return lines + [""]


def _g(v: float, signed: bool = False) -> str:
    return f"{v:+.3g}" if signed else f"{v:.3g}"


def table_lines(summary, targets) -> list[str]:
    lines = ["## Every configuration", ""]
    for oracle in targets:
        ss = [s for s in summary if s["oracle"] == oracle]
        s0 = ss[0]
        if oracle == DIGITS:
            lines += [f"### {oracle} (reference: held-out test images; train vs test: Fréchet distance "
                      f"{s0['null_fd']:.3g}, energy distance {s0['null_q99']:.3g})", "",
                      *md_table(["sampler", "grid", "config", "NFE", "wall s", "Fréchet distance (classifier "
                                 "features)", "energy distance (pixels)"])]
        else:
            lines += [f"### {oracle} (nulls, 99% quantile: energy distance {s0['null_q99']:.3g}, "
                      f"|log-density error| {s0['null_logp']:.3g}, mass error {s0['null_mass']:.3g})", "",
                      *md_table(["sampler", "grid", "config", "NFE", "wall s", "energy distance", "log-density error",
                                 "mass error", *(["narrow mass error"] if oracle == NARROW else [])])]
        for s in ss:
            line = (f"| {s['family']} | {s['grid']} | {s['config']} | {s['nfe']:.0f} | {s['wall_s']:.3f} | "
                    f"{_g(s['dist'])} [{_g(s['dist_min'])}, {_g(s['dist_max'])}] |")
            if oracle == DIGITS:
                line += f" {_g(s['ed'])} [{_g(s['ed_min'])}, {_g(s['ed_max'])}] |"
            else:
                line += (f" {_g(s['logp_err'], True)} [{_g(s['logp_err_min'], True)}, {_g(s['logp_err_max'], True)}] |"
                         f" {_g(s['mass'])} [{_g(s['mass_min'])}, {_g(s['mass_max'])}] |")
                if oracle == NARROW:
                    line += f" {_g(s['narrow'], True)} [{_g(s['narrow_min'], True)}, {_g(s['narrow_max'], True)}] |"
            lines.append(line)
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def write_outputs(rows, out: Path, tag: str, speed: Optional[list] = None) -> dict[str, Path]:
    speed = speed or []
    stem = f"compare_solvers_{tag}"
    paths = {"csv": out / f"{stem}.csv", "speed_csv": out / f"{stem}_speed.csv", "md": out / f"{stem}.md",
             "png": out / f"{stem}.png", "png_errors": out / f"{stem}_errors.png",
             "png_grids": out / f"{stem}_grids.png", "png_wall": out / f"{stem}_wall.png"}
    atomic_write(paths["csv"], csv_bytes(rows, FIELDS))
    if speed:
        atomic_write(paths["speed_csv"], csv_bytes(speed, SPEED_FIELDS))
    else:
        del paths["speed_csv"]

    summary = summarize(rows)
    targets = list(dict.fromkeys(s["oracle"] for s in summary))
    seeds = len({r["seed"] for r in rows})
    lines = [f"Samplers at equal NFE (score evaluations per sample, denoising step included); VP SDE; "
             f"device: {rows[0]['device']}; {date.today().isoformat()}; {seeds} seed(s). "
             "Energy distance (V-statistic) to the reference (digits: Fréchet distance in the features of the "
             "built-in digits classifier, `scoresde.metrics.digits_features`); log-density error = mean log p(samples) - "
             "mean log p(true samples) under the exact mixture density (nats); mass error = max_k |w_hat_k - w_k| "
             "with samples assigned by the mixture's Bayes classifier; narrow mass error = w_hat - w of the narrow "
             "component (std 0.05, weight 0.15). Means over seeds, [min, max]. With one seed, the deterministic "
             "samplers of a target all start from the same prior draw and converge to the same sample, so they "
             "share that draw's luck against the null.", ""]
    lines += reach_lines(summary, targets) + speed_lines(speed) + table_lines(summary, targets)
    atomic_write(paths["md"], "\n".join(lines).encode())
    _figures(summary, targets, rows[0]["device"], paths)
    return paths


def _label(family: str, grid: str) -> str:
    return f"{family} [{grid}]" if grid else family


def _style(index: int):
    import matplotlib.pyplot as plt

    return dict(color=plt.get_cmap("tab10")(index % 10), marker="osD^vPX*"[index % 8], ms=4, lw=1.3)


def _series(summary, oracle, family, grid):
    """The summary rows of one line, in order of NFE (wall time need not grow monotonically with it)."""
    return sorted((s for s in summary if s["oracle"] == oracle and s["family"] == family and s["grid"] == grid),
                  key=lambda s: s["nfe"])


def _save(fig, path):
    # Fixed margins instead of tight_layout, which costs seconds on figures of 10+ panels.
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.7 / w, right=1 - 0.15 / w, bottom=0.55 / h, top=1 - 0.6 / h, wspace=0.3, hspace=0.4)
    write_png(path, fig, dpi=100)


def _null_line(ax, value, oracle, what="energy distance"):
    if math.isfinite(value):
        ax.axhline(value, color="k", ls="--", lw=1,
                   label="train vs test images" if oracle == DIGITS else "null (truth vs truth, 99%)")


def _draw(ax, summary, oracle, family, grid, xkey, ykey, style, label, band=True):
    """One line of ``ykey`` against ``xkey`` (the summary rows of a target, family and grid), with
    the min..max band over seeds of the energy distance and mass error (``band``)."""
    pts = _series(summary, oracle, family, grid)
    pts = [s for s in pts if math.isfinite(s[ykey])]
    if not pts:
        return
    xs = [s[xkey] for s in pts]
    if ykey == "logp_err":
        ys = [s["abs_logp_err"] for s in pts]
    else:
        ys = [s[ykey] for s in pts]
    ax.plot(xs, ys, label=label, **style)
    if band and ykey in ("dist", "mass"):
        ax.fill_between(xs, [s[ykey + "_min"] for s in pts], [s[ykey + "_max"] for s in pts],
                        color=style["color"], alpha=0.12)


def _finish(ax, title, xlabel, ylabel):
    """Log-log axes with 1-2-5 ticks, labels, title, grid and legend; an empty panel says so."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator, ScalarFormatter

    if not any(len(line.get_xdata()) for line in ax.get_lines()):
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: no data", ha="center", transform=ax.transAxes)
        return
    ax.set_xscale("log")
    ax.set_yscale("log")
    # No minor ticks (each costs a text layout); NFE ticks at 1-2-5 steps.
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if xlabel.startswith("NFE"):
        ax.xaxis.set_major_locator(FixedLocator([5, 10, 20, 50, 100, 200, 500, 1000, 2000]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, ncol=1, framealpha=0.6)


def _ylab(summary, oracle):
    s = next(s for s in summary if s["oracle"] == oracle)
    return f"{s['statistic']} to test images" if oracle == DIGITS else "energy distance to the mixture"


def _null_of(summary, oracle, key="null"):
    return next(s[key] for s in summary if s["oracle"] == oracle)


def _figure_groups(default: dict) -> dict:
    """The panel rows of the main figure: :data:`GROUPS` restricted to the families in the summary,
    the families in no group as ``other``, empty groups dropped."""
    groups = {name: [f for f in members if f in default] for name, members in GROUPS.items()}
    other = [f for f in default if not any(f in m for m in GROUPS.values())]
    if other:
        groups["other"] = other
    return {k: v for k, v in groups.items() if v}


def _figure_nfe(summary, targets, groups, default, device, path) -> None:
    """Energy distance vs NFE: a panel per target, a row per sampler group."""
    plt = pyplot()
    fig, axes = plt.subplots(len(groups), len(targets), figsize=(4.6 * len(targets), 3.6 * len(groups)),
                             squeeze=False)
    for i, (gname, members) in enumerate(groups.items()):
        for j, oracle in enumerate(targets):
            ax = axes[i][j]
            for k, fam in enumerate(members):
                _draw(ax, summary, oracle, fam, default[fam], "nfe", "dist", _style(k), _label(fam, default[fam]))
            _null_line(ax, _null_of(summary, oracle), oracle)
            _finish(ax, f"{oracle}: {gname}", "NFE per sample", _ylab(summary, oracle))
    fig.suptitle(f"Energy distance (digits: Fréchet distance) vs NFE ({device})", fontsize=10)
    _save(fig, path)


def _figure_errors(summary, targets, default, device, path) -> None:
    """Log-density and mass errors vs NFE on the oracles, of six representative samplers."""
    plt = pyplot()
    oracle_targets = [t for t in targets if t != DIGITS]
    err_fams = [f for f in ERROR_FAMILIES if f in default] or list(default)[:6]
    if not oracle_targets:
        fig = plt.figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no oracle targets", ha="center")
        _save(fig, path)
        return
    fig, axes = plt.subplots(2, len(oracle_targets), figsize=(4.6 * len(oracle_targets), 7.2), squeeze=False)
    for j, oracle in enumerate(oracle_targets):
        for row, key, null, ylabel in ((0, "logp_err", _null_of(summary, oracle, "null_logp"),
                                        "|log-density error| [nats]"),
                                       (1, "mass", _null_of(summary, oracle, "null_mass"),
                                        "mass error max_k |w_hat - w|")):
            ax = axes[row][j]
            for k, fam in enumerate(err_fams):
                _draw(ax, summary, oracle, fam, default[fam], "nfe", key, _style(k), _label(fam, default[fam]))
            _null_line(ax, null, oracle)
            _finish(ax, oracle, "NFE per sample", ylabel)
    fig.suptitle(f"Log-density and per-component mass errors vs NFE ({device})", fontsize=10)
    _save(fig, path)


#: line style and marker of each time grid in the grid-sweep figure
GRID_LINES = {"uniform": "-", "logsnr": "--", "karras": "-.", "quadratic": ":"}
GRID_MARKERS = {"uniform": "o", "logsnr": "s", "karras": "^", "quadratic": "v"}


def _figure_grids(summary, targets, default, device, path) -> None:
    """The grid sweep: colour = sampler, line style and marker = grid; energy distance and mass error."""
    plt = pyplot()
    sweep_fams = [f for f in GRID_SWEEP if f in default]
    lss, mks = GRID_LINES, GRID_MARKERS
    fig, axes = plt.subplots(2, len(targets), figsize=(4.6 * len(targets), 7.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for j, oracle in enumerate(targets):
        for row, key in ((0, "dist"), (1, "mass")):
            ax = axes[row][j]
            if key == "mass" and oracle == DIGITS:
                ax.axis("off")
                ax.text(0.5, 0.5, "no exact density / components", ha="center", transform=ax.transAxes)
                continue
            for k, fam in enumerate(sweep_fams):
                for g in GRIDS:
                    style = dict(color=cmap(k), ls=lss[g], marker=mks[g], ms=3.5, lw=1.2)
                    _draw(ax, summary, oracle, fam, g, "nfe", key, style, None, band=False)
            _null_line(ax, _null_of(summary, oracle, "null" if key == "dist" else "null_mass"), oracle)
            # One legend entry per sampler (colour) and per grid (line style), not per pair.
            for k, fam in enumerate(sweep_fams):
                ax.plot([], [], color=cmap(k), lw=3, label=fam)
            for g in GRIDS:
                ax.plot([], [], color="0.3", ls=lss[g], marker=mks[g], ms=3.5, label=f"grid {g}")
            _finish(ax, f"{oracle}: time grids", "NFE per sample",
                    _ylab(summary, oracle) if key == "dist" else "mass error max_k |w_hat - w|")
    fig.suptitle(f"Time-grid sweep ({device})", fontsize=10)
    _save(fig, path)


def _figure_wall(summary, targets, groups, default, device, path) -> None:
    """Energy distance vs wall time: colour per sampler group; one shared legend in the last panel."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(4.6 * (len(targets) + 1), 4.2), squeeze=False)
    for j, oracle in enumerate(targets):
        ax = axes[0][j]
        for i, (gname, members) in enumerate(groups.items()):
            for k, fam in enumerate(members):
                style = dict(color=cmap(i), marker="osD^vPX*"[k % 8], ms=3.5, lw=1.0)
                _draw(ax, summary, oracle, fam, default[fam], "wall_s", "dist", style, None, band=False)
        _null_line(ax, _null_of(summary, oracle), oracle)
        _finish(ax, oracle, "wall time [s]", _ylab(summary, oracle))
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    leg = axes[0][-1]
    for i, (gname, members) in enumerate(groups.items()):
        for k, fam in enumerate(members):
            leg.plot([], [], color=cmap(i), marker="osD^vPX*"[k % 8], ms=3.5, lw=1.0, label=f"{gname}: {fam}")
    leg.plot([], [], color="k", ls="--", lw=1, label="null / train vs test")
    leg.axis("off")
    leg.legend(loc="center left", fontsize=7, frameon=False)
    fig.suptitle(f"Energy distance (digits: Fréchet distance) vs wall time per run ({device})", fontsize=10)
    _save(fig, path)


def _figures(summary, targets, device: str, paths) -> None:
    """The four figures of the study (see the module docstring)."""
    default = _default_grid_of(summary)
    groups = _figure_groups(default)
    _figure_nfe(summary, targets, groups, default, device, paths["png"])
    _figure_errors(summary, targets, default, device, paths["png_errors"])
    _figure_grids(summary, targets, default, device, paths["png_grids"])
    _figure_wall(summary, targets, groups, default, device, paths["png_wall"])


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse(argv=None):
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="a few configurations on small n (seconds)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--n", type=int, default=None, help="samples per oracle run (default 2000; 200 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="repeats with different seeds (default 3; 1 with --quick)")
    p.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="NFE budgets of every sampler (default 5 8 10 15 20 30 50; 10 40 with --quick)")
    p.add_argument("--long-budgets", type=int, nargs="*", default=None,
                   help="extra budgets of the first-order samplers (default 100 200 500; none with --quick)")
    p.add_argument("--null-repeats", type=int, default=None,
                   help="truth-vs-truth draws per null quantile (default 100; 20 with --quick)")
    p.add_argument("--out", type=Path, default=Path("docs/figures"), help="output directory")
    p.add_argument("--tag", default=None, help="file name tag (default: cpu or cuda)")
    p.add_argument("--replot", type=Path, default=None, metavar="CSV",
                   help="rewrite the tables and figures from a CSV of an earlier run (no sampling; its "
                        "<stem>_speed.csv is read too when it exists)")
    p.add_argument("--no-digits", dest="digits", action="store_false",
                   help="skip the trained digits model (oracles only; no speed benchmark)")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed benchmark")
    p.add_argument("--speed-batch", type=int, default=512, help="batch of the speed benchmark (default 512)")
    p.add_argument("--digits-checkpoint", type=Path, default=None,
                   help="a VP checkpoint from `scoresde train --dataset digits` (default: train one here)")
    p.add_argument("--digits-steps", type=int, default=None,
                   help="training steps of the digits model when no checkpoint is given (default 5000; 30 quick)")
    args = p.parse_args(argv)
    require_device(p, args.device)
    if args.quick:
        args.budgets = args.budgets or [10, 40]
        args.long_budgets = args.long_budgets if args.long_budgets is not None else []
        args.sweep_budgets = [10]  # the grid sweep once per target
        args.tolerances = [1e-3]
        args.n = args.n or 200
        args.seeds = args.seeds or 1
        args.null_repeats = args.null_repeats or 20
        args.speed_repeats = 2
    else:
        args.budgets = args.budgets or [5, 8, 10, 15, 20, 30, 50]
        args.long_budgets = args.long_budgets if args.long_budgets is not None else [100, 200, 500]
        args.sweep_budgets = None
        args.tolerances = [1e-2, 1e-3, 1e-4, 1e-5]
        args.n = args.n or 2000
        args.seeds = args.seeds or 3
        args.null_repeats = args.null_repeats or 100
        args.speed_repeats = 7
    if args.n < 2 or args.seeds < 1:
        p.error("--n must be >= 2 and --seeds >= 1")
    if min(args.budgets + args.long_budgets) < 5:
        p.error("--budgets and --long-budgets must be >= 5 (the cost of one step of every sampler plus denoising)")
    if args.null_repeats < 2:
        p.error("--null-repeats must be >= 2")
    if args.speed_batch < 1:
        p.error("--speed-batch must be >= 1")
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
    """Rows of a CSV this study wrote, with numbers parsed (for ``--replot``); CSVs of older runs
    lack the grid, mass, Fréchet and null columns (they read as ``""`` and nan)."""
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        for k in ("nfe", "wall_s", "energy_distance", "null_q99", "ok_fraction"):
            r[k] = float(r[k])
        for k in ("frechet_distance", "null_fd", "logp_error", "null_logp", "mass_error", "null_mass",
                  "narrow_mass_error"):
            r[k] = float(r.get(k) or "nan")
        r["seed"] = int(r["seed"])
        r["grid"] = r.get("grid") or ""
        r["sweep"] = int(r.get("sweep") or 0)
    return rows


def read_speed(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path))) if path.exists() else []


def warm_up(device: torch.device) -> None:
    """One small untimed run per sampler, so that one-off start-up costs (CUDA context, kernel
    caches) are not charged to the first timed configuration."""
    mix = mixture_2d()
    sde = VPSDE()
    runs = [(name, dict(nfe=8)) for name in SAMPLERS if name != "ode"]
    runs += [("ode", {}), ("ode", dict(method="torchdiffeq_dopri5")), ("ode", dict(method="heun", nfe=5))]
    for sampler, opts in runs:
        sample(mix.score_fn(sde), sde, (16, 2), sampler=sampler, device=device,
               generator=torch.Generator(device=device).manual_seed(0), **opts)
    sync(device)


def main(argv=None) -> dict[str, Path]:
    args = parse(argv)
    if args.replot is not None:
        rows = read_rows(args.replot)
        speed = read_speed(args.replot.with_name(args.replot.stem + "_speed.csv"))
        paths = write_outputs(rows, args.out, args.tag, speed)
    else:
        device = torch.device(args.device)
        warm_up(device)
        digits = DigitsTarget(args, device) if args.digits else None
        rows = run(args, digits)
        speed = []
        if digits is not None and args.speed:
            speed = speed_benchmark(digits.model, digits.shape, device, batch=args.speed_batch,
                                    repeats=args.speed_repeats, description=digits.description)
        paths = write_outputs(rows, args.out, args.tag, speed)
    for k, v in paths.items():
        print(f"wrote {k}: {v}")
    return paths


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
