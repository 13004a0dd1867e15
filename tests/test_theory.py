"""Tests of noether_core.theory: the closed forms of the paper's Sec. 4 (SPEC §4).

Each closed form is checked against something computed independently: the ODE it solves
(scipy's solve_ivp, DOP853 at rtol 1e-12), a plain Python loop of the recursion it claims
to evaluate, the exact identity of SPEC §1.1 on real training runs, or the late-time
state of real training runs.  Derivations: docs/theory.md.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import noether_core as nc
from noether_core import theory as T
from noether_core.conventions import to_continuous

# -- strategies ---------------------------------------------------------------------------
lrs = st.floats(1e-3, 0.5)
betas = st.floats(0.0, 0.95)
decays = st.floats(1e-5, 1e-2)
assumptions = st.sampled_from(T.ASSUMPTIONS)
series = st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=12)


def gain_by_summation(beta, assumption, n_terms=4000):
    """κ = |Σ_j β^j s_j|² with s_j = 1 (coherent), (−1)^j (alternating), or the
    expectation Σ β^{2j} of independent unit vectors (uncorrelated) — summed, not closed."""
    j = np.arange(n_terms)
    if assumption == "coherent":
        return np.sum(beta ** j) ** 2
    if assumption == "alternating":
        return np.sum((-beta) ** j) ** 2
    return np.sum(beta ** (2 * j))


# -- §4 equilibrium formulas vs the SPEC's / paper's expressions -----------------------------
@given(lrs, betas, decays, st.floats(1e-3, 10.0))
def test_steady_forms_match_paper_expressions(lr, beta, k, gh):
    """Paper Sec. 4: |q̂̇|* = sqrt(k/m), per step sqrt(2ηk/(1+β)); r* = (m/(kμ²))^{1/4}√|ĝ|;
    intrinsic rate sqrt(kμ²/m).  (m, μ) from conventions.to_continuous (the paper's)."""
    _, m, mu = to_continuous(lr, beta)
    rtol = 1e-12   # the same closed forms in another arrangement: round-off only
    assert math.isclose(T.steady_angular_speed(lr, beta, k), math.sqrt(k / m), rel_tol=rtol)
    assert math.isclose(T.steady_angular_update(lr, beta, k),
                        math.sqrt(2 * lr * k / (1 + beta)), rel_tol=rtol)
    assert math.isclose(T.steady_angular_update(lr, beta, k),
                        lr * T.steady_angular_speed(lr, beta, k), rel_tol=rtol)
    assert math.isclose(T.steady_radius(lr, beta, k, gh, "coherent"),
                        (m / (k * mu * mu)) ** 0.25 * math.sqrt(gh), rel_tol=rtol)
    # SPEC §4 "Caution": r⁴ = η|ĝ|²/(2k(1−β)), a factor (1+β)/(1−β) below the paper's
    r_unc = T.steady_radius(lr, beta, k, gh, "uncorrelated")
    assert math.isclose(r_unc ** 4, lr * gh * gh / (2 * k * (1 - beta)), rel_tol=rtol)
    assert math.isclose(T.steady_radius(lr, beta, k, gh) ** 4 / r_unc ** 4,
                        (1 + beta) / (1 - beta), rel_tol=rtol)
    assert math.isclose(T.intrinsic_lr(lr, beta, k), math.sqrt(k * mu * mu / m), rel_tol=rtol)
    # at the steady radius the intrinsic rate is |ĝ|/r*² (Eq. 15 at steady state)
    for a in T.ASSUMPTIONS:
        assert math.isclose(T.intrinsic_lr(lr, beta, k, assumption=a),
                            gh / T.steady_radius(lr, beta, k, gh, a) ** 2, rel_tol=1e-11)
        assert math.isclose(T.intrinsic_lr(lr, beta, k, assumption=a, per_step=True),
                            lr * T.intrinsic_lr(lr, beta, k, assumption=a), rel_tol=rtol)


@given(betas, assumptions)
def test_buffer_gain_is_the_summed_buffer(beta, assumption):
    """docs/theory.md §2: κ from the buffer Σβ^j g_{n−j} summed term by term (4000 terms:
    β^4000 ≤ 0.95^4000 ~ 1e-89, truncation invisible; summation round-off ~1e-13)."""
    assert math.isclose(T.buffer_gain(beta, assumption), gain_by_summation(beta, assumption),
                        rel_tol=1e-12)


def test_vectorised_over_arrays():
    lr = np.array([0.1, 0.05, 0.01])
    out = T.steady_angular_update(lr, 0.9, 5e-4)
    assert out.shape == (3,)
    for i in range(3):
        assert out[i] == T.steady_angular_update(float(lr[i]), 0.9, 5e-4)
    assert T.steady_radius(0.1, np.array([0.0, 0.5]), 1e-3, np.array([[1.0], [2.0]])).shape \
        == (2, 2)


# -- Eq. 16 → Eq. 17 -------------------------------------------------------------------------
def integrate_piecewise(rhs, y0, values, dt):
    """solve_ivp over each step [nΔt, (n+1)Δt) with the input held at values[n]."""
    out = [y0]
    y = y0
    for v in values:
        sol = solve_ivp(lambda t, s, v=v: rhs(s, v), (0.0, dt), [y], method="DOP853",
                        rtol=1e-12, atol=1e-14 * max(abs(y), 1e-300))
        assert sol.success
        y = float(sol.y[0, -1])
        out.append(y)
    return np.array(out)


@given(lrs, betas, decays, st.floats(0.1, 5.0), series, assumptions)
@settings(max_examples=15)
def test_eq17_solves_overdamped_eq16(lr, beta, k, r0, gh2, assumption):
    """Eq. 16 without the m∂²r² term (overdamped, the equation Eq. 17 solves):
    μ d(r²)/dt = −2k r² + 2mκ|ĝ(t)|²/r²  (coherent κ = 1/μ²: the paper's 2m/(μ²r²)),
    with |ĝ(t)|² held constant over each step of length η.  DOP853 at rtol 1e-12 per step
    over ≤ 12 steps: agreement to 1e-9 relative."""
    _, m, mu = to_continuous(lr, beta)
    kappa = gain_by_summation(beta, assumption)
    ref = integrate_piecewise(lambda s, g2: [(-2 * k * s + 2 * m * kappa * g2 / s) / mu],
                              r0 * r0, gh2, lr)
    got = T.norm_schedule(np.array(gh2), lr, beta, k, r0, assumption).r2_continuous
    np.testing.assert_allclose(got, ref, rtol=1e-9)


@given(lrs, betas, decays, st.floats(0.1, 5.0), st.floats(1e-3, 10.0),
       st.integers(1, 3000))
def test_eq17_literal_for_constant_input(lr, beta, k, r0, gh2, n):
    """Eq. 17 exactly as printed (prefactor 2η(1+β)/(1−β)³, rate 4k/(1−β)) for constant
    |ĝ|², where the integral is elementary; the EMA form must agree to round-off
    accumulated over n steps (~n·1e-16; 1e-10 is ample for n ≤ 3000)."""
    t = n * lr
    c = 4 * k / (1 - beta)
    integral = gh2 * (-math.expm1(-c * t)) / c
    r4 = 2 * lr * (1 + beta) / (1 - beta) ** 3 * integral + math.exp(-c * t) * r0 ** 4
    got = T.norm_schedule(np.full(n, gh2), lr, beta, k, r0).r2_continuous[-1]
    assert math.isclose(got, math.sqrt(r4), rel_tol=1e-10)


# -- the exact recursions vs a direct loop ---------------------------------------------------
@given(lrs, st.floats(0.0, 0.9), st.floats(1e-5, 1e-3), st.floats(0.5, 3.0),
       st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=40), assumptions)
