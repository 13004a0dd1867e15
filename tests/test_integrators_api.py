"""Binding contract of ``integrate`` and property tests (hypothesis) of the structure the
conformal methods preserve (SPEC §5; docs/integrators.md §1.3, §2.2)."""
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import noether_core as nc
from noether_core.models import Bregman, Damped, GradientFlow, RadialAngular, damped, nesterov


def _pot(d=5, seed=0):
    A = np.random.default_rng(seed).standard_normal((d, d))
    return nc.potentials.RayleighQuotient(A + A.T)


def test_public_names_live_at_the_top_level():
    """The integrators' public names are top-level; their modules are private, so no
    function shadows a module (``nc.integrate`` is the function, not a module)."""
    import types

    from noether_core import _integrate, _scan_integrate
    for name, mod in [("integrate", _integrate), ("IntegrateResult", _integrate),
                      ("IntegrationError", _integrate), ("NoetherTerms", _integrate),
                      ("noether_terms", _integrate), ("scan_integrate", _scan_integrate),
                      ("IntegrateScanResult", _scan_integrate)]:
        assert name in nc.__all__
        assert getattr(nc, name) is getattr(mod, name)
        assert not isinstance(getattr(nc, name), types.ModuleType)
    sol = nc.integrate(Damped(_pot(), 0.5, 0.3), np.ones(10), t_end=0.2, h=0.1,
                       method="rk4")
    assert isinstance(sol, nc.IntegrateResult)
    assert isinstance(nc.noether_terms(sol, "scale"), nc.NoetherTerms)


def test_models_pickle_and_repr():
    pot = _pot()
    for model in (Damped(pot, 0.5, 0.3, 0.01), RadialAngular(pot, 0.5, 0.3, reduced=True),
                  GradientFlow(pot, 0.7), Bregman(pot, nesterov(3.0, 0.5), "pnorm", p=3.0)):
        back = pickle.loads(pickle.dumps(model))
        assert type(back) is type(model) and repr(back) == repr(model)
        assert type(model).__name__ in repr(model)


def test_readonly_float32_noncontiguous_y0_are_converted():
    model = Damped(_pot(), 0.5, 0.3)
    y = np.random.default_rng(1).standard_normal(20)
    ref = nc.integrate(model, y[::2].copy(), t_end=1.0, h=0.1, method="conformal-verlet")
    ro = y[::2].copy()
    ro.setflags(write=False)
    for y0 in (y[::2], ro):                                   # strided, read-only
        r = nc.integrate(model, y0, t_end=1.0, h=0.1, method="conformal-verlet")
        assert np.array_equal(r.y, ref.y)
    assert not np.shares_memory(ref.y_final, y)               # y0 is never written
    r32 = nc.integrate(model, y[::2].astype(np.float32), t_end=1.0, h=0.1,
                       method="conformal-verlet")
    assert r32.y.dtype == np.float64


def test_concurrent_runs_equal_serial_runs():
    """The kernel releases the GIL and each run has its own workspace (no shared state)."""
    model = RadialAngular(_pot(8, 3), 0.5, 0.3, 0.02)
    rng = np.random.default_rng(4)
    y0s = [model.from_cartesian(rng.standard_normal(8), 0.1 * rng.standard_normal(8))
           for _ in range(6)]
    run = lambda y0: nc.integrate(model, y0, t_end=20.0, h=0.01,          # noqa: E731
                                  method="conformal-yoshida4").y
    serial = [run(y0) for y0 in y0s]
    with ThreadPoolExecutor(3) as ex:
        parallel = list(ex.map(run, y0s))
    for a, b in zip(serial, parallel, strict=True):
        assert np.array_equal(a, b)


def test_bregman_rk4_order_and_nesterov_late_start():
    pot = _pot(4, 5)
    model = Bregman(pot, nesterov(2.0, 0.25), "entropy")
    y0 = model.state(np.array([1.0, 0.8, 1.2, 0.9]), np.array([0.1, 0.0, -0.1, 0.05]), 1.0)
    ref = nc.integrate(model, y0, t0=1.0, t_end=3.0, method="dopri5", rtol=1e-12,
                       atol=1e-14).y_final
    hs = np.array([0.04, 0.02, 0.01])
    errs = [np.abs(nc.integrate(model, y0, t0=1.0, t_end=3.0, h=h, method="rk4").y_final
                   - ref).max() for h in hs]
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - 4) < 0.3, errs


def test_gradient_flow_euler_is_gradient_descent():
    pot = _pot()
    q0 = np.random.default_rng(2).standard_normal(5)
    mu, h = 0.8, 0.05
    r = nc.integrate(GradientFlow(pot, mu), q0, t_end=40 * h, h=h, method="euler")
    tr = nc.train(nc.rules.SGD(lr=h / mu), pot, q0, 40)
    # q ← q − (h/μ)∇f(q): the same arithmetic up to the rounding of h/μ
    np.testing.assert_allclose(r.q, tr.q, rtol=1e-13, atol=1e-15)


