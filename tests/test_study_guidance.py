"""The guidance study runs end to end in its quick mode; its numbers are checked against what they
must be (the guidance conventions, the classifier's ceiling, the accuracy's binomial SE), not
against an earlier run."""
import csv
import math

import pytest

import guidance as mod


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("guidance")
    paths = mod.main(["--quick", "--out", str(out), "--workdir", str(out / "runs")])
    return paths, list(csv.DictReader(open(paths["csv"])))


def test_outputs_and_fields(quick):
    paths, rows = quick
    assert paths["png"].stat().st_size > 0 and "| DDIM |" in paths["md"].read_text()
    assert {r["name"] for r in rows} == {"ddim", "dpmpp_2m"}
    for r in rows:
        assert set(mod.FIELDS) == set(r)
        assert float(r["guidance_scale"]) == pytest.approx(1 + float(r["guidance_weight"]))
        assert int(r["failed"]) == 0 and float(r["fd"]) >= 0


def test_accuracy_is_a_binomial_proportion_below_the_real_images(quick):
    paths, rows = quick
    assert 0.95 < paths["ceiling"] <= 1.0  # the digits classifier on the real test images
    for r in (r for r in rows if r["per_class"]):
        a, n = float(r["accuracy"]), int(r["n"])
        assert 0 <= a <= 1 and float(r["accuracy_se"]) == pytest.approx(math.sqrt(a * (1 - a) / n))
        per = [float(v) for v in r["per_class"].split()]
        assert len(per) == 10 and sum(per) / 10 == pytest.approx(a, abs=1e-9)  # 4 samples of each class
    assert any(not r["per_class"] for r in rows)  # the unconditional-label row
