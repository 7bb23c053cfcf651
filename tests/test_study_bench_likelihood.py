"""The likelihood benchmark runs end to end in its quick mode, so it never rots.

Speed targets are not asserted here (speed is measured in studies, not in timed unit tests); what is
checked is that every back end and the memory rows are there, that the numbers are consistent
with their definitions, and that memory does not grow with the number of steps while the meter
does see a deliberate leak of the same order.
"""
import csv

import pytest

import bench_likelihood as mod


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_likelihood")
    paths = mod.main(["--quick", "--out", str(out)])
    return mod, paths, list(csv.DictReader(open(paths["csv"])))


def test_quick_mode_measures_every_backend(quick_run):
    mod, paths, rows = quick_run
    backends = [r for r in rows if r["kind"] == "backend"]
    assert {r["field"] for r in backends} == {"net", "mixture"}
    for field in ("net", "mixture"):
        assert {r["backend"] for r in backends if r["field"] == field} == {
            "dopri5", "torchdiffeq_dopri5", "scipy_rk45", "original_scipy_rk45"}
    for r in backends:
        assert float(r["ok_fraction"]) == 1.0
        assert float(r["wall_s"]) > 0 and float(r["wall_per_sample_ms"]) > 0 and float(r["t_fvjp_ms"]) > 0
        assert float(r["wall_s_min"]) <= float(r["wall_s"]) <= float(r["wall_s_max"])
        # wall per sample is the batched wall time over the batch
        assert float(r["wall_per_sample_ms"]) == pytest.approx(1e3 * float(r["wall_s"]) / int(r["batch"]))
        # overhead = wall / (calls x t_fvjp); with one repeat (quick mode) exactly so. No bound on its
        # value here: speed is measured in the study, and on a shared machine any bound is flaky.
        assert int(r["repeats"]) == 1
        ratio = float(r["wall_s"]) / (int(r["calls"]) * float(r["t_fvjp_ms"]) * 1e-3)
        assert float(r["overhead"]) == pytest.approx(ratio, rel=1e-9)
        # per-sample NFE never exceeds the batched calls; the shared-step back ends count every call
        nfe_mean, nfe_max, calls = float(r["nfe_mean"]), float(r["nfe_max"]), int(r["calls"])
        assert 0 < nfe_mean <= nfe_max <= calls
        if r["backend"] != "dopri5":
            assert nfe_mean == nfe_max == calls
        assert float(r["max_abs_dbpd_vs_ref"]) >= 0  # NaN if a reference sample failed
    base = {r["field"]: float(r["wall_s"]) for r in backends if r["backend"] == "original_scipy_rk45"}
    for r in backends:
        assert float(r["speedup_vs_original"]) == pytest.approx(base[r["field"]] / float(r["wall_s"]))


def test_original_loop_solves_the_same_ode_as_the_scipy_backend(quick_run):
    # The study's re-written original loop and log_likelihood(backend="scipy_rk45") run the same scipy
    # RK45 on the same ODE (same probes): same steps, same numbers. They differ only in cost per
    # evaluation (the original runs the network twice), which is what the benchmark measures.
    mod, paths, rows = quick_run
    for field in ("net", "mixture"):
        by = {r["backend"]: r for r in rows if r["field"] == field and r["kind"] == "backend"}
        a, b = by["scipy_rk45"], by["original_scipy_rk45"]
        assert a["calls"] == b["calls"]
        assert float(a["bpd_mean"]) == pytest.approx(float(b["bpd_mean"]), abs=1e-6)


