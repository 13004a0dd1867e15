"""Integrators of M1 (Damped), M2 (RadialAngular) and M4 (GradientFlow): SPEC §2, §5.

References are independent of the code under test: scipy's DOP853 on the NumPy
right-hand side of python/noether_ref/integrators.py (itself the equations of SPEC §2),
torch-semantics heavy ball from noether_core.train, and exact identities.
"""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import noether_core as nc
from noether_core import IntegrationError
from noether_core.models import Damped, GradientFlow, RadialAngular
from noether_ref import integrators as ri
from noether_ref import potentials as rp

SPLIT = ("conformal-euler", "conformal-verlet", "conformal-yoshida4")
ORDER = {"conformal-euler": 1, "conformal-verlet": 2, "conformal-yoshida4": 4, "rk4": 4,
         "euler": 1}


def _rayleigh(d=5, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))
    return nc.potentials.RayleighQuotient(A + A.T), A + A.T


def _spec(model, A=None):
    """The NumPy twin's description of a model (gradient from noether_ref.potentials)."""
    pot = model.potential
    if isinstance(pot, nc.potentials.RayleighQuotient):
        grad = lambda q: rp.rayleigh(q, pot.A)[1]          # noqa: E731
    elif isinstance(pot, nc.potentials.Radial):
        grad = lambda q: rp.radial(q, pot.kind)[1]         # noqa: E731
    else:
        grad = lambda q: rp.quadratic(q, pot.A, pot.b)[1]  # noqa: E731
    if isinstance(model, Damped):
        return {"kind": "damped", "m": model.m, "mu": model.mu, "k": model.k, "grad": grad}
    if isinstance(model, GradientFlow):
        return {"kind": "gflow", "mu": model.mu, "k": model.k, "grad": grad}
    return {"kind": "radang", "m": model.m, "mu": model.mu, "k": model.k,
            "reduced": model.reduced, "grad": grad}


def _dop853(model, y0, T, t0=0.0):
    s = _spec(model)
    sol = solve_ivp(lambda t, y: ri.rhs(s, t, y), (t0, t0 + T), y0, method="DOP853",
                    rtol=1e-12, atol=1e-14)
    assert sol.success
    return sol.y[:, -1]


def _slope(hs, errs):
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


# m = 0.5, mu = 0.3, k = 0.02: the radial motion is overdamped ((mu/2m)^2 = 0.09 > k/m),
# so r stays positive (an underdamped spring would take q through 0, where the polar
# coordinates of M2 break down)
def _m1_case(seed=0):
    pot, _ = _rayleigh(5, seed)
    rng = np.random.default_rng(seed + 10)
    y0 = np.concatenate([rng.standard_normal(5), 0.3 * rng.standard_normal(5)])
    return Damped(pot, m=0.5, mu=0.3, k=0.02), y0


def _m2_case(reduced=False, seed=0):
    pot, _ = _rayleigh(5, seed)
    rng = np.random.default_rng(seed + 10)
    y0 = RadialAngular.from_cartesian(rng.standard_normal(5), 0.3 * rng.standard_normal(5))
    return RadialAngular(pot, m=0.5, mu=0.3, k=0.02, reduced=reduced), y0


# -- order (SPEC §5 "Order") ---------------------------------------------------------------
CASES = {"M1": _m1_case, "M2": _m2_case, "M2-reduced": lambda: _m2_case(True),
         "M4": lambda: (GradientFlow(_rayleigh()[0], 0.7, 0.05),
                        np.random.default_rng(3).standard_normal(5))}
PAIRS = [(c, m) for c in ("M1", "M2", "M2-reduced") for m in SPLIT + ("rk4",)] + [
    ("M4", "euler"), ("M4", "rk4")]


@pytest.mark.parametrize("case,method", PAIRS)
def test_measured_order(case, method):
    model, y0 = CASES[case]()
    T = 4.0
    ref = _dop853(model, y0, T)
    hs = np.array([0.03, 0.015, 0.0075]) if ORDER[method] == 4 else np.array(
        [0.02, 0.01, 0.005])
    errs = [np.abs(nc.integrate(model, y0, t_end=T, h=h, method=method).y_final - ref).max()
            for h in hs]
    # the global error is C h^p (1 + O(h)): the fitted slope is within 0.25 of p at these
    # h, and the errors stay above the reference's ~1e-12 (smallest measured: 3e-11, M4)
    assert min(errs) > 1e-11
    assert abs(_slope(hs, errs) - ORDER[method]) < 0.25, errs


