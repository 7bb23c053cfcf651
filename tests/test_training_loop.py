"""The training loop (scoresde.training.loop): warm-up schedule, EMA, divergence stop, data checks,
and that training actually learns the score of a Gaussian mixture (checked against the mixture's
exact score, which minimises the same DSM objective); and the old module path. (Configuration:
test_training_config.py; checkpoints and resume: test_training_checkpoint.py.)"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from scoresde.data import load_toy
from scoresde.losses import dsm_loss
from scoresde.training import CHECKPOINT_NAME, TrainConfig, TrainingDiverged, load_checkpoint, load_model, train
from _training import _assert_same_state, _cfg, _records

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule and EMA.
# ---------------------------------------------------------------------------------------------
def test_linear_warmup_then_constant(tmp_path, toy):
    cfg = _cfg(tmp_path, steps=10, warmup=4, lr=3e-3, log_every=1)
    res = train(cfg, dataset=toy, progress=False)
    lrs = {r["step"]: r["lr"] for r in _records(res.metrics_path)}
    assert sorted(lrs) == list(range(1, 11))
    for s, lr in lrs.items():  # update s uses lr * min(1, s / warmup)
        assert lr == pytest.approx(3e-3 * min(1.0, s / 4), rel=1e-12)
    assert lrs[1] > 0 and lrs[1] < lrs[2] < lrs[3] < lrs[4] == lrs[10]


def test_ema_is_the_exponential_average_of_the_iterates(tmp_path, toy):
    d = 0.7
    seen = {}

    def record(step, model, ema, cfg):
        flat = lambda m: torch.cat([p.detach().double().reshape(-1) for p in m.parameters()])  # noqa: E731
        seen[step] = (flat(model), flat(ema))

    cfg = _cfg(tmp_path, steps=8, ema_decay=d, eval_every=1)
    res = train(cfg, dataset=toy, hooks=[record], progress=False)
    assert sorted(seen) == list(range(0, 9))
    p0, e0 = seen[0]
    assert torch.equal(p0, e0)  # e_0 = p_0
    e = p0.clone()
    for s in range(1, 9):  # e_s = d e_{s-1} + (1 - d) p_s, computed here in float64
        p, got = seen[s]
        e = d * e + (1 - d) * p
        torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-6)
    assert (seen[8][0] - seen[8][1]).abs().max() > 1e-3  # the average lags the iterates
    torch.testing.assert_close(torch.cat([p.double().reshape(-1) for p in res.ema_model.parameters()]), e,
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Divergence.
# ---------------------------------------------------------------------------------------------
def test_nan_stops_the_run_naming_the_first_bad_step(tmp_path, toy):
    def poison(step, model, ema, cfg):
        if step == 4:  # after update 4: the loss of update 5 is NaN; the check at step 6 reports it
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    cfg = _cfg(tmp_path, steps=12, checkpoint_every=3, log_every=3, eval_every=1)
    with pytest.raises(TrainingDiverged, match=r"non-finite \(nan\) at step 5\b.*step 3\)"):
        train(cfg, dataset=toy, hooks=[poison], progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in ckpt[part].values())


def test_huge_learning_rate_diverges_at_step_2(tmp_path, toy):
    # Adam's first update moves every weight by about lr = 1e30, so the second loss overflows.
    cfg = _cfg(tmp_path, lr=1e30, warmup=0, checkpoint_every=1, log_every=1, grad_clip=0.0)
    with pytest.raises(TrainingDiverged, match=r"at step 2\b") as err:
        train(cfg, dataset=toy, progress=False)
    assert "lr=1e+30" in str(err.value)
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_dataset_and_batch_checks(tmp_path, toy):
    with pytest.raises(ValueError, match="exceeds the 512 training samples"):
        train(_cfg(tmp_path, batch_size=1000), dataset=toy, progress=False)
    with pytest.raises(ValueError, match="CUDA"):
        train(_cfg(tmp_path, bf16=True), dataset=toy, progress=False)


# ---------------------------------------------------------------------------------------------
# It learns.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde, parameterization, time_sampler, weighting", [
    ("vp", "eps", "uniform", "sigma2"),
    ("subvp", "v", "importance", "likelihood"),
    ("ve", "eps", "uniform", "sigma2"),
])
def test_training_learns_the_mixture_score(tmp_path, sde, parameterization, time_sampler, weighting):
    """On a Gaussian mixture the exact score minimises the DSM objective, and its loss is the floor
    no network can go below. With the same (x0, t, z) draws for every model: the trained model is
    below the untrained one by many standard errors of the paired difference, and its excess over
    the floor is a small fraction (15 %) of the floor itself."""
    ds = load_toy("mixture_2d", n_train=4096, n_test=16, seed=0)
    oracle = ds.info["oracle"]
    init = {}

    def keep_initial(step, model, ema, cfg):
        if step == 0:
            init["model"] = copy.deepcopy(model)

    cfg = TrainConfig(dataset="mixture_2d", sde=sde, sigma_max=10.0, parameterization=parameterization,
                      time_sampler=time_sampler, weighting=weighting, steps=500, batch_size=256, hidden=64,
                      depth=2, emb_dim=16, lr=3e-3, warmup=20, ema_decay=0.98, checkpoint_every=500,
                      log_every=50, out_dir=str(tmp_path / "run"), device="cpu")
    res = train(cfg, dataset=ds, hooks=[keep_initial], progress=False)
    sde_ = res.ema_model.sde

    n = 20000
    g = torch.Generator().manual_seed(123)
    x0 = oracle.sample(n, generator=g, dtype=torch.float32)
    eps = 1e-3  # t ~ U[1e-3, T], the range the samplers use
    t = eps + (sde_.T - eps) * torch.rand(n, generator=g)
    z = torch.randn(n, 2, generator=g)
    with torch.no_grad():
        def loss(m):
            return dsm_loss(m, sde_, x0, t=t, noise=z, weighting="sigma2").double()
        exact = loss(oracle.score_fn(sde_))
        trained, initial = loss(res.ema_model), loss(init["model"].eval())
    excess = trained - exact
    excess0 = initial - exact
    gain, se_gain = (initial - trained).mean(), (initial - trained).std() / math.sqrt(n)
    assert excess0.mean() > 10 * excess0.std() / math.sqrt(n), "the untrained network should be far from the floor"
    assert gain > 10 * se_gain
    assert excess.mean() < 0.15 * exact.mean(), (float(excess.mean()), float(exact.mean()))
    # the loaded checkpoint gives the same model
    model, cfg2, ckpt = load_model(res.checkpoint)
    assert cfg2 == cfg and ckpt["step"] == 500
    _assert_same_state(model, res.ema_model)


# ---------------------------------------------------------------------------------------------
# CUDA: the plain "cuda" device, bf16 autocast, and resume on the GPU.
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_training_runs_learns_and_resumes(tmp_path, toy, bf16):
    cfg = _cfg(tmp_path, "gpu", device="cuda", bf16=bf16, steps=200, checkpoint_every=100, lr=5e-3)
    full = train(cfg, dataset=toy, progress=False)
    assert next(full.model.parameters()).device.type == "cuda"
    first, last = _records(full.metrics_path)[0]["loss"], _records(full.metrics_path)[-1]["loss"]
    assert math.isfinite(last) and last < first
    if not bf16:  # fp32 kernels are deterministic here: a resumed run matches bitwise
        short = cfg.replace(out_dir=str(tmp_path / "short"), steps=100)
        train(short, dataset=toy, progress=False)
        extended = train(short.replace(steps=200), dataset=toy, progress=False, resume=True)
        _assert_same_state(full.model, extended.model)




def test_old_module_path_works_for_one_release_with_a_warning():
    """``scoresde.train`` was a module; it is now the package ``scoresde.training``. The old imports
    keep working with a DeprecationWarning, and ``scoresde.train`` stays callable (run in a fresh
    interpreter: importing the old path rebinds the package attribute)."""
    import subprocess
    import sys

    code = """
import warnings
import scoresde
import scoresde.training as T
assert scoresde.train is T.train
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from scoresde.train import TrainConfig, load_model
    from scoresde.evaluate import evaluate_bpd, dequantize_uniform
assert TrainConfig is T.TrainConfig and load_model is T.load_model
assert evaluate_bpd is scoresde.evaluate_bpd and dequantize_uniform is scoresde.dequantize
msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]
assert len(msgs) == 4 and "import TrainConfig from scoresde.training" in msgs[0], msgs
assert callable(scoresde.train)
import sys
try:
    sys.modules["scoresde.train"].no_such_name
except AttributeError as e:
    assert "moved to scoresde.training" in str(e), e
else:
    raise AssertionError
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
