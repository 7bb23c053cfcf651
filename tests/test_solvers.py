"""ODE back ends (scoresde.solvers) checked against closed-form solutions, not against themselves.

Reference problem: the 2-D linear ODE with per-sample parameters
    dy/dt = (a(t) I + w J) y,   a(t) = -k (1 + t),   J = [[0, -1], [1, 0]],
whose solution (I and J commute) is
    y(t1) = exp(-k [(t1 - t0) + (t1^2 - t0^2) / 2]) R(w (t1 - t0)) y(t0),
R a rotation. It is time dependent (so the stage times c_i matter), oscillatory for w != 0 and of
per-sample stiffness k. f uses only + and *, so it treats samples independently bit for bit.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from scoresde.solvers import (
    BOSH3,
    DOPRI5,
    EULER,
    HEUN,
    METHODS,
    MIDPOINT,
    RK4,
    ODEResult,
    SolverStatus,
    StepSizeController,
    available_methods,
    solve_ode,
)

ADAPTIVE_PER_SAMPLE = ("dopri5", "bosh3")
SHARED = ("torchdiffeq_dopri5", "scipy_rk45")
FIXED = ("euler", "heun", "midpoint", "rk4")


# ----------------------------------------------------------------------------- reference problem
class LinearProblem:
    """Per-sample parameters ``k`` (B,), ``w`` (B,) and initial values ``y0`` (B, 2)."""

    def __init__(self, k, w, y0, nan_mask=None):
        self.k, self.w, self.y0 = k, w, y0
        self.nan_mask = nan_mask
        self.times = []  # (t per call) for checks on where f is evaluated
        self.calls = 0

    @classmethod
    def random(cls, batch, seed=0, dtype=torch.float64, k_range=(0.1, 20.0), w_max=5.0, scale_range=(1e-2, 1e2)):
        g = torch.Generator().manual_seed(seed)
        u = lambda lo, hi, *shape: torch.empty(*shape, dtype=torch.float64).uniform_(lo, hi, generator=g)  # noqa: E731
        k = torch.exp(u(math.log(k_range[0]), math.log(k_range[1]), batch))
        w = u(-w_max, w_max, batch)
        scale = torch.exp(u(math.log(scale_range[0]), math.log(scale_range[1]), batch))
        y0 = torch.randn(batch, 2, dtype=torch.float64, generator=g) * scale[:, None]
        return cls(k.to(dtype), w.to(dtype), y0.to(dtype))

    def subset(self, idx):
        nm = None if self.nan_mask is None else self.nan_mask[idx]
        return LinearProblem(self.k[idx], self.w[idx], self.y0[idx], nm)

    def f(self, t, y, rows=None):
        """``rows``: the per-sample solvers call f on the running samples only, with their indices."""
        self.calls += 1
        self.times.append(t.detach().clone())
        assert t.shape == (y.shape[0],)
        k, w, nan_mask = self.k, self.w, self.nan_mask
        if rows is not None:
            k, w = k[rows], w[rows]
            nan_mask = None if nan_mask is None else nan_mask[rows]
        a = -k * (1.0 + t)
        d = torch.stack([a * y[:, 0] - w * y[:, 1], a * y[:, 1] + w * y[:, 0]], dim=1)
        if nan_mask is not None:
            d = torch.where(nan_mask[:, None], torch.full_like(d, float("nan")), d)
        return d

    def exact(self, t0, t1):
        k, w, y0 = self.k.double(), self.w.double(), self.y0.double()
        decay = torch.exp(-k * ((t1 - t0) + (t1**2 - t0**2) / 2))
        c, s = torch.cos(w * (t1 - t0)), torch.sin(w * (t1 - t0))
        rot = torch.stack([c * y0[:, 0] - s * y0[:, 1], s * y0[:, 0] + c * y0[:, 1]], dim=1)
        return decay[:, None] * rot


def scaled_error(y, exact, rtol, atol):
    """Per-sample max of |y - exact| / (atol + rtol |exact|)."""
    return ((y.double() - exact).abs() / (atol + rtol * exact.abs())).amax(dim=1)


# ----------------------------------------------------------------------------- tableaux vs order conditions
def _order_conditions(tab_b, tab, order):
    """Residuals of the Butcher order conditions up to ``order`` (<= 5), in exact arithmetic.

    Trees up to order 5 (Hairer et al. I, Table II.2.2): sum b Phi(tree) = 1 / gamma(tree).
    """
    s = len(tab.c)
    c = list(tab.c)
    A = [[tab.a[i][j] if j < i else Fraction(0) for j in range(s)] for i in range(s)]
    dot = lambda u, v: sum((x * y for x, y in zip(u, v)), Fraction(0))  # noqa: E731
    mul = lambda u, v: [x * y for x, y in zip(u, v)]  # noqa: E731
    Av = lambda v: [dot(A[i], v) for i in range(s)]  # noqa: E731
    pw = lambda k: [x**k for x in c]  # noqa: E731
    Ac = Av(c)
    conds = [(pw(0), 1)]
    if order >= 2:
        conds += [(c, Fraction(1, 2))]
    if order >= 3:
        conds += [(pw(2), Fraction(1, 3)), (Ac, Fraction(1, 6))]
    if order >= 4:
        conds += [(pw(3), Fraction(1, 4)), (mul(c, Ac), Fraction(1, 8)), (Av(pw(2)), Fraction(1, 12)),
                  (Av(Ac), Fraction(1, 24))]
    if order >= 5:
        conds += [(pw(4), Fraction(1, 5)), (mul(pw(2), Ac), Fraction(1, 10)), (mul(Ac, Ac), Fraction(1, 20)),
                  (mul(c, Av(pw(2))), Fraction(1, 15)), (Av(pw(3)), Fraction(1, 20)),
                  (mul(c, Av(Ac)), Fraction(1, 30)), (Av(mul(c, Ac)), Fraction(1, 40)),
                  (Av(Av(pw(2))), Fraction(1, 60)), (Av(Av(Ac)), Fraction(1, 120))]
    return [dot(tab_b, phi) - Fraction(target) for phi, target in conds]


@pytest.mark.parametrize("tab", [EULER, HEUN, MIDPOINT, RK4, BOSH3, DOPRI5], ids=lambda t: t.name)
def test_tableaux_satisfy_order_conditions(tab):
    assert all(r == 0 for r in _order_conditions(tab.b, tab, tab.order))
    # and not the next order: the stated order is the true one
    if tab.order < 5:
        assert any(r != 0 for r in _order_conditions(tab.b, tab, tab.order + 1))
    if tab.b_hat is not None:
        assert all(r == 0 for r in _order_conditions(tab.b_hat, tab, tab.embedded_order))
        assert any(r != 0 for r in _order_conditions(tab.b_hat, tab, tab.embedded_order + 1))


def test_registry_and_metadata():
    names = available_methods()
    for m in ADAPTIVE_PER_SAMPLE + SHARED + FIXED:
        assert m in names and METHODS[m].name == m
    assert set(available_methods(per_sample=True)) == set(ADAPTIVE_PER_SAMPLE)
    assert set(available_methods(adaptive=False)) == set(FIXED)
    assert {m: METHODS[m].order for m in FIXED} == {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


# ----------------------------------------------------------------------------- accuracy and convergence
def test_dopri5_meets_tolerance_and_error_falls_with_rtol():
    prob = LinearProblem.random(16, seed=1, k_range=(0.1, 5.0), w_max=3.0, scale_range=(0.1, 10.0))
    exact = prob.exact(0.0, 1.0)
    errors = []
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        res = solve_ode(prob.f, prob.y0, 0.0, 1.0, rtol=tol, atol=tol)
        assert res.ok.all()
        assert torch.equal(res.t, torch.ones(16, dtype=torch.float64))
        scaled = scaled_error(res.y, exact, tol, tol)
        # the global error is of the size of the local tolerance (a small multiple for 1 time unit)
        assert scaled.max() < 10.0, (tol, scaled.max())
        errors.append((res.y - exact).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] / errors[-1] > 1e4, errors


@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE + SHARED)
def test_adaptive_methods_accurate_forward_and_backward(method):
    """Backwards the solution grows up to e^7.5, so local errors add up to a few tens of tolerances;
    the 3(2) pair takes many more steps and accumulates more (its error is still far below torchdiffeq's bosh3)."""
    prob = LinearProblem.random(8, seed=2, k_range=(0.1, 5.0), w_max=3.0, scale_range=(0.1, 10.0))
    bound = {"dopri5": 20.0, "scipy_rk45": 20.0, "bosh3": 100.0, "torchdiffeq_dopri5": 100.0}[method]
    for t0, t1 in ((1e-3, 1.0), (1.0, 1e-3)):
        rtol, atol = 1e-7, 1e-9
        res = solve_ode(prob.f, prob.y0, t0, t1, method=method, rtol=rtol, atol=atol)
        assert isinstance(res, ODEResult) and res.method == method
        assert res.ok.all(), res.status
        assert torch.allclose(res.t, torch.full((8,), t1, dtype=torch.float64))
        assert scaled_error(res.y, prob.exact(t0, t1), rtol, atol).max() < bound


def _slope(steps, errs):
    return np.polyfit(np.log(steps), np.log(errs), 1)[0]


@pytest.mark.parametrize(
    "method, order, steps",
    [("euler", 1, (32, 64, 128, 256)), ("heun", 2, (32, 64, 128, 256)),
     ("midpoint", 2, (32, 64, 128, 256)), ("rk4", 4, (8, 16, 32, 64))],
)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_fixed_step_convergence_order(method, order, steps, direction):
    prob = LinearProblem.random(8, seed=3, k_range=(0.5, 2.0), w_max=3.0, scale_range=(0.5, 2.0))
    t0, t1 = (0.0, 1.0) if direction == "forward" else (1.0, 0.0)
    exact = prob.exact(t0, t1)
    errs = []
    for n in steps:
        prob.calls = 0
        res = solve_ode(prob.f, prob.y0, t0, t1, method=method, steps=n)
        assert res.ok.all()
        stages = METHODS[method].tableau.stages
        assert prob.calls == res.total_nfe == n * stages
        assert torch.equal(res.nfe, torch.full((8,), n * stages))
        assert torch.equal(res.n_accepted, torch.full((8,), n))
        assert torch.equal(res.t, torch.full((8,), t1, dtype=torch.float64))
        errs.append((res.y - exact).abs().max().item())
    slope = -_slope(steps, errs)
    assert abs(slope - order) < 0.2, (method, errs, slope)


# ----------------------------------------------------------------------------- per-sample independence
def _batch_of_64(dtype):
    """64 unrelated samples: stiffness over 3 decades, scales over 4, one NaN sample and one fast rotation."""
    prob = LinearProblem.random(64, seed=4, dtype=dtype, k_range=(0.05, 50.0), w_max=8.0, scale_range=(1e-2, 1e2))
    nan_mask = torch.zeros(64, dtype=torch.bool)
    nan_mask[7] = True
    prob.nan_mask = nan_mask
    prob.w[50] = 2e3  # ~300 periods: exhausts max_steps
    return prob


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE)
def test_per_sample_result_independent_of_batch(method, dtype):
    prob = _batch_of_64(dtype)
    rtol = {"dopri5": 1e-6, "bosh3": 1e-4}[method]
    atol = rtol * 1e-2 if dtype == torch.float64 else 1e-6
    kw = dict(method=method, rtol=rtol, atol=atol, max_steps={"dopri5": 400, "bosh3": 600}[method])
    batch = solve_ode(prob.f, prob.y0, 1.0, 1e-3, **kw)
    assert batch.status[7] == SolverStatus.NONFINITE
    assert batch.status[50] == SolverStatus.MAX_STEPS
    assert int(batch.ok.sum()) == 62
    close = 1e-12 if dtype == torch.float64 else 1e-6
    for i in (0, 13, 31, 62, 63):
        alone_prob = prob.subset(slice(i, i + 1))
        alone = solve_ode(alone_prob.f, alone_prob.y0, 1.0, 1e-3, **kw)
        assert alone.ok.all()
        # NFE of the lone solve = its number of f calls; the batched solve reports the same per sample
        assert alone_prob.calls == alone.total_nfe == int(alone.nfe)
        assert int(batch.nfe[i]) == int(alone.nfe)
        assert int(batch.n_accepted[i]) == int(alone.n_accepted)
        assert int(batch.n_rejected[i]) == int(alone.n_rejected)
        assert torch.allclose(batch.y[i], alone.y[0], rtol=close, atol=0.0)
        # on the CPU the arithmetic is row-wise and batch-invariant: bitwise identical
        assert torch.equal(batch.y[i], alone.y[0])
        assert torch.equal(batch.t[i], alone.t[0])
    # samples really did take different numbers of steps
    assert len(set(batch.nfe[batch.ok].tolist())) > 5