def test_model_recursion_is_the_identity_loop(lr, beta, k, r0, gh2, assumption):
    """SPEC §1.1 identity a_{n+1} − a_n − β(a_n − a_{n−1}) = D_{n+1} + βD_n − 2ηk a_n,
    with D_{n+1} = η²|ĝ_n|²/a_n · |Σ_{j≤n} β^j s_j|² (buffer from rest), looped in plain
    Python: same arithmetic up to reassociation, so 1e-12 relative."""
    a_prev, a, D_old = r0 * r0, r0 * r0, 0.0
    ref = [a]
    for n, g in enumerate(gh2):
        kap = gain_by_summation(beta, assumption, n_terms=n + 1)
        D = lr * lr * kap * g / a
        a_new = (a - a_prev) * beta + a + D + beta * D_old - 2 * lr * k * a
        a_prev, a, D_old = a, a_new, D
        ref.append(a)
    got = T.norm_schedule(np.array(gh2), lr, beta, k, r0, assumption).r2_discrete
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@given(lrs, st.floats(0.0, 0.999), st.floats(0.0, 5.0),
       st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40))
def test_rmsprop_discrete_is_the_rule_loop(lr, rho, G0, g2):
    """The scalar RMSProp recursion G_{n+1} = ρG_n + (1−ρ)|g_n|² (Sec. 4), looped."""
    G, ref = G0, [G0]
    for v in g2:
        G = rho * G + (1 - rho) * v
        ref.append(G)
    got = T.rmsprop_scale(np.array(g2), lr, rho, G0).sqrt_G_discrete
    np.testing.assert_allclose(got, np.sqrt(ref), rtol=1e-12, atol=1e-300)