def test_damped_bregman_schedule_equals_sgdm_row_of_table1():
    """sgdm(η, β) is damped(η(1+β)/2, 1−β) (Table 1, SGDM row)."""
    s = nc.models.sgdm(0.1, 0.9)
    d = damped(0.1 * 1.9 / 2, 0.1)
    assert s.name == d.name == "damped"
    np.testing.assert_allclose([s.s1, s.s2], [d.s1, d.s2], rtol=1e-15)


# -- hypothesis: structure at round-off for any admissible constants ---------------------
consts = st.tuples(st.floats(0.1, 2.0), st.floats(0.0, 1.0), st.floats(0.0, 0.5),
                   st.floats(0.005, 0.2), st.integers(0, 2**31 - 1),
                   st.sampled_from(["conformal-euler", "conformal-verlet",
                                    "conformal-yoshida4"]))


@given(consts)
def test_property_discrete_angular_momentum(c):
    """Radial potential: ⟨q, Ω q̇⟩ is multiplied by exactly e^{−μh/m} per step."""
    m, mu, k, h, seed, method = c
    d = 3
    rng = np.random.default_rng(seed)
    Om = nc.symmetry.random_skew(d, rng)
    model = Damped(nc.potentials.Radial(d, "log"), m, mu, k)
    y0 = np.concatenate([rng.standard_normal(d), rng.standard_normal(d)])
    r = nc.integrate(model, y0, t_end=50 * h, h=h, method=method)
    q, v = r.y[:, :d], r.y[:, d:]
    L = np.einsum("ni,ij,nj->n", q, Om, v)
    size = (np.linalg.norm(q, axis=1) * np.linalg.norm(v, axis=1))[:-1]
    # exact in exact arithmetic; a few ulp of |q||q̇| per step
    assert np.all(np.abs(L[1:] - np.exp(-mu * h / m) * L[:-1]) <= 1e-14 * size + 1e-300)


@pytest.mark.filterwarnings("ignore::noether_core.errors.DivergenceWarning")
@given(consts, st.booleans())
def test_property_m2_constraint(c, reduced):
    m, mu, k, h, seed, method = c
    rng = np.random.default_rng(seed)
    model = RadialAngular(_pot(4, seed % 7), m, mu, k, reduced=reduced)
    y0 = model.from_cartesian(rng.standard_normal(4) + 2.0, 0.3 * rng.standard_normal(4))
    r = nc.integrate(model, y0, t_end=50 * h, h=h, method=method)
    if r.diverged:                       # r reached 0 (underdamped radial spring): legit
        return
    u, w = r.qhat, r.qhatdot
    assert np.abs(np.linalg.norm(u, axis=1) - 1).max() < 1e-15
    assert np.abs(np.sum(u * w, 1)).max() <= 1e-15 * max(1.0, np.abs(w).max())


# -- a Python potential failing inside integrate (issue 19 item 11) ------------------------
def _failing_potential(after, failure):
    """fn(q) = (|q|²/2, q), except that call ``after`` + 1 fails with ``failure``: an
    exception to raise, or "shape" (a gradient of the wrong shape)."""
    calls = [0]

    def fn(q):
        calls[0] += 1
        if calls[0] == after + 1:
            if failure == "shape":
                return 0.0, np.zeros(3)
            raise failure
        return 0.5 * q @ q, q.copy()

    return nc.potentials.Python(fn, 2), calls


_RUNS = [("dopri5", {}), ("dop853", {}), ("rk4", {"h": 0.1}), ("conformal-verlet", {"h": 0.1})]


@pytest.mark.parametrize("method,kw", _RUNS)
@pytest.mark.parametrize("failure", ["raise", "shape"])
def test_python_potential_error_is_callback_error(method, kw, failure):
    """The user's error reaches the caller as CallbackError (as from ``train``), chained to
    the original, naming the failing gradient evaluation — not as a divergence."""
    import warnings

    exc = ValueError("boom") if failure == "raise" else "shape"
    pot, calls = _failing_potential(5, exc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no DivergenceWarning on the way
        with pytest.raises(nc.errors.CallbackError, match="gradient evaluation 6") as ei:
            nc.integrate(Damped(pot, m=1.0, mu=0.1), np.ones(4), t_end=2.0, method=method,
                         **kw)
    cause = ei.value.__cause__
    if failure == "raise":
        assert cause is exc
    else:
        assert isinstance(cause, ValueError) and "shape (3,)" in str(cause)
    assert ei.value.step == 5 and calls[0] == 6       # the loop stopped calling fn


@pytest.mark.parametrize("method,kw", _RUNS)
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_python_potential_interrupt_propagates_as_itself(method, kw, exc_type):
    pot, _ = _failing_potential(3, exc_type())
    with pytest.raises(exc_type):
        nc.integrate(Damped(pot, m=1.0, mu=0.1), np.ones(4), t_end=2.0, method=method, **kw)
    # nothing of it is left behind: the next run of the same potential is clean
    r = nc.integrate(Damped(pot, m=1.0, mu=0.1), np.ones(4), t_end=0.5, method=method, **kw)
    assert r.status == 0 and not r.diverged