def test_torchdiffeq_dopri5_result_depends_on_batch_mates():
    prob = LinearProblem.random(64, seed=4, k_range=(0.05, 50.0), w_max=8.0, scale_range=(1e-2, 1e2))
    kw = dict(method="torchdiffeq_dopri5", rtol=1e-6, atol=1e-8)
    batch = solve_ode(prob.f, prob.y0, 1.0, 1e-3, **kw)
    assert batch.ok.all()
    assert len(set(batch.nfe.tolist())) == 1  # one shared step size -> one NFE for all
    assert batch.total_nfe == int(batch.nfe[0])
    exact = prob.exact(1.0, 1e-3)
    diffs, nfe_differs = [], []
    for i in (0, 13, 31):
        alone_prob = prob.subset(slice(i, i + 1))
        alone = solve_ode(alone_prob.f, alone_prob.y0, 1.0, 1e-3, **kw)
        diffs.append(((batch.y[i] - alone.y[0]).abs().max() / exact[i].abs().max()).item())
        nfe_differs.append(int(alone.nfe) != int(batch.nfe[i]))
    # far above float64 rounding (~1e-16): the batch mates changed the steps this sample took
    assert max(diffs) > 1e-9, diffs
    assert all(nfe_differs)


def test_scipy_rk45_agrees_with_dopri5_within_tolerance():
    prob = LinearProblem.random(6, seed=5, k_range=(0.1, 5.0), w_max=3.0, scale_range=(0.1, 10.0))
    rtol, atol = 1e-6, 1e-8
    ref = solve_ode(prob.f, prob.y0, 1.0, 1e-3, method="scipy_rk45", rtol=rtol, atol=atol)
    ours = solve_ode(prob.f, prob.y0, 1.0, 1e-3, method="dopri5", rtol=rtol, atol=atol)
    assert ref.ok.all() and ours.ok.all()
    exact = prob.exact(1.0, 1e-3)
    assert scaled_error(ref.y, exact, rtol, atol).max() < 10
    assert scaled_error(ours.y, ref.y, rtol, atol).max() < 20
    # scipy counts: init (f0 + starting-step probe) + 6 per attempted step; accepted steps are exact
    assert int(ref.nfe[0]) == ref.total_nfe == 2 + 6 * int(ref.n_accepted[0] + ref.n_rejected[0])


