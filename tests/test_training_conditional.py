"""Class-conditional training (TrainConfig.num_classes, label dropout p_uncond; Ho & Salimans 2022,
"Classifier-free diffusion guidance"): the loop feeds each batch its own labels and drops them at
the rate p_uncond; a conditional network trained on two labelled Gaussians learns both the
conditional scores and the mixture's (checked against the closed forms); a digits run round-trips
through its checkpoint; the command line trains one; the errors say what to change."""
from __future__ import annotations

import json
import math

import pytest
import torch

import scoresde.training.loop as loop
from conftest import run_cli
from scoresde.data import Dataset, load_dataset
from scoresde.training import TrainConfig, load_model, train
from _training import _cfg, _labelled

pytestmark = pytest.mark.usefixtures("single_thread")

NULL = -1  # scoresde._utils.NULL_CLASS


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ---------------------------------------------------------------------------------------------
# The loop: labels with their samples, label dropout at the rate p_uncond.
# ---------------------------------------------------------------------------------------------
def test_each_batch_carries_its_own_labels_dropped_at_p_uncond(tmp_path, toy, monkeypatch):
    """Every label the loss sees is the dataset label of its own sample (found by value: the toy
    data are continuous, so every row is distinct) or NULL; over all steps the dropped fraction is
    Binomial(n, p_uncond), within 4 standard errors. An unconditional run passes no labels."""
    ds = _labelled(toy, 3)
    seen = []
    real = loop.dsm_loss

    def spy(model, sde, x0, **kw):
        seen.append((x0.detach().clone(), kw.get("y")))
        return real(model, sde, x0, **kw)

    monkeypatch.setattr(loop, "dsm_loss", spy)
    p = 0.25
    train(_cfg(tmp_path, "cond", steps=40, batch_size=64, num_classes=3, p_uncond=p), dataset=ds, progress=False)
    assert len(seen) == 40
    dropped = total = 0
    for x0, y in seen:
        rows = (x0[:, None, :] == ds.train[None, :, :]).all(dim=2)  # (B, N): which training row each is
        assert bool((rows.sum(dim=1) == 1).all())
        truth = ds.train_labels[rows.float().argmax(dim=1)]
        kept = y != NULL
        assert torch.equal(y[kept], truth[kept])
        dropped += int((~kept).sum())
        total += y.numel()
    assert abs(dropped - p * total) < 4 * math.sqrt(total * p * (1 - p)), (dropped, total)

    seen.clear()
    train(_cfg(tmp_path, "plain", steps=3), dataset=ds, progress=False)
    assert [y for _, y in seen] == [None] * 3


def test_conditional_training_errors(tmp_path, toy, digits):
    with pytest.raises(ValueError, match="no integer labels.*num_classes=0"):
        train(_cfg(tmp_path, "a", num_classes=2), dataset=toy, progress=False)
    with pytest.raises(ValueError, match=r"lie in \[0, 9\].*num_classes=3.*set num_classes=10"):
        train(_cfg(tmp_path, "b", dataset="digits", num_classes=3), dataset=digits, progress=False)
    assert not (tmp_path / "a" / "checkpoint_last.pt").exists()


# ---------------------------------------------------------------------------------------------
# Learning: two labelled Gaussians.
# ---------------------------------------------------------------------------------------------
MU = torch.tensor([[-1.0, 0.5], [1.0, -0.5]])
STD = 0.25