def test_dopri5_tolerance_proportionality():
    """dopri5's global error follows rtol (tolerance proportionality, order 5 ⇒ ≈ rtol)."""
    model, y0 = _m1_case()
    ref = _dop853(model, y0, 4.0)
    errs = []
    for tol in (1e-6, 1e-8, 1e-10):
        r = nc.integrate(model, y0, t_end=4.0, method="dopri5", rtol=tol, atol=tol * 1e-2)
        errs.append(np.abs(r.y_final - ref).max())
    assert errs[0] > errs[1] > errs[2]
    # error per unit of tolerance stays within two decades over four decades of tol
    ratio = np.array(errs) / np.array([1e-6, 1e-8, 1e-10])
    assert ratio.max() / ratio.min() < 100 and ratio.max() < 100


# -- agreement with solve_ivp DOP853 (SPEC §5 "Agreement") ---------------------------------
@pytest.mark.parametrize("case", ["M1", "M2", "M2-reduced", "M4"])
def test_dopri5_matches_scipy_dop853(case):
    model, y0 = CASES[case]()
    ref = _dop853(model, y0, 6.0)
    r = nc.integrate(model, y0, t_end=6.0, method="dopri5", rtol=1e-12, atol=1e-14)
    # both are ~1e-12 accurate; states are O(1)
    np.testing.assert_allclose(r.y_final, ref, rtol=0, atol=5e-10)
    y4 = nc.integrate(model, y0, t_end=6.0, h=0.01, method="rk4").y_final
    np.testing.assert_allclose(y4, ref, rtol=0, atol=1e-7)     # rk4: C h^4, C ~ 1e1


def test_dopri5_t_eval_exact_landing_and_agreement():
    model, y0 = _m1_case()
    te = np.linspace(0.0, 3.0, 7)
    r = nc.integrate(model, y0, t_end=3.0, method="dopri5", t_eval=te, rtol=1e-12,
                     atol=1e-14)
    assert np.array_equal(r.t, te)                    # landed exactly, no interpolation
    s = _spec(model)
    sol = solve_ivp(lambda t, y: ri.rhs(s, t, y), (0, 3.0), y0, method="DOP853", rtol=1e-12,
                    atol=1e-14, t_eval=te)
    np.testing.assert_allclose(r.y, sol.y.T, rtol=0, atol=5e-10)


# -- heavy ball = conformal-euler (SPEC §1, variational convention) ------------------------
@pytest.mark.parametrize("beta,wd", [(0.9, 0.0), (0.5, 1e-2), (0.99, 5e-4)])
def test_conformal_euler_is_heavy_ball(beta, wd):
    rng = np.random.default_rng(7)
    d = 4
    A = rng.standard_normal((d, d))
    pot = nc.potentials.Quadratic(A @ A.T / d + np.eye(d), rng.standard_normal(d))
    lr = 0.05
    model = Damped.from_rule(pot, lr, beta, wd, convention="variational")
    h = model.rule_step
    q0, b0 = rng.standard_normal(d), rng.standard_normal(d)
    rule = nc.rules.SGD(lr=lr, momentum=beta, weight_decay=wd)
    tr = nc.train(rule, pot, q0, 300, state=rule.with_buffer(pot, b0))
    # velocity of the variational integrator: v_n = (q_n − q_{n−1})/h = −(lr/h) buffer_n
    r = nc.integrate(model, np.concatenate([q0, -(lr / h) * b0]), t_end=300 * h, h=h,
                     method="conformal-euler")
    assert r.h == h and len(r.t) == 301
    # same recursion, different rounding of (h/m)h vs lr and of exp(-mu h/m) vs beta
    # (the conversion round trip): a few ulp per step on a contracting map
    np.testing.assert_allclose(r.q, tr.q, rtol=1e-12, atol=1e-13 * np.abs(tr.q).max())
    np.testing.assert_allclose(r.y_final[d:], -(lr / h) * tr.state.arrays["momentum_buffer"],
                               rtol=1e-11, atol=1e-13)


def test_heavy_ball_from_rest_matches_torch_first_step():
    """torch's first step v = d is the zero-buffer case: y0 = (q0, 0)."""
    pot, _ = _rayleigh(4)
    q0 = np.random.default_rng(2).standard_normal(4)
    model = Damped.from_rule(pot, 0.1, 0.8, 1e-3, convention="variational")
    tr = nc.train(nc.rules.SGD(lr=0.1, momentum=0.8, weight_decay=1e-3), pot, q0, 50)
    r = nc.integrate(model, np.concatenate([q0, np.zeros(4)]), t_end=50 * model.rule_step,
                     h=model.rule_step, method="conformal-euler")
    np.testing.assert_allclose(r.q, tr.q, rtol=1e-12, atol=1e-14)


# -- conformal symplecticity (SPEC §5 "Structure") -----------------------------------------
def _jacobian(step, y0, eps=1e-6):
    n = len(y0)
    J = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = eps
        J[:, j] = (step(y0 + e) - step(y0 - e)) / (2 * eps)
    return J