# ----------------------------------------------------------------------------- tuple state, mixed dtypes
@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE + SHARED + ("rk4",))
@pytest.mark.parametrize("t0, t1", [(1e-3, 1.0), (1.0, 1e-3)])
def test_tuple_state_with_float64_component(method, t0, t1):
    """y' = -y (float32, (B, 3, 4)), l' = sum(y) (float64, (B,)): l(t1) = l0 + sum(y0) (1 - e^{-(t1 - t0)})."""
    g = torch.Generator().manual_seed(6)
    B = 5
    y0 = torch.randn(B, 3, 4, generator=g)
    l0 = torch.randn(B, dtype=torch.float64, generator=g)
    seen = []

    def f(t, state):
        y, l = state
        seen.append((t.dtype, y.dtype, l.dtype, tuple(y.shape), tuple(l.shape)))
        return (-y, y.sum(dim=(1, 2)))  # a float32 derivative for the float64 component is cast

    res = solve_ode(f, (y0, l0), t0, t1, method=method, steps=200, rtol=1e-6, atol=1e-7)
    # the per-sample methods pass the running samples only: n <= B rows of every component
    assert {s[:3] for s in seen} == {(torch.float32, torch.float32, torch.float64)}
    assert all(s[3] == (s[4][0], 3, 4) and 1 <= s[4][0] <= B for s in seen)
    assert seen[0][3:] == ((B, 3, 4), (B,))
    assert isinstance(res.y, tuple) and len(res.y) == 2
    y, l = res.y
    assert y.dtype == torch.float32 and l.dtype == torch.float64 and y.shape == (B, 3, 4) and l.shape == (B,)
    assert res.t.dtype == torch.float32 and res.ok.all()
    y_exact = y0.double() * math.exp(-(t1 - t0))
    l_exact = l0 + y0.double().sum(dim=(1, 2)) * (1 - math.exp(-(t1 - t0)))
    assert (y.double() - y_exact).abs().max() < 2e-5
    assert (l - l_exact).abs().max() < 1e-4


