"""The per-sample solvers evaluate f on the samples still running only (scoresde.solvers.adaptive).

Reference field: the 2-D linear ODE of test_solvers.py, dy/dt = (a(t) I + w J) y with a(t) = -k (1 + t),
with per-sample stiffness k and frequency w held in the field (per-row data, selected with ``rows``),
so that samples need very different numbers of steps. It uses only + and *, so it treats rows
independently bit for bit. Integrated from 0 to 1. Two samples fail: one turns inf once t > 0.5 (after its retries it is
NONFINITE; its stale stage buffers then hold inf, and 0 * inf = NaN in its frozen stage
combinations), one exhausts max_steps. The truth a sample's result is checked against is the same
sample solved alone and solved with the whole batch evaluated at every stage (``running_only=False``,
the old behaviour); which rows f must see is reconstructed from each sample's own step counts.
"""
from __future__ import annotations

import math

import pytest
import torch

from scoresde.solvers import METHODS, SolverStatus, available_methods, solve_ode
from scoresde.solvers import adaptive
from scoresde.solvers.result import RUNNING
from scoresde.solvers.state import all_finite

pytestmark = pytest.mark.usefixtures("single_thread")

PER_SAMPLE = available_methods(per_sample=True)
INF_ROW, STUCK_ROW = 5, 9


class Field:
    """``f(t, y, rows=None)`` with per-row ``k``, ``w``; records every call's rows and sizes."""

    def __init__(self, k, w, inf_row=None):
        self.k, self.w = k, w
        self.inf_row = inf_row  # index (in this batch) of the row that turns inf for t > 0.5
        self.sizes, self.rows = [], []

    def __call__(self, t, y, rows=None):
        self.sizes.append(y.shape[0])
        self.rows.append(None if rows is None else rows.clone())
        idx = torch.arange(self.k.shape[0]) if rows is None else rows
        k, w = self.k[idx], self.w[idx]
        a = -k * (1.0 + t)
        d = torch.stack([a * y[:, 0] - w * y[:, 1], a * y[:, 1] + w * y[:, 0]], dim=1)
        if self.inf_row is not None:
            bad = (idx == self.inf_row) & (t > 0.5)
            d = torch.where(bad[:, None], torch.full_like(d, math.inf), d)
        return d