@given(lrs, st.floats(0.0, 0.999), st.floats(1e-3, 5.0), series)
@settings(max_examples=15)
def test_eq20_solves_eq19(lr, rho, G0, g2):
    """Eq. 19, η dG/dt = −(1−ρ)G + (1−ρ)|g|², integrated with |g|² held over each step."""
    ref = integrate_piecewise(lambda G, v: [(1 - rho) * (v - G) / lr], G0, g2, lr)
    got = T.rmsprop_scale(np.array(g2), lr, rho, G0).sqrt_G_continuous
    np.testing.assert_allclose(got, np.sqrt(ref), rtol=1e-9)


# -- equivalent RMSProp -------------------------------------------------------------------------
@given(st.floats(1e-3, 0.3), st.floats(0.0, 0.95), st.floats(1e-5, 1e-3), st.floats(0.2, 5.0),
       st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=200), assumptions)
def test_equivalent_rmsprop_matches_effective_lr(lr, beta, k, r0, gh2, assumption):
    """SPEC §4: with (η', ρ, G0) = equivalent_rmsprop, RMSProp's η'/sqrt(G_n) equals SGD's
    η/((1−β) r_n²) at every n — for the continuous forms (Eq. 20 vs Eq. 17) and for the
    per-step Euler form of Eq. 17, r⁴_{n+1} = (1 − 4ηk/(1−β)) r⁴_n + 2(1+β)η²κ/(1−β)·|ĝ_n|²
    vs RMSProp's own G recursion.  Round-off only, but ρ near 1 carries 1−ρ with relative
    error ε/(1−ρ) (ρ is stored, 1−ρ recomputed), which the decay then holds: tolerance
    1e-11 + 10ε/(1−ρ)."""
    eq = T.equivalent_rmsprop(lr, beta, k, r0, assumption)
    tol = 1e-11 + 10 * np.finfo(float).eps / (1 - eq.rho)
    g = np.array(gh2)
    sgd = T.norm_schedule(g, lr, beta, k, r0, assumption).r2_continuous
    rms = T.rmsprop_scale(g, eq.lr, eq.rho, eq.G0)
    np.testing.assert_allclose(eq.lr / rms.sqrt_G_continuous, lr / ((1 - beta) * sgd),
                               rtol=tol)
    kappa = gain_by_summation(beta, assumption)
    u, euler = r0 ** 4, [r0 ** 4]
    for v in gh2:
        u = (1 - 4 * lr * k / (1 - beta)) * u + 2 * (1 + beta) * lr * lr * kappa / (1 - beta) * v
        euler.append(u)
    np.testing.assert_allclose(eq.lr / rms.sqrt_G_discrete,
                               lr / ((1 - beta) * np.sqrt(euler)), rtol=tol)