def test_bare_tensor_in_bare_tensor_out():
    prob = LinearProblem.random(3, seed=7)
    res = solve_ode(prob.f, prob.y0, 0.0, 0.5)
    assert isinstance(res.y, torch.Tensor) and res.y.shape == (3, 2)
    for name in ("t", "nfe", "n_accepted", "n_rejected", "status"):
        assert getattr(res, name).shape == (3,)
    assert res.nfe.dtype == torch.long and res.status.dtype == torch.long
    with pytest.raises(Exception):
        res.y = None  # frozen


# ----------------------------------------------------------------------------- failures are per sample
@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE + FIXED)
def test_nan_sample_gets_nonfinite_others_succeed(method):
    prob = LinearProblem.random(6, seed=8, k_range=(0.1, 3.0), w_max=2.0, scale_range=(0.5, 2.0))
    prob.nan_mask = torch.tensor([False, False, True, False, False, False])
    res = solve_ode(prob.f, prob.y0, 1.0, 1e-3, method=method, steps=100, rtol=1e-6, atol=1e-8)
    assert res.status.tolist() == [0, 0, int(SolverStatus.NONFINITE), 0, 0, 0]
    assert res.ok.tolist() == [True, True, False, True, True, True]
    good = res.ok
    assert torch.isfinite(res.y).all()  # the failed sample keeps its last finite state (here y0)
    assert torch.equal(res.y[2], prob.y0[2]) and float(res.t[2]) == 1.0
    exact = prob.exact(1.0, 1e-3)[good]
    rel = ((res.y[good] - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)).max()
    assert rel < {"euler": 0.1, "heun": 2e-3, "midpoint": 2e-3, "rk4": 1e-6}.get(method, 1e-5)


