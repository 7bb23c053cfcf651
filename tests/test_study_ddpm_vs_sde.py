"""The DDPM-vs-SDE study (studies/ddpm_vs_sde.py) in --quick mode: its CSV must show the gap
below the derived bound, first-order decay in 1/N, and the cosine chain at rounding level; the
linear numbers are re-derived here from the paper formulas with numpy (Song et al. 2021, App. B)."""
from __future__ import annotations

import csv
import math

import numpy as np

import ddpm_vs_sde as mod


def _independent_max_gap(N, bmin=0.1, bmax=20.0):
    """max_k |sum_{j<=k} log(1 - beta_j) + B(k/N)| with beta_j = linspace(bmin/N, bmax/N, N)."""
    b = np.linspace(bmin / N, bmax / N, N)
    t = np.arange(1, N + 1) / N
    return np.abs(np.cumsum(np.log1p(-b)) + bmin * t + 0.5 * (bmax - bmin) * t**2).max()


def test_quick_study_writes_csv_and_figure(tmp_path):
    rc = mod.main(["--quick", "--out", str(tmp_path)])
    assert rc == 0
    png = tmp_path / "ddpm_vs_sde_gap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # no temp files left behind by the atomic writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddpm_vs_sde_gap.csv", "ddpm_vs_sde_gap.png"]

    with open(tmp_path / "ddpm_vs_sde_gap.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lin = [r for r in rows if r["schedule"] == "linear"]
    cos = [r for r in rows if r["schedule"] == "cosine"]
    assert len(lin) == len(cos) == 4

    Ns = np.array([int(r["N"]) for r in lin])
    gaps = np.array([float(r["max_abs_gap"]) for r in lin])
    for r, N, g in zip(lin, Ns, gaps):
        # values are written with 7 significant digits
        assert math.isclose(g, _independent_max_gap(N), rel_tol=1e-6)
        assert g <= float(r["sharp_bound"]) * (1 + 1e-6)
        assert g <= float(r["bound_C_over_N"]) * (1 + 1e-6)
    # first order in 1/N: N * max|gap| tends to int_0^1 beta^2 / 2 (the gap's last entry is -L_N,
    # and L_N -> (1/2N) int beta^2); the next-order term is relative O(beta_max / N) <= 0.1 here,
    # which moves the fitted slope by less than 0.05 over N = 200 .. 1600.
    slope = np.polyfit(np.log(Ns), np.log(gaps), 1)[0]
    assert abs(slope + 1.0) < 0.05, slope
    # Lower end: |gap_N| >= Lo_N = sum b_j^2 / 2, and N sum b_j^2 is an equally spaced average of the
    # convex beta^2 including both endpoints, hence >= int_0^1 beta^2. So N max|gap| >= (1/2) int beta^2.
    limit = 0.5 * (0.1**2 + 0.1 * 19.9 + 19.9**2 / 3)  # (1/2) int_0^1 (0.1 + 19.9 t)^2 dt
    assert np.all(Ns * gaps >= limit)
    # cosine: the chain telescopes, only rounding is left
    for r in cos:
        assert float(r["max_abs_gap"]) <= float(r["rounding_bound"]) < 1e-9
