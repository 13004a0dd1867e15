"""scan_integrate through the compiled grid kernel (issue 17 item 5; docs/integrators.md §9).

The claim checked here is the grid kernel's contract: every point of a grid is *bitwise*
the separate :func:`noether_core.integrate` call with the same parameters (final state,
final time, gradient evaluations, accepted steps, divergence flag and message), for every
model the kernel runs (M1 Damped, M2 RadialAngular exact and reduced, M4 GradientFlow),
every method (the conformal splittings, explicit Euler, RK4, dopri5, dop853), step sizes
and tolerances as grid axes, any thread count and chunking, and points that fail
(a non-finite state, r reaching 0, max_steps).  Bitwise is the right tolerance: the kernel
calls the same compiled loops (``_fixed_loop``, ``_adaptive_loop``) on the same inputs,
so any difference at all would be a bug in how the grid's table is built.
"""
import contextlib
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import noether_core as nc
from noether_core import _bridge, _status
from noether_core._parallel import STOPS
from noether_core.errors import DivergenceWarning
from noether_core.models import Damped, GradientFlow, RadialAngular

D = 4


def _pot(seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, D))
    return nc.potentials.RayleighQuotient(A + A.T)


def _y0(model_cls, seed):
    rng = np.random.default_rng(seed + 1)
    q, v = rng.standard_normal(D), 0.3 * rng.standard_normal(D)
    if model_cls is RadialAngular:
        return RadialAngular.from_cartesian(q, v)
    if model_cls is GradientFlow:
        return q
    return np.concatenate([q, v])


def _single(model_cls, pot, y0, t_end, method, params):
    """The separate integrate call of one grid point, as a row like the scan's."""
    run = {k: params[k] for k in ("h", "rtol", "atol") if k in params}
    model = model_cls(pot, **{k: v for k, v in params.items() if k not in run})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        try:
            r = nc.integrate(model, y0, t_end=t_end, method=method, **run)
        except nc.IntegrationError as exc:
            r = exc.result
            return r.y_final, r.t_final, r.nfev, r.n_steps, True, str(exc)
    return r.y_final, r.t_final, r.nfev, r.n_steps, bool(r.diverged), r.message


def _assert_points_equal(res, model_cls, pot, y0, t_end, method):
    for idx in np.ndindex(*res.shape):
        y, tf, nfev, ns, div, msg = _single(model_cls, pot, y0, t_end, method,
                                            res.params(*idx))
        np.testing.assert_array_equal(res.y_final[idx], y, err_msg=str(res.params(*idx)))
        assert res.t_final[idx] == tf
        assert res.nfev[idx] == nfev
        assert res.n_steps[idx] == ns
        assert res.diverged[idx] == div
        assert res.message[idx] == msg


def _scan(model_cls, pot, y0, t_end, method, **grid):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        return nc.scan_integrate(model_cls, pot, y0, t_end=t_end, method=method, **grid)


FIXED = {Damped: ("conformal-euler", "conformal-verlet", "conformal-yoshida4", "rk4"),
         RadialAngular: ("conformal-euler", "conformal-verlet", "conformal-yoshida4", "rk4"),
         GradientFlow: ("euler", "rk4")}
MODELS = (Damped, RadialAngular, GradientFlow)
pos = st.floats(0.05, 2.0)


@settings(max_examples=25, deadline=None)
@given(mi=st.integers(0, 2), mj=st.integers(0, 3), seed=st.integers(0, 100),
       mu=st.lists(pos, min_size=1, max_size=3, unique=True), k=st.floats(0.0, 0.3),
       h=st.lists(st.floats(0.005, 0.2), min_size=1, max_size=2, unique=True),
       t_end=st.floats(0.0, 3.0),
       threads=st.integers(1, 3), reduced=st.booleans())
def test_fixed_step_points_equal_integrate(mi, mj, seed, mu, k, h, t_end, threads,
                                           reduced):
    """Fixed-step grids (SPEC §5 methods; conformal splittings docs/integrators.md §3-4):
    each point bitwise its integrate call, h adjusted to divide t_end - t0 the same way."""
    model_cls = MODELS[mi]
    method = FIXED[model_cls][mj % len(FIXED[model_cls])]
    pot, y0 = _pot(seed), _y0(model_cls, seed)
    grid = dict(mu=mu, k=k, h=h, threads=threads)
    if model_cls is not GradientFlow:
        grid["m"] = [0.3, 1.1]
    if model_cls is RadialAngular:
        grid["reduced"] = reduced
    res = _scan(model_cls, pot, y0, t_end, method, **grid)
    _assert_points_equal(res, model_cls, pot, y0, t_end, method)