@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE + FIXED)
def test_nan_appearing_mid_solve_keeps_last_good_state(method):
    """f turns NaN for sample 3 once t < 0.5 (integrating 1 -> 0): NONFINITE, state finite, t in [0.5, 1)."""
    prob = LinearProblem.random(5, seed=9, k_range=(0.1, 3.0), w_max=2.0, scale_range=(0.5, 2.0))
    base = prob.f

    def f(t, y, rows=None):
        d = base(t, y, rows=rows)
        idx = torch.arange(5) if rows is None else rows
        bad = (idx == 3) & (t < 0.5)
        return torch.where(bad[:, None], torch.full_like(d, float("nan")), d)

    res = solve_ode(f, prob.y0, 1.0, 0.0, method=method, steps=20)
    assert res.status.tolist() == [0, 0, 0, int(SolverStatus.NONFINITE), 0]
    assert torch.isfinite(res.y[3]).all()
    assert 0.44 <= float(res.t[3]) < 1.0
    # the last good state is the exact solution at the time reached (to solver accuracy)
    exact_at = prob.subset(slice(3, 4)).exact(1.0, float(res.t[3]))[0]
    assert (res.y[3] - exact_at).abs().max() < 0.05


@pytest.mark.parametrize("method", SHARED)
def test_shared_step_backends_fail_the_batch_without_raising(method):
    prob = LinearProblem.random(4, seed=10)
    prob.nan_mask = torch.tensor([False, True, False, False])
    res = solve_ode(prob.f, prob.y0, 1.0, 1e-3, method=method)
    assert (res.status == SolverStatus.NONFINITE).all()
    assert len(set(res.nfe.tolist())) == 1


@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE)
def test_stiff_sample_hits_max_steps(method):
    """k = 1e5 forward: explicit methods are stability-limited to h ~ 3 / k, i.e. ~ 1e4 steps."""
    prob = LinearProblem.random(5, seed=11, k_range=(0.1, 3.0), w_max=2.0, scale_range=(0.5, 2.0))
    prob.k[1] = 1e5
    max_steps = {"dopri5": 40, "bosh3": 150}[method]
    res = solve_ode(prob.f, prob.y0, 0.0, 1.0, method=method, rtol=1e-6, atol=1e-8, max_steps=max_steps)
    assert res.status.tolist() == [0, int(SolverStatus.MAX_STEPS), 0, 0, 0]
    assert int(res.n_accepted[1] + res.n_rejected[1]) == max_steps
    assert 0.0 < float(res.t[1]) < 1.0
    good = res.ok
    assert scaled_error(res.y[good], prob.exact(0.0, 1.0)[good], 1e-6, 1e-8).max() < 10


