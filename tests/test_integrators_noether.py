"""M3 (Bregman Lagrangian, Eq. 1) and Noether's learning dynamics along trajectories
(Eq. 9, SPEC §3), for every schedule × mirror × symmetry with a symmetric potential.

Potentials with each symmetry: RayleighQuotient (scale), Radial (rotation), and a
Quadratic whose matrix has a null vector n̂ with b ⊥ n̂ (translation along n̂).
"""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import noether_core as nc
from noether_core import noether_terms
from noether_core.models import Bregman, Damped, RadialAngular, damped, nesterov, sgdm
from noether_core.symmetry import random_skew
from noether_ref import integrators as ri

D4 = 4
SCHEDULES = {"nesterov": (nesterov(2.0, 0.25), 1.0), "damped": (damped(0.5, 0.3), 0.0),
             "sgdm": (sgdm(0.5, 0.8), 0.0)}
MIRRORS = {"euclidean": {}, "diagonal": {"D": np.array([1.0, 2.0, 0.5, 1.5])},
           "pnorm": {"p": 3.0}, "entropy": {}}


def _symmetric(family):
    """(potential, noether_terms kwargs) with an exact symmetry of ``family``."""
    # minimisers with positive coordinates, so trajectories from q0 > 0 keep away from 0,
    # where the p-norm map is not smooth (rk4 would lose its order there)
    if family == "scale":       # minimum: the Perron vector of a positive matrix
        A = -(np.diag([1.0, 2.0, 3.0, 4.0]) + 0.3)
        return nc.potentials.RayleighQuotient(A), {}
    if family == "rotation":    # minimum: the unit sphere, approached radially
        return nc.potentials.Radial(D4, "double_well"), {"omega": random_skew(D4, 3)}
    n = np.ones(D4) / 2.0                               # unit null vector of A
    P = np.eye(D4) - np.outer(n, n)
    A = P @ np.diag([1.0, 2.0, 3.0, 4.0]) @ P
    # b = A q* ⊥ n: minimisers q* + s n, all positive
    b = A @ np.array([1.0, 1.2, 0.9, 1.1])
    return nc.potentials.Quadratic(A, b), {"block": "q", "direction": n}


def _bregman_run(sched, mirror, family, h, T=2.0):
    schedule, t0 = SCHEDULES[sched]
    pot, kw = _symmetric(family)
    model = Bregman(pot, schedule, mirror, **MIRRORS[mirror])
    # q0 > 0 away from 0: the p-norm and entropy maps are smooth there (order is kept)
    q0 = np.array([1.0, 1.3, 0.8, 1.1]) * (0.5 if family == "rotation" else 1.0)
    y0 = model.state(q0, np.array([0.1, -0.2, 0.15, 0.05]), t0)
    r = nc.integrate(model, y0, t0=t0, t_end=t0 + T, h=h, method="rk4")
    return r, noether_terms(r, family, **kw)


COMBOS = [(s, m, f) for s in SCHEDULES for m in MIRRORS
          for f in ("scale", "rotation", "translation")]


@pytest.mark.parametrize("sched,mirror,family", COMBOS)
def test_eq9_balance_every_schedule_mirror_symmetry(sched, mirror, family):
    hs = np.array([0.02, 0.01, 0.005])
    res = []
    for h in hs:
        r, T = _bregman_run(sched, mirror, family, h)
        # the pointwise identity (Δ̇_h from the vector field): exact algebra, round-off
        scale = max(np.abs(T.dJdt).max(), np.abs(T.dissipation).max(), 1e-3)
        assert np.abs(T.residual).max() < 1e-12 * scale
        res.append(np.abs(T.integrated_residual).max())
    # the numerical trajectory obeys the time-integrated Eq. 9 up to rk4's O(h^4) global
    # error (the 6-point quadrature on the same grid is O(h^6), below it): fitted slope ≈ 4,
    # unless the balance is already at round-off (translation with a constant metric:
    # everything on both sides is linear in the state)
    if max(res) > 1e-11:
        slope = np.polyfit(np.log(hs), np.log(res), 1)[0]
        assert 3.5 < slope < 4.6, res
    assert np.abs(T.J).max() > 1e-3                    # a non-trivial charge
    assert np.abs(T.potential).max() < 1e-12           # the potential is symmetric


