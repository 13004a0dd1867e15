"""The monitor's compiled CPU path (pyx/monitor.pyx; docs/monitor.md §6) against an exact
reference and against the torch path it replaces on the CPU.

* ``rows_step``: Δ = q_{n+1} − q_n and the heavy-ball/Nesterov buffers of the gradients
  alone are elementwise operations rounded once each in the parameters' precision, so they
  equal NumPy's same operations bit for bit; every row sum is within the bound of
  recursive summation, (m − 1)·u·Σ|x| (u = 2⁻⁵³, m the row's length), of the exactly
  rounded sum (``math.fsum``) of the same rounded products;
* the monitor with ``cpu_kernel`` on and off (the torch kernels, as on an accelerator)
  gives the same report up to the rounding of those float64 sums, for every optimizer the
  monitor knows, with closures, mixed param groups and float32 models.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the monitor needs the optional extra torch "
                                            "(pip install 'torch==2.13.0')")
from test_torch_monitor_loops import (  # noqa: E402, F401  (tests/ is on sys.path)
    OPTIMIZERS,
    _batches,
    _data,
    _mlp,
    _one_thread,  # the module's autouse fixture: one intra-op thread here too
    _train,
)

from noether_core import _bridge  # noqa: E402
from noether_core.torch import NoetherMonitor  # noqa: E402

MK = _bridge.monitor_kernels
U = 2.0 ** -53


def _sum_ok(got, prods):
    """|got − fsum(prods)| ≤ (m − 1)·u·Σ|prods| (+ one rounding of the exact sum)."""
    exact = math.fsum(prods.tolist())
    bound = max(len(prods) - 1, 0) * U * float(np.sum(np.abs(prods))) + U * abs(exact)
    assert abs(got - exact) <= bound, (got, exact, bound)


@st.composite
def _cases(draw):
    dt = draw(st.sampled_from([np.float32, np.float64]))
    blocks = draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 40)),
                           min_size=1, max_size=3))
    N = sum(r * m for r, m in blocks)
    n_pieces = draw(st.integers(1, 3))
    cuts = sorted(draw(st.lists(st.integers(0, N), min_size=n_pieces - 1,
                                max_size=n_pieces - 1)))
    stats = draw(st.sampled_from([MK.STATS_NONE, MK.STATS_SGD, MK.STATS_NESTEROV]))
    return (dt, blocks, cuts, stats, draw(st.booleans()), draw(st.booleans()),
            draw(st.floats(0.0, 0.99)), draw(st.floats(0.01, 1.0)),
            draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_rows_step_is_the_exact_sums_of_the_rounded_products(case):
    dt, blocks, cuts, stats, first, have_w, beta, c, seed = case
    rng = np.random.default_rng(seed)
    N = sum(r * m for r, m in blocks)
    R = sum(r for r, _ in blocks)
    q0 = rng.standard_normal(N).astype(dt)
    q1 = (q0 + 0.01 * rng.standard_normal(N)).astype(dt)
    g = rng.standard_normal(N).astype(dt)
    gp, dp = rng.standard_normal(N).astype(dt), rng.standard_normal(N).astype(dt)
    b0, w0 = rng.standard_normal(N).astype(dt), rng.standard_normal(N).astype(dt)
    X = np.full((4, N), np.nan, dtype=dt)
    X[1] = q0
    Xp = np.full((4, N), np.nan, dtype=dt)
    Xp[0], Xp[2] = gp, dp
    b, w = b0.copy(), w0.copy()
    out = np.full((10, R), -7.0)
    MK.rows_step(np.split(q1, cuts), np.split(g, cuts), X, Xp, out,
                 np.array(blocks, dtype=np.intp).reshape(-1, 2), stats, first=first,
                 beta=beta, c=c, b=b, w=w, have_w=have_w)
    d = q1 - q0                                       # rounded once, in dt
    np.testing.assert_array_equal(X[0], g)
    np.testing.assert_array_equal(X[3], q1)
    np.testing.assert_array_equal(X[2], d)
    cols = [g * g, q0 * g, d * g, q0 * q0, d * d, q1 * q1, gp * g, dp * g]
    if stats:
        B, C = dt(beta), dt(c)
        bn = g.copy() if first else (b0 * B) + (C * g)
        np.testing.assert_array_equal(b, bn)
        if stats == MK.STATS_SGD:
            cols += [bn * bn, np.zeros(N, dt)]
        else:
            wn = g + (B * bn)
            np.testing.assert_array_equal(w, wn)
            lag = w0 * b0 if (have_w and not first) else np.zeros(N, dt)
            cols += [wn * wn, lag]
    else:
        np.testing.assert_array_equal(b, b0)          # untouched
        assert np.all(out[8:] == -7.0)
    e0, row = 0, 0
    for r, m in blocks:
        for _ in range(r):
            for k, col in enumerate(cols):
                _sum_ok(out[k, row], col[e0:e0 + m].astype(np.float64))
            e0 += m
            row += 1


def test_rows_step_refuses_what_does_not_fit():
    X = np.zeros((4, 6))
    seg = np.array([[2, 3]], dtype=np.intp)
    out = np.zeros((10, 2))
    with pytest.raises(ValueError, match="the pieces have 5 elements, the layout 6"):
        MK.rows_step([np.zeros(5)], None, X, X.copy(), out, seg)
    with pytest.raises(ValueError, match="a piece has dtype float32, the buffers float64"):
        MK.rows_step([np.zeros(6, np.float32)], None, X, X.copy(), out, seg)
    with pytest.raises(ValueError, match="a piece is not C-contiguous"):
        MK.rows_step([np.zeros(12)[::2]], None, X, X.copy(), out, seg)
    with pytest.raises(ValueError, match="seg covers 4 elements, X has 6"):
        MK.rows_step(None, None, X, X.copy(), out, np.array([[2, 2]], dtype=np.intp))
    with pytest.raises(ValueError, match=r"out must be a \(K, 2\) float64 array"):
        MK.rows_step(None, None, X, X.copy(), np.zeros((10, 3)), seg)
    with pytest.raises(ValueError, match="b has 5 elements, expected 6"):
        MK.rows_step(None, None, X, X.copy(), out, seg, MK.STATS_SGD, b=np.zeros(5))
    with pytest.raises(ValueError, match="stats must be 0, 1 or 2, got 3"):
        MK.rows_step(None, None, X, X.copy(), out, seg, 3)
    with pytest.raises(ValueError, match="X has dtype int64"):
        MK.rows_step(None, None, np.zeros((4, 6), np.int64), X, out, seg)
    ro = X.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="X is read-only"):
        MK.rows_step(None, None, ro, X, out, seg)
    before = X.copy()
    with pytest.raises(ValueError):                  # nothing written before the checks
        MK.rows_step([np.ones(6)], [np.ones(5)], X, X.copy(), out, seg)
    np.testing.assert_array_equal(X, before)


_ARRAYS = ("norm2", "grad_norm2", "grad_dot_q", "step_norm2", "angular_update",
           "grad_correlation", "update_dot_q", "update_norm2", "final_norm2",
           "cumulative", "final_cumulative")


def _run(cpu_kernel, make, *, dtype=torch.float64, closure=False, steps=25, groups=False):
    X, y = _data()
    model = _mlp()
    if dtype != torch.float64:
        model = model.to(dtype)
        X = X.to(dtype)
    params = model.parameters()
    if groups:                      # two groups with different momenta: mixed coefficients
        ps = list(model.parameters())
        params = [{"params": ps[:3]}, {"params": ps[3:], "momentum": 0.5}]
    opt = make(params)
    mon = NoetherMonitor(model, opt, log_every=7)
    mon.cpu_kernel = cpu_kernel
    _train(model, opt, X, y, _batches(steps), closure=closure)
    rep = mon.report()
    assert mon._fast == cpu_kernel          # the path asked for is the path taken
    return rep


def _same_report(a, b, rtol):
    assert a.labels == b.labels and a.rule == b.rule
    for f in _ARRAYS:
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.nanmax(np.abs(y)),
                                   err_msg=f)
    # the identity holds on both paths at the bound
    assert np.nanmax(a.balance_residual) <= 1e-10 and np.nanmax(b.balance_residual) <= 1e-10
    ea, eb = a.equilibrium(0.5), b.equilibrium(0.5)
    for k in eb.grad_stats:
        np.testing.assert_allclose(ea.grad_stats[k], eb.grad_stats[k], rtol=rtol * 1e2,
                                   atol=rtol, err_msg=k)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_cpu_kernel_gives_the_torch_paths_report(name):
    """float64: the two paths differ only in the order of float64 row sums (~1e-16
    relative per sum); 1e-11 leaves room for the report's quotients of such sums."""
    make = OPTIMIZERS[name][0]
    _same_report(_run(True, make), _run(False, make), rtol=1e-11)


