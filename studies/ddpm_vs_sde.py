"""How far is the discrete DDPM chain from the continuous VP SDE? The O(1/N) gap.

For a VP SDE with ``N`` steps, the DDPM chain it discretizes to has signal variance
``abar_i = prod_{j <= i} (1 - beta_j)`` after step ``i`` (0-based), which sits at ``t_i = (i + 1)/N``;
the SDE's is ``m(t_i)^2``. This study records ``max_i |gap_i|``, ``gap_i = log abar_i - 2 log m(t_i)``,
for a range of ``N`` and both schedules, next to the bounds derived in ``docs/sde.md``:

* linear betas (Song et al. 2021, App. B; Ho et al. 2020): ``R_i - L_i <= gap_i <= R_i - Lo_i`` and
  ``max_i |gap_i| <= C / N`` -- first order in ``1/N``;
* cosine (Nichol & Dhariwal 2021): the chain is built from ratios of ``abar``, so it telescopes to
  the continuous marginal exactly; only float64 rounding is left (the clipped last step, where
  ``abar(1) = 0``, is excluded).

Writes ``ddpm_vs_sde_gap.csv`` and ``ddpm_vs_sde_gap.png`` into ``--out`` (atomically).

    python studies/ddpm_vs_sde.py                    # full run, writes docs/figures/ (seconds)
    python studies/ddpm_vs_sde.py --quick --out DIR  # N = 200..1600 only; what the test suite runs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from _common import csv_bytes, pyplot, write_png
from scoresde import VPSDE, atomic_write

FIELDS = ["schedule", "N", "max_abs_gap", "t_at_max", "sharp_bound", "bound_C_over_N", "rounding_bound"]
U64 = np.finfo(np.float64).eps / 2


def linear_gap(N: int, beta_min: float, beta_max: float) -> dict:
    """The gap of the linear schedule and its derived bounds (see docs/sde.md)."""
    sde = VPSDE(beta_min, beta_max, N)
    sched = sde.ddpm_schedule()
    k = np.arange(1, N + 1)
    t = k / N
    gap = sched.log_alphas_cumprod.numpy() - 2.0 * sde.log_mean_coeff(torch.tensor(t, dtype=torch.float64)).numpy()
    d = beta_max - beta_min
    b = beta_min / N + (k - 1) / max(N - 1, 1) * d / N
    R = d * k * (N - k) / (2.0 * N**2 * max(N - 1, 1))
    L = np.cumsum(b**2 / (2.0 * (1.0 - b)))
    Lo = np.cumsum(b**2 / 2.0)
    C = d * N / (8.0 * max(N - 1, 1)) + beta_max**2 / (2.0 * (1.0 - beta_max / N))
    i = int(np.argmax(np.abs(gap)))
    return dict(t=t, gap=gap, lower=R - L, upper=R - Lo, R=R, Lo=Lo, row=dict(
        schedule="linear", N=N, max_abs_gap=float(np.abs(gap).max()), t_at_max=float(t[i]),
        sharp_bound=float(np.maximum(np.abs(R - L), np.abs(R - Lo)).max()), bound_C_over_N=C / N, rounding_bound=""))


def cosine_gap(N: int, s: float) -> dict:
    """The gap of the cosine schedule (all but the clipped last step) and its float64 rounding bound."""
    sde = VPSDE(schedule="cosine", T=1.0, N=N, s=s)
    sched = sde.ddpm_schedule()
    keep = ~sched.clipped.numpy()
    k = np.arange(1, N + 1)[keep]
    t = k / N
    la = sched.log_alphas_cumprod.numpy()[keep]
    gap = la - 2.0 * sde.log_mean_coeff(torch.tensor(t, dtype=torch.float64)).numpy()
    # rounding: cumulative sum of k terms (k U sum|D_j|) plus U per term (|D_j| + beta_j/(1-beta_j)), see the tests
    D = np.diff(np.concatenate([[0.0], la]))
    bj = -np.expm1(D)
    a = (t + s) / (1 + s) * np.pi / 2
    tol = 8 * U64 * ((k + 2) * np.cumsum(np.abs(D)) + np.cumsum(bj / (1 - bj)) + t * np.pi / (1 + s) * np.tan(a) + 1.0)
    i = int(np.argmax(np.abs(gap)))
    return dict(t=t, gap=gap, row=dict(schedule="cosine", N=N, max_abs_gap=float(np.abs(gap).max()),
                                       t_at_max=float(t[i]), sharp_bound="", bound_C_over_N="",
                                       rounding_bound=float(tol.max())))


def slope(rows: list[dict]) -> float:
    """Least-squares slope of log(max |gap|) against log N."""
    x = np.log([r["N"] for r in rows])
    y = np.log([r["max_abs_gap"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def plot(lin_rows, cos_rows, profile, path: Path, beta_min, beta_max, s) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    Ns = np.array([r["N"] for r in lin_rows])
    ax.loglog(Ns, [r["max_abs_gap"] for r in lin_rows], "o-", color="C0",
              label=f"linear ($\\beta$ {beta_min:g}..{beta_max:g}): max$_i$|gap$_i$|, slope {slope(lin_rows):.3f}")
    ax.loglog(Ns, [r["sharp_bound"] for r in lin_rows], "--", color="C0", alpha=0.7,
              label="two-sided bound max$_i$ max(|R-L|, |R-Lo|)")
    ax.loglog(Ns, [r["bound_C_over_N"] for r in lin_rows], ":", color="C0", label="$C/N$")
    Nc = np.array([r["N"] for r in cos_rows])
    floor = 1e-17
    ax.loglog(Nc, [max(r["max_abs_gap"], floor) for r in cos_rows], "s-", color="C3",
              label=f"cosine (s={s:g}), clipped last step excluded; exact 0 drawn at {floor:g}")
    ax.loglog(Nc, [r["rounding_bound"] for r in cos_rows], "--", color="C3", alpha=0.7, label="float64 rounding bound")
    ax.set_xlabel("N (steps)")
    ax.set_ylabel(r"max$_i$ |log $\bar\alpha_i$ - 2 log m($t_i$)|")
    ax.set_title("DDPM chain vs VP SDE marginal")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left")

    for prof, color in ((profile[0], "C0"), (profile[1], "C2")):
        t, N = prof["t"], len(prof["t"])
        bx.plot(t, prof["gap"] * N, color=color, label=f"N gap$_i$, N = {N}")
        bx.fill_between(t, prof["lower"] * N, prof["upper"] * N, color=color, alpha=0.25,
                        label=f"N (R$_i$ - L$_i$) .. N (R$_i$ - Lo$_i$), N = {N}")
        if N == len(profile[0]["t"]):
            bx.plot(t, prof["R"] * N, "--", color="k", lw=0.8, label="N R$_i$ (sum of betas vs integral)")
            bx.plot(t, -prof["Lo"] * N, ":", color="k", lw=0.8, label="-N Lo$_i$ (log(1-b) vs -b)")
    bx.axhline(0, color="k", lw=0.5)
    bx.set_xlabel("$t_i = (i+1)/N$")
    bx.set_ylabel("N gap$_i$")
    bx.set_title("linear schedule: N gap$_i$ and its two-sided bound")
    bx.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    write_png(path, fig, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/figures", help="output directory (default: docs/figures)")
    ap.add_argument("--quick", action="store_true", help="four values of N only (N = 200 .. 1600)")
    ap.add_argument("--beta-min", type=float, default=0.1)
    ap.add_argument("--beta-max", type=float, default=20.0)
    ap.add_argument("--s", type=float, default=0.008, help="offset of the cosine schedule")
    args = ap.parse_args(argv)

    # quick: four N where the next-order term (relative ~ beta_max / N) is already small, so the slope is ~ -1
    Ns = [200, 400, 800, 1600] if args.quick else [50, 100, 200, 400, 800, 1600, 3200, 6400]
    lin = [linear_gap(N, args.beta_min, args.beta_max) for N in Ns]
    cos = [cosine_gap(N, args.s) for N in Ns]
    lin_rows, cos_rows = [r["row"] for r in lin], [r["row"] for r in cos]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    formatted = [{k: (f"{v:.6e}" if isinstance(v, float) else v) for k, v in r.items()} for r in lin_rows + cos_rows]
    atomic_write(out / "ddpm_vs_sde_gap.csv", csv_bytes(formatted, FIELDS, lineterminator="\n"))
    profile = (linear_gap(50, args.beta_min, args.beta_max), linear_gap(1000, args.beta_min, args.beta_max))
    plot(lin_rows, cos_rows, profile, out / "ddpm_vs_sde_gap.png", args.beta_min, args.beta_max, args.s)

    print(f"{'schedule':8s} {'N':>6s} {'max|gap|':>11s} {'N max|gap|':>11s} {'bound':>11s}")
    for r in lin_rows:
        print(f"{'linear':8s} {r['N']:6d} {r['max_abs_gap']:11.4e} {r['N'] * r['max_abs_gap']:11.4f} "
              f"{r['sharp_bound']:11.4e}")
    for r in cos_rows:
        print(f"{'cosine':8s} {r['N']:6d} {r['max_abs_gap']:11.4e} {'':11s} {r['rounding_bound']:11.4e}")
    print(f"linear: log-log slope {slope(lin_rows):.4f} (first order: -1)")
    print(f"wrote {out / 'ddpm_vs_sde_gap.csv'} and {out / 'ddpm_vs_sde_gap.png'}")
    ok = all(r["max_abs_gap"] <= r["sharp_bound"] * (1 + 1e-9) + 1e-15 for r in lin_rows) and \
        all(r["max_abs_gap"] <= r["rounding_bound"] for r in cos_rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