def test_equivalent_rmsprop_coherent_values():
    """Coherent: η' = sqrt(2ηk/(1+β)) (= the steady angular update), ρ = 1 − 4ηk/(1−β),
    G0 = 2k(1−β)² r0⁴/((1+β)η)."""
    lr, beta, k, r0 = 0.1, 0.9, 5e-4, 1.5
    eq = T.equivalent_rmsprop(lr, beta, k, r0)
    assert math.isclose(eq.lr, math.sqrt(2 * lr * k / (1 + beta)), rel_tol=1e-12)
    assert math.isclose(eq.rho, 1 - 4 * lr * k / (1 - beta), rel_tol=1e-12)
    assert math.isclose(eq.G0, 2 * k * (1 - beta) ** 2 * r0 ** 4 / ((1 + beta) * lr),
                        rel_tol=1e-12)


# -- overflow safety ------------------------------------------------------------------------
def test_million_steps_do_not_overflow():
    """10⁶ steps at c·t = 4ηk/(1−β)·n = 2·10⁴: e^{+cτ} of the printed form overflows,
    the EMA form converges to the steady r⁴ = η(1+β)κ|ĝ|²/(2k) (relative 1e-9: the
    transient e^{−2·10⁴} is gone, the rest is round-off of a contracting recursion)."""
    lr, beta, k, n, gh2 = 0.1, 0.9, 5e-3, 10 ** 6, 2.0
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.exp(4 * k / (1 - beta) * lr * np.float64(n)))
    out = T.norm_schedule(np.full(n, gh2), lr, beta, k, 1.0)
    for col in (out.r2_continuous, out.r2_discrete):
        assert np.all(np.isfinite(col)) and np.all(col > 0)
    r2_star = T.steady_radius(lr, beta, k, math.sqrt(gh2)) ** 2
    assert math.isclose(out.r2_continuous[-1], r2_star, rel_tol=1e-9)
    # the discrete model's fixed point is exactly r*⁴ too (docs/theory.md §3)
    assert math.isclose(out.r2_discrete[-1], r2_star, rel_tol=1e-9)
    rms = T.rmsprop_scale(np.full(n, gh2), 0.01, 0.999, 0.0)
    assert np.all(np.isfinite(rms.sqrt_G_continuous))
    assert math.isclose(rms.sqrt_G_continuous[-1], math.sqrt(gh2), rel_tol=1e-12)


def test_every_public_function_refuses_an_overflowed_result():
    """Every public function of theory carries ``@V.finite_result`` at its definition:
    finite inputs whose closed form overflows give a ValueError naming the arguments,
    not inf (lr = 5e-324 makes sqrt(2k/(η(1+β))) overflow)."""
    import inspect

    public = [getattr(T, n) for n in T.__all__]
    funcs = [f for f in public if callable(f) and not isinstance(f, type)]
    assert len(funcs) == 15
    for f in funcs:
        assert f.__wrapped__.__module__ == T.__name__, f
    src = inspect.getsource(T)
    for f in funcs:
        assert f"@V.finite_result\ndef {f.__name__}(" in src, f.__name__
    with pytest.raises(ValueError, match=r"steady_angular_speed\(lr=5e-324.*overflows"):
        T.steady_angular_speed(5e-324, 0.9, 1.0)