@pytest.mark.parametrize("method", SHARED)
def test_shared_backends_max_steps(method):
    prob = LinearProblem.random(3, seed=11)
    prob.k[1] = 1e5
    res = solve_ode(prob.f, prob.y0, 0.0, 1.0, method=method, max_steps=20)
    assert (res.status == SolverStatus.MAX_STEPS).all()


def test_step_underflow_reported():
    """y' = y^2 blows up at t = 1/y0 = 0.5: the step size collapses before the singularity."""
    y0 = torch.tensor([[2.0], [0.5]], dtype=torch.float64)
    res = solve_ode(lambda t, y: y * y, y0, 0.0, 1.0, rtol=1e-8, atol=1e-8, max_steps=100_000)
    assert int(res.status[1]) == SolverStatus.SUCCESS
    assert abs(float(res.y[1, 0]) - 1.0 / (1.0 / 0.5 - 1.0)) < 1e-6  # y = 1 / (1/y0 - t)
    assert int(res.status[0]) == SolverStatus.STEP_UNDERFLOW
    assert 0.49 < float(res.t[0]) < 0.51  # the numerical blow-up time is within the tolerance of 0.5


# ----------------------------------------------------------------------------- where and how often f is called
@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("t0, t1", [(1e-3, 1.0), (1.0, 1e-3)])
def test_f_only_evaluated_inside_interval_on_whole_batch(method, t0, t1):
    """Every call lies in [t0, t1]; the shared-step and fixed-step methods always pass the whole
    batch, the per-sample ones the whole batch at first and then the samples still running (all of
    it with running_only=False)."""
    prob = LinearProblem.random(7, seed=12, k_range=(0.1, 30.0))
    for running_only in (True, False):
        shapes = []
        f0 = prob.f
        prob.times = []

        def f(t, y, rows=None):
            shapes.append((tuple(t.shape), tuple(y.shape), t.dtype))
            return f0(t, y, rows=rows)

        solve_ode(f, prob.y0, t0, t1, method=method, steps=10, rtol=1e-5, atol=1e-7, running_only=running_only)
        if METHODS[method].per_sample and running_only:
            assert shapes[:2] == [((7,), (7, 2), torch.float64)] * 2  # f(t0, y0) and the starting-step probe
            assert all(ts == (n,) and ys == (n, 2) and dt == torch.float64 and 1 <= n <= 7 for ts, ys, dt in shapes
                       for n in [ts[0]])
            assert len({ts for ts, _, _ in shapes}) > 1  # samples finished at different times
        else:
            assert set(shapes) == {((7,), (7, 2), torch.float64)}
        times = torch.cat(prob.times)
        lo, hi = min(t0, t1), max(t0, t1)
        assert times.min() >= lo and times.max() <= hi
        assert torch.equal(prob.times[0], torch.full((7,), t0, dtype=torch.float64))


@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE)
def test_nfe_accounting_per_sample(method):
    prob = LinearProblem.random(9, seed=13, k_range=(0.05, 50.0))
    stages = METHODS[method].tableau.stages
    res = solve_ode(prob.f, prob.y0, 0.0, 1.0, method=method, rtol=1e-6, atol=1e-8)
    assert res.ok.all()
    # FSAL: f(t0, y0) + starting-step probe + (stages - 1) per attempted step
    assert torch.equal(res.nfe, 2 + (stages - 1) * (res.n_accepted + res.n_rejected))
    assert res.total_nfe == prob.calls == int(res.nfe.max())
    # each sample's count equals the calls of an f that only ever sees that sample
    for i in (0, 4, 8):
        alone = prob.subset(slice(i, i + 1))
        solve_ode(alone.f, alone.y0, 0.0, 1.0, method=method, rtol=1e-6, atol=1e-8)
        assert alone.calls == int(res.nfe[i])
    # with first_step there is no probe
    prob.calls = 0
    res2 = solve_ode(prob.f, prob.y0, 0.0, 1.0, method=method, rtol=1e-6, atol=1e-8, first_step=1e-3)
    assert res2.ok.all()
    assert torch.equal(res2.nfe, 1 + (stages - 1) * (res2.n_accepted + res2.n_rejected))
    assert res2.total_nfe == prob.calls


