"""The solver-comparison study runs end to end in its quick mode, so it never rots."""
import csv
import math
import importlib.util
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "studies" / "compare_solvers.py"


def load():
    spec = importlib.util.spec_from_file_location("compare_solvers", STUDY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_mode_writes_csv_table_and_figure(tmp_path):
    paths = load().main(["--quick", "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(paths["csv"])))
    families = {r["family"] for r in rows}
    assert {"euler_maruyama", "ddpm", "ddim", "ode euler", "ode heun", "ode dopri5 (per-sample)",
            "ode torchdiffeq dopri5", "pc (RD + Langevin)", "pc (RD, no corrector)"} <= families
    mod = load()
    assert {r["oracle"] for r in rows} == {"mixture 2-D", "mixture 16-D", mod.DIGITS}
    for r in rows:
        assert float(r["ok_fraction"]) == 1.0
        assert float(r["nfe"]) > 0 and float(r["wall_s"]) > 0
        # the log-density error is defined for the oracles (exact density) and only there
        assert math.isnan(float(r["logp_error"])) == (r["oracle"] == mod.DIGITS)
    # digits: compared with the held-out test images (n = 64 of 359 in quick mode), reference = train vs test
    dig = [r for r in rows if r["oracle"] == mod.DIGITS]
    assert {r["family"] for r in dig} == families and all(float(r["energy_distance"]) > 0 for r in dig)
    # ten Euler-Maruyama steps leave the 16-D samples too spread: they sit in less likely regions
    e = {(r["oracle"], r["family"], r["config"]): float(r["logp_error"]) for r in rows}
    assert e[("mixture 16-D", "euler_maruyama", "steps=10")] < e[("mixture 16-D", "euler_maruyama", "steps=40")] < 0.5
    # Ten Euler-Maruyama steps are visibly off on the 16-D oracle (above the truth-vs-truth 99%
    # quantile) and forty are much closer: the study measures the discretisation error.
    d = {(r["oracle"], r["family"], r["config"]): float(r["energy_distance"]) for r in rows}
    null = {r["oracle"]: float(r["null_q99"]) for r in rows}
    assert d[("mixture 16-D", "euler_maruyama", "steps=10")] > null["mixture 16-D"]
    assert d[("mixture 16-D", "euler_maruyama", "steps=40")] < d[("mixture 16-D", "euler_maruyama", "steps=10")] / 2
    md = paths["md"].read_text()
    assert "| sampler | config | NFE |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table and figure can be rebuilt from the CSV alone (e.g. for a run made on a GPU machine).
    again = load().main(["--replot", str(paths["csv"]), "--out", str(tmp_path / "replot"), "--tag", "x"])
    assert again["md"].read_text().splitlines()[2:] == md.splitlines()[2:]


def test_bad_arguments_are_clear_errors(capsys):
    mod = load()
    with pytest.raises(SystemExit):
        mod.parse(["--n", "1"])
    assert "--n must be" in capsys.readouterr().err