# -- the exact identity on real runs -----------------------------------------------------------
def _bn(seed=1, n=64, d=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.tanh(X @ rng.standard_normal(d)) + 0.3 * rng.standard_normal(n)
    return nc.potentials.BatchNormUnit(X, y)


def _rayleigh(seed=2, d=3):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return nc.potentials.RayleighQuotient(Q @ np.diag(np.arange(1.0, d + 1)) @ Q.T)


@pytest.mark.parametrize("pot_name,batch_size", [("rayleigh", None), ("bn", None),
                                                  ("bn", 16)])
@pytest.mark.parametrize("lr,beta,k", [(0.1, 0.9, 5e-4), (0.05, 0.5, 1e-2), (0.2, 0.0, 1e-3)])
def test_measured_recursion_reproduces_the_run(pot_name, batch_size, lr, beta, k):
    """SPEC §1.1 is an identity: fed the run's own |Δ_n|², the discrete column of
    norm_schedule("measured") is |q_n|² at every step (3000 steps; round-off grows like
    √n·ε·1/(1−β): 1e-11 relative)."""
    pot = _bn() if pot_name == "bn" else _rayleigh()
    q0 = np.random.default_rng(7).standard_normal(pot.dim)
    res = nc.train(nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k), pot, q0, 3000,
                   batch_size=batch_size, seed=4)
    a = np.sum(res.q ** 2, axis=1)
    out = T.norm_schedule(None, lr, beta, k, math.sqrt(a[0]), "measured",
                          delta_norm2=T.step_norm2(res.q))
    np.testing.assert_allclose(out.r2_discrete, a, rtol=1e-11)


def test_measured_recursion_resumed_and_dampened():
    """Resumed from a non-zero buffer v₀ (prev = (|q₀ + ηv₀|², η²|v₀|²)) with dampening τ:
    Δ_{n+1} = βΔ_n − η(1−τ)(g_n + kq_n), i.e. the identity with η(1−τ) in the decay term
    (docs/theory.md §6)."""
    pot = _bn()
    rng = np.random.default_rng(3)
    q0, v0 = rng.standard_normal(pot.dim), 0.3 * rng.standard_normal(pot.dim)
    lr, beta, k, tau = 0.1, 0.8, 2e-3, 0.4
    rule = nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k, dampening=tau)
    res = nc.train(rule, pot, q0, 2000, state=rule.with_buffer(pot, v0))
    a = np.sum(res.q ** 2, axis=1)
    prev = (float(np.sum((q0 + lr * v0) ** 2)), float(lr * lr * np.sum(v0 ** 2)))
    out = T.norm_schedule(None, lr * (1 - tau), beta, k, math.sqrt(a[0]), "measured",
                          delta_norm2=T.step_norm2(res.q), prev=prev)
    np.testing.assert_allclose(out.r2_discrete, a, rtol=1e-11)


def test_measured_continuous_column_is_overdamped():
    """The continuous column of "measured" drops only the inertial term β·(second difference
    of a), the m∂²r² of Eq. 16.  It misses the overshoot of the first ~(1+β)/(2(1−β)) steps
    (an offset that then decays with the weight-decay memory e^{−2ηkn/(1−β)}), and where a
    varies slowly — a minibatch run near its statistical steady state — it tracks |q_n|²:
    measured median 0.2%, max 3% over n ≥ 500; tolerances 1% and 5%.  (A full-batch β = 0.9
    run, whose norm jumps in spikes, breaks it: docs/theory.md §4 and §7.)"""
    pot = _bn()
    lr, beta, k = 0.1, 0.9, 5e-4
    res = nc.train(nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k), pot,
                   np.random.default_rng(1).standard_normal(pot.dim), 20000, batch_size=16,
                   seed=2)
    a = np.sum(res.q ** 2, axis=1)
    out = T.norm_schedule(None, lr, beta, k, math.sqrt(a[0]), "measured",
                          delta_norm2=T.step_norm2(res.q))
    err = np.abs(out.r2_continuous[500:] / a[500:] - 1)
    assert np.median(err) < 0.01 and np.max(err) < 0.05
    assert np.max(np.abs(out.r2_continuous[:20] / a[:20] - 1)) > 0.1   # the missed overshoot