def _two_gaussians(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return MU[y] + STD * torch.randn(n, 2, generator=g), y


def _exact_scores(x, m, s):
    """Closed forms at x_t = x: the score of class k, N(m mu_k, m^2 S + s^2), and of the equal-weight
    mixture, sum_k r_k score_k with r_k proportional to the class density (equal weights)."""
    var = m * m * STD ** 2 + s * s
    comp = [-(x - m * MU[k]) / var for k in range(2)]
    logp = torch.stack([-((x - m * MU[k]) ** 2).sum(dim=1) / (2 * var) for k in range(2)], dim=1)
    r = torch.softmax(logp, dim=1)
    return comp, r[:, :1] * comp[0] + r[:, 1:] * comp[1]


def test_a_conditional_network_learns_both_the_class_and_the_mixture_scores(tmp_path):
    """Trained with label dropout, one network gives (a) for label k the score of class k: its
    denoised x_0 at the midpoint x_t = 0 lies on the side of mu_k, as the exact E[x_0 | x_t, k]
    = mu_k s^2 / (m^2 S + s^2) does, and its score is close to the class's closed form; (b) for
    the null label the mixture's score (near zero at the midpoint, by symmetry), which is far from
    either class's: the null label is not a third class but the marginal."""
    x, y = _two_gaussians(2048, 0)
    xt, yt = _two_gaussians(64, 1)
    ds = Dataset("two_gaussians", x, xt, None, None, (2,), train_labels=y, test_labels=yt)
    cfg = TrainConfig(dataset="two_gaussians", num_classes=2, p_uncond=0.2, steps=400, batch_size=128, hidden=64,
                      depth=2, emb_dim=16, lr=3e-3, warmup=20, ema_decay=0.98, checkpoint_every=400,
                      log_every=100, out_dir=str(tmp_path / "run"), device="cpu")
    model = train(cfg, dataset=ds, progress=False).ema_model
    sde = model.sde
    t = torch.full((1,), 0.3)
    m, s = (v.item() for v in sde.coeffs(t))
    origin = torch.zeros(1, 2)
    with torch.no_grad():
        for k in range(2):
            x0 = model.denoise(origin, t, torch.tensor([k]))[0]
            exact = MU[k] * s * s / (m * m * STD ** 2 + s * s)
            assert torch.equal(torch.sign(x0), torch.sign(MU[k])), (k, x0)
            torch.testing.assert_close(x0, exact, rtol=0, atol=0.15)
        null = model.denoise(origin, t, torch.tensor([NULL]))[0]
        assert float(null.norm()) < 0.3 * float(model.denoise(origin, t, torch.tensor([0]))[0].norm()), null

        # on points of the time-t marginal: relative errors against the closed forms
        g = torch.Generator().manual_seed(2)
        x0, lab = _two_gaussians(4000, 3)
        xs = m * x0 + s * torch.randn(4000, 2, generator=g)
        tt = t.expand(4000)
        comp, mix = _exact_scores(xs, m, s)
        rel = lambda a, b: float((a - b).pow(2).sum() / b.pow(2).sum())  # noqa: E731
        for k in range(2):
            got = model.score(xs, tt, torch.full((4000,), k))
            assert rel(got, comp[k]) < 0.02, (k, rel(got, comp[k]))  # untrained: 0.25
        got_null = model.score(xs, tt, torch.full((4000,), NULL))
        assert torch.equal(got_null, model.score(xs, tt))
        assert rel(got_null, mix) < 0.02, rel(got_null, mix)  # untrained: 0.12
        assert min(rel(got_null, comp[0]), rel(got_null, comp[1])) > 5 * rel(got_null, mix)


# ---------------------------------------------------------------------------------------------
# Checkpoints and the command line.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_a_conditional_digits_run_round_trips_through_load_model(tmp_path, digits, net):
    cfg = TrainConfig(dataset="digits", net=net, num_classes=10, steps=4, batch_size=32, hidden=32, depth=2,
                      emb_dim=8, channels=8, lr=3e-3, warmup=2, checkpoint_every=4, log_every=2,
                      out_dir=str(tmp_path / "run"), device="cpu")
    res = train(cfg, dataset=digits, progress=False)
    for use_ema, want in ((True, res.ema_model), (False, res.model)):
        model, cfg2, ckpt = load_model(res.checkpoint, use_ema=use_ema)
        assert cfg2.num_classes == 10 and model.num_classes == 10 and ckpt["step"] == 4
        x = digits.test[:6]
        t = torch.linspace(0.1, 0.9, 6)
        y = torch.tensor([0, 3, 9, NULL, 5, 5])
        with torch.no_grad():
            assert torch.equal(model(x, t, y), want.eval()(x, t, y))
            assert torch.equal(model(x, t), model(x, t, torch.full((6,), NULL)))
    if net == "mlp":  # (a U-Net this narrow has one channel per GroupNorm group: see test_nets.py)
        with torch.no_grad():
            assert float((model(x, t, y) - model(x, t, (y + 1) % 10)).abs().max()) > 1e-5


_run = run_cli


def test_cli_trains_a_conditional_digits_model(tmp_path, capsys):
    code, out, _ = _run(["train", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "--num-classes NUM_CLASSES" in flat and "--p-uncond P_UNCOND" in flat
    assert "K > 0: a class-conditional model of K classes" in flat and "(default: 0.1)" in flat
    base = ["train", "--dataset", "digits", "--steps", "4", "--batch-size", "32", "--hidden", "16", "--depth", "1",
            "--emb-dim", "8", "--checkpoint-every", "4", "--log-every", "2", "--device", "cpu", "--no-progress"]
    run = tmp_path / "run"
    code, out, err = _run(base + ["--out", str(run), "--num-classes", "10", "--p-uncond", "0.2"], capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["num_classes"] == 10 and cfg["p_uncond"] == 0.2
    model, _, _ = load_model(run)
    assert model.num_classes == 10
    for extra, message in ((["--num-classes", "3"], "set num_classes=10"),
                           (["--num-classes", "10", "--p-uncond", "1"], "p_uncond must be"),
                           (["--num-classes", "-2"], "--num-classes: must be an integer >= 0"),
                           (["--num-classes", "2", "--dataset", "mixture_2d"], "no integer labels")):
        code, out, err = _run(base + ["--out", str(tmp_path / "bad")] + extra, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_conditional_training_resumes_bitwise(tmp_path, toy):
    """On the GPU the labels, the dropout uniforms (the CUDA training generator) and the embedding
    live on the device; a resumed run equals the uninterrupted one."""
    from _training import _assert_same_state

    ds = _labelled(toy, 2)
    cfg = _cfg(tmp_path, "gpu", device="cuda", steps=12, num_classes=2, p_uncond=0.3)
    full = train(cfg, dataset=ds, progress=False)
    short = cfg.replace(out_dir=str(tmp_path / "short"), steps=6)
    train(short, dataset=ds, progress=False)
    resumed = train(short.replace(steps=12), dataset=ds, progress=False, resume=True)
    _assert_same_state(full.model, resumed.model)
    assert full.model.num_classes == 2 and next(full.model.parameters()).is_cuda
