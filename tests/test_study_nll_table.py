"""The NLL-table study runs end to end in its quick mode, so it never rots.

What is checked: every model x estimator row and both baselines are there with a positive standard
error; the rows are consistent with their definitions (the exact-trace row is its own subset row,
N and repeats as asked); the variational bounds sit beside the ODE rows on the same images (paired
with them; the DDPM bound for the VP model only, as a bound on the discrete data); the oracle rows match the analytic log-density
within the error budget derived from the solver tolerance, and their continuous bound is the
analytic value plus its expected prior mismatch within its standard error; a run loaded with
--checkpoints gives the same numbers as the run that trained it; and --replot rebuilds the table
from the CSV alone.
"""
import math

import pytest

import nll_table as mod


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nll_table")
    paths = mod.main(["--quick", "--out", str(out), "--runs-dir", str(out / "runs"), "--no-progress"])
    return mod, out, paths, mod.read_rows(paths["csv"])


def test_every_model_and_estimator_row_is_there_with_a_standard_error(quick_run):
    mod, out, paths, rows = quick_run
    plan = mod.PLANS["quick"]
    models = [r for r in rows if r["kind"] == "model"]
    labels = [e[0] for e in mod.estimators(plan["n_probes"])]
    assert sorted((r["model"], r["estimator"]) for r in models) == sorted(
        (m, e) for m in mod.MODELS for e in labels)
    for r in models:
        exact = r["trace"] == "exact"
        assert r["n"] == (plan["n_exact"] if exact else plan["n_test"])
        assert r["repeats"] == (plan["exact_repeats"] if exact else plan["repeats"])
        assert r["n_probes"] == (0 if exact else int(r["estimator"].rsplit("x", 1)[1]))
        assert r["n_failed"] == 0
        assert math.isfinite(r["mean"]) and r["stderr"] > 0 and math.isfinite(r["median"])
        assert 0 <= r["n_outliers"] <= r["n"]
        assert r["outlier_threshold"] == pytest.approx(2 * math.log2(17))
        assert r["nfe_mean"] > 0 and r["wall_s"] > 0
        assert r["subset_n"] == plan["n_exact"] and r["subset_stderr"] > 0
        assert r["train_steps"] == plan["train"]["steps"]
        if exact:  # the exact trace runs on the subset itself
            assert r["subset_mean"] == r["mean"] and r["subset_stderr"] == r["stderr"]
    # One network evaluation per solver stage whatever the estimator: the three estimators of a model
    # solve nearly the same ODE, so their NFE agree closely (not exactly: the divergence enters the
    # step-size control through the log-density component).
    for m in mod.MODELS:
        nfe = [r["nfe_mean"] for r in models if r["model"] == m]
        assert max(nfe) < 1.5 * min(nfe)


def test_bounds_sit_beside_the_ode_rows(quick_run):
    mod, out, paths, rows = quick_run
    plan = mod.PLANS["quick"]
    bounds = {(r["model"], r["estimator"]): r for r in rows if r["kind"] == "bound"}
    assert sorted(bounds) == sorted([(m, mod.BOUND_LABEL["continuous"]) for m in mod.MODELS]
                                    + [("vp", mod.BOUND_LABEL["ddpm"])])
    ode = {r["model"]: r for r in rows if r["kind"] == "model" and r["estimator"] == f"rademacher x{plan['n_probes']}"}
    for (m, est), r in bounds.items():
        assert r["n"] == plan["n_test"] == ode[m]["n"] and r["repeats"] == plan["bound_repeats"]
        assert r["n_failed"] == 0 and math.isfinite(r["mean"]) and r["stderr"] > 0 and r["vs_ode_stderr"] > 0
        assert r["train_steps"] == plan["train"]["steps"] and f"'rademacher x{plan['n_probes']}'" in r["info"]
        # paired on the same images: the mean difference is the difference of the means
        assert r["vs_ode"] == pytest.approx(r["mean"] - ode[m]["mean"], abs=1e-9)
        if est == mod.BOUND_LABEL["continuous"]:
            # same dequantization and offset as the ODE: an upper bound on the SDE model's NLL, which
            # nothing orders against the ODE model's (on the trained models of the full run it is 0.1
            # bits/dim below it); the bound itself is checked against truth on the oracle rows below
            assert r["nfe_mean"] == 2 * plan["bound_times"] and r["eps"] == mod.EPS
        else:
            # a bound on the discrete data (no offset): above 0, and above the ODE's here by about the
            # log2(w / sqrt(2 pi e beta_0)) = 1.5 bits/dim a chain started at the cell centre loses on these
            # wide cells (w = 2/17; beta_0 = 1e-4)
            assert r["mean"] > 0 and r["vs_ode"] > 1.0 and r["nfe_mean"] == 1000 and r["eps"] is None


