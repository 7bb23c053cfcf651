"""Does integrating the likelihood ODE in another time variable take fewer evaluations?

The probability-flow ODE of every SDE here (marginals ``x_t = m(t) x_0 + s(t) z``) can be written,
with ``x_bar = x / m`` and ``sigma_bar = s / m = exp(-lambda / 2)`` (``lambda`` the log-SNR), as

    d x_bar / d sigma_bar = -sigma_bar m(t) score(m x_bar, t)            (Karras et al. 2022, eq. 4;
                                                                          Song et al. 2021a, DDIM)

whose trajectories are straight lines for a single data point; with ``u = log sigma_bar`` it is
``d x_bar / du = sigma_bar * (the above)``. The log-density follows by the instantaneous change of
variables in ``x_bar`` and the Jacobian of ``x = m x_bar``:

    log p_eps(x) = log p_T(z) + int div_{x_bar}(dx_bar/du) du + D (log m(T) - log m(eps)).

This study solves the same likelihood (same probes, same per-sample dopri5) in ``t`` (what
``scoresde.log_likelihood`` does), in ``sigma_bar`` and in ``log sigma_bar``, and reports batched
calls and the error in bits/dim against a float64 reference at tight tolerance, per tolerance.
Fewer calls at the same error would mean a faster default; see docs/performance.md for the result.

    python studies/likelihood_time_variable.py            # ~2 minutes on 2 CPU cores
    python studies/likelihood_time_variable.py --quick    # seconds; what the tests run
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from _common import SCORE_FIELDS, make_field, md_row, md_table, parser, timed
from scoresde import VPSDE, atomic_write, bits_per_dim, log_likelihood
from scoresde.likelihood import divergence, draw_probes
from scoresde.solvers import solve_ode

VARIABLES = ("t", "sigma_bar", "log_sigma_bar")


def likelihood_in(variable: str, score_fn, sde, x, *, rtol: float, seed: int, eps: float = 1e-5,
                  max_steps: int = 100_000):
    """``(logp (B,) float64, total calls)`` of the likelihood ODE integrated in ``variable``."""
    if variable == "t":
        r = log_likelihood(score_fn, sde, x, rtol=rtol, atol=rtol, eps=eps, max_steps=max_steps,
                           generator=torch.Generator(device=x.device).manual_seed(seed))
        return r.logp.double(), r.total_nfe
    probes = draw_probes("rademacher", 1, x, torch.Generator(device=x.device).manual_seed(seed))
    D = x[0].numel()
    shape = (-1,) + (1,) * (x.ndim - 1)

    def to_u(t: float) -> float:
        lam = sde.log_snr_unchecked(torch.tensor([t], dtype=torch.float64)).item()
        return -lam / 2 if variable == "log_sigma_bar" else math.exp(-lam / 2)

    def field(u, state, rows=None):  # rows: the samples still running (the per-sample solver)
        xb = state[0]
        v = probes if rows is None else probes[:, rows]
        lam = -2.0 * (u.double() if variable == "log_sigma_bar" else torch.log(u.double()))
        t = sde.log_snr_inverse_unchecked(lam).to(xb.dtype)
        m = sde.log_mean_coeff_unchecked(t).exp().reshape(shape)
        sb = torch.exp(-0.5 * sde.log_snr_unchecked(t)).reshape(shape)
        with torch.enable_grad():
            xg = xb.detach().requires_grad_(True)
            d = -sb * m * score_fn(m * xg, t)
            if variable == "log_sigma_bar":
                d = sb * d
            div = divergence(d, xg, v)
        return d.detach(), div.detach().double()

    lm0 = sde.log_mean_coeff_unchecked(torch.tensor(eps, dtype=torch.float64)).item()
    lm1 = sde.log_mean_coeff_unchecked(torch.tensor(sde.T, dtype=torch.float64)).item()
    with torch.no_grad():
        res = solve_ode(field, (x / math.exp(lm0), torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)),
                        to_u(eps), to_u(sde.T), rtol=rtol, atol=rtol, max_steps=max_steps)
        zb, delta = res.y
        prior = sde.prior_logp_unchecked((zb * math.exp(lm1)).double())
    logp = prior + delta + D * (lm1 - lm0)
    return torch.where(res.status == 0, logp, torch.full_like(logp, float("nan"))).cpu(), res.total_nfe


def run(args) -> list[dict]:
    sde = VPSDE()
    dev = torch.device(args.device)
    rows = []
    for field in args.fields:
        score32, score64, x, desc = make_field(field, sde, args.batch, dev, seed=args.seed,
                                               train_steps=args.train_steps)
        D = x[0].numel()
        ref, _ = likelihood_in("t", score64, sde, x.double(), rtol=args.ref_rtol, seed=args.seed)
        ref_bpd = bits_per_dim(ref, D)
        for variable in VARIABLES:  # the reference solved in every variable: the formulas agree
            if variable != "t":
                other, _ = likelihood_in(variable, score64, sde, x.double(), rtol=args.ref_rtol, seed=args.seed)
                rows.append(dict(field=field, variable=variable, rtol=args.ref_rtol, calls="", wall_s="",
                                 max_abs_dbpd=float((bits_per_dim(other, D) - ref_bpd).abs().max()),
                                 note="float64 reference in this variable vs in t"))
        for rtol in args.rtols:
            for variable in VARIABLES:
                (logp, calls), wall = timed(
                    lambda: likelihood_in(variable, score32, sde, x, rtol=rtol, seed=args.seed), dev)
                err = (bits_per_dim(logp, D) - ref_bpd).abs()
                rows.append(dict(field=field, variable=variable, rtol=rtol, calls=calls, wall_s=wall,
                                 max_abs_dbpd=float(err.max()), note=desc))
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = [f"Likelihood ODE in three time variables (per-sample dopri5, rtol = atol, one Rademacher probe, "
             f"B = {args.batch}, VP SDE, eps = 1e-5; error = max |bpd - float64 t-reference at rtol "
             f"{args.ref_rtol:g}|). Command: `python studies/likelihood_time_variable.py"
             f"{' --quick' if args.quick else ''}` on {args.device}.", ""]
    for field in dict.fromkeys(r["field"] for r in rows):
        lines += [f"### {field}", "", *md_table(["rtol", "variable", "batched calls", "max abs dbpd", "wall [s]"])]
        for r in rows:
            if r["field"] == field:
                wall = "" if r["wall_s"] == "" else f"{r['wall_s']:.2f}"
                calls = "reference" if r["calls"] == "" else r["calls"]
                lines.append(md_row([f"{r['rtol']:g}", r["variable"], calls, f"{r['max_abs_dbpd']:.1e}", wall]))
        lines.append("")
    return "\n".join(lines)


def parse(argv=None):
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="tiny batch, two loose tolerances (seconds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fields", default="net,mixture", help="comma-separated: net, mixture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = p.parse_args(argv)
    q = args.quick
    args.batch = 4 if q else 32
    args.rtols = [1e-2, 1e-3] if q else [1e-3, 1e-4, 1e-5]
    args.ref_rtol = 1e-5 if q else 1e-8
    args.train_steps = 10 if q else 500
    args.fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    if not args.fields or any(f not in SCORE_FIELDS for f in args.fields):
        p.error(f"--fields takes net and/or mixture, got {args.fields}")
    return args


def main(argv=None) -> Path:
    args = parse(argv)
    rows = run(args)
    text = markdown(rows, args)
    path = args.out / ("likelihood_time_variable" + ("_quick" if args.quick else "") + ".md")
    atomic_write(path, text)
    print(text)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