def test_torchdiffeq_nfe_counts_calls():
    prob = LinearProblem.random(4, seed=14)
    res = solve_ode(prob.f, prob.y0, 0.0, 1.0, method="torchdiffeq_dopri5")
    assert torch.equal(res.nfe, torch.full((4,), prob.calls)) and res.total_nfe == prob.calls
    assert (res.n_accepted == -1).all() and (res.n_rejected == -1).all()


def test_controller_options_and_progress_bar_do_not_change_results(capsys):
    prob = LinearProblem.random(4, seed=15)
    a = solve_ode(prob.f, prob.y0, 0.0, 1.0)
    b = solve_ode(prob.f, prob.y0, 0.0, 1.0, progress=True)
    assert torch.equal(a.y, b.y) and torch.equal(a.nfe, b.nfe)
    c = solve_ode(prob.f, prob.y0, 0.0, 1.0, controller=StepSizeController(beta=0.0), rtol=1e-8, atol=1e-8)
    assert c.ok.all() and scaled_error(c.y, prob.exact(0.0, 1.0), 1e-8, 1e-8).max() < 10
    with pytest.raises(ValueError, match="safety"):
        StepSizeController(safety=1.5)


# ----------------------------------------------------------------------------- input checks
def test_input_validation():
    prob = LinearProblem.random(2, seed=16)
    y0 = prob.y0
    with pytest.raises(ValueError, match="dopri5.*scipy_rk45"):
        solve_ode(prob.f, y0, 0.0, 1.0, method="rk45")
    with pytest.raises(ValueError, match="non-zero length"):
        solve_ode(prob.f, y0, 0.5, 0.5)
    bad = y0.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        solve_ode(prob.f, bad, 0.0, 1.0)
    with pytest.raises(ValueError, match="rtol"):
        solve_ode(prob.f, y0, 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="atol"):
        solve_ode(prob.f, y0, 0.0, 1.0, atol=-1e-3)
    for m in FIXED:
        with pytest.raises(ValueError, match="steps"):
            solve_ode(prob.f, y0, 0.0, 1.0, method=m)
    with pytest.raises(ValueError, match="steps"):
        solve_ode(prob.f, y0, 0.0, 1.0, method="euler", steps=0)
    with pytest.raises(ValueError, match="max_steps"):
        solve_ode(prob.f, y0, 0.0, 1.0, max_steps=0)
    with pytest.raises(ValueError, match="first_step"):
        solve_ode(prob.f, y0, 0.0, 1.0, first_step=-0.1)
    with pytest.raises(ValueError, match="finite"):
        solve_ode(prob.f, y0, 0.0, float("inf"))
    # f returns a structure other than y0's
    l0 = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="structure"):
        solve_ode(lambda t, s: s[0], (y0, l0), 0.0, 1.0)
    with pytest.raises(ValueError, match="structure"):
        solve_ode(lambda t, s: (s[0],), (y0, l0), 0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        solve_ode(lambda t, s: (s[0], s[0]), (y0, l0), 0.0, 1.0)
    with pytest.raises(ValueError, match="tensor"):
        solve_ode(lambda t, y: (y,), y0, 0.0, 1.0)
    with pytest.raises(ValueError, match="leading dimension"):
        solve_ode(prob.f, (y0, torch.zeros(3)), 0.0, 1.0)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE + SHARED + ("heun",))
