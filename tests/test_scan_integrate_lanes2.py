"""M2 (Eq. 13) grids in SIMD lanes (issue 17; docs/integrators.md §9.1).

The claim: a RadialAngular grid on a potential with a lane form runs in blocks of 8 SIMD
lanes (pyx/integ_lanes_impl.h: the flows D, B, A, C of §2.2 composed as _m2_lie /
_m2_strang / Yoshida's jump, and RK4 on M2's right-hand side), and every point is
*bitwise* its separate :func:`noether_core.integrate` call: final state, final time,
gradient evaluations, steps, divergence flag and message.  Bitwise is the tolerance
because each lane performs the scalar loop's IEEE operations in its order (cos, sin and
exp by the same C library calls, lane by lane); any difference is a bug.
"""
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan_integrate_lanes import ISAS, _assert_points_equal, _isa, _scan

import noether_core as nc
from noether_core import _bridge, _status
from noether_core.errors import DivergenceWarning
from noether_core.models import RadialAngular

SPLITS = ("conformal-euler", "conformal-verlet", "conformal-yoshida4", "rk4")


def _rayleigh(d, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(B + B.T)


def _y0(d, seed, speed=0.3, radial=0.0):
    rng = np.random.default_rng(seed + 1)
    q, v = rng.standard_normal(d), speed * rng.standard_normal(d)
    v = v + radial * q
    return RadialAngular.from_cartesian(q, v)


def _lane_kernel_used(pot, y0, method, **grid):
    """Whether scan_integrate's grid kernel for this grid runs lanes (lane_pot >= 0)."""
    model = RadialAngular(pot, m=1.0, mu=0.1)
    P = 1
    plan = _bridge.GridPlan(model.kind, nc._integrate._METHOD_CODE[method],
                            np.tile(model.kernel_inputs().hp, (P, 1)), 0.0, 1.0,
                            np.full(P, 0.1), np.full(P, 10, dtype=np.intp), np.zeros(P),
                            np.zeros(P), 0, pot._lane_form())
    out = _bridge.GridOutputs.start(y0, P)
    return _bridge.grid_kernel(plan, pot._kernel, out).lane_pot >= 0


@pytest.mark.parametrize("method", SPLITS)
def test_m2_grids_run_in_lanes(method):
    """The M2 splittings and RK4 on a RayleighQuotient take the lane path."""
    pot = _rayleigh(4, 0)
    assert _lane_kernel_used(pot, _y0(4, 0), method)


@pytest.mark.parametrize("lane_isa", ISAS)
@settings(max_examples=20, deadline=None)
@given(method=st.sampled_from(SPLITS), seed=st.integers(0, 100),
       d=st.sampled_from([2, 3, 4, 8]),
       m=st.lists(st.floats(0.05, 3.0), min_size=1, max_size=4, unique=True),
       mu=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=3, unique=True),
       k=st.lists(st.sampled_from([0.0, 0.01, 0.5]), min_size=1, max_size=2, unique=True),
       reduced=st.sampled_from([(False,), (True,), (False, True)]),
       h=st.lists(st.sampled_from([0.01, 0.02, 0.05, 0.2]), min_size=1, max_size=2,
                  unique=True),
       t_end=st.floats(0.0, 2.0), threads=st.integers(1, 2))
def test_m2_lanes_equal_integrate(lane_isa, method, seed, d, m, mu, k, reduced, h, t_end,
                                  threads):
    """M2 exact and reduced (in the same block: per-lane masks), k = 0 lanes (A is the
    free drift) beside k > 0 (the radial oscillator), several h (blocks grouped by step
    count, spare lanes): every point bitwise its integrate call (§2.2's flows, Eq. 13-15),
    with either lane version."""
    pot = _rayleigh(d, seed)
    y0 = _y0(d, seed)
    with _isa(lane_isa):
        res = _scan(RadialAngular, pot, y0, t_end, method, m=m, mu=mu, k=k,
                    reduced=reduced, h=h, threads=threads)
    _assert_points_equal(res, RadialAngular, pot, y0, t_end, method)