# -- late-time equilibrium of real runs ---------------------------------------------------------
def _late_state(pot, lr, beta, k, steps, batch_size=None):
    q0 = np.random.default_rng(5).standard_normal(pot.dim)
    res = nc.train(nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k), pot, q0, steps,
                   batch_size=batch_size, seed=3)
    w = slice(steps // 2, steps)
    a = np.sum(res.q ** 2, axis=1)
    chord = T.angular_updates(res.q)[w]
    gh2 = (res.grad_norm2 * a)[:-1][w]
    return np.sqrt(np.mean(chord ** 2)), math.sqrt(np.mean(a[w])), math.sqrt(np.mean(gh2))


@pytest.mark.parametrize("pot_name", ["rayleigh", "bn"])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5])
def test_full_batch_late_time_equilibrium(pot_name, beta):
    """Full batch, η = 0.1, k = 1e-3 (ηk = 1e-4), 6·10⁴ steps, late half.

    Angle: RMS chord |q̂_{n+1} − q̂_n| vs sqrt(2ηk/(1+β)).  The late state is a limit
    cycle around the minimum (edge of stability) whose radius oscillates by
    cv ≈ 5% ≈ 5√(ηk); the steady-state derivation holds for the cycle average up to the
    covariance of a and chord² (≤ cv·O(1)) plus O(ηk) radial share plus a boundary term
    O(cv/(window·ηk)) = 1e-2·cv.  Measured 0.2–0.8%; tolerance 2%.

    Radius: the gradients at that limit cycle flip sign from step to step (period-2
    oscillation across the minimum), so "alternating" applies, r⁴ = η|ĝ|²/(2k(1+β)); the
    paper's "coherent" r* is off by ((1+β)/(1−β))^{1/2} in r (1.1 at β = 0.1, 1.7 at
    β = 0.5; all three coincide at β = 0).  Tolerance 3% (measured ≤ 2.3%, at β = 0.5).
    At β = 0.9 full batch there is no steady state (spikes): docs/theory.md §7."""
    pot = _bn() if pot_name == "bn" else _rayleigh()
    lr, k = 0.1, 1e-3
    chord, r, gh = _late_state(pot, lr, beta, k, 60000)
    assert abs(chord / T.steady_angular_update(lr, beta, k) - 1) < 0.02
    r_alt = T.steady_radius(lr, beta, k, gh, "alternating")
    r_coh = T.steady_radius(lr, beta, k, gh, "coherent")
    assert abs(r / r_alt - 1) < 0.03
    assert math.isclose(r_coh / r_alt, ((1 + beta) / (1 - beta)) ** 0.5, rel_tol=1e-12)


def test_minibatch_late_time_equilibrium_is_uncorrelated():
    """Minibatch (16 of 64 rows) BatchNormUnit, β = 0.9, ηk = 1e-4: the angle matches
    sqrt(2ηk/(1+β)) within 2% (statistical, 3·10⁴-step window; measured 0.1%), and the
    radius follows the "uncorrelated" r⁴ = η|ĝ|²/(2k(1−β)) within 5% (the mean gradient is
    a coherent residue on top of the noise; measured −1.4%), not the paper's "coherent",
    which is off by ((1+β)/(1−β))^{1/4} = 2.09."""
    lr, beta, k = 0.1, 0.9, 1e-3
    chord, r, gh = _late_state(_bn(), lr, beta, k, 60000, batch_size=16)
    assert abs(chord / T.steady_angular_update(lr, beta, k) - 1) < 0.02
    assert abs(r / T.steady_radius(lr, beta, k, gh, "uncorrelated") - 1) < 0.05
    assert r / T.steady_radius(lr, beta, k, gh, "coherent") < 0.6