def _omega(d):
    return np.block([[np.zeros((d, d)), np.eye(d)], [-np.eye(d), np.zeros((d, d))]])


@pytest.mark.parametrize("method", SPLIT)
def test_conformal_symplectic_m1(method):
    d, h = 4, 0.25
    model = Damped(_rayleigh(d, 1)[0], m=0.5, mu=0.3, k=0.1)
    y0 = np.concatenate([np.random.default_rng(4).standard_normal(d), 0.2 * np.ones(d)])
    J = _jacobian(lambda y: nc.integrate(model, y, t_end=h, h=h, method=method).y_final, y0)
    Om = _omega(d)
    # central differences: O(eps^2) truncation + O(1e-16/eps) round-off ≈ 1e-10
    dev = np.abs(J.T @ Om @ J - np.exp(-model.mu * h / model.m) * Om).max()
    assert dev < 1e-8
    # control: rk4 is not conformally symplectic; at this h its defect is O(h^5) ~ 1e-5
    J4 = _jacobian(lambda y: nc.integrate(model, y, t_end=h, h=h, method="rk4").y_final, y0)
    assert np.abs(J4.T @ Om @ J4 - np.exp(-model.mu * h / model.m) * Om).max() > 1e-6


@pytest.mark.parametrize("method", SPLIT)
def test_conformal_symplectic_m2_in_cartesian_coordinates(method):
    """The M2 splitting is conformally symplectic for the canonical (q, q̇) structure: its
    flows are Hamiltonian in polar coordinates, a canonical change of variables."""
    d, h = 4, 0.25
    pot = _rayleigh(d, 1)[0]
    model = RadialAngular(pot, m=0.5, mu=0.3, k=0.1)

    def step(y):
        z0 = RadialAngular.from_cartesian(y[:d], y[d:])
        q, v = model.to_cartesian(nc.integrate(model, z0, t_end=h, h=h,
                                               method=method).y_final)
        return np.concatenate([q, v])

    y0 = np.concatenate([np.random.default_rng(4).standard_normal(d), 0.2 * np.ones(d)])
    J = _jacobian(step, y0)
    Om = _omega(d)
    assert np.abs(J.T @ Om @ J - np.exp(-model.mu * h / model.m) * Om).max() < 1e-8


def test_energy_bounded_for_verlet_drifts_for_rk4():
    """μ = k = 0: conformal-verlet's energy error stays bounded over 1e5 steps, rk4's at the
    same h grows secularly (SPEC §5)."""
    model = Damped(nc.potentials.Radial(3, "double_well"), m=1.0, mu=0.0, k=0.0)
    y0 = np.array([1.2, 0.1, -0.3, 0.2, 0.5, 0.3])
    out = {}
    for method in ("conformal-verlet", "conformal-yoshida4", "rk4"):
        r = nc.integrate(model, y0, t_end=1e4, h=0.1, method=method, record_every=100)
        assert len(r.t) == 1001
        dE = np.abs(model.energy(r.y) - model.energy(y0)[0])
        out[method] = (dE[:11].max(), dE.max(), dE[-1])
    for m in ("conformal-verlet", "conformal-yoshida4"):
        early, whole, _ = out[m]
        assert whole < 1.5 * early              # bounded: no growth after the first 1%
    early, whole, last = out["rk4"]
    assert last > 20 * early                    # drift: grows ~linearly (measured ~90x)


# -- discrete Noether (SPEC §1.1, §5) -------------------------------------------------------
@pytest.mark.parametrize("method", SPLIT)
@pytest.mark.parametrize("k", [0.0, 0.2])
def test_discrete_angular_momentum_decays_exactly(method, k):
    d = 4
    model = Damped(nc.potentials.Radial(d, "double_well"), m=0.7, mu=0.2, k=k)
    rng = np.random.default_rng(5)
    Om = nc.symmetry.random_skew(d, rng)
    y0 = np.concatenate([rng.standard_normal(d), rng.standard_normal(d)])
    h = 0.05
    r = nc.integrate(model, y0, t_end=400 * h, h=h, method=method)
    q, v = r.y[:, :d], r.y[:, d:]
    L = np.einsum("ni,ij,nj->n", q, Om, v)        # ⟨q, Ω q̇⟩
    beta = np.exp(-model.mu * h / model.m)
    scale = np.linalg.norm(q, axis=1)[:-1] * np.linalg.norm(v, axis=1)[:-1]
    # exact in exact arithmetic (docs/integrators.md); round-off ~ 1e-15 |q||v| per step
    assert np.abs(L[1:] - beta * L[:-1]).max() < 1e-13 * scale.max()
    assert abs(L[0]) > 1e-2                        # non-trivial charge