def test_cpu_kernel_with_closures_mixed_groups_and_float32():
    make = OPTIMIZERS["nesterov"][0]
    _same_report(_run(True, make, closure=True), _run(False, make, closure=True), 1e-11)
    make = OPTIMIZERS["sgd"][0]
    _same_report(_run(True, make, groups=True), _run(False, make, groups=True), 1e-11)
    # float32: products rounded to float32 identically on both paths, summed in float64
    # in a different order; the report's float32-level quantities agree to ~1e-6
    for name in ("sgd", "adamw"):
        make = OPTIMIZERS[name][0]
        a = _run(True, make, dtype=torch.float32)
        b = _run(False, make, dtype=torch.float32)
        for f in ("norm2", "grad_norm2", "step_norm2", "angular_update"):
            np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-9,
                                       err_msg=f)


def _conv_run(cpu_kernel, channels_last, steps=12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 25, 3)).double()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    mon = NoetherMonitor(model, opt, log_every=5)
    mon.cpu_kernel = cpu_kernel
    g = torch.Generator().manual_seed(3)
    X = torch.randn(64, 2, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return mon, mon.report()


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_on_conv_weights_in_either_memory_format(channels_last):
    """A channels_last conv weight is not C-contiguous: its pieces fall back to torch's
    gathers step by step (the kernel still does the rest); the report is the torch
    path's either way."""
    mon, a = _conv_run(True, channels_last)
    assert mon._fast and (mon._qv is None) == channels_last
    _, b = _conv_run(False, channels_last)
    _same_report(a, b, rtol=1e-11)
