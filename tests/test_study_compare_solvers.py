"""The solver-comparison study runs end to end in its quick mode, so it never rots; what it measures
is checked against the truth of its oracles, not against its own earlier output."""
import csv
import math

import pytest

from scoresde.sampling import SAMPLERS

import compare_solvers as mod


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare_solvers")
    paths = mod.main(["--quick", "--out", str(out)])
    return mod, out, paths, list(csv.DictReader(open(paths["csv"])))


def _by(rows, key):
    return {(r["oracle"], r["family"], r["grid"], r["config"]): float(r[key]) for r in rows}


def test_quick_mode_covers_every_sampler_on_every_target(quick):
    mod, _, paths, rows = quick
    targets = {"mixture 2-D", "mixture 16-D", mod.NARROW, mod.DIGITS}
    assert {r["oracle"] for r in rows} == targets
    # every registered sampler is in the sweep; each new solver at its default grid on each target
    assert {r["sampler"] for r in rows} == set(SAMPLERS)
    for name in mod.NEW:
        for t in targets:
            assert any(r["oracle"] == t and r["sampler"] == name and r["grid"] == SAMPLERS[name].default_grid
                       for r in rows), (name, t)
    # the grid sweep: dpmpp_2m, unipc and heun_edm on every grid of every target
    for name in mod.GRID_SWEEP:
        assert {r["grid"] for r in rows if r["sampler"] == name} == set(mod.GRIDS)
    for r in rows:
        assert float(r["ok_fraction"]) == 1.0
        assert float(r["nfe"]) > 0 and float(r["wall_s"]) > 0
        # a budget is a cap: a sampler uses at most what it was given (heun_edm pays 2 per step)
        if r["config"].startswith("nfe="):
            assert float(r["nfe"]) <= int(r["config"][4:])
        # the log-density and mass errors are defined for the oracles (exact density, known
        # components) and only there; the narrow mass error on the narrow target only
        is_oracle = r["oracle"] != mod.DIGITS
        for key in ("logp_error", "mass_error", "null_logp", "null_mass"):
            assert math.isfinite(float(r[key])) == is_oracle, (key, r["oracle"])
        assert math.isfinite(float(r["narrow_mass_error"])) == (r["oracle"] == mod.NARROW)
        # the digits rows are scored by the Fréchet distance in classifier features, and only they
        for key in ("frechet_distance", "null_fd"):
            assert math.isfinite(float(r[key])) == (not is_oracle), (key, r["oracle"])
        assert float(r["energy_distance"]) > 0 and float(r["null_q99"]) > 0
    # the budgets are honoured where the step cost allows: DPM-Solver-3 spends exactly 40
    d3 = [r for r in rows if r["sampler"] == "dpm_solver_3" and r["config"] == "nfe=40"]
    assert d3 and all(float(r["nfe"]) == 40 for r in d3)