# -- M2: constraint, equivalence with M1, reduced vs exact ---------------------------------
@pytest.mark.parametrize("reduced", [False, True])
@pytest.mark.parametrize("method", SPLIT)
def test_m2_constraint_at_roundoff_every_step(method, reduced):
    model, y0 = _m2_case(reduced)
    r = nc.integrate(model, y0, t_end=40.0, h=0.02, method=method)
    u, w = r.qhat, r.qhatdot
    assert np.abs(np.linalg.norm(u, axis=1) - 1.0).max() < 4e-16 * 4
    assert np.abs(np.sum(u * w, 1)).max() < 1e-15 * np.linalg.norm(w, axis=1).max() * 4


@pytest.mark.parametrize("method", SPLIT + ("rk4", "dopri5"))
def test_m2_exact_equals_m1_in_polar_coordinates(method):
    pot, _ = _rayleigh(5, 2)
    rng = np.random.default_rng(6)
    q0, v0 = rng.standard_normal(5), 0.3 * rng.standard_normal(5)
    m1 = Damped(pot, 0.5, 0.3, 0.05)
    m2 = RadialAngular(pot, 0.5, 0.3, 0.05)
    T = 5.0
    ref = _dop853(m1, np.concatenate([q0, v0]), T)
    kw = {"rtol": 1e-12, "atol": 1e-14} if method == "dopri5" else {"h": 0.005}
    r = nc.integrate(m2, m2.from_cartesian(q0, v0), t_end=T, method=method, **kw)
    q, v = m2.to_cartesian(r.y_final)
    # the M2 integrator's own error: O(h^p) with the constants measured in the order test
    tol = {"conformal-euler": 2e-2, "conformal-verlet": 1e-4, "conformal-yoshida4": 1e-8,
           "rk4": 1e-9, "dopri5": 1e-10}[method]
    np.testing.assert_allclose(np.concatenate([q, v]), ref, rtol=0, atol=tol)


def test_m2_reduced_differs_by_amount_shrinking_with_m():
    """The paper's Eq. 15 drops 2m(ṙ/r)q̂̇: the trajectories differ by an amount that
    shrinks with m (measured: max|Δq| ≈ 4.6, 1.4, 0.48, 0.16, 0.053, slope ≈ 1.6)."""
    pot, _ = _rayleigh(5, 0)
    rng = np.random.default_rng(10)
    y0 = RadialAngular.from_cartesian(rng.standard_normal(5), np.zeros(5))
    ms = np.array([0.4, 0.2, 0.1, 0.05, 0.025])
    diffs = []
    for m in ms:
        a, b = (nc.integrate(RadialAngular(pot, m, 0.3, 0.05, reduced=red), y0, t_end=5.0,
                             h=0.002, method="conformal-yoshida4") for red in (False, True))
        diffs.append(np.abs(a.q - b.q).max())
    diffs = np.array(diffs)
    assert np.all(np.diff(diffs) < 0)
    # at least first order in m (the dropped term is O(m)); the integrator error at
    # h = 0.002 (~1e-9) is far below the smallest difference
    assert _slope(ms, diffs) > 1.0
    assert diffs[-1] > 1e-3