@settings(max_examples=20, deadline=None)
@given(mi=st.integers(0, 2), d8=st.booleans(), seed=st.integers(0, 100),
       mu=st.lists(pos, min_size=1, max_size=3, unique=True),
       rtol=st.lists(st.sampled_from([1e-3, 1e-6, 1e-9]), min_size=1, max_size=2,
                     unique=True),
       h=st.sampled_from([None, 0.01, 0.3]), t_end=st.floats(0.0, 4.0),
       threads=st.integers(1, 3))
def test_adaptive_points_equal_integrate(mi, d8, seed, mu, rtol, h, t_end, threads):
    """dopri5 / dop853 grids with per-point step control (docs/integrators.md §5): rtol as
    an axis, automatic or given first step; each point bitwise its integrate call."""
    model_cls = MODELS[mi]
    method = "dop853" if d8 else "dopri5"
    pot, y0 = _pot(seed), _y0(model_cls, seed)
    grid = dict(mu=mu, rtol=rtol, atol=1e-10, threads=threads)
    if h is not None:
        grid["h"] = h
    if model_cls is not GradientFlow:
        grid["m"] = 0.7
    res = _scan(model_cls, pot, y0, t_end, method, **grid)
    _assert_points_equal(res, model_cls, pot, y0, t_end, method)


def test_failing_points_equal_integrate():
    """Points that stop: a non-finite state (explicit Euler with h far above 2 mu/L on a
    stiff quadratic) beside points that finish; r reaching 0 in M2 (k large, strong
    inward push); their flags and messages are integrate's."""
    stiff = nc.potentials.Quadratic(np.diag([1.0, 400.0]))
    y0 = np.array([1.0, 1.0])
    res = _scan(GradientFlow, stiff, y0, 50.0, "euler", mu=[1.0, 0.001], h=0.004)
    assert res.diverged.tolist() == [False, True]
    _assert_points_equal(res, GradientFlow, stiff, y0, 50.0, "euler")
    pot = _pot(3)
    y0 = RadialAngular.from_cartesian(np.ones(D), -np.ones(D))
    res = _scan(RadialAngular, pot, y0, 5.0, "conformal-verlet", m=1.0, mu=0.0,
                k=[0.0, 50.0], h=0.01)
    _assert_points_equal(res, RadialAngular, pot, y0, 5.0, "conformal-verlet")
    assert res.diverged.any()


def test_threads_and_executors_agree_bitwise():
    """Results do not depend on threads, chunking or a thread-pool executor."""
    pot, y0 = _pot(7), _y0(Damped, 7)
    kw = dict(m=np.linspace(0.2, 2.0, 5), mu=np.linspace(0.1, 1.0, 7), rtol=1e-7)
    one = _scan(Damped, pot, y0, 3.0, "dop853", threads=1, **kw)
    two = _scan(Damped, pot, y0, 3.0, "dop853", threads=2, **kw)
    with ThreadPoolExecutor(2) as ex:
        ex_res = _scan(Damped, pot, y0, 3.0, "dop853", executor=ex, n_chunks=4, **kw)
    for r in (two, ex_res):
        np.testing.assert_array_equal(one.y_final, r.y_final)
        np.testing.assert_array_equal(one.nfev, r.nfev)
        np.testing.assert_array_equal(one.t_final, r.t_final)
    assert STOPS.n_running() == 0


def test_python_potential_points_equal_integrate():
    """A Python fn runs through the same kernel, one point per call (its failure is
    collected after each call); numbers bitwise the compiled potential's."""
    A = np.diag([1.0, 2.0, 3.0])
    pyp = nc.potentials.Python(lambda q: (0.5 * q @ A @ q, A @ q), 3)
    y0 = np.array([1.0, -0.5, 0.2, 0.0, 0.0, 0.0])
    res = _scan(Damped, pyp, y0, 2.0, "rk4", m=[0.5, 1.0], mu=0.3, h=0.05, threads=2)
    _assert_points_equal(res, Damped, pyp, y0, 2.0, "rk4")


