"""Dataset bits/dim (`scoresde.likelihood.evaluate`), checked against the analytic density of a Gaussian-mixture
oracle and against the stated grid, dequantization, repeat and standard-error conventions."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import scoresde.likelihood.evaluate as ev
from scoresde import VPSDE, GaussianMixture, mixture_2d, mixture_nd
from scoresde.likelihood import BPDResult, evaluate_bpd
from scoresde.quantize import dequantize as dequantize_uniform
from scoresde.quantize import grid_values

LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sde():
    return VPSDE()


@pytest.fixture(scope="module")
def small_mix():
    """A 2-D mixture inside [-1, 1]^2, so quantized data on [-1, 1] make sense."""
    return GaussianMixture([0.4, 0.6], [[-0.4, 0.2], [0.35, -0.25]], [[0.15, 0.1], [0.2, 0.12]])


def _grid_data(mix, n, n_levels=256, data_range=(-1.0, 1.0), seed=0):
    """Samples of ``mix`` quantized to the grid ``lo + u w`` (the level of the cell that holds them)."""
    lo, hi = data_range
    w = (hi - lo) / n_levels
    x = mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = torch.floor((x - lo) / w).clamp(0, n_levels - 1).long()
    return grid_values(u, n_levels, data_range, dtype=torch.float32), u


class Spy:
    """Stands in for ``log_likelihood`` inside ``scoresde.likelihood.evaluate``: records the inputs, delegates."""

    def __init__(self, monkeypatch):
        self.inputs = []
        self._real = ev.log_likelihood
        monkeypatch.setattr(ev, "log_likelihood", self)

    def __call__(self, score_fn, sde, x, **kw):
        self.inputs.append(x.detach().clone())
        return self._real(score_fn, sde, x, **kw)


# ---------------------------------------------------------------------------------------------
# Against truth: the analytic density of the oracle.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix_name", ["1d", "2d"])
def test_continuous_bpd_equals_analytic(sde, mix_name):
    mix = (GaussianMixture([0.3, 0.7], [[-0.5], [0.4]], [0.1, 0.2]) if mix_name == "1d" else mixture_2d())
    D = mix.dim
    x = mix.sample(13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-5
    res = evaluate_bpd(mix.score_fn(sde), sde, x, dequantize=None, trace="exact", eps=eps, rtol=1e-7, atol=1e-7,
                       batch_size=5, progress=False, keep_latents=True, data_range=(-4.0, 4.0))
    assert res.n_samples == 13 and res.n_failed == 0 and res.bpd.shape == (1, 13)
    # The flow of the exact score carries p_eps to the mixture's own p_T; the model's prior is N(0, I),
    # so  logp_model - log p_eps(x) = prior_logp(z) - log p_T^mixture(z)  exactly.
    z = res.z[0].double()
    mismatch = sde.prior_logp(z) - mix.marginal_log_prob(z, sde.T, sde)
    analytic = mix.marginal_log_prob(x, eps, sde)
    err = (res.logp[0] - mismatch - analytic).abs().max().item()
    assert err < 1e-5, err
    assert mismatch.abs().max().item() > 1e-3  # the correction matters at this tolerance
    offset = math.log2(256 / 8.0)
    expect_bpd = -(analytic + mismatch) / (D * LN2) + offset
    torch.testing.assert_close(res.bpd[0], expect_bpd, rtol=0, atol=1e-5 / (D * LN2))
    assert abs(res.mean - float(expect_bpd.mean())) < 1e-5 / (D * LN2)


# ---------------------------------------------------------------------------------------------
# The grid and dequantization.
# ---------------------------------------------------------------------------------------------
def test_quantized_data_accepted_and_off_grid_refused(sde, small_mix):
    xq, _ = _grid_data(small_mix, 6, n_levels=32)
    score = small_mix.score_fn(sde)
    res = evaluate_bpd(score, sde, xq, n_levels=32, progress=False, generator=torch.Generator().manual_seed(0))
    assert res.n_samples == 6 and res.n_failed == 0 and torch.isfinite(res.bpd).all()

    off = xq.clone()
    off[3, 1] += 0.3 * 2.0 / 32
    with pytest.raises(ValueError, match="not on the quantization grid") as info:
        evaluate_bpd(score, sde, off, n_levels=32, progress=False)
    assert "dequantize=None" in str(info.value) and "1 of 12 values" in str(info.value)
    # the cell's right edge hi is not a data value (the top level is hi - w)
    top = xq.clone()
    top[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"outside \[-1, 0.9375\]"):
        evaluate_bpd(score, sde, top, n_levels=32, progress=False)
    # the other 8-bit convention, u / 255 rescaled to [-1, 1], is recognised and explained
    u = torch.randint(0, 256, (4, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="ToTensor"):
        evaluate_bpd(score, sde, u / 255.0 * 2.0 - 1.0, progress=False)
    # off-grid data are fine as continuous data
    evaluate_bpd(score, sde, off, dequantize=None, trace="exact", progress=False)


def test_dequantization_noise_is_uniform_in_the_cell(sde, small_mix, monkeypatch):
    n_levels, (lo, hi) = 16, (-1.0, 1.0)
    w = (hi - lo) / n_levels
    xq, u = _grid_data(small_mix, 10, n_levels)
    # the public helper, many draws: range [0, w), mean w/2, variance w^2/12
    big = xq.repeat(500, 1)
    noise = (dequantize_uniform(big, n_levels, (lo, hi), torch.Generator().manual_seed(3)) - big).double()
    assert noise.min() >= 0 and noise.max() < w
    n = noise.numel()
    assert abs(noise.mean().item() - w / 2) < 4 * w / math.sqrt(12 * n)
    assert abs(noise.var().item() - w * w / 12) < 4 * w * w / math.sqrt(180 * n)  # Var(U^2) = w^4/180
    # inside evaluate_bpd: what log_likelihood receives lies in the data's own cell, fresh per repeat
    spy = Spy(monkeypatch)
    evaluate_bpd(small_mix.score_fn(sde), sde, xq, repeats=3, n_levels=n_levels, trace="exact", rtol=1e-3,
                 atol=1e-3, progress=False, generator=torch.Generator().manual_seed(0))
    assert len(spy.inputs) == 3
    for seen in spy.inputs:
        assert torch.equal(torch.floor((seen.double() - lo) / w).long(), u)
        assert not torch.equal(seen, xq)
    assert not torch.equal(spy.inputs[0], spy.inputs[1]) and not torch.equal(spy.inputs[1], spy.inputs[2])


# ---------------------------------------------------------------------------------------------
# Whole data set, batching, repeats, reproducibility.
# ---------------------------------------------------------------------------------------------
def test_whole_set_when_not_a_multiple_of_batch_size(sde, small_mix, monkeypatch):
    x = small_mix.sample(11, generator=torch.Generator().manual_seed(2))
    spy = Spy(monkeypatch)
    res = evaluate_bpd(small_mix.score_fn(sde), sde, x, dequantize=None, trace="exact", batch_size=4, progress=False)
    assert [b.shape[0] for b in spy.inputs] == [4, 4, 3]
    assert torch.equal(torch.cat(spy.inputs), x)
    assert res.n_samples == 11 and res.bpd.shape == (1, 11)
    whole = evaluate_bpd(small_mix.score_fn(sde), sde, x, dequantize=None, trace="exact", batch_size=64,
                         progress=False)
    # the per-sample solver makes a sample's value independent of its batch
    torch.testing.assert_close(res.logp, whole.logp, rtol=0, atol=1e-9)


def test_repeats_refresh_probes_and_noise(sde, small_mix):
    score = small_mix.score_fn(sde)
    x = small_mix.sample(5, generator=torch.Generator().manual_seed(4))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    exact = evaluate_bpd(score, sde, x, repeats=3, dequantize=None, trace="exact", progress=False, generator=g())
    assert torch.equal(exact.bpd[0], exact.bpd[1]) and torch.equal(exact.bpd[1], exact.bpd[2])
    # Rademacher probes in D = 2 give only two values of v^T A v; in D = 6 (overlapping components,
    # so the score's Jacobian is not diagonal) a repeat coincides with another with probability < 2^-5 per sample
    mix6 = mixture_nd(6, 3, radius=0.8, std_range=(0.3, 0.5))
    x6 = mix6.sample(5, generator=torch.Generator().manual_seed(4))
    hutch = evaluate_bpd(mix6.score_fn(sde), sde, x6, repeats=3, dequantize=None, trace="rademacher", progress=False,
                         generator=g())
    assert (hutch.bpd[0] != hutch.bpd[1]).any() and (hutch.bpd[1] != hutch.bpd[2]).any()
    xq, _ = _grid_data(small_mix, 5, 64)
    deq = evaluate_bpd(score, sde, xq, repeats=2, n_levels=64, trace="exact", progress=False, generator=g())
    assert (deq.bpd[0] != deq.bpd[1]).all()


def test_reproducible_with_a_seed(sde, small_mix):
    score = small_mix.score_fn(sde)
    xq, _ = _grid_data(small_mix, 7, 64)
    kw = dict(repeats=2, n_levels=64, batch_size=3, progress=False)
    a = evaluate_bpd(score, sde, xq, generator=torch.Generator().manual_seed(11), **kw)
    b = evaluate_bpd(score, sde, xq, generator=torch.Generator().manual_seed(11), **kw)
    c = evaluate_bpd(score, sde, xq, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(a.bpd, b.bpd) and torch.equal(a.nfe, b.nfe)
    assert (a.bpd != c.bpd).any()


def test_mean_and_stderr_formula(sde, small_mix):
    xq, _ = _grid_data(small_mix, 9, 64)
    res = evaluate_bpd(small_mix.score_fn(sde), sde, xq, repeats=3, n_levels=64, progress=False,
                       generator=torch.Generator().manual_seed(5))
    per_sample = res.bpd.mean(0)
    assert res.mean == pytest.approx(res.bpd.mean().item(), rel=1e-12)
    # repeats are averaged first: the standard error over N = 9 points, not over 27 values
    se = math.sqrt(sum((v - per_sample.mean().item()) ** 2 for v in per_sample.tolist()) / 8) / 3.0
    assert res.stderr == pytest.approx(se, rel=1e-10)
    assert res.stderr != pytest.approx(res.bpd.reshape(-1).std().item() / math.sqrt(27), rel=1e-3)
    torch.testing.assert_close(res.per_sample_bpd, per_sample)


def test_failed_samples_excluded_and_counted(sde, small_mix):
    real = small_mix.score_fn(sde)

    def score(x, t):  # NaN far from the data: that sample's solve fails, the others finish
        s = real(x, t)
        far = (x.abs() > 5).any(dim=1, keepdim=True)
        return torch.where(far, torch.full_like(s, math.nan), s)

    x = small_mix.sample(6, generator=torch.Generator().manual_seed(6))
    x[2] = torch.tensor([8.0, 8.0])
    with pytest.warns(UserWarning, match="2 of 12 likelihood evaluations failed"):
        res = evaluate_bpd(score, sde, x, repeats=2, dequantize=None, trace="exact", progress=False)
    assert res.n_failed == 2 and (res.status[:, 2] != 0).all() and (res.status[:, [0, 1, 3, 4, 5]] == 0).all()
    keep = res.bpd[:, [0, 1, 3, 4, 5]]
    assert res.mean == pytest.approx(keep.mean().item(), rel=1e-12)
    assert res.stderr == pytest.approx(keep.mean(0).std().item() / math.sqrt(5), rel=1e-10)
    assert res.n_samples == 6 and "2 failed evaluations excluded" in res.summary()


# ---------------------------------------------------------------------------------------------
# Data sources.
# ---------------------------------------------------------------------------------------------
def test_dataloader_and_iterables(sde, small_mix):
    score = small_mix.score_fn(sde)
    xq, _ = _grid_data(small_mix, 10, 64)
    kw = dict(n_levels=64, trace="exact", batch_size=4, progress=False)
    ref = evaluate_bpd(score, sde, xq, generator=torch.Generator().manual_seed(1), **kw)
    loader = DataLoader(TensorDataset(xq, torch.zeros(10, dtype=torch.long)), batch_size=3, shuffle=False)
    from_loader = evaluate_bpd(score, sde, loader, generator=torch.Generator().manual_seed(1), **kw)
    assert from_loader.n_samples == 10
    # same rows re-batched to batch_size=4, same noise stream: the same numbers
    torch.testing.assert_close(from_loader.bpd, ref.bpd, rtol=0, atol=1e-9)
    batches = (xq[i:i + 3] for i in range(0, 10, 3))  # a generator: length unknown
    from_gen = evaluate_bpd(score, sde, batches, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(from_gen.bpd, ref.bpd, rtol=0, atol=1e-9)

    with pytest.raises(ValueError, match="drop_last"):
        evaluate_bpd(score, sde, DataLoader(TensorDataset(xq), batch_size=3, drop_last=True), **kw)
    with pytest.raises(TypeError, match="wrap it in"):
        evaluate_bpd(score, sde, TensorDataset(xq), **kw)
    with pytest.raises(ValueError, match="not on the quantization grid"):
        evaluate_bpd(score, sde, [xq[:4], xq[4:] + 0.001], **kw)


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------
def test_summary_and_dict_state_the_convention(sde, small_mix):
    xq, _ = _grid_data(small_mix, 4, 32)
    res = evaluate_bpd(small_mix.score_fn(sde), sde, xq, repeats=2, n_levels=32, n_probes=2, rtol=1e-4, atol=1e-5,
                       progress=False, generator=torch.Generator().manual_seed(0))
    s = str(res)
    assert s == res.summary()
    assert s.startswith(f"{res.mean:.3f} ± {res.stderr:.3f} bits/dim (N=4, repeats=2; ")
    for part in ["eps=1e-05", "rademacher x2", "dopri5 rtol=0.0001, atol=1e-05", "uniform dequantization",
                 "32 levels on [-1, 1]"]:
        assert part in s, (part, s)
    c = res.convention
    assert c["eps"] == 1e-5 and c["trace"] == "rademacher" and c["n_probes"] == 2 and c["repeats"] == 2
    assert c["dequantize"] == "uniform" and c["n_levels"] == 32 and c["data_range"] == (-1.0, 1.0)
    assert c["sde"] == repr(sde) and c["backend"] == "dopri5"
    d = json.loads(json.dumps(res.to_dict()))
    assert d["n_samples"] == 4 and len(d["bpd"]) == 2 and len(d["bpd"][0]) == 4 and d["summary"] == s
    cont = evaluate_bpd(small_mix.score_fn(sde), sde, xq, dequantize=None, trace="exact", progress=False)
    assert "exact trace" in str(cont) and "no dequantization (continuous density)" in str(cont)
    assert isinstance(cont, BPDResult)
    with pytest.raises(Exception):
        cont.mean = 0.0  # frozen


# ---------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------
def test_clear_errors(sde, small_mix):
    score = small_mix.score_fn(sde)
    xq, _ = _grid_data(small_mix, 3, 32)
    kw = dict(progress=False)
    bad = xq.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_bpd(score, sde, bad, n_levels=32, **kw)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_bpd(score, sde, bad, dequantize=None, **kw)
    with pytest.raises(ValueError, match="n_levels must be an int >= 2"):
        evaluate_bpd(score, sde, xq, n_levels=1, **kw)
    with pytest.raises(ValueError, match="lo < hi"):
        evaluate_bpd(score, sde, xq, data_range=(1.0, -1.0), **kw)
    with pytest.raises(ValueError, match="lo < hi"):
        evaluate_bpd(score, sde, xq, data_range=(0.0, 0.0), **kw)
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        evaluate_bpd(score, sde, xq, repeats=0, n_levels=32, **kw)
    with pytest.raises(ValueError, match="empty"):
        evaluate_bpd(score, sde, xq[:0], n_levels=32, **kw)
    with pytest.raises(ValueError, match="empty"):
        evaluate_bpd(score, sde, [], n_levels=32, **kw)
    with pytest.raises(ValueError, match="dequantize must be"):
        evaluate_bpd(score, sde, xq, dequantize="gaussian", **kw)
    with pytest.raises(TypeError, match="grid_values"):
        evaluate_bpd(score, sde, torch.zeros(3, 2, dtype=torch.uint8), **kw)
    with pytest.raises(ValueError, match="distributed=True"):
        evaluate_bpd(score, sde, xq, n_levels=32, distributed=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_bpd(score, sde, xq, n_levels=32, trace="exact", **kw)  # no spurious warnings