# -- compiled kernel == NumPy twin (SPEC §5 "Agreement") ------------------------------------
@pytest.mark.parametrize("case", ["M1", "M2", "M2-reduced", "M4"])
def test_compiled_equals_numpy_twin(case):
    model, y0 = CASES[case]()
    s = _spec(model)
    for method in model.methods:
        if method in ("dopri5", "dop853"):
            continue
        r = nc.integrate(model, y0, t_end=2.0, h=0.01, method=method, record_every=3)
        t, Y = ri.integrate(s, y0, method, 0.0, 0.01, 200, 3)
        np.testing.assert_allclose(r.t, t, rtol=1e-14)
        # same operations in the same order, except the potential's dot products (BLAS in
        # the twin): ~1e-16 per step, amplified over 200 steps by the flow's growth
        np.testing.assert_allclose(r.y, Y, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_dopri5_equals_numpy_twin(case):
    """Same algorithm; the step sequences differ at ~1e-8 relative because the embedded
    error estimate cancels ~8 digits of the gradients' rounding (BLAS vs C loops), so
    compare at common output times (exact landing) to the requested accuracy."""
    model, y0 = CASES[case]()
    te = np.linspace(0.0, 2.0, 9)
    r = nc.integrate(model, y0, t_end=2.0, method="dopri5", rtol=1e-9, atol=1e-11,
                     t_eval=te)
    t, Y, st = ri.dopri5(_spec(model), y0, 0.0, 2.0, 0.0, 1e-9, 1e-11, t_eval=te)
    assert st == "ok" and np.array_equal(r.t, t)
    np.testing.assert_allclose(r.y, Y, rtol=0, atol=1e-8)


# -- bookkeeping -----------------------------------------------------------------------------
def test_records_and_step_adjustment():
    model, y0 = _m1_case()
    r = nc.integrate(model, y0, t_end=1.0, h=0.3, method="rk4", record_every=2)
    assert r.h == pytest.approx(0.25) and r.n_steps == 4      # 1.0 / ceil(1/0.3)
    np.testing.assert_allclose(r.t, [0.0, 0.5, 1.0])
    assert r.t_final == pytest.approx(1.0)
    r0 = nc.integrate(model, y0, t_end=0.0, h=0.1, method="conformal-verlet")
    assert len(r0.t) == 1 and np.array_equal(r0.y_final, y0)
    full = nc.integrate(model, y0, t_end=1.0, h=0.01, method="conformal-verlet")
    sub = nc.integrate(model, y0, t_end=1.0, h=0.01, method="conformal-verlet",
                       record_every=10)
    assert np.array_equal(full.y[::10], sub.y)


def test_dopri5_records_every_accepted_step_and_final():
    model, y0 = _m1_case()
    r = nc.integrate(model, y0, t_end=3.0, method="dopri5", record_every=2)
    assert r.t[0] == 0.0 and r.t[-1] == 3.0
    assert len(r.t) == r.n_steps // 2 + 1 + (r.n_steps % 2)
    assert np.array_equal(r.y[-1], r.y_final)


# -- bad input --------------------------------------------------------------------------------
def test_bad_input_errors():
    model, y0 = _m1_case()
    pot = model.potential
    with pytest.raises(ValueError, match="h must lie in"):
        nc.integrate(model, y0, t_end=1.0, h=0.0, method="rk4")
    with pytest.raises(ValueError, match="h must lie in"):
        nc.integrate(model, y0, t_end=1.0, h=-0.1, method="rk4")
    with pytest.raises(ValueError, match="needs a step size h"):
        nc.integrate(model, y0, t_end=1.0, method="rk4")
    with pytest.raises(ValueError, match="m must lie in"):
        Damped(pot, m=0.0, mu=0.1)
    with pytest.raises(ValueError, match="m must lie in"):
        RadialAngular(pot, m=-1.0, mu=0.1)
    with pytest.raises(ValueError, match="mu must lie in"):
        GradientFlow(pot, mu=0.0)
    with pytest.raises(ValueError, match="t_end must be >= t0"):
        nc.integrate(model, y0, t_end=-1.0, h=0.1, method="rk4")
    with pytest.raises(ValueError, match="method must be one of"):
        nc.integrate(model, y0, t_end=1.0, h=0.1, method="leapfrog")
    with pytest.raises(ValueError, match="not valid for GradientFlow"):
        nc.integrate(GradientFlow(pot), y0[:5], t_end=1.0, h=0.1, method="conformal-verlet")
    with pytest.raises(ValueError, match="not valid for Damped"):
        nc.integrate(model, y0, t_end=1.0, h=0.1, method="euler")
    with pytest.raises(ValueError, match="y0 must have shape"):
        nc.integrate(model, y0[:3], t_end=1.0, h=0.1, method="rk4")
    with pytest.raises(ValueError, match="y0 must be finite"):
        nc.integrate(model, np.full(10, np.nan), t_end=1.0, h=0.1, method="rk4")
    with pytest.raises(TypeError, match="model must be"):
        nc.integrate("M1", y0, t_end=1.0, h=0.1, method="rk4")
    with pytest.raises(ValueError, match="t_eval is only supported"):
        nc.integrate(model, y0, t_end=1.0, h=0.1, method="rk4", t_eval=[0.5])
    with pytest.raises(ValueError, match="t_eval must lie in"):
        nc.integrate(model, y0, t_end=1.0, method="dopri5", t_eval=[0.5, 2.0])
    with pytest.raises(ValueError, match="rtol must lie in"):
        nc.integrate(model, y0, t_end=1.0, method="dopri5", rtol=0.0)
    with pytest.raises(ValueError, match="record_every must lie in"):
        nc.integrate(model, y0, t_end=1.0, h=0.1, method="rk4", record_every=0)
    with pytest.raises(ValueError, match="convention must be one of"):
        Damped.from_rule(pot, 0.1, 0.9, convention="torch")


def test_radial_angular_refuses_potential_without_scale_block():
    with pytest.raises(ValueError, match="exact scale symmetry on all of q"):
        RadialAngular(nc.potentials.Radial(3), m=0.5, mu=0.3)
    with pytest.raises(ValueError, match="exact scale symmetry on all of q"):
        RadialAngular(nc.potentials.Quadratic(np.eye(3)), m=0.5, mu=0.3)
    X = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(ValueError, match="exact scale symmetry"):      # eps > 0: inexact
        RadialAngular(nc.potentials.BatchNormUnit(X, np.ones(6), eps=1e-3), m=0.5, mu=0.3)
    RadialAngular(nc.potentials.BatchNormUnit(X, np.ones(6)), m=0.5, mu=0.3)


def test_radial_angular_constraint_errors_and_projection():
    model, y0 = _m2_case()
    bad = y0.copy()
    bad[2:7] *= 1.001
    with pytest.raises(ValueError, match="project=True"):
        nc.integrate(model, bad, t_end=1.0, h=0.1, method="conformal-verlet")
    bad2 = y0.copy()
    bad2[7:] += 1e-3 * y0[2:7]                    # a normal component of q̂̇
    with pytest.raises(ValueError, match="project=True"):
        nc.integrate(model, bad2, t_end=1.0, h=0.1, method="conformal-verlet")
    r = nc.integrate(model, bad, t_end=1.0, h=0.1, method="conformal-verlet", project=True)
    assert abs(np.linalg.norm(r.qhat[0]) - 1) < 1e-15
    ok = nc.integrate(model, y0, t_end=1.0, h=0.1, method="conformal-verlet")
    np.testing.assert_allclose(r.y, ok.y, rtol=1e-13, atol=1e-15)   # projection = y0
    neg = y0.copy()
    neg[0] = -1.0
    with pytest.raises(ValueError, match="radius r"):
        nc.integrate(model, neg, t_end=1.0, h=0.1, method="rk4")
    with pytest.raises(ValueError, match="only meaningful for RadialAngular"):
        m1, z = _m1_case()
        nc.integrate(m1, z, t_end=1.0, h=0.1, method="rk4", project=True)


def test_dopri5_max_steps_and_underflow_raise():
    model, y0 = _m1_case()
    with pytest.raises(IntegrationError, match="max_steps=5") as ei:
        nc.integrate(model, y0, t_end=100.0, method="dopri5", max_steps=5)
    assert ei.value.result is not None and ei.value.result.t_final < 100.0
    # tolerances no step can meet: the controller shrinks h by 5x per rejection and must
    # stop with a clear error at the underflow bound instead of looping forever
    with pytest.raises(IntegrationError, match="underflow") as ei:
        nc.integrate(model, y0, t_end=1.0, method="dopri5", rtol=1e-300, atol=1e-300)
    assert ei.value.result.n_rejected > 10 and ei.value.result.t_final == 0.0


def test_radius_reaching_zero_warns():
    """Purely radial motion through the origin (q̂ an eigenvector: ĝ = 0): r hits 0 at t = 1;
    the polar coordinates break down there and the run stops with a DivergenceWarning."""
    A = np.diag([1.0, 2.0, 3.0])
    model = RadialAngular(nc.potentials.RayleighQuotient(A), m=1.0, mu=0.0, k=0.0)
    y0 = RadialAngular.from_cartesian([1.0, 0.0, 0.0], [-1.0, 0.0, 0.0])
    for method, kw in (("conformal-verlet", {"h": 0.3}), ("dopri5", {})):
        with pytest.warns(nc.DivergenceWarning, match="radius r reached 0"):
            r = nc.integrate(model, y0, t_end=3.0, method=method, **kw)
        # stopped after the step that crossed r = 0 (dopri5's steps are long here: the
        # motion is uniform, its error estimate zero); every recorded r is positive
        assert r.diverged and r.t_final >= 0.9 and r.y_final[0] <= 0 and np.all(r.r > 0)


# -- dop853 (docs/integrators.md §5.2) ---------------------------------------------------------
def _fixed_steps(model, y0, T, N, method):
    """An adaptive method forced onto N equal steps: output times every T/N (it lands on
    each), first step T/N and tolerances so loose that no step is rejected or shortened."""
    r = nc.integrate(model, y0, t_end=T, method=method, t_eval=np.linspace(0.0, T, N + 1),
                     h=T / N, rtol=1e3, atol=1e3)
    assert r.n_steps == N and r.n_rejected == 0
    return r.y_final


def _oscillator():
    """q̈ + 0.2 q̇ + q = 0 (M1, Quadratic, m = 1, μ = 0.2) from (1, 0): closed form
    q = e^{−t/10}(cos ωt + sin(ωt)/(10ω)), q̇ = −e^{−t/10} sin(ωt)(0.01 + ω²)/ω, ω² = 0.99."""
    w = np.sqrt(0.99)

    def exact(t):
        t = np.asarray(t, dtype=float)
        e = np.exp(-0.1 * t)
        return np.array([e * (np.cos(w * t) + np.sin(w * t) / (10 * w)),
                         -e * np.sin(w * t) * (0.01 + w * w) / w])

    return Damped(nc.potentials.Quadratic(np.eye(1)), m=1.0, mu=0.2), np.array([1.0, 0.0]), \
        exact


def _linear_flow():
    """μ q̇ = −A q (M4, Quadratic, d = 3): q(t) = V e^{−Λt/μ} Vᵀ q0."""
    rng = np.random.default_rng(5)
    B = rng.standard_normal((3, 3))
    A = B @ B.T + np.eye(3)
    lam, V = np.linalg.eigh(A)
    q0 = rng.standard_normal(3)
    return (GradientFlow(nc.potentials.Quadratic(A), mu=0.5), q0,
            lambda t: V @ (np.exp(-lam * t / 0.5) * (V.T @ q0)))


@pytest.mark.parametrize("problem", ["oscillator", "linear-flow"])
@pytest.mark.parametrize("method,order", [("dopri5", 5), ("dop853", 8)])
def test_adaptive_methods_measured_order(problem, method, order):
    """The Runge–Kutta formula's order: the global error at equal steps (the controller
    out of the way) against the closed form is C h^p; the fitted slope is within 0.3 of p
    (measured: dopri5 5.19 / 5.24, dop853 8.10 / 8.01 on the two problems), every error
    in [1e-13, 1e-3] (above round-off, ~1e-16 · the number of steps)."""
    model, y0, exact = _oscillator() if problem == "oscillator" else _linear_flow()
    T = 8.0 if problem == "oscillator" else 1.0
    Ns = np.array({("oscillator", 8): [8, 11, 16, 22, 32],
                   ("oscillator", 5): [16, 22, 32, 45, 64],
                   ("linear-flow", 8): [6, 8, 11, 16],
                   ("linear-flow", 5): [10, 14, 20, 28, 40]}[problem, order])
    errs = [np.abs(_fixed_steps(model, y0, T, N, method) - exact(T)).max() for N in Ns]
    assert 1e-13 < min(errs) and max(errs) < 1e-3, errs
    assert abs(_slope(T / Ns, errs) - order) < 0.3, (errs, _slope(T / Ns, errs))


@pytest.mark.parametrize("case", list(CASES))
def test_dop853_matches_scipy_dop853_and_beats_dopri5(case):
    """At rtol 1e-12 both are within 5e-10 of solve_ivp DOP853; dop853 needs several
    times fewer right-hand sides than dopri5 there (an 8th-order method at high accuracy)."""
    model, y0 = CASES[case]()
    ref = _dop853(model, y0, 6.0)
    r8 = nc.integrate(model, y0, t_end=6.0, method="dop853", rtol=1e-12, atol=1e-14)
    r5 = nc.integrate(model, y0, t_end=6.0, method="dopri5", rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r8.y_final, ref, rtol=0, atol=5e-10)
    assert r8.status == 0 and r8.success and r8.order == 8
    assert r8.nfev * 2 < r5.nfev, (r8.nfev, r5.nfev)


def test_dop853_tolerance_proportionality():
    model, y0 = _m1_case()
    ref = _dop853(model, y0, 4.0)
    errs = []
    for tol in (1e-6, 1e-8, 1e-10):
        r = nc.integrate(model, y0, t_end=4.0, method="dop853", rtol=tol, atol=tol * 1e-2)
        errs.append(np.abs(r.y_final - ref).max())
    assert errs[0] > errs[1] > errs[2]
    ratio = np.array(errs) / np.array([1e-6, 1e-8, 1e-10])
    assert ratio.max() / ratio.min() < 100 and ratio.max() < 100


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_dop853_equals_numpy_twin(case):
    """As for dopri5: same algorithm, compared at common output times (exact landing) to
    the requested accuracy; the final states of free runs agree to ~1e-14 (the step
    sequences differ at ~1e-8 relative, which the error estimate amplifies from the
    gradients' rounding)."""
    model, y0 = CASES[case]()
    te = np.linspace(0.0, 2.0, 9)
    r = nc.integrate(model, y0, t_end=2.0, method="dop853", rtol=1e-9, atol=1e-11,
                     t_eval=te)
    t, Y, st = ri.dop853(_spec(model), y0, 0.0, 2.0, 0.0, 1e-9, 1e-11, t_eval=te)
    assert st == "ok" and np.array_equal(r.t, t)
    np.testing.assert_allclose(r.y, Y, rtol=0, atol=1e-8)
    r = nc.integrate(model, y0, t_end=2.0, method="dop853", rtol=1e-9, atol=1e-11)
    t, Y, st = ri.dop853(_spec(model), y0, 0.0, 2.0, 0.0, 1e-9, 1e-11)
    assert len(t) == len(r.t)
    np.testing.assert_allclose(r.t, t, rtol=1e-6)
    np.testing.assert_allclose(r.y_final, Y[-1], rtol=0, atol=1e-12)


def test_dop853_failure_conventions():
    """max_steps and underflow raise IntegrationError carrying status −1; a blow-up is a
    divergence (flag, message, DivergenceWarning, status −1), as for dopri5."""
    model, y0 = _m1_case()
    with pytest.raises(IntegrationError, match="dop853: max_steps=5") as ei:
        nc.integrate(model, y0, t_end=100.0, method="dop853", max_steps=5)
    assert ei.value.result.status == -1 and not ei.value.result.success
    with pytest.raises(IntegrationError, match="underflow") as ei:
        nc.integrate(model, y0, t_end=1.0, method="dop853", rtol=1e-300, atol=1e-300)
    assert ei.value.result.n_rejected > 10 and ei.value.result.t_final == 0.0
    # q̇ = 1 while q < 2, a NaN gradient beyond: from q = 1 the state turns non-finite at
    # t = 1 (M4, μ = 1); every step reaching past it is rejected until the floor
    nan_wall = nc.potentials.Python(lambda q: (0.0, -np.where(q < 2.0, 1.0, np.nan)), 1)
    for method in ("dopri5", "dop853"):
        with pytest.warns(nc.DivergenceWarning, match="non-finite state"):
            r = nc.integrate(GradientFlow(nan_wall, mu=1.0), [1.0], t_end=2.0, method=method)
        assert r.diverged and r.status == -1 and not r.success
        assert 1.0 - 1e-6 < r.t_final <= 1.0 and r.message == "non-finite state"


def test_status_success_message_reached_end():
    model, y0 = _m1_case()
    for method, kw in (("dop853", {}), ("dopri5", {}), ("rk4", {"h": 0.1})):
        r = nc.integrate(model, y0, t_end=1.0, method=method, **kw)
        assert r.status == 0 and r.success and r.t_final == 1.0
        assert r.message == "The solver successfully reached the end of the integration " \
                            "interval."


def test_dop853_tableau_conditions():
    """The DOP853 numbers (kernel and twin hold the same): row sums Σ_j a_ij = c_i, the
    quadrature conditions Σ b_i c_i^(k−1) = 1/k for k = 1..8 (8th order), the 5th-order
    estimate's weights summing to 0 (E5 is a difference of two consistent methods), and
    Σ bhh = 1 for the 3rd-order one.  Tolerance 1e-13: sums of ≤ 12 terms of size ≤ 44
    round to ~12 · 44 · 1.1e-16 ≈ 6e-14 (row sums measured ≤ 1.3e-15)."""
    from noether_core import _bridge
    k = _bridge.integrator_kernels
    for name in ("_D8_A", "_D8_C", "_D8_D", "_D8_E5", "_D8_BHH"):
        assert getattr(k, name) == getattr(ri, name)
    A, C = ri._D8_A, np.array(ri._D8_C)
    for i in range(1, 16):
        row = sum(v for (r, _), v in A.items() if r == i)
        assert abs(row - C[i]) < 1e-13, i
    b = np.array([A.get((12, j), 0.0) for j in range(12)])
    for kk in range(1, 9):
        assert abs(b @ C[:12] ** (kk - 1) - 1.0 / kk) < 1e-13, kk
    assert abs(sum(ri._D8_E5.values())) < 1e-13
    assert abs(sum(ri._D8_BHH.values()) - 1.0) < 1e-13


@pytest.mark.parametrize("method,order,Ns", [("dopri5", 5, [16, 22, 32, 45, 64]),
                                             ("dop853", 8, [8, 11, 16, 22, 32])])
def test_assert_order_forces_equal_steps_for_adaptive_methods(method, order, Ns):
    """noether_core.testing.assert_order on dopri5 / dop853 measures the formula's order
    (the damped oscillator, against its closed form, T = 8): it forces N equal steps as
    _fixed_steps does, so the slope is p ± 0.3 (5 and 8), and the errors it fits are the
    equal-step ones (the same slope as _fixed_steps' errors above its 1e-11 floor).
    Before, h was only the first trial step and the controller at the default rtol chose
    the steps: the fitted "slope" was 0.02 (dopri5) and 0.05 (dop853)."""
    from noether_core.testing import assert_order

    model, y0, exact = _oscillator()
    T = 8.0
    hs = T / np.array(Ns)
    slope = assert_order(method, model, y0, t_end=T, hs=hs, reference=exact(T))
    assert abs(slope - order) < 0.3
    errs = np.array([np.abs(_fixed_steps(model, y0, T, N, method) - exact(T)).max()
                     for N in Ns])
    keep = errs > 1e-11                     # assert_order's floor (|y(T)| <= 1: scale 1)
    assert abs(_slope(T / np.array(Ns)[keep], errs[keep]) - slope) < 1e-9
    with pytest.raises(AssertionError, match="slope"):
        assert_order(method, model, y0, t_end=T, hs=hs, reference=exact(T),
                     order=order - 2)