def test_grid_kernel_cancel_and_entry_checks():
    """GridKernel.cancel() before run: no point runs; a flag set by another thread while
    a long point runs stops it at a poll (status INTERRUPTED) within a short time."""
    import threading
    import time

    pot = nc.potentials.RayleighQuotient(np.diag(np.linspace(1.0, 2.0, 32)))
    model = GradientFlow(pot, mu=1.0)
    P = 2
    plan = _bridge.GridPlan(model.kind, 0, np.tile(model.kernel_inputs().hp, (P, 1)), 0.0,
                            1e9, np.full(P, 0.01), np.full(P, 10**11, dtype=np.intp),
                            np.zeros(P), np.zeros(P))
    out = _bridge.GridOutputs.start(np.ones(32), P)
    kern = _bridge.grid_kernel(plan, pot._kernel, out)
    kern.cancel()
    assert kern.run(0, P) == 0
    kern = _bridge.grid_kernel(plan, pot._kernel, out)
    threading.Timer(0.2, kern.cancel).start()
    t0 = time.perf_counter()
    assert kern.run(0, P) == 0
    took = time.perf_counter() - t0
    assert took < 1.5, took
    assert out.counts[0, 0] == _status.INTERRUPTED
    # the adaptive loop polls the same flag (dop853, a run of ~10⁹ steps)
    plan8 = _bridge.GridPlan(model.kind, 5, plan.hp, 0.0, 1e9, np.zeros(P),
                             np.zeros(P, dtype=np.intp), np.full(P, 1e-12),
                             np.full(P, 1e-14), 10**12)
    kern = _bridge.grid_kernel(plan8, pot._kernel, out)
    threading.Timer(0.2, kern.cancel).start()
    t0 = time.perf_counter()
    assert kern.run(0, P) == 0
    assert time.perf_counter() - t0 < 1.5
    assert out.counts[0, 0] == _status.INTERRUPTED
    with pytest.raises(ValueError, match="lo <= hi"):
        kern.run(1, 0)
    with pytest.raises(ValueError, match="rows"):
        _bridge.grid_kernel(plan, pot._kernel, _bridge.GridOutputs.start(np.ones(32), 3))
    with pytest.raises(ValueError, match="state length"):
        _bridge.grid_kernel(plan, pot._kernel, _bridge.GridOutputs.start(np.ones(5), P))


# -- SIMD lanes (pyx/integ_lanes.h): M1 conformal splittings on Quadratic / Rayleigh -------
ISAS = _bridge.integrator_kernels.lane_isas()


@contextlib.contextmanager
def _isa(name):
    """Run the grids with one lane version (base, and avx512 where the CPU has it)."""
    from noether_core import _scan_integrate
    saved = _scan_integrate._LANE_ISA["isa"]
    _scan_integrate._LANE_ISA["isa"] = name
    try:
        yield
    finally:
        _scan_integrate._LANE_ISA["isa"] = saved


def _quadratic(seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((D, D))
    return nc.potentials.Quadratic(B @ B.T / D + 0.1 * np.eye(D), rng.standard_normal(D))


@pytest.mark.parametrize("lane_isa", ISAS)
@settings(max_examples=25, deadline=None)
@given(split=st.sampled_from(["conformal-euler", "conformal-verlet", "conformal-yoshida4",
                              "rk4", "M4 euler", "M4 rk4"]),
       quad=st.booleans(), seed=st.integers(0, 100),
       m=st.lists(st.floats(0.05, 3.0), min_size=1, max_size=5, unique=True),
       mu=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=4, unique=True),
       k=st.sampled_from([0.0, 0.05]),
       h=st.lists(st.sampled_from([0.01, 0.02, 0.05, 0.3]), min_size=1, max_size=3,
                  unique=True),
       t_end=st.floats(0.0, 3.0), threads=st.integers(1, 2))
def test_lanes_equal_integrate(lane_isa, split, quad, seed, m, mu, k, h, t_end, threads):
    """M1 grids of the conformal splittings and RK4, M4 grids of explicit Euler and RK4,
    run in blocks of 8 SIMD lanes (points grouped by step count; spare lanes of a short
    block; k = 0 lanes beside k > 0): every point bitwise its integrate call, with either
    lane version (integ_lanes.h: the same IEEE operations per lane as the scalar loop)."""
    pot = _quadratic(seed) if quad else _pot(seed)
    if split.startswith("M4"):
        model_cls, method, grid = GradientFlow, split[3:], dict(mu=sorted({0.05 + x for x in mu}))
    else:
        model_cls, method, grid = Damped, split, dict(m=m, mu=mu)
    y0 = _y0(model_cls, seed)
    with _isa(lane_isa):
        res = _scan(model_cls, pot, y0, t_end, method, k=k, h=h, threads=threads, **grid)
    _assert_points_equal(res, model_cls, pot, y0, t_end, method)