@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("mirror", list(MIRRORS))
def test_table2_kinetic_symmetry_breaking(sched, mirror):
    """Non-zero terms appear exactly where kinetic symmetry breaks (Table 2, refined for
    quadratic h whose Hessian is constant — docs/integrators.md)."""
    terms = {f: _bregman_run(sched, mirror, f, 0.02)[1] for f in
             ("scale", "rotation", "translation")}
    size = {f: np.abs(t.J).max() + np.abs(t.dJdt).max() for f, t in terms.items()}
    zero = lambda f, name: np.abs(getattr(terms[f], name)).max() < 1e-12 * size[f]  # noqa
    quadratic_h = mirror in ("euclidean", "diagonal")
    # the metric term: zero iff h is quadratic (Δ_h = e^{-α} ∇²h q̇ exactly)
    for f in terms:
        assert zero(f, "metric") == quadratic_h
    # dynamic asymmetry ⟨Δ_h, Dξ q̇⟩: zero for translation (Dξ = 0) always; for rotation
    # iff ∇²h ∝ I (Euclidean); never for scale
    assert zero("translation", "dynamic_asymmetry")
    assert zero("rotation", "dynamic_asymmetry") == (mirror == "euclidean")
    assert not zero("scale", "dynamic_asymmetry")


def test_m1_eq9_and_order_of_integrated_balance():
    """M1 (Euclidean, e^α = 1/m): scale charge J = m⟨q̇, q⟩ with weight decay (the potential
    term k|q|² breaks it) — integrated balance at each conformal method's order."""
    A = np.diag([1.0, 2.0, 3.0, 4.0]) + 0.3
    model = Damped(nc.potentials.RayleighQuotient(A), 0.5, 0.3, 0.02)
    y0 = np.array([1.0, 1.3, 0.8, 1.1, 0.1, -0.2, 0.15, 0.05])
    hs = np.array([0.04, 0.02, 0.01])
    for method, p in (("conformal-verlet", 2), ("conformal-yoshida4", 4), ("rk4", 4)):
        res = []
        for h in hs:
            T = nc.integrate(model, y0, t_end=3.0, h=h, method=method).noether_terms("scale")
            assert np.abs(T.residual).max() < 1e-13 * np.abs(T.dJdt).max()
            np.testing.assert_allclose(T.potential[0], model.k * y0[:4] @ y0[:4],
                                       rtol=1e-13)         # e^{α+β}⟨kq, q⟩ = k|q|²
            assert np.all(T.metric == 0.0)
            res.append(np.abs(T.integrated_residual).max())
        slope = np.polyfit(np.log(hs), np.log(res), 1)[0]
        assert abs(slope - p) < 0.3, (method, res)


@pytest.mark.parametrize("reduced", [False, True])
def test_m2_eq9_scale_balance(reduced):
    """M2's radial equation (Eq. 14) is exact in both variants, so the scale balance holds
    pointwise for both (the reduced model's dropped coupling is purely angular)."""
    A = np.diag([1.0, 2.0, 3.0, 4.0]) + 0.3
    pot = nc.potentials.RayleighQuotient(A)
    model = RadialAngular(pot, 0.5, 0.3, 0.02, reduced=reduced)
    y0 = model.from_cartesian([1.0, 1.3, 0.8, 1.1], [0.1, -0.2, 0.15, 0.05])
    T = nc.integrate(model, y0, t_end=3.0, h=0.01, method="conformal-yoshida4"
                     ).noether_terms("scale")
    assert np.abs(T.residual).max() < 1e-13 * np.abs(T.dJdt).max()
    assert np.abs(T.integrated_residual).max() < 1e-6