def test_memory_rows_do_not_grow_with_steps_and_the_meter_sees_a_leak(quick_run):
    mod, paths, rows = quick_run
    for field in ("net", "mixture"):
        mem = sorted((r for r in rows if r["field"] == field and r["kind"] == "memory"), key=lambda r: int(r["steps"]))
        assert [int(r["steps"]) for r in mem] == [10, 50, 200]
        assert [int(r["calls"]) for r in mem] == [10, 50, 200]  # Euler: one call per step
        assert all(r["peak_mem_mb"] != "" for r in mem)
        (ctrl,) = [r for r in rows if r["field"] == field and r["kind"] == "memory_control"]
        expected = mod._control_expected_mb(ctrl)
        assert expected > 2 * mod.MEM_SLACK_MB  # the control is large enough to be seen
        grow = float(mem[-1]["peak_mem_mb"]) - float(mem[0]["peak_mem_mb"])
        seen = float(ctrl["peak_mem_mb"]) - float(mem[-1]["peak_mem_mb"])
        assert grow < mod.MEM_GROWTH_TOL * max(float(mem[0]["peak_mem_mb"]), 0.0) + mod.MEM_SLACK_MB
        assert seen > 0.5 * expected


def test_outputs_and_replot(quick_run, tmp_path):
    mod, paths, rows = quick_run
    md = paths["md"].read_text()
    assert "| back end | B | wall / sample [ms] |" in md and "Targets (cpu):" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table and figure can be rebuilt from the CSV alone (e.g. for a run made on a GPU machine).
    again = mod.main(["--replot", str(paths["csv"]), "--out", str(tmp_path), "--tag", "x"])
    assert again["md"].read_text() == md
    assert not list(tmp_path.glob("*.csv.*")) and not list(tmp_path.glob("*.md.*"))  # no temp files left


def test_equal_error_rows_follow_their_definitions(quick_run):
    """The equal-error part: every method on the same images, noise and probes; its statistics are
    the ones the table says (total error, ratios); the methods of equal accuracy agree with the
    reference within their error; speed is not asserted."""
    import math

    mod, paths, _ = quick_run
    rows = list(csv.DictReader(open(paths["ee_csv"])))
    methods = [r["method"] for r in rows]
    assert methods[0].startswith("original") and any("error budget" in m for m in methods)
    assert any(m.startswith("torchdiffeq") for m in methods) and any("1e-5" in m for m in methods)
    base = rows[0]
    for r in rows:
        se, bias = float(r["stderr"]), float(r["bias"])
        assert float(r["total_error"]) == pytest.approx(math.sqrt(se ** 2 + bias ** 2), rel=1e-9)
        assert float(r["total_vs_original"]) == pytest.approx(float(r["total_error"]) / float(base["total_error"]))
        assert float(r["speedup_vs_original"]) == pytest.approx(float(base["wall_s"]) / float(r["wall_s"]))
        assert int(r["equal_error"]) == (float(r["total_vs_original"]) <= mod.EQUAL_ERROR)
        # against the 1e-6 reference of the same ODE, the solvers' bias is a few of its standard
        # errors at most (plus the tolerance's own error); the MC error is far larger
        assert abs(bias) <= 5 * float(r["bias_stderr"]) + 10 * float(r["tol"])
        assert se > 0 and int(r["n_images"]) == 24
    assert sum("error budget" in m for m in methods) == len(mod.EE_BUDGETS)
    budget = next(r for r in rows if "default error budget" in r["method"])
    assert float(budget["nfe_per_image"]) > float(budget["pilot_nfe_per_image"]) > 0
    assert int(budget["equal_error"]) == 1  # the budget keeps the total error where the original's is
    md = paths["ee_md"].read_text()
    assert "## Equal total error" in md and "Targets:" in md
    assert paths["ee_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_clear_errors(capsys):
    for argv, msg in ((["--fields", "unet"], "--fields takes"), (["--mem-steps", "a,b"], "--mem-steps must"),
                      (["--batch", "0"], "--batch"), (["--rtol", "-1"], "--rtol must"),
                      (["--ee-images", "1"], "--ee-images"), (["--ee-ref-tol", "1e-3"], "--ee-ref-tol")):
        with pytest.raises(SystemExit):
            mod.parse(argv)
        assert msg in capsys.readouterr().err