def test_cuda_state_stays_on_device_and_matches_truth(method):
    """(y float32 (B, 2), l float64 (B,)) with y' = (a(t) I + w J) y and l' = a(t) l on the GPU."""
    dev = torch.device("cuda")
    cpu = LinearProblem.random(64, seed=17, k_range=(0.1, 5.0), w_max=3.0, scale_range=(0.1, 10.0))
    gpu = LinearProblem(cpu.k.to(dev), cpu.w.to(dev), cpu.y0.to(dev))
    devices = set()

    def make_f(p):
        def f(t, state, rows=None):
            y, l = state
            devices.update({t.device.type, y.device.type, l.device.type})
            k = p.k if rows is None else p.k[rows]
            return (p.f(t, y, rows=rows), -k * (1.0 + t.double()) * l)
        return f

    t0, t1 = 1.0, 1e-3
    l0 = torch.ones(64, dtype=torch.float64, device=dev)
    kw = dict(method=method, steps=2000, rtol=1e-5, atol=1e-6)
    res = solve_ode(make_f(gpu), (gpu.y0.float(), l0), t0, t1, **kw)
    assert devices == {"cuda"}
    for x in (res.y[0], res.y[1], res.t, res.nfe, res.n_accepted, res.status):
        assert x.device.type == "cuda"
    assert res.y[0].dtype == torch.float32 and res.y[1].dtype == torch.float64
    assert res.ok.all()
    exact = cpu.exact(t0, t1)
    loose = 4.0 if method == "bosh3" else 1.0  # the 3(2) pair accumulates more error backwards (see above)
    assert scaled_error(res.y[0].cpu(), exact, 1e-5, 1e-6).max() < 50 * loose
    l_exact = torch.exp(-cpu.k * ((t1 - t0) + (t1**2 - t0**2) / 2))
    assert ((res.y[1].cpu() - l_exact).abs() / l_exact).max() < 1e-4 * loose
    if method in ADAPTIVE_PER_SAMPLE:  # per-sample independence on the GPU too
        for i in (0, 31):
            alone = gpu.subset(slice(i, i + 1))
            r1 = solve_ode(make_f(alone), (alone.y0.float(), l0[:1]), t0, t1, **kw)
            assert int(r1.nfe[0]) == int(res.nfe[i])
            assert torch.allclose(r1.y[0][0], res.y[0][i], rtol=1e-5, atol=0)
            assert torch.allclose(r1.y[1][0], res.y[1][i], rtol=1e-10, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ADAPTIVE_PER_SAMPLE)
def test_cuda_graph_replay_is_bitwise_the_eager_loop(method, monkeypatch):
    """The graphs replay the eager loop's kernels on the same buffers: identical results, statuses
    and counters, including a sample that fails (NaN) and one that hits max_steps."""
    from scoresde.solvers import adaptive

    captured = []
    real_capture = adaptive._CudaGraphs.capture

    def spy(self, st):
        real_capture(self, st)
        captured.append(self.ready)

    monkeypatch.setattr(adaptive._CudaGraphs, "capture", spy)
    dev = torch.device("cuda")
    cpu = LinearProblem.random(64, seed=21, k_range=(0.05, 50.0), w_max=8.0, scale_range=(1e-2, 1e2))
    nan_mask = torch.zeros(64, dtype=torch.bool)
    nan_mask[5] = True
    gpu = LinearProblem(cpu.k.to(dev), cpu.w.to(dev), cpu.y0.to(dev), nan_mask.to(dev))
    gpu.w[9] = 1e4  # 1600 turns: runs into max_steps
    kw = dict(method=method, rtol=1e-6, atol=1e-8, max_steps=3000)
    eager = solve_ode(gpu.f, gpu.y0, 1.0, 1e-3, cuda_graphs=False, **kw)
    assert captured == []
    graphed = solve_ode(gpu.f, gpu.y0, 1.0, 1e-3, **kw)
    assert captured == [True]  # captured once, after the first (eager) step, then replayed
    assert graphed.status[5] == SolverStatus.NONFINITE and graphed.status[9] == SolverStatus.MAX_STEPS
    assert int(graphed.ok.sum()) == 62
    for a, b in [(eager.y, graphed.y), (eager.t, graphed.t), (eager.nfe, graphed.nfe),
                 (eager.n_accepted, graphed.n_accepted), (eager.n_rejected, graphed.n_rejected),
                 (eager.status, graphed.status)]:
        assert torch.equal(a, b)
    assert eager.total_nfe == graphed.total_nfe
    # and the replayed solve is the right one: global relative error (rtol = 1e-6 per step; these
    # solutions shrink and grow by up to 1e20 over the interval) -- 8e-6 for dopri5, 8e-5 for bosh3
    ok = graphed.ok.cpu()
    exact = cpu.exact(1.0, 1e-3)[ok]
    rel = ((graphed.y.cpu()[ok] - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)).max()
    assert rel < 5e-4