def test_measured_buffer_gain_identifies_the_assumption():
    """measured κ_n = |Δ_{n+1}|²/(η²|g_n|²) (docs/theory.md §2): its median on a minibatch
    β = 0.9 run lies within 10% of the uncorrelated 1/(1−β²) = 5.26 (measured 0.1%) and
    far from coherent 100 and alternating 0.28."""
    pot, lr, beta, k = _bn(), 0.1, 0.9, 1e-3
    res = nc.train(nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k), pot,
                   np.random.default_rng(5).standard_normal(pot.dim), 20000, batch_size=16,
                   seed=3)
    kap = T.measured_buffer_gain(T.step_norm2(res.q)[10000:], res.grad_norm2[10000:-1], lr)
    assert abs(np.median(kap) / T.buffer_gain(beta, "uncorrelated") - 1) < 0.1
    assert T.nearest_assumption(np.median(kap), beta) == "uncorrelated"
    for a in T.ASSUMPTIONS:
        assert T.nearest_assumption(T.buffer_gain(beta, a), beta) == a


def test_norm_schedule_blocks_are_independent_columns():
    """(N, B) input = B separate (N,) calls (vectorisation only), for every assumption."""
    rng = np.random.default_rng(0)
    gh2 = rng.uniform(0.1, 2.0, size=(50, 3))
    D = rng.uniform(0.0, 1e-3, size=(50, 3))
    r0 = np.array([0.5, 1.0, 2.0])
    for a in T.ASSUMPTIONS + ("measured",):
        kw = {"delta_norm2": D} if a == "measured" else {}
        both = T.norm_schedule(gh2, 0.1, 0.9, 1e-3, r0, a, **kw)
        for j in range(3):
            kw = {"delta_norm2": D[:, j]} if a == "measured" else {}
            one = T.norm_schedule(gh2[:, j], 0.1, 0.9, 1e-3, r0[j], a, **kw)
            np.testing.assert_allclose(both.r2_discrete[:, j], one.r2_discrete, rtol=1e-14)
            np.testing.assert_allclose(both.r2_continuous[:, j], one.r2_continuous,
                                       rtol=1e-14)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda: T.steady_angular_update(0.0, 0.9, 1e-3), "lr must lie in"),
    (lambda: T.steady_angular_update(0.1, 1.0, 1e-3), "momentum must lie in"),
    (lambda: T.steady_angular_update(0.1, 0.9, -1.0), "weight_decay must lie in"),
    (lambda: T.steady_angular_update(0.1, 0.9, float("nan")), "weight_decay must be finite"),
    (lambda: T.steady_angular_update([0.1, -0.1], 0.9, 1e-3), "lr must lie in .* index 1"),
    (lambda: T.steady_angular_update(0.1, 0.9, 1e-3, rule="adam"), "rule must be one of"),
    (lambda: T.steady_radius(0.1, 0.9, 0.0, 1.0), "no steady state"),
    (lambda: T.steady_radius(0.1, 0.9, 1e-3, -1.0), "grad_hat_norm must lie in"),
    (lambda: T.steady_radius(0.1, 0.9, 1e-3, 1.0, "measured"), "assumption must be one of"),
    (lambda: T.norm_schedule([1.0], 0.1, 0.9, 1e-3, 1.0, "measured"), "needs delta_norm2"),
    (lambda: T.norm_schedule([1.0], 0.1, 0.9, 1e-3, 1.0, delta_norm2=[1.0]), "only with"),
    (lambda: T.norm_schedule([-1.0], 0.1, 0.9, 1e-3, 1.0), "non-negative"),
    (lambda: T.norm_schedule([1.0], 0.1, 0.9, 1e-3, 0.0), "r0 must lie in"),
    (lambda: T.norm_schedule(np.ones((3, 2)), 0.1, 0.9, 1e-3, [1.0, 2.0, 3.0]), "r0 must"),
    (lambda: T.norm_schedule([1.0, np.inf], 0.1, 0.9, 1e-3, 1.0), "must be finite"),
    (lambda: T.rmsprop_scale([1.0], 0.1, 1.0, 0.0), "rho must lie in"),
    (lambda: T.equivalent_rmsprop(0.1, 0.9, 0.0, 1.0), "weight_decay must lie in"),
    (lambda: T.equivalent_rmsprop(1.0, 0.9, 0.1, 1.0), "rho < 0"),
    (lambda: T.angular_updates(np.zeros((3, 2))), "zero norm"),
    (lambda: T.step_norm2(np.ones(3)), "at least 2 recorded rows"),
    (lambda: T.nearest_assumption(1.0, 0.0), "momentum must lie in"),
    (lambda: T.measured_buffer_gain([1.0], [1.0, 2.0], 0.1), "same shape"),
])
def test_bad_input_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: T.steady_angular_update("0.1", 0.9, 1e-3),
    lambda: T.steady_angular_update(True, 0.9, 1e-3),
    lambda: T.norm_schedule("abc", 0.1, 0.9, 1e-3, 1.0),
    lambda: T.norm_schedule([1.0], [0.1, 0.2], 0.9, 1e-3, 1.0),
    lambda: T.intrinsic_lr(0.1, 0.9, 1e-3, per_step="yes"),
    lambda: T.norm_schedule(None, 0.1, 0.9, 1e-3, 1.0, "measured", delta_norm2=[1.0],
                            prev=1.0),
])
def test_bad_input_type_errors(call):
    with pytest.raises(TypeError):
        call()