# -- M3 against independent references -----------------------------------------------------
@pytest.mark.parametrize("sched", ["damped", "sgdm"])
def test_bregman_damped_euclidean_is_m1(sched):
    schedule, t0 = SCHEDULES[sched]
    pot, _ = _symmetric("scale")
    b = Bregman(pot, schedule, "euclidean")
    m = Damped(pot, schedule.s1, schedule.s2)
    q0, v0 = np.array([1.0, 1.3, 0.8, 1.1]), np.array([0.1, -0.2, 0.15, 0.05])
    rb = nc.integrate(b, b.state(q0, v0, t0), t_end=3.0, method="dopri5", rtol=1e-12,
                      atol=1e-14)
    rm = nc.integrate(m, np.concatenate([q0, v0]), t_end=3.0, method="dopri5", rtol=1e-12,
                      atol=1e-14)
    np.testing.assert_allclose(rb.q[-1], rm.q[-1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(rb.v[-1], rm.v[-1], rtol=0, atol=1e-10)


def test_bregman_nesterov_matches_scipy_dop853_on_the_second_order_ode():
    """Euclidean Nesterov schedule ⇔ q̈ + (n+1)/t q̇ + C n² t^{n−2} ∇f = 0 (Sec. 1)."""
    n, C, t0 = 2.0, 0.25, 0.5
    pot, _ = _symmetric("scale")
    model = Bregman(pot, nesterov(n, C), "euclidean")
    q0, v0 = np.array([1.0, 1.3, 0.8, 1.1]), np.array([0.1, -0.2, 0.15, 0.05])

    def f(t, y):
        q, v = y[:4], y[4:]
        return np.concatenate([v, -(n + 1) / t * v - C * n * n * t ** (n - 2) * pot.grad(q)])

    sol = solve_ivp(f, (t0, 4.0), np.concatenate([q0, v0]), method="DOP853", rtol=1e-12,
                    atol=1e-14)
    r = nc.integrate(model, model.state(q0, v0, t0), t0=t0, t_end=4.0, method="dopri5",
                     rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.q[-1], sol.y[:4, -1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.v[-1], sol.y[4:, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mirror", list(MIRRORS))
def test_bregman_dopri5_matches_scipy_dop853(mirror):
    schedule, t0 = SCHEDULES["damped"]
    pot, _ = _symmetric("scale")
    model = Bregman(pot, schedule, mirror, **MIRRORS[mirror])
    y0 = model.state(np.array([1.0, 1.3, 0.8, 1.1]), np.array([0.1, -0.2, 0.15, 0.05]), t0)
    spec = {"kind": "bregman", "schedule": schedule, "mirror": mirror, "grad": pot.grad,
            **MIRRORS[mirror]}
    sol = solve_ivp(lambda t, y: ri.rhs(spec, t, y), (t0, t0 + 3.0), y0, method="DOP853",
                    rtol=1e-12, atol=1e-14)
    r = nc.integrate(model, y0, t0=t0, t_end=t0 + 3.0, method="dopri5", rtol=1e-12,
                     atol=1e-14)
    np.testing.assert_allclose(r.y_final, sol.y[:, -1], rtol=0, atol=1e-9)
    t, Y = ri.integrate(spec, y0, "rk4", t0, 0.01, 300)
    r4 = nc.integrate(model, y0, t0=t0, t_end=t0 + 3.0, h=0.01, method="rk4")
    np.testing.assert_allclose(r4.y, Y, rtol=1e-11, atol=1e-13)     # compiled == twin


def test_user_schedule_slow_path_equals_compiled():
    m, mu = 0.5, 0.3
    pot, _ = _symmetric("scale")
    user = Bregman(pot, (lambda t: 1.0 / m, lambda t: 1.0, lambda t: mu / m), "entropy")
    comp = Bregman(pot, damped(m, mu), "entropy")
    y0 = comp.state(np.array([1.0, 1.3, 0.8, 1.1]), np.array([0.1, -0.2, 0.15, 0.05]), 0.0)
    for kw in ({"h": 0.02, "method": "rk4"}, {"method": "dopri5", "rtol": 1e-9,
                                              "atol": 1e-11,
                                              "t_eval": np.linspace(0, 2, 5)}):
        a = nc.integrate(user, y0, t_end=2.0, **kw)
        b = nc.integrate(comp, y0, t_end=2.0, **kw)
        np.testing.assert_allclose(a.t, b.t, rtol=1e-14)
        np.testing.assert_allclose(a.y, b.y, rtol=0, atol=1e-8)


def test_bregman_bad_input():
    pot, _ = _symmetric("scale")
    model = Bregman(pot, nesterov(), "euclidean")
    y0 = np.ones(8)
    with pytest.raises(ValueError, match="t0 must be > 0, got t0=0.0"):
        nc.integrate(model, y0, t_end=1.0, h=0.1, method="rk4")
    with pytest.raises(ValueError, match="not valid for Bregman"):
        nc.integrate(model, y0, t0=1.0, t_end=2.0, h=0.1, method="conformal-verlet")
    ent = Bregman(pot, damped(0.5, 0.3), "entropy")
    with pytest.raises(ValueError, match="must be positive for the entropy"):
        nc.integrate(ent, -y0, t_end=1.0, h=0.1, method="rk4")
    with pytest.raises(ValueError, match="mirror must be one of"):
        Bregman(pot, damped(0.5, 0.3), "kl")
    with pytest.raises(ValueError, match="needs D"):
        Bregman(pot, damped(0.5, 0.3), "diagonal")
    with pytest.raises(ValueError, match="p must lie in"):
        Bregman(pot, damped(0.5, 0.3), "pnorm", p=1.0)
    with pytest.raises(TypeError, match="schedule must be"):
        Bregman(pot, "nesterov", "euclidean")
    with pytest.raises(ValueError, match="m must lie in"):
        damped(0.0, 0.3)
    with pytest.raises(ValueError, match="declares no 'rotation' symmetry"):
        r = nc.integrate(Damped(pot, 0.5, 0.3), y0, t_end=0.2, h=0.1, method="rk4")
        r.noether_terms("rotation")


# -----------------------------------------------------------------------------------------
# The product's own equations of motion (no oracle inside noether_core)

def _oracle_spec(model):
    """noether_ref's description of ``model`` (gradient from the compiled potential)."""
    s = {"grad": model.potential.grad}
    if isinstance(model, Damped):
        s.update(kind="damped", m=model.m, mu=model.mu, k=model.k)
    elif isinstance(model, RadialAngular):
        s.update(kind="radang", m=model.m, mu=model.mu, k=model.k, reduced=model.reduced)
    elif isinstance(model, nc.models.GradientFlow):
        s.update(kind="gflow", mu=model.mu, k=model.k)
    else:
        s.update(kind="bregman", schedule=model.schedule, mirror=model.mirror, D=model.D,
                 p=model.p)
    return s


def _rhs_cases():
    pot, _ = _symmetric("scale")
    rng = np.random.default_rng(7)
    q0 = np.array([1.0, 1.3, 0.8, 1.1])
    v0 = np.array([0.1, -0.2, 0.15, 0.05])
    cases = [(Damped(pot, 0.5, 0.3, 0.02), np.r_[q0, v0], 0.0),
             (nc.models.GradientFlow(pot, 0.7, 0.02), q0, 0.0)]
    for reduced in (False, True):
        cases.append((RadialAngular(pot, 0.5, 0.3, 0.02, reduced=reduced),
                      RadialAngular.from_cartesian(q0, v0), 0.0))
    user = (lambda t: 2.0 / t, lambda t: 0.25 * 2.0 * t, lambda t: 2.0 / t)
    for sched in [*SCHEDULES.values(), (user, 1.0)]:
        for mirror, kw in MIRRORS.items():
            model = Bregman(pot, sched[0], mirror, **kw)
            cases.append((model, model.state(q0, v0, sched[1] + 0.5), sched[1]))
    return [(m, y + 0.01 * rng.standard_normal(len(y)) * (not isinstance(m, RadialAngular)),
             t0) for m, y, t0 in cases]


def test_compiled_rhs_equals_oracle_rhs():
    """noether_terms' Ṗ (and q̈) come from the compiled right-hand side the integrator
    steps; it equals the independent NumPy oracle's F(t, y) to round-off (the same
    formulas in a different operation order: a few ulps of the largest term)."""
    from noether_core import _bridge
    for model, y, t0 in _rhs_cases():
        t = t0 + np.array([0.5, 0.75, 1.0])
        Y = np.array([y, y * 1.01, y * 0.99])
        dy = np.empty_like(Y)
        _bridge.eval_rhs(model.kernel_inputs(), t, Y, dy)
        spec = _oracle_spec(model)
        ref = np.array([ri.rhs(spec, float(ti), yi) for ti, yi in zip(t, Y, strict=True)])
        np.testing.assert_allclose(dy, ref, rtol=1e-13, atol=1e-13 * np.abs(ref).max(),
                                   err_msg=repr(model))


def test_user_schedule_is_the_compiled_loop_bitwise():
    """A user schedule returning the damped schedule's numbers runs the very same compiled
    loop (called back for e^α, e^{α+β}, γ̇): identical states, counts and Eq. 9 terms."""
    m, mu = 0.5, 0.3
    pot, _ = _symmetric("scale")
    user = Bregman(pot, (lambda t: 1.0 / m, lambda t: 1.0, lambda t: mu / m), "pnorm", p=3.0)
    comp = Bregman(pot, damped(m, mu), "pnorm", p=3.0)
    y0 = comp.state(np.array([1.0, 1.3, 0.8, 1.1]), np.array([0.1, -0.2, 0.15, 0.05]), 0.0)
    for kw in ({"h": 0.02, "method": "rk4"}, {"method": "dopri5", "rtol": 1e-8}):
        a = nc.integrate(user, y0, t_end=2.0, **kw)
        b = nc.integrate(comp, y0, t_end=2.0, **kw)
        np.testing.assert_array_equal(a.t, b.t)
        np.testing.assert_array_equal(a.y, b.y)
        assert (a.nfev, a.n_steps, a.n_rejected) == (b.nfev, b.n_steps, b.n_rejected)
        ta, tb = a.noether_terms("scale"), b.noether_terms("scale")
        for name in ("J", "dJdt", "metric", "residual", "integrated_residual"):
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name))


def test_user_schedule_exception_is_reraised():
    """An exception of a user schedule stops the compiled loop and reaches the caller."""
    pot, _ = _symmetric("scale")
    calls = []

    def exp_alpha(t):
        calls.append(t)
        if t > 1.0:
            raise ZeroDivisionError(f"schedule undefined at t={t}")
        return 2.0

    model = Bregman(pot, (exp_alpha, lambda t: 1.0, lambda t: 0.6), "euclidean")
    y0 = model.state(np.ones(D4), np.zeros(D4), 0.0)
    for kw in ({"h": 0.02, "method": "rk4"}, {"method": "dopri5"}):
        calls.clear()
        with pytest.raises(ZeroDivisionError, match="schedule undefined"):
            nc.integrate(model, y0, t_end=2.0, **kw)
        assert max(calls) > 1.0 and sum(c > 1.0 for c in calls) == 1   # stopped at once
    ok = nc.integrate(model, y0, t_end=1.0, h=0.02, method="rk4")
    late = nc.IntegrateResult(**{**vars(ok), "t": ok.t + 0.5})
    with pytest.raises(ZeroDivisionError, match="schedule undefined"):
        noether_terms(late, "scale")


def test_product_never_imports_the_oracle():
    """Integrating every model kind (a user schedule included) and evaluating Eq. 9 leaves
    python/noether_ref unimported: the oracle stays independent of the product."""
    import os
    import subprocess
    import sys
    code = (
        "import sys, numpy as np, noether_core as nc\n"
        "from noether_core.models import Bregman, Damped, RadialAngular\n"
        "pot = nc.potentials.RayleighQuotient(-(np.diag([1.0, 2.0, 3.0]) + 0.3))\n"
        "q, v = np.array([1.0, 1.2, 0.9]), np.array([0.1, -0.1, 0.05])\n"
        "for m, y in [(Damped(pot, 0.5, 0.3), np.r_[q, v]),\n"
        "             (RadialAngular(pot, 0.5, 0.3), RadialAngular.from_cartesian(q, v))]:\n"
        "    nc.integrate(m, y, t_end=1.0, h=0.1, method='rk4').noether_terms('scale')\n"
        "b = Bregman(pot, (lambda t: 2.0, lambda t: 1.0, lambda t: 0.6), 'entropy')\n"
        "for kw in ({'h': 0.1, 'method': 'rk4'}, {'method': 'dopri5'}):\n"
        "    nc.integrate(b, b.state(q, v, 0.0), t_end=1.0, **kw).noether_terms('scale')\n"
        "print(sorted(k for k in sys.modules if 'noether_ref' in k))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ), check=True).stdout
    assert out.strip() == "[]"