def test_quality_against_the_oracles(quick):
    mod, _, _, rows = quick
    d, e = _by(rows, "energy_distance"), _by(rows, "logp_error")
    nm = _by(rows, "narrow_mass_error")
    null = {r["oracle"]: float(r["null_q99"]) for r in rows}
    null_logp = {r["oracle"]: float(r["null_logp"]) for r in rows}
    null_mass = {r["oracle"]: float(r["null_mass"]) for r in rows}
    grid = {name: SAMPLERS[name].default_grid for name in SAMPLERS}
    # At a moderate budget (40 NFE) the best new solver is indistinguishable from the 2-D mixture.
    best = min(d[("mixture 2-D", s, grid[s], "nfe=40")] for s in mod.NEW)
    assert best < null["mixture 2-D"]
    # Ten Euler-Maruyama evaluations are visibly off on the 16-D oracle (above the truth-vs-truth
    # 99% quantile), and leave the samples too spread (they sit in less likely regions, by more
    # than the null of the log-density error); forty are indistinguishable from the truth.
    em = ("euler_maruyama", "uniform")
    assert d[("mixture 16-D", *em, "nfe=10")] > null["mixture 16-D"]
    assert d[("mixture 16-D", *em, "nfe=40")] < null["mixture 16-D"]
    assert e[("mixture 16-D", *em, "nfe=10")] < -null_logp["mixture 16-D"]
    assert abs(e[("mixture 16-D", *em, "nfe=40")]) < null_logp["mixture 16-D"]
    # The narrow component (std 0.05, weight 0.15): ten Euler-Maruyama evaluations blur it so
    # far that it loses its mass (to the broad neighbour), by more than the truth-vs-truth null,
    # and the mean log density drops; at 40 evaluations the best new solver keeps the mass.
    narrow = mod.NARROW
    assert nm[(narrow, *em, "nfe=10")] < -null_mass[narrow]
    assert e[(narrow, *em, "nfe=10")] < -null_logp[narrow]
    assert min(abs(nm[(narrow, s, grid[s], "nfe=40")]) for s in mod.NEW) < null_mass[narrow]
    # The summary rule agrees: EM does not reach the 16-D null at 10 NFE, and some new solver
    # reaches the 2-D null by 40.
    summary = mod.summarize(list(csv.DictReader(open(quick[2]["csv"]))))
    ed = mod.reach(summary, "ed")
    nfe_em, _ = ed[("mixture 16-D", *em)]
    assert nfe_em is None or nfe_em > 10
    assert any((ed[("mixture 2-D", s, grid[s])][0] or math.inf) <= 40 for s in mod.NEW)


def test_speed_table_and_outputs(quick):
    mod, out, paths, rows = quick
    speed = list(csv.DictReader(open(paths["speed_csv"])))
    assert [r["sampler"] for r in speed] == list(mod.SPEED_SAMPLERS)
    for r in speed:
        assert int(r["batch"]) == 512 and int(r["nfe"]) == 20
        assert 0 < int(r["total_nfe"]) <= 20  # one batched call per evaluation (no pilot run)
        ratio = float(r["ratio"])
        assert math.isfinite(ratio) and ratio > 0 and float(r["bare_eval_ms"]) > 0
    md = paths["md"].read_text()
    assert "## Smallest NFE at which each sampler reaches the null" in md
    assert "### Grid sweep" in md
    assert "## Speed: wall time per network evaluation vs one bare evaluation" in md
    assert "| sampler | grid | config | NFE |" in md
    assert "narrow mass error" in md
    for key in ("png", "png_errors", "png_grids", "png_wall"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The tables and figures can be rebuilt from the CSVs alone (e.g. for a run made on a GPU machine).
    again = mod.main(["--replot", str(paths["csv"]), "--out", str(out / "replot"), "--tag", "x"])
    assert again["md"].read_text().splitlines()[2:] == md.splitlines()[2:]


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        mod.parse(["--n", "1"])
    assert "--n must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.parse(["--budgets", "3"])
    assert "--budgets" in capsys.readouterr().err


def test_digits_rows_are_judged_by_the_frechet_distance(quick):
    mod, _, paths, rows = quick
    digits = [r for r in rows if r["oracle"] == mod.DIGITS]
    floor = float(digits[0]["null_fd"])
    # A 30-step model samples little better than noise: every sampler's Fréchet distance to the
    # test images is well above the train-vs-test floor (two samples of the data; at n = 64 in 64
    # feature dimensions the FD estimator is biased up, so the floor is far from 0).
    assert 0 < floor < min(float(r["frechet_distance"]) for r in digits) / 2
    summary = [s for s in mod.summarize(rows) if s["oracle"] == mod.DIGITS]
    assert all(s["statistic"] == "Fréchet distance" and s["null"] == floor for s in summary)
    assert all(s["dist"] == s["fd"] for s in summary)
    md = paths["md"].read_text()
    assert "Fréchet distance (classifier features)" in md