# -- other rules (docs/theory.md §6) ------------------------------------------------------------
def test_nesterov_exact_balance_on_a_run():
    """docs/theory.md §6, Nesterov: (a_{n+1} − a_n) − β(a_n − a_{n−1}) = D_{n+1} + βD_n
    − 2η(1+β)k a_n + ηβk(a_n + a_{n−1} − D_n) + 2ηβ⟨Δ_n, g_{n−1}⟩ for n ≥ 1, checked on a
    full-batch BatchNormUnit run (gradients recomputed from the recorded q).  Round-off:
    residual ≤ 1e-12·a_n."""
    pot, lr, beta, k = _bn(), 0.1, 0.9, 1e-3
    res = nc.train(nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k, nesterov=True), pot,
                   np.random.default_rng(2).standard_normal(pot.dim), 1500)
    q = res.q
    a = np.sum(q ** 2, axis=1)
    dq = np.diff(q, axis=0)                      # dq[n] = Δ_{n+1}
    D = np.sum(dq ** 2, axis=1)
    g = np.array([pot.grad(x) for x in q[:-1]])
    n = np.arange(1, len(q) - 1)
    lhs = (a[n + 1] - a[n]) - beta * (a[n] - a[n - 1])
    rhs = (D[n] + beta * D[n - 1] - 2 * lr * (1 + beta) * k * a[n]
           + lr * beta * k * (a[n] + a[n - 1] - D[n - 1])
           + 2 * lr * beta * np.sum(dq[n - 1] * g[n - 1], axis=1))
    assert np.max(np.abs(lhs - rhs) / a[n]) < 1e-12


def test_nesterov_and_dampening_steady_angle_minibatch():
    """Minibatch BatchNormUnit, β = 0.9: Nesterov's RMS chord matches
    sqrt(2ηk/(1+β+2βξ)) with the uncorrelated ξ within 3% (measured 2.0%; the coherent
    and alternating values are 12% and 30% away), dampening τ = 0.5 matches
    sqrt(2η(1−τ)k/(1+β)) within 2% (measured 0.1%)."""
    pot, lr, beta, k = _bn(), 0.1, 0.9, 1e-3
    q0 = np.random.default_rng(5).standard_normal(pot.dim)
    for kw, theory, tol in [
            ({"nesterov": True}, {"rule": "nesterov", "assumption": "uncorrelated"}, 0.03),
            ({"dampening": 0.5}, {"dampening": 0.5}, 0.02)]:
        res = nc.train(nc.rules.SGD(lr=lr, momentum=beta, weight_decay=k, **kw), pot, q0,
                       60000, batch_size=16, seed=3)
        chord = np.sqrt(np.mean(T.angular_updates(res.q[30000:]) ** 2))
        assert abs(chord / T.steady_angular_update(lr, beta, k, **theory) - 1) < tol
