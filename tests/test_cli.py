"""The ``scoresde`` command: help, usage errors (exit status 2 with a message, no traceback), the
quick demo end to end, and a train -> sample -> nll round trip on a toy data set."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import run_cli
from scoresde.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

COMMANDS = ["train", "sample", "nll", "demo"]


_run = run_cli


@pytest.mark.parametrize("cmd", [[]] + [[c] for c in COMMANDS])
def test_help_of_every_command(cmd, capsys):
    code, out, err = _run(cmd + ["--help"], capsys)
    assert code == 0 and "usage: scoresde" in out
    if cmd:
        assert f"scoresde {cmd[0]}" in out


def test_console_script_is_installed():
    exe = shutil.which("scoresde")
    assert exe is not None, "run `pip install -e .` so that the scoresde console script exists"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


@pytest.mark.parametrize("argv, message", [
    ([], "choose a command"),
    (["train", "--out", "{tmp}/r", "--steps", "-3"], "--steps: must be a positive integer"),
    (["train", "--out", "{tmp}/r", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--steps", "5"], "the following arguments are required: --out"),
    (["train", "--out", "{tmp}/r", "--dataset", "mnist"], "--dataset mnist needs --data-root"),
    (["train", "--out", "{tmp}/r", "--dataset", "two_moons", "--data-root", "{tmp}"], "drop --data-root"),
    (["train", "--out", "{tmp}/r", "--ema-decay", "1.5"], "ema_decay must be"),
    (["train", "--out", "{tmp}/r", "--lr", "abc"], "--lr: expected a positive number"),
    (["train", "--out", "{tmp}/r", "--config", "{tmp}/missing.json"], "does not exist"),
    (["train", "--out", "{tmp}/r", "--dataset", "two_moons", "--resume"], "does not exist"),
    (["sample", "--checkpoint", "{tmp}/missing.pt"], "no checkpoint at"),
    (["sample", "--checkpoint", "{tmp}/missing.pt", "--n", "0"], "--n: must be a positive integer"),
    (["sample", "--checkpoint", "{tmp}/missing.pt", "--sampler", "heun"], "invalid choice: 'heun'"),
    (["sample", "--checkpoint", "{tmp}/missing.pt", "--sampler", "pc", "--rtol", "1e-3"],
     "--rtol do(es) not apply to --sampler pc"),
    (["nll", "--checkpoint", "{tmp}/missing.pt", "--trace", "exact", "--n-probes", "2"], "--trace exact takes none"),
    (["nll", "--checkpoint", "{tmp}/missing.pt"], "no checkpoint at"),
    (["demo", "--steps", "0"], "--steps: must be a positive integer"),
])
def test_bad_options_exit_2_with_a_message(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny model trained through the command line on a 2-D mixture."""
    out = tmp_path_factory.mktemp("cli") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--dataset", "mixture_2d", "--out", str(out), "--steps", "40", "--batch-size", "64",
                     "--hidden", "32", "--depth", "2", "--emb-dim", "16", "--lr", "3e-3", "--warmup", "5",
                     "--checkpoint-every", "20", "--log-every", "10", "--device", "cpu", "--no-progress"])
    finally:
        torch.set_num_threads(n)
    assert code == 0
    return out