def test_baselines_are_exact_densities_on_the_same_images(quick_run):
    mod, out, paths, rows = quick_run
    plan = mod.PLANS["quick"]
    base = {r["model"]: r for r in rows if r["kind"] == "baseline"}
    assert set(base) == {"gaussian", f"gmm (K={plan['gmm_k']})"}
    for r in base.values():
        assert r["n"] == plan["n_test"] and r["repeats"] == plan["baseline_repeats"]
        assert math.isfinite(r["mean"]) and r["stderr"] > 0
        # A Gaussian fitted to the digits beats the uniform density on the cells (log2 17 bits/dim) by
        # far more than its standard error on a handful of images.
        assert r["mean"] + 4 * r["stderr"] < math.log2(17)


def test_oracle_rows_match_the_analytic_density_within_the_solver_budget(quick_run):
    mod, out, paths, rows = quick_run
    oracle = {r["model"]: r for r in rows if r["kind"] == "oracle"}
    assert set(oracle) == set(mod.MODELS)
    for name, r in oracle.items():
        assert r["n_failed"] == 0 and r["rtol"] == mod.PLANS["quick"]["oracle_rtol"] == 1e-6
        # The error budget n_accepted sqrt(D+1) (atol + rtol |delta logp|) / (D ln 2) is of order
        # 1e-4 bits/dim at rtol 1e-6 for a few tens of steps; the difference must be inside it and
        # inside 1e-3 bits/dim whatever the step count.
        assert r["tol_bound"] < 1e-3, (name, r["tol_bound"])
        assert r["difference"] < r["tol_bound"], (name, r["difference"], r["tol_bound"])
        assert abs(r["mean"] - r["analytic"]) <= r["difference"] + 1e-12
        # The prior-mismatch correction matters at this accuracy: without it the pipeline would be off
        # by more than its error.
        assert r["prior_mismatch"] > r["difference"]
        # The continuous bound of the exact score: at least the analytic -log p_eps, and equal to it plus
        # its own expected prior mismatch (the gap of Theorem 3 for a true score), within 3 SE.
        assert 0 < r["bound_stderr"] < 0.1
        assert r["bound"] > r["analytic"] - 3 * r["bound_stderr"], (name, r["bound"], r["analytic"])
        assert abs(r["bound"] - r["analytic"] - r["bound_mismatch"]) < 3 * r["bound_stderr"]


def test_outputs_replot_and_no_temporary_files(quick_run, tmp_path):
    mod, out, paths, rows = quick_run
    md = paths["md"].read_text()
    assert md.startswith("NLL on the digits test set — machine: cpu")
    assert "command: `python studies/nll_table.py --quick" in md
    assert "| model | estimator | N | repeats | bits/dim | median | outliers | NFE | wall [s] |" in md
    assert "| SDE | computed | analytic | max abs difference | error budget |" in md
    assert md.count("score model |") == 9
    assert ("| model | ODE (rademacher x4) | continuous bound | bound − ODE | DDPM bound L_VB | DDPM − ODE |"
            in md)
    assert "| continuous bound | bound − analytic | expected prior mismatch of the bound |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = mod.main(["--replot", str(paths["csv"]), "--out", str(tmp_path), "--tag", "x"])
    assert again["md"].read_text() == md
    assert again["csv"].read_text() == paths["csv"].read_text()
    assert again["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in list(out.glob(".*")) + list(tmp_path.glob(".*")) if p.name.endswith(".tmp")]


def test_a_checkpoint_evaluates_to_the_same_numbers_as_the_run_that_trained_it(quick_run, tmp_path):
    mod, out, paths, rows = quick_run
    again = mod.main(["--quick", "--checkpoints", f"ve={out / 'runs' / 've'}", "--parts", "models",
                      "--out", str(tmp_path), "--no-progress"])
    new = mod.read_rows(again["csv"])
    assert {r["model"] for r in new} == {"ve"} and {r["kind"] for r in new} == {"model", "bound"}
    old = {r["estimator"]: r for r in rows if r["kind"] in ("model", "bound") and r["model"] == "ve"}
    assert set(old) == {r["estimator"] for r in new}
    for r in new:
        o = old[r["estimator"]]
        for k in ("mean", "stderr", "median", "nfe_mean", "train_steps", "train_loss"):
            assert r[k] == o[k], (r["estimator"], k)


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    for argv, msg in ((["--checkpoints", "vq=x"], "model=PATH pairs"),
                      (["--checkpoints", f"vp={tmp_path}"], "no checkpoint file there"),
                      (["--models", "vp,ddpm"], "--models takes"), (["--parts", "oracles"], "--parts takes"),
                      (["--n-exact", "0"], "--n-exact must be")):
        with pytest.raises(SystemExit):
            mod.parse(argv)
        assert msg in capsys.readouterr().err
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    assert mod.parse(["--checkpoints", f"ve={ckpt}"]).models == ["ve"]