@pytest.mark.parametrize("lane_isa", ISAS)
def test_lanes_stop_diverging_points_alone(lane_isa):
    """Lanes whose state turns non-finite (a stiff quadratic, h far beyond the stability
    bound for small m) stop at that step with integrate's state, step count and message;
    the other lanes of the block go on to t_end."""
    stiff = nc.potentials.Quadratic(np.diag([1.0, 1e6, 2.0, 3.0]))
    y0 = np.array([1.0, 1.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    with _isa(lane_isa):
        res = _scan(Damped, stiff, y0, 20.0, "conformal-verlet", m=[1e-3, 10.0, 1e4],
                    mu=0.0, h=0.01)
    assert res.diverged.any() and not res.diverged.all()
    _assert_points_equal(res, Damped, stiff, y0, 20.0, "conformal-verlet")
    q0 = y0[:4]
    with _isa(lane_isa):
        res = _scan(GradientFlow, stiff, q0, 5.0, "rk4", mu=[1e-3, 1e4], h=0.01)
    assert res.diverged.tolist() == [True, False]
    _assert_points_equal(res, GradientFlow, stiff, q0, 5.0, "rk4")


def test_lanes_cancel():
    """The lane blocks poll the cancel flag every 64 steps as the scalar loop does."""
    import threading
    import time

    pot = nc.potentials.RayleighQuotient(np.diag(np.linspace(1.0, 2.0, 16)))
    model = Damped(pot, m=1.0, mu=0.1)
    P = 8
    plan = _bridge.GridPlan(model.kind, 1, np.tile(model.kernel_inputs().hp, (P, 1)), 0.0,
                            1e9, np.full(P, 0.01), np.full(P, 10**11, dtype=np.intp),
                            np.zeros(P), np.zeros(P), 0, pot._lane_form())
    out = _bridge.GridOutputs.start(np.ones(32), P)
    kern = _bridge.grid_kernel(plan, pot._kernel, out)
    assert kern.lane_pot >= 0
    threading.Timer(0.2, kern.cancel).start()
    t0 = time.perf_counter()
    assert kern.run(0, P) == 0
    assert time.perf_counter() - t0 < 1.5
    assert (out.counts[:, 0] == _status.INTERRUPTED).all()
    assert (out.counts[:, 2] % 64 == 63).all()          # stopped at a poll


@pytest.mark.parametrize("model_cls,grid", [
    (Damped, dict(m=[0.3, 1.0, 2.0], mu=[0.0, 0.5], k=[0.0, 0.1, 0.2, 0.3])),
    (RadialAngular, dict(m=0.5, mu=[0.1, 0.2], k=0.01, reduced=(False, True))),
    (GradientFlow, dict(k=[0.0, 0.5], mu=[0.5, 1.0, 1.5]))])
def test_column_table_equals_per_point_rows(model_cls, grid):
    """scan_integrate validates these models a column at a time and assembles the kernel
    rows by broadcasting (_column_table): the rows equal each point's Model._hp(), in
    grid order; a bad value anywhere falls back to the per-point loop and its error."""
    from itertools import product

    from noether_core import _grid
    from noether_core._scan_integrate import _column_table

    pot = _pot(1)
    axes, fixed = _grid.split_grid(grid, dict.fromkeys(grid, 0.0))
    shape = tuple(len(v) for v in axes.values())
    first, hp = _column_table(model_cls, pot, axes, fixed, shape)
    want = [model_cls(pot, **fixed, **dict(zip(axes, c, strict=True)))._hp()
            for c in product(*(v.tolist() for v in axes.values()))]
    np.testing.assert_array_equal(hp, np.array(want))
    np.testing.assert_array_equal(first._hp(), want[0])
    bad = dict(grid, mu=[0.5, -1.0] if model_cls is not GradientFlow else [0.5, 0.0])
    axes, fixed = _grid.split_grid(bad, dict.fromkeys(bad, 0.0))
    assert _column_table(model_cls, pot, axes, fixed,
                         tuple(len(v) for v in axes.values())) is None
    y0 = _y0(model_cls, 1)
    with pytest.raises(ValueError, match="grid point .*mu"):
        nc.scan_integrate(model_cls, pot, y0, t_end=1.0, method="rk4", h=0.1, **bad)


@pytest.mark.parametrize("lane_isa", ISAS)
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 16, 17])
def test_lanes_every_dimension(lane_isa, d):
    """The lane block is compiled with d a constant for d = 2, 4, 8, 16 and for any d
    otherwise: both forms bitwise integrate (verlet and rk4, Rayleigh and Quadratic)."""
    rng = np.random.default_rng(d)
    B = rng.standard_normal((d, d))
    pots = [nc.potentials.Quadratic(B @ B.T / d + np.eye(d), rng.standard_normal(d))]
    if d > 1:
        pots.append(nc.potentials.RayleighQuotient(B + B.T))
    y0 = np.concatenate([rng.standard_normal(d), 0.2 * rng.standard_normal(d)])
    for pot in pots:
        for method in ("conformal-verlet", "rk4"):
            with _isa(lane_isa):
                res = _scan(Damped, pot, y0, 1.0, method, m=[0.5, 1.5], mu=[0.1, 0.4, 0.7],
                            k=[0.0, 0.05], h=0.02)
            _assert_points_equal(res, Damped, pot, y0, 1.0, method)
