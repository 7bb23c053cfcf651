"""The command line trains, samples and evaluates a conditional digits model: ``--class``,
``--guidance-weight`` / ``--guidance-scale`` (exclusive), ``nll --conditional``, and their errors."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from scoresde.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--dataset", "digits", "--steps", "4", "--batch-size", "32", "--hidden", "16", "--depth", "1",
        "--emb-dim", "8", "--checkpoint-every", "4", "--log-every", "2", "--device", "cpu", "--no-progress"]


_run = run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    for name, extra in (("cond", ["--num-classes", "10"]), ("plain", [])):
        assert main(["train", *TINY, "--out", str(root / name), *extra]) == 0
    return root


def _sample(runs, tmp_path, capsys, *extra):
    return _run(["sample", "--checkpoint", str(runs / "cond"), "--sampler", "ddim", "--nfe", "4", "--n", "12",
                 "--out", str(tmp_path), "--no-progress", *extra], capsys)


def test_sample_one_class_with_guidance(runs, tmp_path, capsys):
    code, out, err = _sample(runs, tmp_path, capsys, "--class", "3", "--guidance-weight", "2")
    assert code == 0, err
    assert "class 3, guidance weight 2 (scale 3)" in out
    saved = torch.load(tmp_path / "samples_ddim.pt", weights_only=True)
    assert saved["y"].tolist() == [3] * 12
    g = saved["guidance"]
    assert g["convention"] == "weight" and g["guidance_weight"] == 2.0 and g["guidance_scale"] == 3.0


def test_sample_every_class_by_index_and_the_scale_convention(runs, tmp_path, capsys):
    code, out, err = _sample(runs, tmp_path, capsys, "--class", "all", "--guidance-scale", "1", "--chunk-size", "5")
    assert code == 0, err
    saved = torch.load(tmp_path / "samples_ddim.pt", weights_only=True)
    assert saved["y"].tolist() == [i % 10 for i in range(12)]  # labels follow the sample index, not the chunk
    assert saved["guidance"]["convention"] == "scale" and saved["guidance"]["guidance_weight"] == 0.0
    code, _, err = _sample(runs, tmp_path, capsys, "--class", "1,7")
    assert code == 0, err
    saved = torch.load(tmp_path / "samples_ddim.pt", weights_only=True)
    assert saved["y"].tolist() == [1, 7] * 6 and saved["guidance"]["convention"] == "none"


def test_unconditional_sampling_of_a_conditional_model_records_no_guidance(runs, tmp_path, capsys):
    code, _, err = _sample(runs, tmp_path, capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / "samples_ddim.pt", weights_only=True)
    assert saved["y"] is None and saved["guidance"] is None


def test_quality_reports_the_class_accuracy(runs, tmp_path, capsys):
    code, out, err = _run(["sample", "--checkpoint", str(runs / "cond"), "--sampler", "ddim", "--nfe", "4",
                           "--n", "24", "--out", str(tmp_path), "--no-progress", "--class", "all", "--quality"],
                          capsys)
    assert code == 0, err
    q = json.loads((tmp_path / "quality_ddim.json").read_text())
    acc = q["class_accuracy"]
    assert acc["n"] == 24 and 0 <= acc["accuracy"] <= 1 and "class accuracy" in out


@pytest.mark.parametrize("extra,message", [
    (["--guidance-weight", "1", "--guidance-scale", "2", "--class", "1"], "not allowed with"),
    (["--guidance-weight", "1"], "give --class too"),
    (["--class", "12"], "knows classes 0..9"),
    (["--class", "x"], "expected a class number"),
    (["--class", "-1"], "class numbers are >= 0"),
    (["--class", "2", "--guidance-weight", "nan"], "finite"),
    (["--class", "2", "--guidance-scale", "-1"], "below 0"),
])
def test_bad_conditional_options_exit_2_with_a_message(runs, tmp_path, capsys, extra, message):
    code, _, err = _sample(runs, tmp_path, capsys, *extra)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_an_unconditional_checkpoint_refuses_labels(runs, tmp_path, capsys):
    code, _, err = _run(["sample", "--checkpoint", str(runs / "plain"), "--sampler", "ddim", "--nfe", "4", "--n", "4",
                         "--out", str(tmp_path), "--no-progress", "--class", "3"], capsys)
    assert code == 2 and "unconditional" in err and "--num-classes" in err
    code, _, err = _run(["nll", "--checkpoint", str(runs / "plain"), "--limit", "4", "--conditional", "--no-progress",
                         "--out", str(tmp_path / "n.json")], capsys)
    assert code == 2 and "unconditional" in err


def test_nll_given_the_labels(runs, tmp_path, capsys):
    args = ["nll", "--checkpoint", str(runs / "cond"), "--limit", "6", "--rtol", "1e-2", "--atol", "1e-2",
            "--trace", "exact", "--no-progress"]
    code, out, err = _run(args + ["--conditional", "--out", str(tmp_path / "c.json")], capsys)
    assert code == 0, err
    assert "-log p(x | y) given the labels" in out
    cond = json.loads((tmp_path / "c.json").read_text())
    code, _, err = _run(args + ["--out", str(tmp_path / "u.json")], capsys)
    assert code == 0, err
    plain = json.loads((tmp_path / "u.json").read_text())
    assert cond["conditional"] and cond["convention"]["conditional"] and not plain["conditional"]
    # the same images, another score: the two numbers differ (the labels reached the network)
    assert cond["mean"] != plain["mean"]