def problem(batch=24, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.exp(torch.empty(batch, dtype=torch.float64).uniform_(math.log(0.05), math.log(80.0), generator=g))
    w = torch.empty(batch, dtype=torch.float64).uniform_(-6.0, 6.0, generator=g)
    y0 = torch.randn(batch, 2, dtype=torch.float64, generator=g)
    y0[::4] *= 1e-3  # easy: tiny values, the absolute tolerance lets them take long steps
    if batch > STUCK_ROW:
        w[STUCK_ROW] = 3e3  # ~500 turns: runs into max_steps
    return k.to(dtype), w.to(dtype), y0.to(dtype)


def solve(k, w, y0, method, inf_row=INF_ROW, **kw):
    f = Field(k, w, inf_row)
    f32 = y0.dtype == torch.float32
    opts = dict(method=method, rtol=1e-5 if f32 else 1e-6, atol=1e-6 if f32 else 1e-8, max_steps=300)
    opts.update(kw)
    return solve_ode(f, y0, 0.0, 1.0, **opts), f


def fields(res, i):
    return (res.y[i], res.t[i], res.nfe[i], res.n_accepted[i], res.n_rejected[i], res.status[i])


def assert_same_sample(a, i, b, j):
    for u, v in zip(fields(a, i), fields(b, j)):
        assert torch.equal(u, v), (i, j, u, v)


def expected_calls(res, stages):
    """Per call: the rows that are running then, from each sample's own attempted-step count.

    The first two calls (f(t0, y0), the starting-step probe) take the whole batch; iteration j's
    ``stages - 1`` calls take the samples that attempt more than j steps."""
    attempts = res.n_accepted + res.n_rejected
    calls = [torch.arange(attempts.shape[0])] * 2
    for j in range(int(attempts.max())):
        calls += [torch.nonzero(attempts > j).squeeze(1)] * (stages - 1)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", PER_SAMPLE)
def test_only_running_rows_are_evaluated_and_results_are_bitwise_unchanged(method, dtype, monkeypatch):
    k, w, y0 = problem(dtype=dtype)
    B, stages = y0.shape[0], METHODS[method].tableau.stages

    # spy on the end of each step: do frozen rows ever carry non-finite stage values?
    stale_nonfinite = []
    real_end = adaptive._StepBuffers.end

    def end(self):
        frozen = self.status != RUNNING
        stale_nonfinite.append(bool((frozen & ~all_finite(self.y_stage, self.S.batch)).any()))
        real_end(self)

    monkeypatch.setattr(adaptive._StepBuffers, "end", end)
    new, f_new = solve(k, w, y0, method)
    monkeypatch.setattr(adaptive._StepBuffers, "end", real_end)
    old, f_old = solve(k, w, y0, method, running_only=False)

    assert int(new.status[INF_ROW]) == SolverStatus.NONFINITE
    assert int(new.status[STUCK_ROW]) == SolverStatus.MAX_STEPS
    assert int(new.ok.sum()) == B - 2
    assert len(set(new.nfe[new.ok].tolist())) > 8  # very different step counts
    assert any(stale_nonfinite)  # the inf row's frozen stages did turn NaN, and (below) changed nothing
    assert torch.isfinite(new.y).all()

    # every sample bitwise as with the whole-batch evaluation
    for i in range(B):
        assert_same_sample(new, i, old, i)
    assert new.total_nfe == old.total_nfe == len(f_new.sizes) == len(f_old.sizes)

    # f saw exactly the running rows, in order, with rows=None for whole-batch calls
    want = expected_calls(new, stages)
    assert len(want) == len(f_new.rows)
    for got, exp in zip(f_new.rows, want):
        assert (got is None) == (exp.shape[0] == B)
        if got is not None:
            assert got.dtype == torch.long and torch.equal(got, exp)
    rows_seen = sum(f_new.sizes)
    assert rows_seen == sum(e.shape[0] for e in want) == int(new.nfe.sum())
    assert rows_seen < new.total_nfe * B
    assert f_old.sizes == [B] * old.total_nfe and all(r is None for r in f_old.rows)

    # and as the sample solved alone (its own inf row where it has one)
    for i in (0, 1, 4, INF_ROW, STUCK_ROW, 17, B - 1):
        sl = slice(i, i + 1)
        alone, _ = solve(k[sl], w[sl], y0[sl].clone(), method, inf_row=0 if i == INF_ROW else None)
        assert_same_sample(new, i, alone, 0)


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_the_row_index_is_recomputed_only_when_the_running_count_changes(method, monkeypatch):
    k, w, y0 = problem(batch=16, seed=1)
    calls = []
    real_nonzero = torch.nonzero

    def counting_nonzero(*a, **kw):
        calls.append(1)
        return real_nonzero(*a, **kw)

    monkeypatch.setattr(torch, "nonzero", counting_nonzero)
    res, f = solve(k, w, y0, method)
    monkeypatch.setattr(torch, "nonzero", real_nonzero)
    attempts = res.n_accepted + res.n_rejected
    counts = [int((attempts > j).sum()) for j in range(int(attempts.max()))]
    assert len(calls) == len({c for c in counts if c < 16}) < len(counts)
    # identical samples finish together: every call is a whole-batch call, no gather or scatter
    same = y0[:1].expand(8, 2).clone()
    res, f = solve(k[:1].expand(8).clone(), w[:1].expand(8).clone(), same, method, inf_row=None)
    assert res.ok.all() and all(r is None for r in f.rows) and set(f.sizes) == {8}


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_persistent_buffers_are_never_rebound(method, monkeypatch):
    """The CUDA-graph path keeps the solver state in persistent buffers (inplace=True) that the
    captured graphs read; forced on the CPU, the scatter of a sub-batch must write into the same
    storage (every tensor keeps its data pointer through the solve) and give the eager results."""
    built = []

    class InPlace(adaptive._StepBuffers):
        def __init__(self, *args, inplace, **kw):
            super().__init__(*args, inplace=True, **kw)
            built.append(self)

    k, w, y0 = problem(seed=2)
    eager, _ = solve(k, w, y0, method)
    monkeypatch.setattr(adaptive, "_StepBuffers", InPlace)
    pointers = []
    real_select = InPlace.select

    def select(self, n):
        pointers.append(_pointers(self))
        real_select(self, n)

    monkeypatch.setattr(InPlace, "select", select)
    inplace, f = solve(k, w, y0, method)
    assert len(built) == 1 and built[0].inplace
    assert any(r is not None for r in f.rows)  # sub-batches were scattered
    assert len(pointers) > 10 and all(p == pointers[0] for p in pointers)
    for i in range(y0.shape[0]):
        assert_same_sample(inplace, i, eager, i)


def _pointers(st):
    """Data pointers of every tensor the step reads or writes (the row index is eager-only)."""
    out = {}
    for name, v in vars(st).items():
        if name == "rows":
            continue
        if isinstance(v, torch.Tensor):
            out[name] = v.data_ptr()
        elif isinstance(v, (tuple, list)):
            flat = [c for x in v for c in (x if isinstance(x, tuple) else (x,))]
            if flat and all(isinstance(c, torch.Tensor) for c in flat):
                out[name] = tuple(c.data_ptr() for c in flat)
    return out


def test_rows_keyword_and_sub_batch_errors():
    k, w, y0 = problem(batch=8, seed=3)
    B = 8

    # **kwargs does not count as taking rows: f gets sub-batches without indices
    got = []

    def f_kwargs(t, y, **kw):
        got.append((y.shape[0], kw))
        return -y * (1.0 + t)[:, None]

    solve_ode(f_kwargs, y0, 1.0, 1e-3, rtol=1e-6, atol=1e-8)
    assert all(kw == {} for _, kw in got) and min(n for n, _ in got) < B

    # a keyword-only rows works too; the other methods pass rows=None (the whole batch)
    def f_kwonly(t, y, *, rows):
        got.append(rows)
        idx = torch.arange(B) if rows is None else rows
        return -k[idx, None] * y

    for method in available_methods():
        got.clear()
        res = solve_ode(f_kwonly, y0, 1.0, 1e-3, method=method, steps=20, rtol=1e-6, atol=1e-8)
        assert res.ok.all()
        if not METHODS[method].per_sample:
            assert got and all(r is None for r in got)

    # an f with per-row data and no rows: the error names the fix
    def f_closure(t, y):
        return -k[:, None] * y

    with pytest.raises(RuntimeError, match=r"keyword argument rows.*running_only=False"):
        solve_ode(f_closure, y0, 1.0, 1e-3, rtol=1e-6, atol=1e-8)

    def f_wrong_rows(t, y):  # broadcasts instead of failing: caught by the shape check
        return (-k[:, None] * y.sum(dim=0, keepdim=True))

    with pytest.raises(ValueError, match=r"shape \(8, 2\) but the state component has shape \(\d, 2\).*rows"):
        solve_ode(f_wrong_rows, y0, 1.0, 1e-3, rtol=1e-6, atol=1e-8)
    res = solve_ode(f_closure, y0, 1.0, 1e-3, rtol=1e-6, atol=1e-8, running_only=False)
    assert res.ok.all()


@pytest.mark.parametrize("method", [m for m in available_methods() if m not in PER_SAMPLE])
def test_running_only_is_ignored_by_the_other_methods(method):
    k, w, y0 = problem(batch=6, seed=4)
    a, fa = solve(k, w, y0, method, inf_row=None, steps=40, max_steps=10_000)
    b, fb = solve(k, w, y0, method, inf_row=None, steps=40, max_steps=10_000, running_only=False)
    assert fa.sizes == fb.sizes == [6] * len(fa.sizes)
    for x, y in zip(fields(a, slice(None)), fields(b, slice(None))):
        assert torch.equal(x, y)


def test_ode_sampler_callback_sees_the_whole_batch():
    """The ODE sampler's callback keeps its contract (x and t of the whole batch) while the solver
    evaluates only the running samples: a finished sample keeps its last time and state."""
    from scoresde import VPSDE, mixture_2d, sample

    sde = VPSDE()
    seen = []
    res = sample(mixture_2d().score_fn(sde), sde, (64, 2), sampler="ode", rtol=1e-4, atol=1e-4,
                 generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert all(c["x"].shape == (64, 2) and c["t"].shape == (64,) for c in seen)
    evals = res.nfe - 1  # per sample, the denoising step aside
    assert len(seen) == int(evals.max())
    frozen = [i for i in range(64) if int(evals[i]) < len(seen)]
    assert frozen  # the samples finish at different steps
    for i in frozen:  # after its last evaluation a sample's record does not change
        k = int(evals[i]) - 1
        for c in seen[k + 1:]:
            assert torch.equal(c["x"][i], seen[k]["x"][i]) and c["t"][i] == seen[k]["t"][i]