def test_train_writes_a_run_and_resumes(toy_run, capsys):
    for f in ("checkpoint_last.pt", "config.json", "metrics.jsonl"):
        assert (toy_run / f).is_file()
    cfg = json.loads((toy_run / "config.json").read_text())
    assert cfg["steps"] == 40 and cfg["hidden"] == 32 and cfg["dataset"] == "mixture_2d"
    steps = [json.loads(line)["step"] for line in (toy_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]
    # the same command with the same settings and more steps resumes; a changed setting is refused
    base = ["train", "--dataset", "mixture_2d", "--out", str(toy_run), "--batch-size", "64", "--hidden", "32",
            "--depth", "2", "--emb-dim", "16", "--lr", "3e-3", "--warmup", "5", "--checkpoint-every", "20",
            "--log-every", "10", "--device", "cpu", "--no-progress"]
    code, out, err = _run(base + ["--steps", "50"], capsys)
    assert code == 0 and "resumed from step 40" in out and "trained to step 50" in out
    code, out, err = _run(base + ["--steps", "60", "--lr", "1e-3"], capsys)
    assert code == 2 and "lr: 0.003 -> 0.001" in err


@pytest.mark.parametrize("sampler, extra", [("euler_maruyama", ["--steps", "20"]),
                                            ("pc", ["--steps", "10", "--snr", "0.1"]),
                                            ("ode", ["--rtol", "1e-3", "--atol", "1e-3"]),
                                            ("unipc", ["--nfe", "10", "--order", "3"]),
                                            ("heun_edm", ["--nfe", "12", "--S-churn", "5", "--grid", "karras"])])
def test_sample_writes_tensor_and_scatter(toy_run, tmp_path, capsys, sampler, extra):
    code, out, err = _run(["sample", "--checkpoint", str(toy_run / "checkpoint_last.pt"), "--sampler", sampler,
                           "--n", "32", "--out", str(tmp_path), "--no-progress"] + extra, capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / f"samples_{sampler}.pt", weights_only=False)
    assert saved["x"].shape == (32, 2) and torch.isfinite(saved["x"]).all()
    assert saved["use_ema"] is True and saved["sampler"] == sampler
    png = (tmp_path / f"samples_{sampler}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if sampler == "euler_maruyama":  # 20 steps + the denoising step
        assert (saved["nfe"] == 21).all()
    if sampler in ("unipc", "heun_edm"):  # the budget is used exactly
        assert (saved["nfe"] == int(extra[1])).all()


@pytest.mark.parametrize("sampler, extra, nfe, info", [
    ("pc", ["--steps", "4", "--order", "predictor_first", "--step-size-norm", "batch"], 4 * 2 + 1,
     dict(order="predictor_first", step_size_norm="batch")),
    ("heun_edm", ["--steps", "4", "--no-final-euler"], 2 * 4 + 1, {}),  # 2 K, no saved last evaluation, + denoise
    ("heun_edm", ["--steps", "4"], 2 * 4 - 1 + 1, {}),
    ("dpmpp_2m", ["--steps", "4", "--lower-order-final"], 4 + 1, {}),
])
def test_sample_options_beyond_the_common_ones(toy_run, tmp_path, capsys, sampler, extra, nfe, info):
    """Every option of a sampler's option_names is a flag (generated from the registry)."""
    code, out, err = _run(["sample", "--checkpoint", str(toy_run), "--sampler", sampler, "--n", "4",
                           "--out", str(tmp_path), "--no-progress"] + extra, capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / f"samples_{sampler}.pt", weights_only=False)
    assert (saved["nfe"] == nfe).all()
    assert {k: saved["info"][k] for k in info} == info


def test_sample_chunks_have_their_own_streams(toy_run, tmp_path, capsys):
    """The documented rule: sample indices are cut into chunks of --chunk-size, chunk c is one sampler
    call with Generator().manual_seed(derive_seed(seed, "sample", c)); the file holds them in order."""
    from scoresde._utils import derive_seed
    from scoresde.sampling import sample
    from scoresde.training import load_model

    code, out, err = _run(["sample", "--checkpoint", str(toy_run), "--sampler", "euler_maruyama", "--steps", "6",
                           "--n", "7", "--chunk-size", "3", "--seed", "5", "--out", str(tmp_path), "--no-progress"],
                          capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / "samples_euler_maruyama.pt", weights_only=False)
    assert saved["chunk_size"] == 3 and saved["world_size"] == 1 and saved["x"].shape == (7, 2)
    model, _, _ = load_model(toy_run / "checkpoint_last.pt", use_ema=True)
    for c, (a, b) in enumerate([(0, 3), (3, 6), (6, 7)]):
        gen = torch.Generator().manual_seed(derive_seed(5, "sample", c))
        ref = sample(model.score_fn, model.sde, (b - a, 2), sampler="euler_maruyama", steps=6, generator=gen,
                     progress=False)
        assert torch.equal(saved["x"][a:b], ref.x), c
    assert not torch.equal(saved["x"][0], saved["x"][3])  # chunks 0 and 1 do not share a stream


@pytest.mark.parametrize("flag, expect", [([], 1), (["--threads", "2"], 2), (["--threads", "0"], 3)])
def test_threads_take_effect_in_the_run_and_are_restored(toy_run, tmp_path, capsys, monkeypatch, flag, expect):
    """``--threads N`` is torch's thread count inside sample, nll and train (recorded in their output,
    or seen by train itself); 0 keeps the caller's count; the caller's count is restored after."""
    import types

    import scoresde.training

    seen = []

    def fake_train(cfg, **kw):
        seen.append(torch.get_num_threads())
        return types.SimpleNamespace(rank=1)  # a non-zero rank prints nothing

    monkeypatch.setattr(scoresde.training, "train", fake_train)
    torch.set_num_threads(3)  # the caller's count (the single_thread fixture restores its own afterwards)
    runs = [["sample", "--checkpoint", str(toy_run), "--sampler", "ddim", "--steps", "2", "--n", "2",
             "--out", str(tmp_path)],
            ["nll", "--checkpoint", str(toy_run), "--limit", "2", "--trace", "exact", "--rtol", "1e-2", "--atol",
             "1e-2", "--out", str(tmp_path / "nll.json")],
            ["train", "--dataset", "two_moons", "--out", str(tmp_path / "r")]]
    for argv in runs:
        code, out, err = _run(argv + ["--no-progress"] + flag, capsys)
        assert code == 0, err
        assert torch.get_num_threads() == 3
    assert torch.load(tmp_path / "samples_ddim.pt", weights_only=False)["threads"] == expect
    assert json.loads((tmp_path / "nll.json").read_text())["threads"] == expect
    assert seen == [expect]


def test_sample_option_of_the_wrong_kind_is_a_usage_error(toy_run, capsys):
    code, out, err = _run(["sample", "--checkpoint", str(toy_run), "--sampler", "unipc", "--order",
                           "predictor_first"], capsys)
    assert code == 2 and "order must be 1, 2 or 3" in err and "Traceback" not in err
    code, out, err = _run(["sample", "--checkpoint", str(toy_run), "--sampler", "pc", "--order", "x"], capsys)
    assert code == 2 and "--order: expected a positive integer" in err and "predictor_first" in err


def test_sample_from_a_run_folder_with_raw_weights(toy_run, tmp_path, capsys):
    code, out, err = _run(["sample", "--checkpoint", str(toy_run), "--sampler", "ddim", "--steps", "5", "--n", "4",
                           "--out", str(tmp_path), "--no-ema", "--no-progress"], capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / "samples_ddim.pt", weights_only=False)
    assert saved["use_ema"] is False and (saved["nfe"] == 5 + 1).all()  # 5 steps + the denoising step


def test_sample_refuses_the_discrete_ddpm_chain_for_a_ve_model(tmp_path, capsys):
    from scoresde.data import load_toy
    from scoresde.training import TrainConfig, train

    cfg = TrainConfig(dataset="two_moons", sde="ve", steps=2, batch_size=8, hidden=8, depth=1, emb_dim=4,
                      out_dir=str(tmp_path / "ve"), device="cpu")
    train(cfg, dataset=load_toy("two_moons", n_train=64, n_test=8), progress=False)
    code, out, err = _run(["sample", "--checkpoint", str(tmp_path / "ve"), "--sampler", "ddpm", "--n", "4",
                           "--schedule", "discrete"], capsys)
    assert code == 2 and "needs a VP model" in err
    # the continuous schedule runs DDPM on the VE model's own (m, s)
    code, out, err = _run(["sample", "--checkpoint", str(tmp_path / "ve"), "--sampler", "ddpm", "--n", "4",
                           "--steps", "5", "--out", str(tmp_path / "s"), "--no-progress"], capsys)
    assert code == 0, err
    # a flag the sampler does not take, and steps with nfe, are usage errors
    code, out, err = _run(["sample", "--checkpoint", str(tmp_path / "ve"), "--sampler", "unipc", "--eta", "1"], capsys)
    assert code == 2 and "--eta do(es) not apply to --sampler unipc" in err
    code, out, err = _run(["sample", "--checkpoint", str(tmp_path / "ve"), "--sampler", "unipc", "--steps", "3",
                           "--nfe", "4"], capsys)
    assert code == 2 and "not both" in err


def test_nll_round_trip_continuous(toy_run, tmp_path, capsys):
    out = tmp_path / "nll.json"
    code, stdout, err = _run(["nll", "--checkpoint", str(toy_run / "checkpoint_last.pt"), "--limit", "12",
                              "--trace", "exact", "--rtol", "1e-4", "--atol", "1e-4", "--out", str(out),
                              "--no-progress"], capsys)
    assert code == 0, err
    rep = json.loads(out.read_text())
    assert rep["n_evaluated"] == 12 and rep["n_in_split"] == 2000 and "first 12 of 2000" in rep["subset"]
    assert math.isfinite(rep["mean"]) and math.isfinite(rep["stderr"]) and rep["stderr"] > 0
    assert rep["convention"]["trace"] == "exact" and rep["convention"]["dequantize"] is None
    assert rep["convention"]["offset_bits"] == 0.0 and "continuous data" in rep["note"]
    assert "bits/dim" in stdout
    # the same number computed here from the EMA weights: -log p / (D ln 2) with D = 2 and no offset
    from scoresde.data import load_dataset
    from scoresde.likelihood import log_likelihood
    from scoresde.training import load_model

    model, cfg, _ = load_model(toy_run / "checkpoint_last.pt", use_ema=True)
    x = load_dataset(cfg.dataset).test[:12]
    logp = log_likelihood(model.score_fn, model.sde, x, trace="exact", rtol=1e-4, atol=1e-4).logp
    assert rep["mean"] == pytest.approx(float((-logp / (2 * math.log(2))).mean()), abs=1e-6)


def test_demo_quick_end_to_end(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the demo trains on scikit-learn's digits (pip install scikit-learn)")
    out = tmp_path / "demo"
    code, stdout, err = _run(["demo", "--quick", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    report = (out / "report.md").read_text()
    for needle in ("Euler-Maruyama", "predictor-corrector", "probability-flow ODE", "bits/dim", "NFE",
                   "first 32 of the 359 test images", "uniform dequantization", "```json"):
        assert needle in report, needle
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert math.isfinite(res["bpd"]["mean"]) and res["bpd"]["n_samples"] == 32
    assert [s["sampler"] for s in res["samplers"]] == ["euler_maruyama", "pc", "ode"]
    assert all(s["failed"] == 0 and s["mean_nfe"] > 0 for s in res["samplers"])
    # sample quality per sampler, with its null; the baselines beside the model's bits/dim
    for needle in ("Fréchet distance", "null: test vs test", "full-covariance Gaussian", "diverged"):
        assert needle in report, needle
    for s in res["samplers"]:
        q = s["quality"]
        assert q["fd"] >= 0 and q["fd_null"] >= 0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1
        assert q["n_samples"] == 16 and q["features"] == "digits"
    # the Gaussian fitted to the dequantized training split: 2.975 +- 0.022 bits/dim on all 359 test
    # images (docs/results.md); on 32 images and one dequantization within a few of their standard errors
    gauss = res["baselines"][0]
    assert gauss["model"] == "full-covariance Gaussian" and abs(gauss["mean"] - 2.975) < 5 * gauss["stderr"] + 0.05
    assert res["bpd_diverged"] >= 0 and res["total_seconds"] > 0

    # scoresde sample --quality on the demo's digits model
    code, stdout, err = _run(["sample", "--checkpoint", str(out / "run"), "--sampler", "ddim", "--n", "24",
                              "--out", str(tmp_path / "s"), "--quality", "--no-progress"], capsys)
    assert code == 0, err
    q = json.loads((tmp_path / "s" / "quality_ddim.json").read_text())
    assert q["n_samples"] == 24 and q["fd"] > 0 and "FD" in stdout


def test_train_divergence_exits_1(tmp_path, capsys):
    code, out, err = _run(["train", "--dataset", "two_moons", "--out", str(tmp_path / "r"), "--steps", "5",
                           "--lr", "1e30", "--warmup", "0", "--grad-clip", "0", "--hidden", "8", "--depth", "1",
                           "--emb-dim", "4", "--batch-size", "16", "--log-every", "1", "--no-progress"], capsys)
    assert code == 1 and "non-finite" in err and "at step 2" in err and "Traceback" not in err


def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scoresde.cli", "sample", "--checkpoint", str(tmp_path / "x.pt")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no checkpoint at" in r.stderr and "Traceback" not in r.stderr


def test_sample_quality_needs_a_digits_model(toy_run, tmp_path, capsys):
    code, _, err = _run(["sample", "--checkpoint", str(toy_run), "--sampler", "ddim", "--n", "8",
                         "--out", str(tmp_path), "--quality", "--no-progress"], capsys)
    assert code == 2 and "digits" in err and "Traceback" not in err