@pytest.mark.parametrize("lane_isa", ISAS)
@pytest.mark.parametrize("method", SPLITS)
def test_m2_lanes_radius_and_rest(lane_isa, method):
    """Lanes whose radius reaches 0 (an underdamped radial spring: k/m large, μ small,
    no angular speed to hold r up) stop with NC_ST_RADIUS at integrate's step and
    message, beside lanes that reach t_end; a state at rest (w = 0: C's rotation is
    skipped, ww > 0 false) runs in the same block."""
    pot = _rayleigh(3, 7)
    y_move = _y0(3, 7, speed=0.05, radial=-0.5)
    with _isa(lane_isa):
        res = _scan(RadialAngular, pot, y_move, 6.0, method, m=[0.05, 1.0], mu=[0.0, 2.0],
                    k=[0.0, 4.0], h=0.02)
    assert res.diverged.any() and not res.diverged.all()
    if method != "rk4":                   # (rk4's state turns non-finite there instead)
        assert any("radius" in str(msg) for msg in res.message.ravel())
    _assert_points_equal(res, RadialAngular, pot, y_move, 6.0, method)
    rest = np.concatenate([[1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with _isa(lane_isa):
        res = _scan(RadialAngular, pot, rest, 1.0, method, m=[0.5, 1.0], mu=0.1,
                    k=[0.0, 0.2], h=0.05)
    _assert_points_equal(res, RadialAngular, pot, rest, 1.0, method)


@pytest.mark.parametrize("lane_isa", ISAS)
def test_m2_lanes_same_for_every_thread_count(lane_isa):
    """The lanes' results do not depend on the threads or the slicing (bitwise)."""
    pot = _rayleigh(8, 3)
    y0 = _y0(8, 3)
    grid = dict(m=np.linspace(0.2, 2.0, 9), mu=np.linspace(0.05, 1.0, 7), k=0.02, h=0.01)
    runs = []
    for threads in (1, 2, 3):
        with _isa(lane_isa):
            runs.append(_scan(RadialAngular, pot, y0, 1.0, "conformal-verlet",
                              threads=threads, **grid))
    for r in runs[1:]:
        np.testing.assert_array_equal(r.y_final, runs[0].y_final)
        np.testing.assert_array_equal(r.nfev, runs[0].nfev)
        np.testing.assert_array_equal(r.t_final, runs[0].t_final)


def test_m2_lanes_cancel():
    """The M2 lane blocks poll the cancel flag every 64 steps."""
    pot = _rayleigh(8, 1)
    model = RadialAngular(pot, m=1.0, mu=0.01)
    P = 8
    plan = _bridge.GridPlan(model.kind, 1, np.tile(model.kernel_inputs().hp, (P, 1)), 0.0,
                            1e9, np.full(P, 0.01), np.full(P, 10**11, dtype=np.intp),
                            np.zeros(P), np.zeros(P), 0, pot._lane_form())
    out = _bridge.GridOutputs.start(_y0(8, 1), P)
    kern = _bridge.grid_kernel(plan, pot._kernel, out)
    assert kern.lane_pot >= 0
    threading.Timer(0.2, kern.cancel).start()
    t0 = time.perf_counter()
    assert kern.run(0, P) == 0
    assert time.perf_counter() - t0 < 1.5
    assert (out.counts[:, 0] == _status.INTERRUPTED).all()
    assert (out.counts[:, 2] % 64 == 63).all()          # stopped at a poll


def test_m2_lanes_keep_the_constraint():
    """The lanes keep |u| = 1 and <u, w> = 0 to round-off, as the scalar splitting does
    (§2.2: every flow maps the manifold to itself, then u and w are renormalised)."""
    pot = _rayleigh(8, 5)
    y0 = _y0(8, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        res = nc.scan_integrate(RadialAngular, pot, y0, t_end=5.0,
                                method="conformal-yoshida4", m=[0.3, 1.0, 3.0],
                                mu=[0.1, 0.5], k=0.05, h=0.01)
    u = res.y_final[..., 2:10]
    w = res.y_final[..., 10:]
    assert np.abs(np.linalg.norm(u, axis=-1) - 1.0).max() < 1e-14
    assert np.abs((u * w).sum(-1)).max() < 1e-14 * max(1.0, np.abs(w).max())


@pytest.mark.parametrize("lane_isa", ISAS)
@pytest.mark.parametrize("method", ["conformal-verlet", "rk4"])
def test_lanes_finite_state_whose_sum_overflows(lane_isa, method):
    """The lanes' finiteness test first sums the state (non-finite whenever a term is);
    a finite state whose sum overflows (entries near 1e308) is then tested exactly and
    runs on, as integrate's does (docs/integrators.md §9.1)."""
    d = 4
    pot = nc.potentials.Quadratic(1e-10 * np.eye(d), np.zeros(d))
    y0 = np.concatenate([np.full(d, 1e308), np.zeros(d)])
    with np.errstate(over="ignore"):
        assert not np.isfinite(y0.sum())
    with _isa(lane_isa):
        res = _scan(nc.models.Damped, pot, y0, 0.5, method, m=[0.5, 1.0], mu=[0.1, 0.3],
                    k=[0.0, 1e-12], h=0.01)
    assert not res.diverged.any()
    _assert_points_equal(res, nc.models.Damped, pot, y0, 0.5, method)
